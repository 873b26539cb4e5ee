//! The worker: enrolls with the master, keeps one session stream open to it,
//! runs jobs through a backend and sends the results back.

pub mod backend;
pub mod buildroot;
pub mod conn;
pub mod enroll;
pub mod image;
pub mod query;
mod run;
pub mod srpm;

pub use run::{run, WorkerConfig};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
    #[error("bad master URL {0:?}: expected https://HOST:PORT")]
    BadUrl(String),
    #[error(transparent)]
    Pki(#[from] kiln_core::pki::PkiError),
    #[error("enrollment refused: {0}")]
    Enroll(String),
    #[error("cannot connect to the master: {0}")]
    Connect(String),
    /// The master refuses this worker's certificate for good.
    #[error("this worker was revoked: the master refuses its certificate ({0})")]
    Revoked(String),
    #[error("{0}")]
    Other(String),
}

pub(crate) use kiln_core::error::io_err;

/// Make the worker's files private to it: its directory, the work
/// directory, the input cache and the job directories 0700 (created when
/// missing), the key and certificate 0600; what an older version or an
/// operator left looser is tightened.
pub(crate) fn make_private(
    dir: &std::path::Path,
    work: &std::path::Path,
) -> Result<(), WorkerError> {
    use std::os::unix::fs::PermissionsExt;
    let tighten = |path: &std::path::Path, mode: u32| {
        let Ok(m) = std::fs::metadata(path) else {
            return;
        };
        if m.permissions().mode() & 0o7777 & !mode != 0 {
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!("cannot make {} private ({mode:o}): {e}", path.display());
            }
        }
    };
    tighten(dir, 0o700);
    for f in [files::KEY, files::CERT] {
        tighten(&dir.join(f), 0o600);
    }
    for d in [work.to_path_buf(), work.join("cache"), work.join("jobs")] {
        backend::make_private_dir(&d).map_err(io_err(format!("creating {}", d.display())))?;
        tighten(&d, 0o700);
    }
    Ok(())
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
    fn the_worker_files_are_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let set = |p: &std::path::Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("worker");
        let work = dir.join("work");
        std::fs::create_dir_all(work.join("cache")).unwrap();
        for d in [&dir, &work, &work.join("cache")] {
            set(d, 0o755);
        }
        for f in [super::files::KEY, super::files::CERT] {
            std::fs::write(dir.join(f), "x").unwrap();
            set(&dir.join(f), 0o644);
        }
        super::make_private(&dir, &work).unwrap();
        for d in [&dir, &work, &work.join("cache"), &work.join("jobs")] {
            assert_eq!(mode(d), 0o700, "{}", d.display());
        }
        for f in [super::files::KEY, super::files::CERT] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
    }

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
