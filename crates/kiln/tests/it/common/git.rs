//! Git repositories made by a test (`git init`, commits with fixed dates,
//! tags), reached by `file://` or through a real `git daemon` on loopback.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A repository with a work tree, made by the test.
pub struct GitRepo {
    pub dir: PathBuf,
    /// Commits made so far (their dates go up from 2026-01-01 by an hour).
    commits: u32,
}

fn git(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(require_tool("git"));
    cmd.arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Kiln Test",
            "-c",
            "user.email=test@kiln.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_timeout(
        cmd,
        Duration::from_secs(60),
        &format!("git {}", args.join(" ")),
    )
    .assert_ok()
    .stdout
    .trim()
    .to_string()
}

impl GitRepo {
    pub fn init(dir: &Path) -> GitRepo {
        fs::create_dir_all(dir).unwrap();
        git(dir, &["init", "-q"], &[]);
        GitRepo {
            dir: dir.to_path_buf(),
            commits: 0,
        }
    }

    /// Write files (path, content) and commit them; returns the commit id.
    pub fn commit(&mut self, files: &[(&str, &str)], message: &str) -> String {
        for (p, c) in files {
            let path = self.dir.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, c).unwrap();
        }
        git(&self.dir, &["add", "-A"], &[]);
        self.commits += 1;
        let date = format!("2026-01-01T{:02}:00:00Z", self.commits.min(23));
        git(
            &self.dir,
            &["commit", "-q", "--allow-empty", "-m", message],
            &[("GIT_AUTHOR_DATE", &date), ("GIT_COMMITTER_DATE", &date)],
        );
        self.head()
    }

    pub fn tag(&self, name: &str) {
        git(&self.dir, &["tag", name], &[]);
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"], &[])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// A `git daemon` serving every repository under `base` on a loopback
/// port, read-only; killed on drop.
pub struct GitDaemon {
    _proc: Proc,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path, scratch: &Path) -> GitDaemon {
        let port = closed_port();
        let mut cmd = Command::new(require_tool("git"));
        cmd.args([
            "daemon",
            "--export-all",
            "--reuseaddr",
            "--informative-errors",
        ])
        .arg(format!("--base-path={}", base.display()))
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--verbose")
        .arg(base);
        let p = Proc::spawn(
            cmd,
            &scratch.join(format!("git-daemon-{port}.stderr")),
            "git daemon",
        );
        // Ready once it accepts a connection.
        wait_until("git daemon listening", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        GitDaemon { _proc: p, port }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}
