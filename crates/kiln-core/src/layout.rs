//! The master's data directory, in one place. Every path under `<data>` is
//! built here, from names the caller has validated (`names`), so the
//! master, the repository builder and the benchmarks cannot disagree about
//! where a file lives.
//!
//! ```text
//! <data>/kiln.db                      the database
//! <data>/admin.token, <data>/ca/      the admin token, the CA
//! <data>/tmp/                         uploads in progress
//! <data>/cas/<sha256>                 inputs, by content
//! <data>/uploads/<job>-<attempt>-<name>[.part]
//! <data>/incoming/<build>/<arch>/     verified artifacts
//! <data>/logs/<build>/<job>.log.zst   big build logs
//! <data>/images/<name>/<build>/<arch>/ an image build's files
//! <data>/repos/<target>/<repo>/       published repositories (served)
//! <data>/repos/<target>/RPM-GPG-KEY-kiln-<target>
//! <data>/repowork/<target>/<repo>/    createrepo_c's own output
//! <data>/repocache/                   createrepo_c's checksum cache
//! <data>/gnupg/<target>/              a signing target's GnuPG home
//! ```

use std::path::{Path, PathBuf};

/// The data directory layout, from its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The data directory itself.
    pub root: PathBuf,
}

/// The directories a master creates at start (the others come when first
/// needed).
const CREATED: &[&str] = &[
    "cas", "uploads", "incoming", "logs", "tmp", "repos", "releases",
];

impl Layout {
    pub fn new(root: impl AsRef<Path>) -> Layout {
        Layout {
            root: root.as_ref().to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database (its `-wal` and `-shm` files sit beside it).
    pub fn db(&self) -> PathBuf {
        self.root.join("kiln.db")
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }

    /// Uploads in progress (renamed into `cas/` once whole); emptied at start.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Uploaded inputs, by content.
    pub fn cas_dir(&self) -> PathBuf {
        self.root.join("cas")
    }

    /// One uploaded input.
    pub fn cas(&self, sha256: &str) -> PathBuf {
        self.cas_dir().join(sha256)
    }

    /// Artifacts of job attempts while they arrive (flat).
    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// An artifact of one job attempt once it arrived whole and its sha256
    /// matched (flat: no directory to create and remove per job).
    pub fn staged(&self, job: i64, attempt: u32, name: &str) -> PathBuf {
        self.uploads().join(format!("{job}-{attempt}-{name}"))
    }

    /// The same while it arrives.
    pub fn staged_part(&self, job: i64, attempt: u32, name: &str) -> PathBuf {
        self.uploads().join(format!("{job}-{attempt}-{name}.part"))
    }

    /// The (job, attempt) of a file name in [`Layout::uploads`]
    /// (`<job>-<attempt>-<name>`, with or without `.part`).
    pub fn staged_key(file_name: &str) -> Option<(i64, u32)> {
        let mut it = file_name.splitn(3, '-');
        let job = it.next()?.parse().ok()?;
        let attempt = it.next()?.parse().ok()?;
        it.next().filter(|n| !n.is_empty())?;
        Some((job, attempt))
    }

    /// Verified artifacts of every build.
    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// Verified artifacts of one build and arch, waiting for the repository
    /// builder.
    pub fn incoming(&self, build: i64, arch: &str) -> PathBuf {
        self.incoming_dir().join(build.to_string()).join(arch)
    }

    /// The files of every image build (issue 12).
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The files of one image build and arch: `images/<name>/<build>/<arch>/`
    /// (`name` a validated recipe name).
    pub fn image_files(&self, name: &str, build: i64, arch: &str) -> PathBuf {
        self.images_dir()
            .join(name)
            .join(build.to_string())
            .join(arch)
    }

    /// Every release (issue 12), served at `/releases/`.
    pub fn releases(&self) -> PathBuf {
        self.root.join("releases")
    }

    /// One channel of a release: `releases/<name>/<channel>/` (both
    /// validated identifiers), holding one directory per version and the
    /// `latest` symlink.
    pub fn release_channel(&self, name: &str, channel: &str) -> PathBuf {
        self.releases().join(name).join(channel)
    }

    /// Build logs too big for the database.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log_zst(&self, build: i64, job: i64) -> PathBuf {
        self.logs()
            .join(build.to_string())
            .join(format!("{job}.log.zst"))
    }

    /// Every published repository (served at `/repos/`).
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }

    /// The repositories of one target.
    pub fn target_repos(&self, target: &str) -> PathBuf {
        self.repos().join(target)
    }

    /// One repository of a target: an arch, or `source`.
    pub fn repo(&self, target: &str, repo: &str) -> PathBuf {
        self.target_repos(target).join(repo)
    }

    /// The public key of a signing target, served beside its repositories.
    pub fn pubkey(&self, target: &str) -> PathBuf {
        self.target_repos(target)
            .join(format!("RPM-GPG-KEY-kiln-{target}"))
    }

    /// createrepo_c's own output for every repository (never served).
    pub fn repowork_dir(&self) -> PathBuf {
        self.root.join("repowork")
    }

    /// createrepo_c's own output for one repository.
    pub fn repowork(&self, target: &str, repo: &str) -> PathBuf {
        self.repowork_dir().join(target).join(repo)
    }

    /// createrepo_c's checksum cache.
    pub fn repocache(&self) -> PathBuf {
        self.root.join("repocache")
    }

    /// The GnuPG home holding a target's signing key.
    pub fn gnupg(&self, target: &str) -> PathBuf {
        self.root.join("gnupg").join(target)
    }

    /// Create the directories a master needs from its first start.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        for d in CREATED {
            std::fs::create_dir_all(self.root.join(d))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_root() {
        let l = Layout::new("/d");
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(l.db(), p("/d/kiln.db"));
        assert_eq!(l.ca_dir(), p("/d/ca"));
        assert_eq!(l.admin_token(), p("/d/admin.token"));
        assert_eq!(l.tmp(), p("/d/tmp"));
        assert_eq!(l.cas("ab"), p("/d/cas/ab"));
        assert_eq!(l.staged(3, 2, "x.rpm"), p("/d/uploads/3-2-x.rpm"));
        assert_eq!(l.staged_part(3, 2, "x.rpm"), p("/d/uploads/3-2-x.rpm.part"));
        assert_eq!(l.incoming(7, "noarch"), p("/d/incoming/7/noarch"));
        assert_eq!(l.log_zst(7, 9), p("/d/logs/7/9.log.zst"));
        assert_eq!(l.repo("t", "x86_64"), p("/d/repos/t/x86_64"));
        assert_eq!(l.pubkey("t"), p("/d/repos/t/RPM-GPG-KEY-kiln-t"));
        assert_eq!(l.repowork("t", "source"), p("/d/repowork/t/source"));
        assert_eq!(l.repocache(), p("/d/repocache"));
        assert_eq!(l.gnupg("t"), p("/d/gnupg/t"));
    }

    #[test]
    fn a_staged_name_gives_its_attempt_back() {
        let l = Layout::new("/d");
        for path in [l.staged(12, 3, "a-1-1.rpm"), l.staged_part(12, 3, "b")] {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(Layout::staged_key(name), Some((12, 3)));
        }
        assert_eq!(Layout::staged_key("12-3-"), None);
        assert_eq!(Layout::staged_key("x-3-a"), None);
        assert_eq!(Layout::staged_key("12-a"), None);
    }
}
