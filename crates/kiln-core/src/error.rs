//! One I/O error with what was being done, shared by every crate's error
//! type (`#[error(transparent)] Io(#[from] IoError)`), so that
//! `.map_err(io_err("reading X"))?` reads the same everywhere.

/// An I/O failure and what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct IoError {
    pub what: String,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// The underlying error's kind (to tell a missing file or a full disk).
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// Wrap an I/O error with what was being done: `.map_err(io_err("…"))?`.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IoError {
    let what = what.into();
    move |source| IoError { what, source }
}

/// The same, for an operation on a path: `.map_err(io_at(&path))?`.
pub fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |source| IoError {
        what: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_was_being_done() {
        let e = io_err("reading /x")(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(e.to_string().starts_with("reading /x: "), "{e}");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
