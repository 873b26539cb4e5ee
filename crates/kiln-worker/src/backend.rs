//! Build backends. A backend turns one job (an SRPM and an arch) into
//! packages in a job directory, writing its output to a log sink. `rpmbuild`
//! runs here and in tests; `mock` and image backends plug in the same way.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// One job as a backend sees it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub job: u64,
    pub attempt: u32,
    pub arch: String,
    pub disttag: String,
    pub srpm: PathBuf,
    pub timeout: Duration,
}

/// How a build ended.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    pub message: String,
    /// Packages produced (binary and source rpms).
    pub packages: Vec<PathBuf>,
}

/// Receives a build's output as it happens.
pub trait LogSink: Send + Sync {
    fn write(&self, data: &[u8]);
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Build `spec` in `dir` (empty, owned by this job). Resolve early with a
    /// failed outcome when `cancel` turns true, after stopping all work.
    fn build<'a>(
        &'a self,
        spec: &'a JobSpec,
        dir: &'a Path,
        log: &'a dyn LogSink,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>>;
}

/// When to wrap builds in bubblewrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// When `bwrap` is installed.
    Auto,
    On,
    Off,
}

impl std::str::FromStr for Sandbox {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Sandbox::Auto),
            "on" | "yes" | "true" => Ok(Sandbox::On),
            "off" | "no" | "false" => Ok(Sandbox::Off),
            o => Err(format!("sandbox must be auto, on or off, not {o:?}")),
        }
    }
}

/// Host `rpmbuild --rebuild` in a per-job `_topdir`, optionally inside
/// bubblewrap with no network.
pub struct Rpmbuild {
    pub nodeps: bool,
    pub sandbox: Sandbox,
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|c| c.is_file())
    })
}

impl Rpmbuild {
    fn use_bwrap(&self) -> Result<Option<PathBuf>, String> {
        match self.sandbox {
            Sandbox::Off => Ok(None),
            Sandbox::Auto => Ok(find_in_path("bwrap")),
            Sandbox::On => find_in_path("bwrap")
                .map(Some)
                .ok_or_else(|| "sandbox is on but bwrap is not installed".to_string()),
        }
    }

    /// The argument vector (never a shell string).
    pub fn argv(&self, spec: &JobSpec, dir: &Path, bwrap: Option<&Path>) -> Vec<String> {
        let d = dir.display().to_string();
        let srpm = spec.srpm.display().to_string();
        let mut argv = Vec::new();
        if let Some(b) = bwrap {
            argv.extend(
                [
                    b.display().to_string().as_str(),
                    "--die-with-parent",
                    "--unshare-net",
                    "--unshare-ipc",
                    "--unshare-uts",
                    "--ro-bind",
                    "/",
                    "/",
                    "--dev",
                    "/dev",
                    "--proc",
                    "/proc",
                    "--tmpfs",
                    "/tmp",
                    "--bind",
                    &d,
                    &d,
                    "--ro-bind",
                    &srpm,
                    &srpm,
                    "--",
                ]
                .map(String::from),
            );
        }
        argv.push("rpmbuild".into());
        argv.push("--rebuild".into());
        for def in [
            format!("_topdir {d}/topdir"),
            format!("_tmppath {d}/tmp"),
            if spec.disttag.is_empty() {
                "dist %{nil}".to_string()
            } else {
                format!("dist {}", spec.disttag)
            },
        ] {
            argv.push("--define".into());
            argv.push(def);
        }
        argv.push("--target".into());
        argv.push(spec.arch.clone());
        if self.nodeps {
            argv.push("--nodeps".into());
        }
        argv.push(spec.srpm.display().to_string());
        argv
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect(&p, out);
            } else if p.extension().is_some_and(|x| x == "rpm") {
                out.push(p);
            }
        }
    }
}

impl Backend for Rpmbuild {
    fn name(&self) -> &'static str {
        "rpmbuild"
    }

    fn build<'a>(
        &'a self,
        spec: &'a JobSpec,
        dir: &'a Path,
        log: &'a dyn LogSink,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        Box::pin(async move {
            for sub in ["topdir", "tmp", "home"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(|source| BackendError::Io {
                    what: format!("creating {}", dir.join(sub).display()),
                    source,
                })?;
            }
            let bwrap = match self.use_bwrap() {
                Ok(b) => b,
                Err(e) => {
                    return Ok(Outcome {
                        success: false,
                        message: e,
                        packages: vec![],
                    })
                }
            };
            let argv = self.argv(spec, dir, bwrap.as_deref());
            log.write(format!("kiln: running {}\n", argv.join(" ")).as_bytes());
            let status = run_logged(&argv, dir, log, spec.timeout, cancel).await?;
            let mut packages = Vec::new();
            let (success, message) = match status {
                RunEnd::Exited(0) => {
                    collect(&dir.join("topdir/RPMS"), &mut packages);
                    collect(&dir.join("topdir/SRPMS"), &mut packages);
                    packages.sort();
                    if packages.is_empty() {
                        (false, "rpmbuild produced no package".to_string())
                    } else {
                        (true, String::new())
                    }
                }
                RunEnd::Exited(code) => (false, format!("rpmbuild exited with status {code}")),
                RunEnd::Signaled => (false, "rpmbuild was killed by a signal".to_string()),
                RunEnd::TimedOut => (
                    false,
                    format!("timed out after {} s", spec.timeout.as_secs()),
                ),
                RunEnd::Canceled => (false, "canceled".to_string()),
            };
            log.write(
                format!(
                    "kiln: {}\n",
                    if success { "build succeeded" } else { &message }
                )
                .as_bytes(),
            );
            Ok(Outcome {
                success,
                message,
                packages,
            })
        })
    }
}

/// A backend that does no work: for benchmarks of the scheduling spine.
pub struct Noop;

impl Backend for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn build<'a>(
        &'a self,
        _spec: &'a JobSpec,
        _dir: &'a Path,
        _log: &'a dyn LogSink,
        _cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        Box::pin(async {
            Ok(Outcome {
                success: true,
                message: String::new(),
                packages: vec![],
            })
        })
    }
}

pub enum RunEnd {
    Exited(i32),
    Signaled,
    TimedOut,
    Canceled,
}

/// Run a command in its own process group, stream its output to `log`, and
/// kill the whole group on timeout or cancel.
pub async fn run_logged(
    argv: &[String],
    cwd: &Path,
    log: &dyn LogSink,
    timeout: Duration,
    mut cancel: watch::Receiver<bool>,
) -> Result<RunEnd, BackendError> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok(RunEnd::Exited(127));
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .current_dir(cwd)
        .env("HOME", cwd.join("home"))
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|source| BackendError::Io {
        what: format!("starting {prog}"),
        source,
    })?;
    let pid = child.id();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut buf_o = vec![0u8; 16 * 1024];
    let mut buf_e = vec![0u8; 16 * 1024];
    let end = loop {
        tokio::select! {
            n = async { match out.as_mut() { Some(o) => o.read(&mut buf_o).await, None => std::future::pending().await } } => {
                match n { Ok(0) | Err(_) => out = None, Ok(n) => log.write(&buf_o[..n]) }
            }
            n = async { match err.as_mut() { Some(e) => e.read(&mut buf_e).await, None => std::future::pending().await } } => {
                match n { Ok(0) | Err(_) => err = None, Ok(n) => log.write(&buf_e[..n]) }
            }
            st = child.wait(), if out.is_none() && err.is_none() => {
                let st = st.map_err(|source| BackendError::Io { what: format!("waiting for {prog}"), source })?;
                break match st.code() { Some(c) => RunEnd::Exited(c), None => RunEnd::Signaled };
            }
            _ = &mut deadline => {
                kill_group(pid);
                let _ = child.wait().await;
                break RunEnd::TimedOut;
            }
            r = cancel.changed() => {
                if r.is_err() || *cancel.borrow() {
                    kill_group(pid);
                    let _ = child.wait().await;
                    break RunEnd::Canceled;
                }
            }
        }
    };
    Ok(end)
}

#[cfg(unix)]
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child; it has no memory-safety preconditions.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

#[cfg(not(unix))]
fn kill_group(_pid: Option<u32>) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Buf(Mutex<Vec<u8>>);
    impl LogSink for Buf {
        fn write(&self, d: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(d);
        }
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let argv: Vec<String> = vec!["sh".into(), "-c".into(), script];
        let (tx, rx) = watch::channel(false);
        let log = Buf(Mutex::new(Vec::new()));
        let task = async {
            // Wait for the grandchild to exist, then cancel.
            while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tx.send(true).unwrap();
        };
        let (end, _) = tokio::join!(
            run_logged(&argv, dir.path(), &log, Duration::from_secs(60), rx),
            task
        );
        assert!(matches!(end.unwrap(), RunEnd::Canceled));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is gone (or a zombie left for init); SIGKILL is
        // delivered asynchronously, so give it a moment.
        let alive = || {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(), "grandchild {pid} survived the cancel");
    }

    #[tokio::test]
    async fn timeout_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let argv: Vec<String> = vec!["sleep".into(), "30".into()];
        let (_tx, rx) = watch::channel(false);
        let log = Buf(Mutex::new(Vec::new()));
        let end = run_logged(&argv, dir.path(), &log, Duration::from_millis(200), rx)
            .await
            .unwrap();
        assert!(matches!(end, RunEnd::TimedOut));
    }
}
