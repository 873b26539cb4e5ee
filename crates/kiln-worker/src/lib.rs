//! The worker: enrolls with the master, keeps one session stream open to it,
//! runs jobs through a backend and sends the results back.

pub mod backend;
pub mod conn;
pub mod enroll;
mod run;

pub use run::{run, WorkerConfig};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("bad master URL {0:?}: expected https://HOST:PORT")]
    BadUrl(String),
    #[error(transparent)]
    Pki(#[from] kiln_core::pki::PkiError),
    #[error("enrollment refused: {0}")]
    Enroll(String),
    #[error("cannot connect to the master: {0}")]
    Connect(String),
    #[error("{0}")]
    Other(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let what = what.into();
    move |source| WorkerError::Io { what, source }
}

/// Split `https://host:port` into host and port.
pub fn parse_master_url(url: &str) -> Result<(String, u16), WorkerError> {
    let bad = || WorkerError::BadUrl(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, p) = r.split_once("]:").ok_or_else(bad)?;
        (h.to_string(), p)
    } else {
        let (h, p) = rest.rsplit_once(':').ok_or_else(bad)?;
        (h.to_string(), p)
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    let port = port.parse().map_err(|_| bad())?;
    Ok((host, port))
}

/// What `kiln worker enroll` leaves in the worker directory.
pub mod files {
    pub const KEY: &str = "worker.key";
    pub const CERT: &str = "worker.crt";
    pub const CA: &str = "ca.crt";
    pub const MASTER: &str = "master.url";
    pub const NAME: &str = "name";
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls() {
        assert_eq!(
            super::parse_master_url("https://127.0.0.1:8443").unwrap(),
            ("127.0.0.1".to_string(), 8443)
        );
        assert_eq!(
            super::parse_master_url("https://[::1]:9/").unwrap(),
            ("::1".to_string(), 9)
        );
        assert!(super::parse_master_url("http://x:1").is_err());
        assert!(super::parse_master_url("https://x").is_err());
    }
}
