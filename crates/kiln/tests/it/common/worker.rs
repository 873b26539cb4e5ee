//! Workers: a directory made by `kiln worker enroll` (`Enrolled`), and the
//! running `kiln worker` (`Worker`), started again on the same directory,
//! with more flags or another `PATH` when a test asks.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;
use tempfile::TempDir;

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
    /// `dir` was enrolled under `tmp`, which the worker's runs share.
    pub fn new(name: &str, dir: PathBuf, home: PathBuf, tmp: TempDir) -> Enrolled {
        Enrolled {
            name: name.to_string(),
            dir,
            home,
            tmp,
        }
    }

    /// The work directory of the worker's first run (where `spawn` and
    /// `spawn_with` put it): fill it before the start to see what the
    /// worker does with what it finds there.
    pub fn first_work_dir(&self) -> PathBuf {
        self.tmp.path().join("work-1")
    }

    /// Starts `kiln worker` (does not wait for it to connect).
    pub fn spawn(self, opts: WorkerOpts) -> Worker {
        self.spawn_with(opts, &[], &[])
    }

    /// Starts `kiln worker` with `extra` flags and `env` set for it (does
    /// not wait for it to connect).
    pub fn spawn_with(self, opts: WorkerOpts, extra: &[&str], env: &[(&str, &str)]) -> Worker {
        require_build_tools();
        let work = self.first_work_dir();
        let mut w = Worker {
            proc: None,
            name: self.name,
            dir: self.dir,
            home: self.home,
            opts,
            runs: 0,
            tmp: self.tmp,
        };
        w.launch_in(&work, extra, env);
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

    /// Starts the same worker (same dir, name and flags) again, in a new
    /// work directory.
    pub fn restart(&mut self) {
        let work = self.tmp.path().join(format!("work-{}", self.runs + 1));
        self.relaunch_in(&work, &[], &[]);
    }

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
