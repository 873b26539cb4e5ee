//! A running `kiln master` in its own temporary directory, the CLI pointed
//! at it, and what it files: `Master`; a master with two workers: `Farm`.

use super::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

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

    /// Replaces the configuration file (read at the next `restart`).
    pub fn rewrite_config(&mut self, text: &str) {
        let p = self
            .config_path
            .as_ref()
            .expect("a master started with a configuration file");
        fs::write(p, text).unwrap();
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
            cmd.env("KILN_CA", self.ca_cert());
        }
        cmd
    }

    /// The master's CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.data.join("ca").join("ca.crt")
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

    /// `kiln submit SRPM EXTRA --wait --json`, asserting success: the finished build.
    pub fn submit_wait(&self, srpm: &Path, extra: &[&str]) -> Value {
        let s = srpm.to_str().unwrap();
        let mut args = vec!["submit", s];
        args.extend_from_slice(extra);
        args.push("--wait");
        args.push("--json");
        let b = self.cli_timeout(&args, CLI_WAIT_TIMEOUT).assert_ok().json();
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

    /// `kiln logs JOB` of a build's only job.
    pub fn job_log(&self, b: &Value) -> String {
        let job = ju64(&only_job(b), "id").to_string();
        self.cli(&["logs", &job]).assert_ok().stdout
    }

    fn list(&self, what: &str) -> Vec<Value> {
        match self.cli_json(&[what, "--json"]) {
            Value::Array(a) => a,
            other => panic!("`kiln {what} --json` is not an array: {other}"),
        }
    }

    pub fn builds(&self) -> Vec<Value> {
        self.list("builds")
    }

    pub fn jobs(&self) -> Vec<Value> {
        self.list("jobs")
    }

    pub fn workers(&self) -> Vec<Value> {
        self.list("workers")
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

    /// Enrolls a worker called `name` into a new temp dir.
    pub fn enroll(&self, name: &str) -> Enrolled {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("kiln-it-worker-{name}-"))
            .tempdir()
            .expect("tempdir");
        let wdir = tmp.path().join("worker");
        let out = self.cli(&["token", "create", "--worker", name]).assert_ok();
        let token = out.stdout.trim();
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "`kiln token create` must print the token alone, got {:?}",
            out.stdout
        );
        let mut cmd = self.cli_cmd(&["worker", "enroll", "--master", &self.worker_url]);
        cmd.arg("--token").arg(token).arg("--dir").arg(&wdir);
        run_timeout(cmd, CLI_TIMEOUT, "kiln worker enroll").assert_ok();
        Enrolled::new(name, wdir, self.home.clone(), tmp)
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
                files_under(&dir)
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

/// A master with two workers, as the routing tests use it:
/// `a` builds x86_64 and noarch on channel `default` with 2 slots,
/// `b` builds noarch on channel `heavy` with 1 slot.
/// Fields drop in order: the workers go first, then the master.
pub struct Farm {
    /// `a` and `b`, running as long as the farm.
    _workers: [Worker; 2],
    pub m: Master,
}

impl Farm {
    pub fn start() -> Farm {
        require_build_tools();
        let m = Master::start();
        let a = m.start_worker("a", "x86_64,noarch", "default", 2);
        let b = m.start_worker("b", "noarch", "heavy", 1);
        Farm {
            _workers: [a, b],
            m,
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    drop(l);
    p
}
