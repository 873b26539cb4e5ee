//! The harness of the black-box integration tests.
//!
//! Everything here drives the real `kiln` binary as separate processes: a
//! master on `127.0.0.1` ports chosen at run time, workers enrolled against
//! it, and the CLI. Source RPMs are made in the test with the host's real
//! `rpmbuild -bs`; what the master publishes is read with the host's `rpm`,
//! `createrepo_c` output, `curl`, `gpg` and `dnf`. A tool that is missing
//! fails the test with a clear message; nothing is ever skipped. Every
//! process is killed when the value that owns it is dropped, so a failing
//! test leaves nothing behind; on a panic the tail of each process's output
//! is printed to help diagnose.
//!
//! Waiting is done on process output wherever the event is printed (the
//! master's `listening` line, a worker's `connected` lines); otherwise by
//! polling `kiln build show --json` with a short pause and a hard deadline.
//!
//! All the tests run in one process, several at a time: nothing here (or
//! in a test) changes the process's environment, working directory or
//! signal handling; what a child needs is set on its own `Command`.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | deadlines, tools, waiting, files, sha256 |
//! | `process.rs` | child processes (`Proc`, `run_timeout`) and `/proc` |
//! | `json.rs` | reading the CLI's JSON: builds, jobs, artifacts, publication |
//! | `master.rs` | `Master` (and its CLI), `Farm` |
//! | `worker.rs` | `Enrolled`, `Worker` |
//! | `rpms.rs` | `Pkg` (the one spec generator), `rpmbuild -bs`, `rpm -q` |
//! | `tmpfs.rs` | a small filesystem to fill |
//! | `repo.rs` | the repository tests' farm, config and createrepo_c wrapper |
//! | `repodata.rs` | what is published: `repo ls`, repomd.xml, primary.xml |
//! | `http.rs` | `curl` |
//! | `browser.rs` | headless Chromium over WebDriver (chromedriver) |
//! | `dnf.rs` | dnf in an installroot |
//! | `gpg.rs` | OpenPGP keys and signatures with gpg |
//! | `git.rs` | git repositories made by a test, and `git daemon` |

mod browser;
mod dnf;
mod git;
mod gpg;
pub mod hostbase;
mod http;
mod json;
mod master;
mod process;
mod repo;
mod repodata;
mod rpms;
mod tmpfs;
mod worker;

pub use browser::*;
pub use dnf::*;
pub use git::*;
pub use gpg::*;
pub use http::*;
pub use json::*;
pub use master::*;
pub use process::*;
pub use repo::*;
pub use repodata::*;
pub use rpms::*;
pub use tmpfs::*;
pub use worker::*;

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// Deadline for one build (with real rpmbuild) to end.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
/// Deadline for a worker to print `connected`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for a CLI call that is not `--wait`/`--follow`.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for a CLI call that waits for a build.
pub const CLI_WAIT_TIMEOUT: Duration = Duration::from_secs(240);
/// Pause between two polls of the API.
pub const POLL: Duration = Duration::from_millis(150);

/// The binary under test.
pub fn kiln() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

// ---------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------

/// The executable `name` in `PATH`, if there is one.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
        })
}

/// Finds `name` in `PATH`; panics (the test fails, it never skips) if absent.
pub fn require_tool(name: &str) -> PathBuf {
    if let Some(p) = find_tool(name) {
        return p;
    }
    panic!(
        "required tool `{name}` was not found in PATH; these tests need it and never skip \
         (on Debian 12, scripts/deps.sh installs them: rpm createrepo-c dnf bubblewrap gnupg \
         curl gcc make)"
    );
}

/// The tools every farm (master + workers building real RPMs) needs.
pub fn require_build_tools() {
    for t in ["rpmbuild", "rpm", "gcc", "bwrap"] {
        require_tool(t);
    }
}

/// What every repository test needs: a farm building real RPMs, plus the
/// host's createrepo_c (the master runs it), curl and gzip (to read what
/// the master serves and wrote).
pub fn require_repo_tools() {
    require_build_tools();
    for t in ["createrepo_c", "curl", "gzip"] {
        require_tool(t);
    }
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `cond` every `POLL` until it returns `Some` or `timeout` passes
/// (then `None`).
pub fn wait_for<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Like [`wait_for`], but a timeout fails the test.
pub fn wait_until<T>(what: &str, timeout: Duration, cond: impl FnMut() -> Option<T>) -> T {
    wait_for(timeout, cond)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// A tokio runtime for the tests that talk to the master or its store
/// directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// Every regular file under `dir` (recursively), as paths relative to it;
/// empty if `dir` does not exist.
pub fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, d: &Path, acc: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(root, &p, acc);
            } else {
                acc.insert(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut acc = BTreeSet::new();
    walk(dir, dir, &mut acc);
    acc
}

/// Every file under `dir` (recursively, hidden ones included) whose name
/// satisfies `pred`, as full paths.
pub fn files_named(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|rel| {
            rel.file_name()
                .map(|n| pred(&n.to_string_lossy()))
                .unwrap_or(false)
        })
        .map(|rel| dir.join(rel))
        .collect()
}

/// The names of the entries of a directory (panics if it cannot be read).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The permission bits of a file.
pub fn file_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut f = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut b = vec![0u8; n];
    f.read_exact(&mut b).expect("read /dev/urandom");
    b
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex::encode(h.finalize())
}

/// A suffix no other call in this test process returns.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
