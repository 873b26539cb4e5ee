//! The data directory layout. Every path the master writes is built here,
//! from validated names, so nothing lands outside the data directory.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        Paths {
            root: root.to_path_buf(),
        }
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("kiln.db")
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Uploaded inputs, by content.
    pub fn cas(&self, sha256: &str) -> PathBuf {
        self.root.join("cas").join(sha256)
    }
    /// An artifact of one job attempt once it arrived whole and its sha256
    /// matched (flat: no directory to create and remove per job).
    pub fn staged(&self, job: i64, attempt: u32, name: &str) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{job}-{attempt}-{name}"))
    }
    /// The same while it arrives.
    pub fn staged_part(&self, job: i64, attempt: u32, name: &str) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{job}-{attempt}-{name}.part"))
    }
    /// Verified artifacts waiting for the repository builder.
    pub fn incoming(&self, build: i64, arch: &str) -> PathBuf {
        self.root
            .join("incoming")
            .join(build.to_string())
            .join(arch)
    }
    pub fn log_zst(&self, build: i64, job: i64) -> PathBuf {
        self.root
            .join("logs")
            .join(build.to_string())
            .join(format!("{job}.log.zst"))
    }

    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    pub fn gnupg(&self, target: &str) -> PathBuf {
        self.root.join("gnupg").join(target)
    }
    pub fn pubkey(&self, target: &str) -> PathBuf {
        self.repos()
            .join(target)
            .join(format!("RPM-GPG-KEY-kiln-{target}"))
    }
    pub fn repo_layout(&self) -> kiln_repo::Layout {
        kiln_repo::Layout {
            repos: self.repos(),
            incoming: self.root.join("incoming"),
            work: self.root.join("repowork"),
            cache: self.root.join("repocache"),
        }
    }

    pub fn create_dirs(&self) -> std::io::Result<()> {
        for d in ["cas", "uploads", "incoming", "logs", "tmp", "repos"] {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }
}

/// Is `s` a lowercase hex sha256?
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub use kiln_core::fsutil::sha256_file;
