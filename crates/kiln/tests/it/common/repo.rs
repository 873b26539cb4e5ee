//! The repository tests' setup: a master configured through its TOML file
//! with one worker (`RepoFarm`), the test's own directory (`Ctl`), a
//! createrepo_c the test controls (`Wrapper`), and waiting for a build to
//! be published.

use super::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Deadline for a succeeded build to be published (the contract says
/// "within seconds"; the margin is for a loaded two-core machine).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Master configuration
// ---------------------------------------------------------------------------

/// A `[[target]]` table on channel `default`; `extra` is more `key = value`
/// lines (TOML) for the table.
pub fn target_toml(name: &str, arches: &[&str], extra: &[String]) -> String {
    let arches: Vec<String> = arches.iter().map(|a| format!("{a:?}")).collect();
    let mut s = format!(
        "[[target]]\nname = {name:?}\narches = [{}]\nchannel = \"default\"\n",
        arches.join(", ")
    );
    for l in extra {
        s += l;
        s += "\n";
    }
    s
}

/// A whole config file: top-level lines first, then the targets.
pub fn config_toml(top: &[String], targets: &[String]) -> String {
    let mut s = String::new();
    for l in top {
        s += l;
        s += "\n";
    }
    for t in targets {
        s += "\n";
        s += t;
    }
    s
}

/// `key = "path"` (a TOML basic string).
pub fn toml_path(key: &str, p: &Path) -> String {
    let s = p.to_str().expect("utf-8 path");
    assert!(
        !s.contains('"') && !s.contains('\\'),
        "path unfit for TOML: {s}"
    );
    format!("{key} = \"{s}\"")
}

/// The test's own scratch directory, outside the master's (it must exist
/// before the master starts: wrapper scripts, keys, staging dirs live here).
pub struct Ctl {
    pub dir: TempDir,
}

impl Ctl {
    pub fn new() -> Ctl {
        Ctl {
            dir: tempfile::Builder::new()
                .prefix("kiln-it-repo-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A master (config given as TOML text) with one worker `w1` that builds
/// x86_64 and noarch on channel `default` with 2 slots. Fields drop in
/// order: the worker, then the master, then the test's own files.
pub struct RepoFarm {
    _worker: Worker,
    pub m: Master,
    _ctl: Ctl,
}

impl RepoFarm {
    pub fn start(config: &str, ctl: Ctl) -> RepoFarm {
        RepoFarm::start_opts(MasterOpts::default().config(config), ctl)
    }

    pub fn start_opts(opts: MasterOpts, ctl: Ctl) -> RepoFarm {
        require_repo_tools();
        let m = Master::start_with(opts);
        let w = m.start_worker("w1", "x86_64,noarch", "default", 2);
        RepoFarm {
            _worker: w,
            m,
            _ctl: ctl,
        }
    }
}

// ---------------------------------------------------------------------------
// Builds and their publication
// ---------------------------------------------------------------------------

/// Waits until `publish` is "published" (a "failed" seen on the way is
/// reported, since a failed publication is retried, and the wait goes on).
pub fn wait_published(m: &Master, id: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    let mut failures: Vec<String> = Vec::new();
    loop {
        let b = m.build(id);
        match publish_state(&b).as_deref() {
            Some("published") => {
                if !failures.is_empty() {
                    eprintln!("note: build {id} was published after failing: {failures:?}");
                }
                return b;
            }
            Some("failed") => {
                let e = publish_error(&b).unwrap_or_default();
                if failures.last() != Some(&e) {
                    failures.push(e);
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            panic!(
                "build {id}: not published within {timeout:?} (publication errors seen: \
                 {failures:?}); last seen: {b}\n{}",
                tail_lines(&m.stderr_text(), 40)
            );
        }
        thread::sleep(POLL);
    }
}

/// Submits `pkg` to `target` (`--wait`), asserts it succeeded, waits for its
/// publication and returns the build.
pub fn build_and_publish(m: &Master, pkg: &Pkg, target: &str) -> Value {
    let srpm = pkg.build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &["--target", target]);
    wait_published(m, build_id(&b), PUBLISH_TIMEOUT)
}

// ---------------------------------------------------------------------------
// A createrepo_c wrapper the tests control
// ---------------------------------------------------------------------------

/// A shell script given to the master as `createrepo = "…"`. Every call is
/// logged (`pid args`) in `calls`; it then execs the real createrepo_c.
/// Once `armed` exists, the first call after that (only that one) touches
/// `started`, writes its pid to `held/pid` and waits until `gate` exists.
/// Calls that only ask for the version or help are logged in `probes` and
/// never held.
pub struct Wrapper {
    pub script: PathBuf,
    pub dir: PathBuf,
}

impl Wrapper {
    pub fn create(ctl: &Ctl) -> Wrapper {
        let real = require_tool("createrepo_c");
        let dir = ctl.path().join("createrepo-ctl");
        fs::create_dir_all(&dir).unwrap();
        let script = ctl.path().join("createrepo-wrapper.sh");
        let d = dir.to_str().unwrap();
        let r = real.to_str().unwrap();
        assert!(!d.contains('\'') && !r.contains('\''));
        let text = format!(
            r#"#!/bin/sh
D='{d}'
case " $* " in
  *" --version "*|*" -V "*|*" --help "*|*" -h "*)
    echo "$$ $*" >> "$D/probes"
    exec '{r}' "$@" ;;
esac
echo "$$ $*" >> "$D/calls"
if [ -e "$D/armed" ] && mkdir "$D/held" 2>/dev/null; then
  echo "$$" > "$D/held/pid"
  touch "$D/started"
  while [ ! -e "$D/gate" ]; do sleep 0.05; done
fi
exec '{r}' "$@"
"#
        );
        fs::write(&script, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        Wrapper { script, dir }
    }

    /// The config line that makes the master use this wrapper.
    pub fn config_line(&self) -> String {
        toml_path("createrepo", &self.script)
    }

    /// The logged calls (pid, arguments), probes excluded.
    pub fn calls(&self) -> Vec<(i32, String)> {
        let text = fs::read_to_string(self.dir.join("calls")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (pid, args) = l.split_once(' ').unwrap_or((l, ""));
                pid.parse().ok().map(|p| (p, args.to_string()))
            })
            .collect()
    }

    /// From now on, the next call is held until `open_gate`. Returns how
    /// many calls had been made before. First waits (a few seconds at
    /// most) until no call is running and none came for half a second, so
    /// that a regeneration the master does on its own at start is not the
    /// one held.
    pub fn arm(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = (self.calls().len(), Instant::now());
        while Instant::now() < deadline {
            let calls = self.calls();
            let busy = calls.iter().any(|(p, _)| is_createrepo(*p));
            if calls.len() != last.0 || busy {
                last = (calls.len(), Instant::now());
            } else if last.1.elapsed() >= Duration::from_millis(500) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let n = self.calls().len();
        fs::write(self.dir.join("armed"), b"").unwrap();
        n
    }

    pub fn open_gate(&self) {
        fs::write(self.dir.join("gate"), b"").unwrap();
    }

    /// Waits until a call is held (the master is inside a publication).
    pub fn wait_started(&self, m: &Master, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.dir.join("started").exists() {
            if Instant::now() >= deadline {
                panic!(
                    "createrepo_c (the wrapper) was not called within {timeout:?} after it was \
                     armed: no publication started; calls so far: {:?}\n{}",
                    self.calls(),
                    tail_lines(&m.stderr_text(), 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether `pid` is a live createrepo_c run or wrapper (its command line
/// names createrepo).
pub fn is_createrepo(pid: i32) -> bool {
    pid_alive(pid)
        && proc_argv(pid).is_some_and(|argv| argv.iter().any(|a| a.contains("createrepo")))
}

/// Waits for the createrepo runs `pids` to be gone (deadline); SIGKILLs the
/// ones left after it and says so.
pub fn wait_pids_gone(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| is_createrepo(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for &p in pids.iter().filter(|&&p| is_createrepo(p)) {
        eprintln!("note: createrepo_c run {p} (orphaned by the killed master) still ran; killed");
        // SAFETY: kill(2) on a process this test started (through the master).
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
}
