//! TLS connections to the master, with rustls and our own CA.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::WorkerError;

pub async fn tls_connect(
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::other(format!("bad server name {host:?}: {e}")))?;
    TlsConnector::from(cfg).connect(name, tcp).await
}

/// Set when the master refused a connection of a channel with the TLS alert
/// `certificate_revoked`. In TLS 1.3 the client's side of the handshake is
/// over before the server checks the client's certificate, so the alert
/// comes with the first read, inside the HTTP/2 connection, whose error
/// the requests do not carry ("operation was canceled"): it is noted here.
#[derive(Clone, Default, Debug)]
pub struct RevokedFlag(Arc<AtomicBool>);

impl RevokedFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn note(&self, e: &std::io::Error) {
        if crate::run::revocation(e) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// A TLS stream that notes a revocation alert in its errors.
struct Watched {
    inner: TlsStream<TcpStream>,
    revoked: RevokedFlag,
}

impl Watched {
    fn seen<T>(&self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            self.revoked.note(e);
        }
        r
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.seen(r)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.seen(r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.seen(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.seen(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A gRPC channel over mutual TLS.
pub async fn channel(
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, WorkerError> {
    watched_channel(host, port, cfg).await.map(|(c, _)| c)
}

/// A gRPC channel over mutual TLS, and the flag its connections set if the
/// master refuses this worker's certificate as revoked (a connection
/// refused that way fails with [`WorkerError::Revoked`] here).
pub async fn watched_channel(
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<(tonic::transport::Channel, RevokedFlag), WorkerError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|e| WorkerError::Connect(e.to_string()))?
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .connect_timeout(std::time::Duration::from_secs(15));
    let host = host.to_string();
    let revoked = RevokedFlag::default();
    let flag = revoked.clone();
    let connector = tower::service_fn(move |_uri| {
        let (host, cfg, revoked) = (host.clone(), cfg.clone(), flag.clone());
        async move {
            let s = tls_connect(&host, port, cfg)
                .await
                .inspect_err(|e| revoked.note(e))?;
            Ok::<_, std::io::Error>(TokioIo::new(Watched { inner: s, revoked }))
        }
    });
    match endpoint.connect_with_connector(connector).await {
        Ok(c) => Ok((c, revoked)),
        Err(e) => {
            let msg = crate::run::chain(&e);
            if revoked.is_set() || crate::run::revocation(&e) {
                Err(WorkerError::Revoked(msg))
            } else {
                Err(WorkerError::Connect(msg))
            }
        }
    }
}
