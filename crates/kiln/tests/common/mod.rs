//! Shared harness of the black-box integration tests.
//!
//! Everything here drives the real `kiln` binary as separate processes:
//! a master on `127.0.0.1` ports chosen at run time, workers enrolled
//! against it, and the CLI. Source RPMs are made in the test with the
//! host's real `rpmbuild -bs`. Every process is killed when the value that
//! owns it is dropped, so a failing test leaves nothing behind; on a panic
//! the tail of each process's output is printed to help diagnose.
//!
//! Waiting is done on process output wherever the event is printed (the
//! master's `listening` line, a worker's `connected` lines); otherwise by
//! polling `kiln build show --json` with a short pause and a hard deadline.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

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
         (on Debian 12: apt-get install rpm gcc make bubblewrap)"
    );
}

/// The tools every farm (master + workers building real RPMs) needs.
pub fn require_build_tools() {
    for t in ["rpmbuild", "rpm", "gcc", "bwrap"] {
        require_tool(t);
    }
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

struct LineBuf {
    lines: Vec<String>,
    eof: bool,
}

type Shared = Arc<(Mutex<LineBuf>, Condvar)>;

/// A long-running child (master, worker, `kiln logs --follow`): stdout is
/// read line by line in a thread; stderr goes to a file. Killed on drop.
pub struct Proc {
    pub label: String,
    child: Child,
    out: Shared,
    pub stderr_path: PathBuf,
    status: Option<ExitStatus>,
    pub started: Instant,
}

impl Proc {
    pub fn spawn(mut cmd: Command, stderr_path: &Path, label: &str) -> Proc {
        let errf = File::create(stderr_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_path.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(errf));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let out: Shared = Arc::new((
            Mutex::new(LineBuf {
                lines: Vec::new(),
                eof: false,
            }),
            Condvar::new(),
        ));
        let shared = out.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        let (m, cv) = &*shared;
                        m.lock().unwrap().lines.push(line);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*shared;
            m.lock().unwrap().eof = true;
            cv.notify_all();
        });
        Proc {
            label: label.to_string(),
            child,
            out,
            stderr_path: stderr_path.to_path_buf(),
            status: None,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.out.0.lock().unwrap().lines.clone()
    }

    /// How many stdout lines so far satisfy `pred`.
    pub fn count_lines(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.out
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    /// Waits until at least `nth` (1-based) stdout lines satisfy `pred` and
    /// returns the `nth` one; `None` on timeout or when stdout closed first.
    pub fn wait_line(
        &self,
        pred: impl Fn(&str) -> bool,
        nth: usize,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut g = m.lock().unwrap();
        loop {
            let mut seen = 0;
            for l in &g.lines {
                if pred(l) {
                    seen += 1;
                    if seen == nth {
                        return Some(l.clone());
                    }
                }
            }
            if g.eof {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Whether stdout has been closed (the process exited or closed it).
    pub fn stdout_closed(&self) -> bool {
        self.out.0.lock().unwrap().eof
    }

    pub fn stderr_text(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends `sig` unless the process has already been reaped.
    pub fn signal(&mut self, sig: i32) {
        if self.try_status().is_none() {
            // SAFETY: plain kill(2) on the pid of our own, not yet reaped child.
            let rc = unsafe { libc::kill(self.pid(), sig) };
            assert_eq!(rc, 0, "kill({}, {sig}) failed", self.label);
        }
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL and reap (no-op if it already exited).
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.status = Some(s);
            }
        }
    }

    /// The last lines of stdout and stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let lines = self.lines();
        let out_tail = tail_lines(&lines.join("\n"), 30);
        let err_tail = tail_lines(&self.stderr_text(), 40);
        format!(
            "---- {} stdout (tail) ----\n{out_tail}\n---- {} stderr (tail) ----\n{err_tail}\n",
            self.label, self.label
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        // At the end of a test, take the whole tree down (a worker's builds
        // too), so nothing outlives the test. An explicit `kill()` during a
        // test kills only the process itself, as a crash would.
        let tree = if self.try_status().is_none() {
            descendants(self.pid())
        } else {
            Vec::new()
        };
        self.kill();
        for pid in tree {
            // SAFETY: kill(2); at worst the pid is already gone.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Every descendant of `root` (from the ppid in /proc/<pid>/stat).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

pub fn tail_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    let start = v.len().saturating_sub(n);
    v[start..].join("\n")
}

// ---------------------------------------------------------------------------
// One-shot commands (the CLI)
// ---------------------------------------------------------------------------

/// What a one-shot command did.
#[derive(Debug)]
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    fn describe(&self) -> String {
        format!(
            "`{}` exited with {:?}\n---- stdout ----\n{}\n---- stderr ----\n{}",
            self.what,
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }

    /// Panics unless the command exited 0.
    pub fn assert_ok(self) -> Out {
        assert!(self.success(), "command failed: {}", self.describe());
        self
    }

    /// Parses stdout as JSON (panics with the output if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}", self.describe());
        })
    }

    /// Asserts the shape of a refused request: a non-zero exit and exactly
    /// one line on stderr, starting with `error:`, that mentions at least
    /// one of `keywords` (case-insensitive). Returns that line.
    pub fn assert_error_line(&self, keywords: &[&str]) -> String {
        assert!(
            !self.success(),
            "expected a non-zero exit: {}",
            self.describe()
        );
        let text = self.stderr.trim_end_matches(['\n', '\r']);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected exactly one line on stderr: {}",
            self.describe()
        );
        let line = lines[0];
        assert!(
            line.starts_with("error:"),
            "the stderr line must start with `error:`: {}",
            self.describe()
        );
        let lower = line.to_lowercase();
        assert!(
            keywords.is_empty() || keywords.iter().any(|k| lower.contains(&k.to_lowercase())),
            "the error line should say what is wrong (one of {keywords:?}): {}",
            self.describe()
        );
        line.to_string()
    }
}

/// Runs `cmd` to completion with a hard deadline (panics on timeout).
pub fn run_timeout(mut cmd: Command, timeout: Duration, what: &str) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    let out = Out {
        what: what.to_string(),
        status,
        stdout,
        stderr,
    };
    if timed_out {
        panic!(
            "`{what}` did not finish within {timeout:?}: {}",
            out.describe()
        );
    }
    out
}

// ---------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------

pub fn jstr(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
        .to_string()
}

pub fn ju64(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("`{key}` is not an unsigned number in {v}"))
}

pub fn ji64(v: &Value, key: &str) -> i64 {
    v.get(key)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

pub fn jarr<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("`{key}` is not an array in {v}"))
}

/// `build["id"]`.
pub fn build_id(b: &Value) -> u64 {
    ju64(b, "id")
}

/// The jobs of a build.
pub fn jobs_of(b: &Value) -> Vec<Value> {
    jarr(b, "jobs").clone()
}

/// The only job of a build (panics unless there is exactly one).
pub fn only_job(b: &Value) -> Value {
    let jobs = jobs_of(b);
    assert_eq!(jobs.len(), 1, "expected exactly one job in {b}");
    jobs[0].clone()
}

/// The worker name of a job, if any.
pub fn job_worker(j: &Value) -> Option<String> {
    j.get("worker").and_then(Value::as_str).map(str::to_string)
}

pub fn is_terminal_build_state(s: &str) -> bool {
    matches!(s, "succeeded" | "failed" | "canceled" | "skipped")
}

pub fn is_terminal_job_state(s: &str) -> bool {
    matches!(s, "succeeded" | "failed" | "canceled")
}

/// `running` of a `kiln workers --json` entry: a count, or a list of jobs.
pub fn running_count(w: &Value) -> u64 {
    match w.get("running") {
        Some(Value::Number(n)) => n.as_u64().expect("running is a count"),
        Some(Value::Array(a)) => a.len() as u64,
        other => panic!("`running` is neither a count nor a list: {other:?} in {w}"),
    }
}

/// The largest number of intervals `[start, end)` that overlap at any instant.
pub fn max_overlap(intervals: &[(i64, i64)]) -> usize {
    let mut ev: Vec<(i64, i32)> = Vec::new();
    for &(s, e) in intervals {
        assert!(e >= s, "interval ends before it starts: {s}..{e}");
        ev.push((s, 1));
        ev.push((e, -1));
    }
    // At equal instants, an end comes before a start.
    ev.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        max = max.max(cur);
    }
    max as usize
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

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut f = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut b = vec![0u8; n];
    f.read_exact(&mut b).expect("read /dev/urandom");
    b
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> String {
    let data = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    sha256_hex(&data)
}

/// SHA-256 (FIPS 180-4), so the tests need no crate for it.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

// ---------------------------------------------------------------------------
// Source RPMs made in the test with real `rpmbuild -bs`
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum PkgKind {
    /// `BuildArch: noarch`, installs a text file.
    Noarch,
    /// Compiles a tiny hello.c with gcc in `%build`.
    C,
}

/// A package to make a source RPM of.
#[derive(Clone, Debug)]
pub struct Pkg {
    pub name: String,
    pub version: String,
    pub release: String,
    pub kind: PkgKind,
    pub sleep_secs: u32,
    pub exclusive_arch: Option<String>,
}

impl Pkg {
    pub fn noarch(name: &str) -> Pkg {
        Pkg {
            name: name.to_string(),
            version: "1.0".to_string(),
            release: "1".to_string(),
            kind: PkgKind::Noarch,
            sleep_secs: 0,
            exclusive_arch: None,
        }
    }

    pub fn c(name: &str) -> Pkg {
        Pkg {
            kind: PkgKind::C,
            ..Pkg::noarch(name)
        }
    }

    /// `%build` sleeps this long (to hold a worker slot).
    pub fn sleep(mut self, secs: u32) -> Pkg {
        self.sleep_secs = secs;
        self
    }

    pub fn version(mut self, v: &str) -> Pkg {
        self.version = v.to_string();
        self
    }

    /// The `Release:` value as written in the spec (may use `%{?dist}`).
    pub fn release(mut self, r: &str) -> Pkg {
        self.release = r.to_string();
        self
    }

    pub fn exclusive_arch(mut self, a: &str) -> Pkg {
        self.exclusive_arch = Some(a.to_string());
        self
    }

    /// The line `%build` echoes before it does anything else.
    pub fn begin_marker(&self) -> String {
        format!("KILN-BUILD-BEGIN-{}", self.name)
    }

    /// The line `%build` echoes when it is done.
    pub fn end_marker(&self) -> String {
        format!("KILN-BUILD-END-{}", self.name)
    }

    /// What the C package's program prints.
    pub fn greeting(&self) -> String {
        format!("hello from {}", self.name)
    }

    /// The file the noarch package installs.
    pub fn data_file(&self) -> String {
        format!("/usr/share/kiln-test/{}.txt", self.name)
    }

    pub fn spec_text(&self) -> String {
        let n = &self.name;
        let mut s = String::new();
        s += &format!(
            "Name: {n}\nVersion: {}\nRelease: {}\n",
            self.version, self.release
        );
        s += &format!("Summary: Kiln integration test package {n}\nLicense: MIT\n");
        if let PkgKind::C = self.kind {
            s += &format!("Source0: {n}-{}.tar.gz\n", self.version);
            s += "%global debug_package %{nil}\n";
        } else {
            s += "BuildArch: noarch\n";
        }
        if let Some(a) = &self.exclusive_arch {
            s += &format!("ExclusiveArch: {a}\n");
        }
        s += "\n%description\nA package made by the Kiln integration tests.\n\n%prep\n";
        if let PkgKind::C = self.kind {
            s += "%setup -q\n";
        }
        s += "\n%build\n";
        s += &format!("echo {}\n", self.begin_marker());
        if self.sleep_secs > 0 {
            s += &format!("sleep {}\n", self.sleep_secs);
        }
        if let PkgKind::C = self.kind {
            s += &format!("gcc -O2 -o {n} hello.c\n");
        }
        s += &format!("echo {}\n", self.end_marker());
        s += "\n%install\n";
        match self.kind {
            PkgKind::C => {
                s += "mkdir -p %{buildroot}/usr/bin\n";
                s += &format!("install -m 0755 {n} %{{buildroot}}/usr/bin/{n}\n");
                s += &format!("\n%files\n/usr/bin/{n}\n");
            }
            PkgKind::Noarch => {
                s += "mkdir -p %{buildroot}/usr/share/kiln-test\n";
                s += &format!(
                    "echo '{n} {}' > %{{buildroot}}{}\n",
                    self.version,
                    self.data_file()
                );
                s += &format!("\n%files\n{}\n", self.data_file());
            }
        }
        s
    }

    /// Makes the source RPM with `rpmbuild -bs` under `dir` and returns its path.
    pub fn build_srpm(&self, dir: &Path) -> PathBuf {
        require_tool("rpmbuild");
        let work = dir.join(format!("pkg-{}-{}-{}", self.name, self.version, unique()));
        let top = work.join("rpmbuild");
        let sources = top.join("SOURCES");
        fs::create_dir_all(&sources).unwrap();
        if let PkgKind::C = self.kind {
            require_tool("tar");
            let base = format!("{}-{}", self.name, self.version);
            let src = work.join("src").join(&base);
            fs::create_dir_all(&src).unwrap();
            fs::write(
                src.join("hello.c"),
                format!(
                    "#include <stdio.h>\nint main(void) {{ puts(\"{}\"); return 0; }}\n",
                    self.greeting()
                ),
            )
            .unwrap();
            let mut tar = Command::new("tar");
            tar.arg("-C")
                .arg(work.join("src"))
                .arg("-czf")
                .arg(sources.join(format!("{base}.tar.gz")))
                .arg(&base);
            run_timeout(tar, CLI_TIMEOUT, "tar -czf").assert_ok();
        }
        let spec = work.join(format!("{}.spec", self.name));
        fs::write(&spec, self.spec_text()).unwrap();
        rpmbuild_bs(&top, &spec)
    }
}

/// `rpmbuild -bs` of `spec` under the `_topdir` `top`: the SRPM it wrote.
pub fn rpmbuild_bs(top: &Path, spec: &Path) -> PathBuf {
    let mut cmd = Command::new("rpmbuild");
    cmd.arg("-bs")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .arg("--define")
        .arg("_dbpath /var/lib/rpm")
        .arg(spec);
    let out = run_timeout(cmd, CLI_TIMEOUT, "rpmbuild -bs").assert_ok();
    let wrote = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .find_map(|l| l.strip_prefix("Wrote:"))
        .map(|p| PathBuf::from(p.trim()))
        .unwrap_or_else(|| panic!("rpmbuild -bs printed no `Wrote:` line: {out:?}"));
    assert!(wrote.is_file(), "{} was not written", wrote.display());
    wrote
}

/// A per-process unique suffix.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------------------
// RPM inspection with the host's rpm tools
// ---------------------------------------------------------------------------

/// `rpm -qp --qf FMT FILE` (stdout, trimmed).
pub fn rpm_query(file: &Path, fmt: &str) -> String {
    require_tool("rpm");
    let mut cmd = Command::new("rpm");
    cmd.arg("-qp").arg("--qf").arg(fmt).arg(file);
    run_timeout(cmd, CLI_TIMEOUT, "rpm -qp")
        .assert_ok()
        .stdout
        .trim()
        .to_string()
}

/// `rpm -qlp FILE`: the files a package installs.
pub fn rpm_files(file: &Path) -> Vec<String> {
    require_tool("rpm");
    let mut cmd = Command::new("rpm");
    cmd.arg("-qlp").arg(file);
    run_timeout(cmd, CLI_TIMEOUT, "rpm -qlp")
        .assert_ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

/// Unpacks a binary RPM's files under `dest` with the host's rpm
/// (`rpm -i --root DEST`, its own database inside DEST, no scripts).
pub fn rpm_extract(file: &Path, dest: &Path) {
    require_tool("rpm");
    fs::create_dir_all(dest).unwrap();
    let mut cmd = Command::new("rpm");
    cmd.arg("--root")
        .arg(dest)
        .arg("--dbpath")
        .arg("/kiln-test-rpmdb")
        .args([
            "-i",
            "--nodeps",
            "--noscripts",
            "--nosignature",
            "--ignorearch",
            "--ignoreos",
        ])
        .arg(file);
    run_timeout(cmd, CLI_TIMEOUT, "rpm -i --root").assert_ok();
}

// ---------------------------------------------------------------------------
// Master
// ---------------------------------------------------------------------------

/// How to start a master.
#[derive(Default, Clone)]
pub struct MasterOpts {
    /// TOML text of the config file, if any.
    pub config: Option<String>,
    /// Extra flags (`--lease-secs 3`, `--max-upload 1000`…).
    pub args: Vec<String>,
}

impl MasterOpts {
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    /// A flag without a value (`--api-tls`).
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_string());
        self
    }
}

/// A running `kiln master` in its own temp dir.
pub struct Master {
    proc: Option<Proc>,
    pub api_url: String,
    pub worker_url: String,
    pub api_port: u16,
    pub worker_port: u16,
    pub token: String,
    pub data: PathBuf,
    /// HOME of every child (so no `~/.config/kiln/client.toml` interferes).
    pub home: PathBuf,
    /// Scratch space of the test (SRPMs, extracted files…).
    pub scratch: PathBuf,
    opts: MasterOpts,
    config_path: Option<PathBuf>,
    starts: usize,
    pub dir: TempDir,
}

impl Master {
    pub fn start() -> Master {
        Master::start_with(MasterOpts::default())
    }

    pub fn start_with(opts: MasterOpts) -> Master {
        let dir = tempfile::Builder::new()
            .prefix("kiln-it-master-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let home = dir.path().join("home");
        let scratch = dir.path().join("scratch");
        fs::create_dir_all(&home).unwrap();
        fs::create_dir_all(&scratch).unwrap();
        let config_path = opts.config.as_ref().map(|text| {
            let p = dir.path().join("master.toml");
            fs::write(&p, text).unwrap();
            p
        });
        let mut m = Master {
            proc: None,
            api_url: String::new(),
            worker_url: String::new(),
            api_port: 0,
            worker_port: 0,
            token: String::new(),
            data,
            home,
            scratch,
            opts,
            config_path,
            starts: 0,
            dir,
        };
        m.launch("127.0.0.1:0", "127.0.0.1:0", 1);
        m
    }

    fn launch(&mut self, api: &str, worker: &str, tries: usize) {
        for attempt in 1..=tries {
            self.starts += 1;
            let mut cmd = Command::new(kiln());
            cmd.arg("master")
                .arg("--data")
                .arg(&self.data)
                .arg("--api-listen")
                .arg(api)
                .arg("--worker-listen")
                .arg(worker);
            if let Some(c) = &self.config_path {
                cmd.arg("--config").arg(c);
            }
            cmd.args(&self.opts.args);
            cmd.env("HOME", &self.home).env_remove("XDG_CONFIG_HOME");
            let err = self
                .dir
                .path()
                .join(format!("master-{}.stderr", self.starts));
            let p = Proc::spawn(cmd, &err, &format!("master (start {})", self.starts));
            let line = p.wait_line(|l| l.starts_with("listening "), 1, Duration::from_secs(30));
            match line {
                Some(line) => {
                    self.parse_listening(&line);
                    self.proc = Some(p);
                    self.token = self.read_token();
                    return;
                }
                None if attempt < tries => {
                    // Probably the port is not free again yet: try once more.
                    drop(p);
                    thread::sleep(Duration::from_millis(500));
                }
                None => {
                    let d = p.diagnostics();
                    drop(p);
                    panic!("the master did not print its `listening` line:\n{d}");
                }
            }
        }
    }

    fn parse_listening(&mut self, line: &str) {
        let mut api = None;
        let mut worker = None;
        for tok in line.split_whitespace() {
            if let Some(u) = tok.strip_prefix("api=") {
                api = Some(u.to_string());
            } else if let Some(u) = tok.strip_prefix("worker=") {
                worker = Some(u.to_string());
            }
        }
        let api = api.unwrap_or_else(|| panic!("no api= in `{line}`"));
        let worker = worker.unwrap_or_else(|| panic!("no worker= in `{line}`"));
        assert!(
            api.starts_with("http://127.0.0.1:") || api.starts_with("https://127.0.0.1:"),
            "api url: {line}"
        );
        assert!(
            worker.starts_with("https://127.0.0.1:"),
            "worker url: {line}"
        );
        let port = |u: &str| -> u16 {
            u.trim_end_matches('/')
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in `{u}`"))
        };
        self.api_port = port(&api);
        self.worker_port = port(&worker);
        assert_ne!(self.api_port, 0);
        assert_ne!(self.worker_port, 0);
        self.api_url = api.trim_end_matches('/').to_string();
        self.worker_url = worker.trim_end_matches('/').to_string();
    }

    fn read_token(&self) -> String {
        let path = self.data.join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(t) = fs::read_to_string(&path) {
                let t = t.trim().to_string();
                if !t.is_empty() {
                    return t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no admin token in {}",
                path.display()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("the master is not running")
    }

    pub fn pid(&self) -> i32 {
        self.proc.as_ref().expect("the master is not running").pid()
    }

    /// SIGKILL the master and reap it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the master again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        let api = format!("127.0.0.1:{}", self.api_port);
        let worker = format!("127.0.0.1:{}", self.worker_port);
        let (old_api, old_worker) = (self.api_url.clone(), self.worker_url.clone());
        self.launch(&api, &worker, 10);
        assert_eq!(self.api_url, old_api, "the master moved its API port");
        assert_eq!(
            self.worker_url, old_worker,
            "the master moved its worker port"
        );
    }

    pub fn stderr_text(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::stderr_text)
            .unwrap_or_default()
    }

    // ----- CLI -----

    /// A `kiln ARGS` command with KILN_URL and KILN_TOKEN set.
    pub fn cli_cmd(&self, args: &[&str]) -> Command {
        self.cli_cmd_token(&self.token, args)
    }

    pub fn cli_cmd_token(&self, token: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(kiln());
        cmd.args(args)
            .env("KILN_URL", &self.api_url)
            .env("KILN_TOKEN", token)
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env("NO_COLOR", "1");
        if self.api_url.starts_with("https://") {
            // The admin on the master's machine trusts the master's CA.
            cmd.env("KILN_CA", self.data.join("ca").join("ca.crt"));
        }
        cmd
    }

    pub fn cli(&self, args: &[&str]) -> Out {
        self.cli_timeout(args, CLI_TIMEOUT)
    }

    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Out {
        run_timeout(
            self.cli_cmd(args),
            timeout,
            &format!("kiln {}", args.join(" ")),
        )
    }

    pub fn cli_token(&self, token: &str, args: &[&str]) -> Out {
        run_timeout(
            self.cli_cmd_token(token, args),
            CLI_TIMEOUT,
            &format!("kiln {} (token {token:?})", args.join(" ")),
        )
    }

    /// Runs the CLI, asserts success and parses stdout as JSON.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        self.cli(args).assert_ok().json()
    }

    /// `kiln submit SRPM EXTRA --json` (without `--wait`): the accepted build.
    pub fn submit(&self, srpm: &Path, extra: &[&str]) -> Value {
        let s = srpm.to_str().unwrap();
        let mut args = vec!["submit", s];
        args.extend_from_slice(extra);
        args.push("--json");
        let b = self.cli_json(&args);
        build_id(&b);
        b
    }

    /// `kiln submit SRPM EXTRA --wait --json`: whatever it did.
    pub fn submit_wait_out(&self, srpm: &Path, extra: &[&str]) -> Out {
        let s = srpm.to_str().unwrap();
        let mut args = vec!["submit", s];
        args.extend_from_slice(extra);
        args.push("--wait");
        args.push("--json");
        self.cli_timeout(&args, CLI_WAIT_TIMEOUT)
    }

    /// `kiln submit SRPM EXTRA --wait --json`, asserting success: the finished build.
    pub fn submit_wait(&self, srpm: &Path, extra: &[&str]) -> Value {
        let out = self.submit_wait_out(srpm, extra).assert_ok();
        let b = out.json();
        assert_eq!(
            jstr(&b, "state"),
            "succeeded",
            "submit --wait exited 0 but the build did not succeed: {b}"
        );
        b
    }

    pub fn build(&self, id: u64) -> Value {
        self.cli_json(&["build", "show", &id.to_string(), "--json"])
    }

    pub fn builds(&self) -> Vec<Value> {
        match self.cli_json(&["builds", "--json"]) {
            Value::Array(a) => a,
            other => panic!("`kiln builds --json` is not an array: {other}"),
        }
    }

    pub fn jobs(&self) -> Vec<Value> {
        match self.cli_json(&["jobs", "--json"]) {
            Value::Array(a) => a,
            other => panic!("`kiln jobs --json` is not an array: {other}"),
        }
    }

    pub fn workers(&self) -> Vec<Value> {
        match self.cli_json(&["workers", "--json"]) {
            Value::Array(a) => a,
            other => panic!("`kiln workers --json` is not an array: {other}"),
        }
    }

    pub fn worker_info(&self, name: &str) -> Option<Value> {
        self.workers()
            .into_iter()
            .find(|w| w.get("name").and_then(Value::as_str) == Some(name))
    }

    pub fn cancel(&self, id: u64) -> Out {
        self.cli(&["cancel", &id.to_string()])
    }

    /// Polls `kiln build show ID --json` until `pred` holds (hard deadline).
    pub fn wait_build(
        &self,
        id: u64,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let b = self.build(id);
            if pred(&b) {
                return b;
            }
            if Instant::now() >= deadline {
                panic!(
                    "build {id}: timed out after {timeout:?} waiting for {what}; last seen: {b}\n{}",
                    tail_lines(&self.stderr_text(), 40)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for a build to reach a terminal state and returns it.
    pub fn wait_build_done(&self, id: u64, timeout: Duration) -> Value {
        self.wait_build(id, "a terminal state", timeout, |b| {
            is_terminal_build_state(&jstr(b, "state"))
        })
    }

    /// Waits for a build to succeed (panics if it ends otherwise).
    pub fn wait_build_succeeded(&self, id: u64) -> Value {
        let b = self.wait_build_done(id, BUILD_TIMEOUT);
        assert_eq!(
            jstr(&b, "state"),
            "succeeded",
            "build {id} did not succeed: {b}"
        );
        b
    }

    /// Waits until some job of the build is `running`; returns that job.
    pub fn wait_job_running(&self, id: u64) -> Value {
        let b = self.wait_build(id, "a running job", BUILD_TIMEOUT, |b| {
            let st = jstr(b, "state");
            assert!(
                !is_terminal_build_state(&st),
                "build {id} ended ({st}) before a job was seen running: {b}"
            );
            jobs_of(b).iter().any(|j| jstr(j, "state") == "running")
        });
        jobs_of(&b)
            .into_iter()
            .find(|j| jstr(j, "state") == "running")
            .unwrap()
    }

    // ----- workers -----

    /// `kiln token create --worker NAME`: the one-time token.
    pub fn create_worker_token(&self, name: &str) -> String {
        let out = self.cli(&["token", "create", "--worker", name]).assert_ok();
        let t = out.stdout.trim().to_string();
        assert!(
            !t.is_empty() && !t.contains(char::is_whitespace),
            "`kiln token create` must print the token alone, got {:?}",
            out.stdout
        );
        t
    }

    /// Enrolls a worker called `name` into a new temp dir.
    pub fn enroll(&self, name: &str) -> Enrolled {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("kiln-it-worker-{name}-"))
            .tempdir()
            .expect("tempdir");
        let wdir = tmp.path().join("worker");
        let token = self.create_worker_token(name);
        let mut cmd = self.cli_cmd(&["worker", "enroll", "--master", &self.worker_url]);
        cmd.arg("--token").arg(&token).arg("--dir").arg(&wdir);
        run_timeout(cmd, CLI_TIMEOUT, "kiln worker enroll").assert_ok();
        Enrolled {
            name: name.to_string(),
            dir: wdir,
            home: self.home.clone(),
            tmp,
        }
    }

    /// Enrolls and starts a worker, and waits for its `connected` line.
    pub fn start_worker(&self, name: &str, arches: &str, channel: &str, capacity: u32) -> Worker {
        let w = self
            .enroll(name)
            .spawn(WorkerOpts::new(arches, channel, capacity));
        w.wait_connected(1);
        w
    }
}

/// A worker directory made by `kiln worker enroll`.
pub struct Enrolled {
    pub name: String,
    pub dir: PathBuf,
    home: PathBuf,
    tmp: TempDir,
}

/// How to run `kiln worker`.
#[derive(Clone)]
pub struct WorkerOpts {
    pub arches: String,
    pub channel: String,
    pub capacity: u32,
    /// `--master URL` (overrides the enrolled one).
    pub master: Option<String>,
}

impl WorkerOpts {
    pub fn new(arches: &str, channel: &str, capacity: u32) -> WorkerOpts {
        WorkerOpts {
            arches: arches.to_string(),
            channel: channel.to_string(),
            capacity,
            master: None,
        }
    }

    pub fn master(mut self, url: &str) -> WorkerOpts {
        self.master = Some(url.to_string());
        self
    }
}

impl Enrolled {
    /// Starts `kiln worker` (does not wait for it to connect).
    pub fn spawn(self, opts: WorkerOpts) -> Worker {
        require_build_tools();
        let mut w = Worker {
            proc: None,
            name: self.name.clone(),
            dir: self.dir.clone(),
            home: self.home.clone(),
            opts,
            runs: 0,
            tmp: self.tmp,
        };
        w.launch();
        w
    }
}

/// A running `kiln worker`.
pub struct Worker {
    proc: Option<Proc>,
    pub name: String,
    pub dir: PathBuf,
    home: PathBuf,
    pub opts: WorkerOpts,
    runs: usize,
    tmp: TempDir,
}

impl Worker {
    fn launch(&mut self) {
        let work = self.tmp.path().join(format!("work-{}", self.runs + 1));
        self.launch_in(&work, &[], &[]);
    }

    pub fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("the worker is not running")
    }

    fn proc_ref(&self) -> &Proc {
        self.proc.as_ref().expect("the worker is not running")
    }

    /// How many `connected` lines it printed (this run).
    pub fn connected_count(&self) -> usize {
        self.proc_ref().count_lines(|l| l.starts_with("connected"))
    }

    /// Waits until it printed `connected` at least `n` times (this run).
    pub fn wait_connected(&self, n: usize) {
        let p = self.proc_ref();
        if p.wait_line(|l| l.starts_with("connected"), n, CONNECT_TIMEOUT)
            .is_none()
        {
            panic!(
                "worker {} did not print `connected` {n} time(s) within {CONNECT_TIMEOUT:?}\n{}",
                self.name,
                p.diagnostics()
            );
        }
    }

    pub fn signal(&mut self, sig: i32) {
        self.proc().signal(sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the same worker (same dir, name and flags) again.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc().wait_exit(timeout)
    }

    pub fn stderr_text(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::stderr_text)
            .unwrap_or_default()
    }

    pub fn diagnostics(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::diagnostics)
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Artifacts
// ---------------------------------------------------------------------------

/// The directory a job's artifacts are filed in.
pub fn incoming_dir(m: &Master, build: u64, arch: &str) -> PathBuf {
    m.data.join("incoming").join(build.to_string()).join(arch)
}

/// Checks every artifact of a finished single-job build against the files in
/// `DATA/incoming/<build>/<job arch>/`: present, same size, same sha256.
/// Returns the artifacts.
pub fn check_artifacts_on_disk(m: &Master, b: &Value) -> Vec<Value> {
    let id = build_id(b);
    let job = only_job(b);
    let dir = incoming_dir(m, id, &jstr(&job, "arch"));
    let arts = jarr(b, "artifacts").clone();
    assert!(!arts.is_empty(), "build {id} has no artifacts: {b}");
    let mut names = BTreeSet::new();
    for a in &arts {
        let name = jstr(a, "name");
        assert!(
            names.insert(name.clone()),
            "artifact {name} listed twice in {b}"
        );
        assert!(
            !name.contains('/') && name != ".." && name != ".",
            "artifact name {name:?} is not a plain file name"
        );
        let path = dir.join(&name);
        let md = fs::metadata(&path).unwrap_or_else(|e| {
            panic!(
                "artifact {name} of build {id} is not at {}: {e} (dir has {:?})",
                path.display(),
                fs::read_dir(&dir)
                    .map(|rd| rd.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                    .unwrap_or_default()
            )
        });
        assert_eq!(md.len(), ju64(a, "size"), "size of {}", path.display());
        assert_eq!(
            sha256_file(&path),
            jstr(a, "sha256").to_lowercase(),
            "sha256 of {}",
            path.display()
        );
    }
    arts
}

/// The artifacts of a build with the given kind.
pub fn artifacts_of_kind(b: &Value, kind: &str) -> Vec<Value> {
    jarr(b, "artifacts")
        .iter()
        .filter(|a| a.get("kind").and_then(Value::as_str) == Some(kind))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// Polls `cond` every `POLL` until it returns `Some` or the deadline passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}

/// Writes `data` to `path`.
pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
}

/// Pids of the processes whose argument vector is exactly `argv`.
pub fn pids_with_argv(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0u8)))
        .collect();
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            if cmdline == want {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A master with two workers, as the routing tests use it:
/// `a` builds x86_64 and noarch on channel `default` with 2 slots,
/// `b` builds noarch on channel `heavy` with 1 slot.
/// Fields drop in order: the workers go first, then the master.
pub struct Farm {
    pub a: Worker,
    pub b: Worker,
    pub m: Master,
}

impl Farm {
    pub fn start() -> Farm {
        Farm::start_with(MasterOpts::default())
    }

    pub fn start_with(opts: MasterOpts) -> Farm {
        require_build_tools();
        let m = Master::start_with(opts);
        let a = m.start_worker("a", "x86_64,noarch", "default", 2);
        let b = m.start_worker("b", "noarch", "heavy", 1);
        Farm { a, b, m }
    }
}

// ---------------------------------------------------------------------------
// Source RPMs with scripts of the test's own (sandbox tests)
// ---------------------------------------------------------------------------

/// What goes into a spec made by [`srpm_with`], beyond a noarch package
/// that installs one small file.
#[derive(Default, Clone, Debug)]
pub struct SpecParts {
    /// Lines of the preamble (`%global …`).
    pub preamble: String,
    /// The `%build` script (run under `sh -e`, as rpmbuild runs it).
    pub build: String,
    /// More `%install` lines.
    pub install: String,
    /// More `%files` lines.
    pub files: String,
}

/// A noarch source RPM called `name` made of `parts`, with `rpmbuild -bs`
/// under `dir`; a build that gets through its scripts makes one package.
pub fn srpm_with(dir: &Path, name: &str, parts: &SpecParts) -> PathBuf {
    require_tool("rpmbuild");
    let work = dir.join(format!("pkg-{name}-{}", unique()));
    let top = work.join("rpmbuild");
    fs::create_dir_all(top.join("SOURCES")).unwrap();
    let spec = format!(
        "Name: {name}\nVersion: 1.0\nRelease: 1\nSummary: Kiln sandbox test package {name}\n\
         License: MIT\nBuildArch: noarch\n{pre}\n\n%description\nA package made by the Kiln sandbox tests.\n\n\
         %build\n{build}\n\n%install\nmkdir -p %{{buildroot}}/usr/share/kiln-test\n\
         echo '{name}' > %{{buildroot}}/usr/share/kiln-test/{name}.txt\n{install}\n\n\
         %files\n/usr/share/kiln-test/{name}.txt\n{files}\n",
        pre = parts.preamble,
        build = parts.build,
        install = parts.install,
        files = parts.files,
    );
    let spec_path = work.join(format!("{name}.spec"));
    fs::write(&spec_path, spec).unwrap();
    rpmbuild_bs(&top, &spec_path)
}

/// A noarch source RPM whose `%build` runs `build` (see [`srpm_with`]).
pub fn srpm_with_build(dir: &Path, name: &str, build: &str) -> PathBuf {
    srpm_with(
        dir,
        name,
        &SpecParts {
            build: build.to_string(),
            ..SpecParts::default()
        },
    )
}

/// Whether any process runs with exactly one of these argument vectors.
pub fn any_running(argvs: &[&[&str]]) -> bool {
    argvs.iter().any(|a| !pids_with_argv(a).is_empty())
}

/// A small tmpfs the test mounts (to fill a disk on purpose), lazily
/// unmounted on drop. Mounting needs root: the test fails (never skips)
/// when it does not run as root, as `scripts/test.sh` does.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, bytes: u64) -> Tmpfs {
        require_tool("mount");
        require_tool("umount");
        // SAFETY: geteuid(2) has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test fills a small tmpfs it mounts, which needs root (run the suite as root, \
             as scripts/test.sh does); it never skips"
        );
        fs::create_dir_all(path).unwrap();
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("kiln-test")
            .arg(path);
        run_timeout(cmd, CLI_TIMEOUT, "mount -t tmpfs").assert_ok();
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Gives the filesystem a new size (space comes back).
    pub fn resize(&self, bytes: u64) {
        let mut cmd = Command::new("mount");
        cmd.args(["-o"])
            .arg(format!("remount,size={bytes}"))
            .arg(&self.path);
        run_timeout(cmd, CLI_TIMEOUT, "mount -o remount").assert_ok();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------
// Workers with more flags or another PATH, started again on the same work
// directory (sandbox and stop tests)
// ---------------------------------------------------------------------------

impl Enrolled {
    /// The work directory of the worker's first run (where `spawn` and
    /// `spawn_with` put it): fill it before the start to see what the
    /// worker does with what it finds there.
    pub fn first_work_dir(&self) -> PathBuf {
        self.tmp.path().join("work-1")
    }

    /// Starts `kiln worker` with `extra` flags and `env` set for it (does
    /// not wait for it to connect).
    pub fn spawn_with(self, opts: WorkerOpts, extra: &[&str], env: &[(&str, &str)]) -> Worker {
        require_build_tools();
        let work = self.first_work_dir();
        let mut w = Worker {
            proc: None,
            name: self.name.clone(),
            dir: self.dir.clone(),
            home: self.home.clone(),
            opts,
            runs: 0,
            tmp: self.tmp,
        };
        w.launch_in(&work, extra, env);
        w
    }
}

impl Worker {
    /// The work directory of the current run, when it was started by
    /// `spawn`, `spawn_with` or `restart`.
    pub fn work_dir(&self) -> PathBuf {
        self.tmp.path().join(format!("work-{}", self.runs))
    }

    /// Starts it again (killed first if it still runs) with the work
    /// directory `work`, `extra` flags and `env`.
    pub fn relaunch_in(&mut self, work: &Path, extra: &[&str], env: &[(&str, &str)]) {
        self.kill();
        self.launch_in(work, extra, env);
    }

    fn launch_in(&mut self, work: &Path, extra: &[&str], env: &[(&str, &str)]) {
        self.runs += 1;
        let mut cmd = Command::new(kiln());
        cmd.arg("worker")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--name")
            .arg(&self.name)
            .arg("--arch")
            .arg(&self.opts.arches)
            .arg("--channel")
            .arg(&self.opts.channel)
            .arg("--capacity")
            .arg(self.opts.capacity.to_string())
            .arg("--work")
            .arg(work)
            .args(extra);
        if let Some(m) = &self.opts.master {
            cmd.arg("--master").arg(m);
        }
        cmd.env("HOME", &self.home).env_remove("XDG_CONFIG_HOME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let err = self.tmp.path().join(format!("worker-{}.stderr", self.runs));
        self.proc = Some(Proc::spawn(
            cmd,
            &err,
            &format!("worker {} (run {})", self.name, self.runs),
        ));
    }
}

/// A `PATH` without the programs `omit`: a directory under `dir` holding a
/// link to every other program of the current `PATH` (the first of each
/// name, as a lookup would find it).
pub fn path_without(dir: &Path, omit: &[&str]) -> PathBuf {
    let bin = dir.join(format!("path-without-{}", unique()));
    fs::create_dir_all(&bin).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let link = bin.join(&name);
            if omit.iter().any(|o| name == **o) || fs::symlink_metadata(&link).is_ok() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), &link);
        }
    }
    for o in omit {
        assert!(!bin.join(o).exists(), "{o} is still in {}", bin.display());
    }
    bin
}
