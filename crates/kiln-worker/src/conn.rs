//! TLS connections to the master, with rustls and our own CA.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
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

/// A gRPC channel over mutual TLS.
pub async fn channel(
    host: &str,
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel, WorkerError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|e| WorkerError::Connect(e.to_string()))?
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .connect_timeout(std::time::Duration::from_secs(15));
    let host = host.to_string();
    let connector = tower::service_fn(move |_uri| {
        let (host, cfg) = (host.clone(), cfg.clone());
        async move {
            let s = tls_connect(&host, port, cfg).await?;
            Ok::<_, std::io::Error>(TokioIo::new(s))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            use std::error::Error;
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            WorkerError::Connect(msg)
        })
}
