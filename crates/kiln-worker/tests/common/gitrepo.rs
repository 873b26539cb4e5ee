//! Git repositories made by the srpm job's tests and its benchmark: real
//! `git init`, commits at the times given (author and committer dates),
//! tags; reached by `file://`. Nothing of the process's environment is
//! changed: each git gets its own on its `Command`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A repository with a work tree.
pub struct TestRepo {
    pub dir: PathBuf,
    /// The next commit's time (Unix seconds); each commit adds an hour.
    pub time: i64,
}

/// 2026-01-01T00:00:00Z
pub const START: i64 = 1_767_225_600;

impl TestRepo {
    /// `git init` in `dir` (made), branch `main`.
    pub fn new(dir: &Path) -> TestRepo {
        std::fs::create_dir_all(dir).unwrap();
        let r = TestRepo {
            dir: dir.to_path_buf(),
            time: START,
        };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    /// `git ARGS` in the repository: its stdout (it must succeed).
    pub fn git(&self, args: &[&str]) -> String {
        let date = format!("@{} +0000", self.time);
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args([
                "-c",
                "user.name=Kiln Test",
                "-c",
                "user.email=test@kiln.invalid",
            ])
            .args(["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", &self.dir)
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .expect("these tests need git (apt-get install git)");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Write `files` (path, content) and commit them at [`TestRepo::time`]
    /// (then an hour later for the next one): the commit id.
    pub fn commit(&mut self, files: &[(&str, &[u8])], message: &str) -> String {
        for (p, c) in files {
            let path = self.dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.time += 3600;
        self.head()
    }

    /// A lightweight tag at HEAD.
    pub fn tag(&self, name: &str) {
        self.git(&["tag", name]);
    }

    /// An annotated tag at HEAD.
    pub fn annotated_tag(&self, name: &str) {
        self.git(&["tag", "-a", "-m", name, name]);
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// A noarch spec `NAME` at `VERSION` whose Source0 is a URL (it is never
/// downloaded: Kiln makes the tarball) plus `extra` in its preamble.
pub fn spec(name: &str, version: &str, source0: &str, extra: &str) -> String {
    format!(
        "Name: {name}\nVersion: {version}\nRelease: 1%{{?dist}}\nSummary: {name} from git\n\
         License: MIT\nURL: https://example.invalid/{name}\n\
         Source0: https://example.invalid/{name}/archive/{source0}\n{extra}BuildArch: noarch\n\n\
         %description\n{name}, made from git.\n\n%prep\n%autosetup\n\n%build\n\n%install\n\
         mkdir -p %{{buildroot}}/usr/share/{name}\ncp -a . %{{buildroot}}/usr/share/{name}/\n\n\
         %files\n/usr/share/{name}\n"
    )
}
