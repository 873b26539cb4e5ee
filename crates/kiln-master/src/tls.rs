//! The worker listener: one TLS port, two protocols chosen by ALPN before
//! the handshake completes. `h2` is the gRPC endpoint and requires a client
//! certificate from our CA (checked, with revocation, at the handshake);
//! `kiln-enroll/1` takes a one-time token and a CSR and returns a
//! certificate.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use kiln_core::pki::{self, PeerIdentity};
use kiln_proto as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tonic::transport::server::Connected;

use crate::{io_err, Core, MasterError};

/// A verified worker connection; its identity reaches every gRPC call as a
/// request extension.
pub struct WorkerConn {
    inner: TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl Connected for WorkerConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for WorkerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WorkerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a TLS handshake may take before the connection is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The one accept loop of both listeners: each connection is handled in a
/// task of its own (a slow handshake holds up nobody). An accept error (out
/// of file descriptors, say) is logged and retried after a pause, never in
/// a tight loop.
pub(crate) fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(TcpStream, std::net::SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("{what} listener accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(handle(tcp, remote));
        }
    });
}

pub(crate) fn server_names(core: &Core) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    for ip in [core.cfg.worker_listen.ip(), core.cfg.api_listen.ip()] {
        if !ip.is_unspecified() {
            names.push(ip.to_string());
        }
    }
    names.extend(core.cfg.server_names.iter().cloned());
    names.sort();
    names.dedup();
    names
}

pub async fn serve_workers(core: Arc<Core>) -> Result<std::net::SocketAddr, MasterError> {
    let names = server_names(&core);
    let (cert, key) = core.ca.issue_server_cert(&names)?;
    let grpc_cfg = Arc::new(pki::worker_endpoint_config(
        &core.ca,
        &cert,
        &key,
        core.revoked.clone(),
    )?);
    let enroll_cfg = Arc::new(pki::enroll_endpoint_config(&cert, &key, &core.ca)?);
    let listener = TcpListener::bind(core.cfg.worker_listen)
        .await
        .map_err(io_err(format!("binding {}", core.cfg.worker_listen)))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("reading the worker listener address"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<WorkerConn, std::io::Error>>(64);
    let accept_core = core.clone();
    accept_loop(listener, "worker", move |tcp, remote| {
        let (grpc_cfg, enroll_cfg, tx, core) = (
            grpc_cfg.clone(),
            enroll_cfg.clone(),
            tx.clone(),
            accept_core.clone(),
        );
        async move {
            let hs =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, grpc_cfg, enroll_cfg)).await;
            match hs {
                Ok(Ok(Accepted::Worker(conn))) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Ok(Accepted::Enroll(stream))) => {
                    if let Err(e) = enroll(core, stream).await {
                        tracing::info!("enrollment from {remote} failed: {e}");
                    }
                }
                Ok(Err(e)) => tracing::info!("TLS handshake with {remote} refused: {e}"),
                Err(_) => tracing::info!("TLS handshake with {remote} timed out"),
            }
        }
    });
    let svc = crate::grpc::service(core.clone());
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = r {
            tracing::error!("worker endpoint stopped: {e}");
        }
    });
    Ok(addr)
}

enum Accepted {
    Worker(WorkerConn),
    Enroll(TlsStream<TcpStream>),
}

async fn handshake(
    tcp: TcpStream,
    grpc_cfg: Arc<rustls::ServerConfig>,
    enroll_cfg: Arc<rustls::ServerConfig>,
) -> std::io::Result<Accepted> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let wants_enroll = start
        .client_hello()
        .alpn()
        .is_some_and(|mut protos| protos.any(|p| p == pb::ALPN_ENROLL));
    if wants_enroll {
        let s = start.into_stream(enroll_cfg).await?;
        return Ok(Accepted::Enroll(s));
    }
    let s = start.into_stream(grpc_cfg).await?;
    let peer = {
        let (_, conn) = s.get_ref();
        let der = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| std::io::Error::other("no client certificate"))?;
        pki::peer_identity(der.as_ref()).map_err(std::io::Error::other)?
    };
    Ok(Accepted::Worker(WorkerConn { inner: s, peer }))
}

/// Hash of an enrollment token's secret part, as stored.
pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Token format: `kiln1.<secret>.<ca sha256>`; the CA fingerprint lets the
/// worker pin the master's CA during enrollment.
pub fn make_token(core: &Core) -> (String, String) {
    use rand::RngCore;
    let mut b = [0u8; 20];
    rand::rng().fill_bytes(&mut b);
    let secret = hex::encode(b);
    let token = format!("kiln1.{secret}.{}", core.ca.fingerprint());
    (token, token_hash(&secret))
}

/// Why an enrollment did not complete.
#[derive(Debug, thiserror::Error)]
enum EnrollError {
    #[error("enrollment request of {0} bytes is too large")]
    TooLarge(usize),
    #[error("the enrollment connection: {0}")]
    Io(#[from] std::io::Error),
    /// Refused (and the worker was told why).
    #[error("{0}")]
    Refused(String),
}

async fn enroll(core: Arc<Core>, mut s: TlsStream<TcpStream>) -> Result<(), EnrollError> {
    let len = s.read_u32().await? as usize;
    if len > 64 * 1024 {
        return Err(EnrollError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    let resp = match pb::EnrollRequest::decode(&buf[..]) {
        Ok(req) => match sign(&core, req).await {
            Ok((name, cert)) => pb::EnrollResponse {
                error: String::new(),
                name,
                cert_pem: cert,
                ca_pem: core.ca.cert_pem().to_string(),
            },
            Err(e) => pb::EnrollResponse {
                error: e.to_string(),
                ..Default::default()
            },
        },
        Err(e) => pb::EnrollResponse {
            error: format!("malformed enrollment request: {e}"),
            ..Default::default()
        },
    };
    let out = resp.encode_to_vec();
    s.write_u32(out.len() as u32).await?;
    s.write_all(&out).await?;
    s.shutdown().await?;
    if resp.error.is_empty() {
        tracing::info!("worker {} enrolled", resp.name);
        Ok(())
    } else {
        Err(EnrollError::Refused(resp.error))
    }
}

async fn sign(
    core: &Arc<Core>,
    req: pb::EnrollRequest,
) -> Result<(String, String), kiln_store::StoreError> {
    let parts: Vec<&str> = req.token.trim().split('.').collect();
    let secret = match parts.as_slice() {
        ["kiln1", secret, _fp] => secret.to_string(),
        _ => {
            return Err(kiln_store::StoreError::Invalid(
                "malformed enrollment token".into(),
            ))
        }
    };
    let hash = token_hash(&secret);
    let signer = core.clone();
    let csr = req.csr_pem;
    let days = core.cfg.cert_days;
    // The worker's name is known inside the write only: the event is made
    // there (worker.enrolled, same commit).
    let nq = core.notify.worker("worker.enrolled", "");
    let queued = nq.is_some();
    let r = core
        .store
        .write(move |t| {
            let name = kiln_store::consume_token(t, &hash)?;
            let serial = kiln_store::next_serial(t)?;
            let cert = signer
                .ca
                .sign_worker_csr(&csr, &name, serial, days)
                .map_err(|e| kiln_store::StoreError::Invalid(format!("bad CSR: {e}")))?;
            kiln_store::enroll_worker(t, &name, serial)?;
            crate::notify::queue(t, &nq.map(|p| p.for_worker(&name)))?;
            Ok((name, cert))
        })
        .await;
    if queued && r.is_ok() {
        core.notify.wake();
    }
    r
}
