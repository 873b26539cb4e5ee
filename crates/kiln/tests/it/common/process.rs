//! Child processes: long-running ones (`Proc`, killed with their whole tree
//! on drop), one-shot commands with a deadline (`run_timeout`), and what
//! `/proc` says about processes the tests did not start themselves (a
//! build's, a master's orphans).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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

/// The last `n` lines of `s`.
pub fn tail_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    let start = v.len().saturating_sub(n);
    v[start..].join("\n")
}

// ---------------------------------------------------------------------------
// One-shot commands (the CLI and the host's tools)
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
    pub fn json(&self) -> serde_json::Value {
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
// Processes as /proc shows them
// ---------------------------------------------------------------------------

/// The pids of every process there is now.
fn all_pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces and parentheses): `[0]` is the state, `[1]` the ppid, `[11]` and
/// `[12]` utime and stime (fields 3, 4, 14 and 15 of proc(5)).
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The argument vector of a process (empty for a zombie).
pub fn proc_argv(pid: i32) -> Option<Vec<String>> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
    if args.is_empty() {
        return Some(Vec::new());
    }
    Some(
        args.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// Every descendant of `root` (from the ppid in /proc/<pid>/stat).
pub fn descendants(root: i32) -> Vec<i32> {
    let parent_of: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|pid| {
            let ppid = proc_stat(pid)?.get(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
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

/// Pids of the processes for which `pred` holds of their argument vector.
pub fn pids_where(pred: impl Fn(&[String]) -> bool) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| proc_argv(pid).is_some_and(|argv| pred(&argv)))
        .collect()
}

/// Pids of the processes whose argument vector is exactly `argv`.
pub fn pids_with_argv(argv: &[&str]) -> Vec<i32> {
    pids_where(|a| a.iter().map(String::as_str).eq(argv.iter().copied()))
}

/// Whether any process runs with exactly one of these argument vectors.
pub fn any_running(argvs: &[&[&str]]) -> bool {
    argvs.iter().any(|a| !pids_with_argv(a).is_empty())
}
