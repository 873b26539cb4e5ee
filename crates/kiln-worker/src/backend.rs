//! Build backends. A backend turns one job (an SRPM and an arch) into
//! packages in a job directory, writing its output to a log sink. `rpmbuild`
//! runs here and in tests; `mock` and image backends plug in the same way.
//!
//! The job directory is the worker's: it holds the worker's own files (the
//! build log, the listing) and one subdirectory, [`BUILD_SUBDIR`], which is
//! all the build may write. In the bubblewrap sandbox that subdirectory is
//! the only host directory the build sees read-write; the build runs in new
//! user, PID, IPC, UTS, network and cgroup namespaces as an unprivileged
//! user with no capabilities, and everything it starts dies with it.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
}

use kiln_core::error::io_err;

/// One job as a backend sees it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub job: u64,
    pub attempt: u32,
    pub arch: String,
    pub disttag: String,
    pub srpm: PathBuf,
    pub timeout: Duration,
    /// Build inside this root (the target's buildroot), not on the host.
    pub buildroot: Option<(
        crate::buildroot::RootSpec,
        std::sync::Arc<crate::buildroot::Roots>,
    )>,
}

/// How a build ended.
#[derive(Debug)]
pub struct Outcome {
    pub success: bool,
    /// The build was stopped by a cancel (not a failure of its own).
    pub canceled: bool,
    pub message: String,
    /// Packages produced (binary and source rpms): regular files inside the
    /// build's result directories, by their real paths.
    pub packages: Vec<PathBuf>,
}

impl Outcome {
    /// A build that ended without packages, and why.
    pub fn failed(message: String) -> Outcome {
        Outcome {
            success: false,
            canceled: false,
            message,
            packages: vec![],
        }
    }

    /// A build stopped by a cancel.
    pub fn canceled() -> Outcome {
        Outcome {
            success: false,
            canceled: true,
            message: "canceled".into(),
            packages: vec![],
        }
    }
}

/// Receives a build's output as it happens.
pub trait LogSink: Send + Sync {
    fn write(&self, data: &[u8]);
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether this backend's builds run in a sandbox, as far as can be
    /// told before a build (said loudly at worker start when they do not).
    fn sandbox(&self) -> SandboxStatus {
        SandboxStatus::NotApplicable
    }
    /// Build `spec` in `dir` (the job directory, owned by this job; the
    /// build writes only under `dir/`[`BUILD_SUBDIR`]). Resolve early with a
    /// failed outcome when `cancel` turns true, after stopping all work.
    fn build<'a>(
        &'a self,
        spec: &'a JobSpec,
        dir: &'a Path,
        log: &'a dyn LogSink,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>>;
}

/// The subdirectory of a job directory that the build may write (bound at
/// `/build` in the sandbox). The worker's own files stay beside it.
pub const BUILD_SUBDIR: &str = "build";

/// Where the job's build directory appears inside the sandbox.
const SANDBOX_BUILD: &str = "/build";
/// Where the input SRPM appears inside the sandbox (read-only).
const SANDBOX_SRPM: &str = "/input/source.src.rpm";
/// The unprivileged user and group the build runs as in its user namespace.
const SANDBOX_ID: &str = "1000";
/// `PATH` inside the sandbox.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/usr/local/sbin:/usr/sbin";

/// The pieces of the host's `/etc` a build sees, read-only, where they
/// exist. Public files only: the build's user is mapped to the worker's, so
/// whatever is bound here it can read with the worker's rights (never
/// `ssl/`, `pki/`, `shadow`…).
const ETC_PIECES: &[&str] = &[
    "passwd",
    "group",
    "nsswitch.conf",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "os-release",
    "rpm",
    "xml",
    "sgml",
    "fonts",
];

/// After the build command exits, how long its output may take to end. In
/// the sandbox it ends at once (the PID namespace is gone with the
/// command); outside it, a process the build left behind may hold the pipe.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Deepest directory level searched for packages under `RPMS`/`SRPMS`
/// (rpmbuild writes at level 1: `RPMS/<arch>/`).
const COLLECT_DEPTH: usize = 4;

/// When to wrap builds in bubblewrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// When `bwrap` is installed; without it, builds run unsandboxed (an
    /// explicit choice only: the default is `On`).
    Auto,
    /// Always; without `bwrap`, every build is refused.
    On,
    Off,
}

/// What a backend's builds get, as the worker says at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Every build runs in bubblewrap.
    Sandboxed,
    /// Builds run without a sandbox, for this reason.
    Unsandboxed(String),
    /// Builds are refused, for this reason (the sandbox is required but
    /// cannot be had).
    Refused(String),
    /// The backend runs nothing (`noop`, benchmarks).
    NotApplicable,
}

/// How the next build runs.
#[derive(Debug, Clone)]
pub enum SandboxPlan {
    /// In this bubblewrap.
    Bwrap(Bwrap),
    /// Without a sandbox, for this reason.
    Unsandboxed(String),
    /// Not at all, for this reason.
    Refused(String),
}

/// How a build runs under the setting `sandbox`, with `found` (the
/// bubblewrap on `PATH`, if any).
pub fn sandbox_plan(sandbox: Sandbox, found: Option<Bwrap>) -> SandboxPlan {
    match (sandbox, found) {
        (Sandbox::Off, _) => SandboxPlan::Unsandboxed("the sandbox is off (sandbox = off)".into()),
        (Sandbox::Auto, None) => SandboxPlan::Unsandboxed(
            "sandbox = auto and bwrap is not installed (not on PATH)".into(),
        ),
        (Sandbox::Auto | Sandbox::On, Some(b)) => SandboxPlan::Bwrap(b),
        (Sandbox::On, None) => SandboxPlan::Refused(
            "sandbox is on but bwrap is not installed (install bubblewrap, or run builds \
             without a sandbox with `--sandbox off`)"
                .into(),
        ),
    }
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

/// One command to run for a build, by argument vector (never a shell
/// string).
#[derive(Debug, Clone)]
pub struct Invocation {
    pub argv: Vec<OsString>,
    pub cwd: PathBuf,
    /// Variables set for the command.
    pub env: Vec<(OsString, OsString)>,
    /// Pass nothing else of the worker's environment.
    pub clear_env: bool,
    /// The command is bubblewrap holding the build in its own PID
    /// namespace: when the command ends, everything it started is gone.
    pub pid_namespace: bool,
    /// Mount this overlay in the command's own mount namespace before it
    /// starts (gone with the command).
    pub overlay: Option<OverlayMount>,
}

/// An overlay mount: `lower` read-only under the writable `upper`, seen at
/// `target`. Paths without `,`, `:` or `\\`.
#[derive(Debug, Clone)]
pub struct OverlayMount {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
}

impl OverlayMount {
    /// Have `cmd` mount the overlay in a private mount namespace of its
    /// own between fork and exec (and die with the worker).
    fn apply(&self, cmd: &mut tokio::process::Command) -> std::io::Result<()> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::other("a path with a NUL byte"))
        };
        let opts = CString::new(format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        ))
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
        let target = c(&self.target)?;
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes system calls (prctl, unshare, mount) on strings made
        // before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        c"overlay".as_ptr(),
                        target.as_ptr(),
                        c"overlay".as_ptr(),
                        0,
                        opts.as_ptr().cast(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Invocation {
    /// The command line, for the log.
    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Host `rpmbuild --rebuild` in a per-job `_topdir`, inside bubblewrap
/// unless the sandbox is off.
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

/// The bubblewrap builds run in, and what this version of it can do.
#[derive(Debug, Clone)]
pub struct Bwrap {
    pub path: PathBuf,
    /// `--disable-userns` (bubblewrap 0.8 and later): no user namespace
    /// can be made inside the sandbox.
    pub disable_userns: bool,
}

impl Bwrap {
    /// `bwrap` from `PATH`, if installed (looked up once).
    pub fn find() -> Option<Bwrap> {
        static FOUND: std::sync::OnceLock<Option<Bwrap>> = std::sync::OnceLock::new();
        FOUND
            .get_or_init(|| {
                let path = find_in_path("bwrap")?;
                let help = std::process::Command::new(&path)
                    .arg("--help")
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                Some(Bwrap {
                    disable_userns: help.contains("--disable-userns"),
                    path,
                })
            })
            .clone()
    }
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_owned()
}

/// `NAME VALUE` for `rpmbuild --define`, where the value is a path.
fn define_path(name: &str, path: &Path) -> OsString {
    let mut d = OsString::from(name);
    d.push(" ");
    d.push(path);
    d
}

/// bubblewrap's arguments up to the command: `build_dir` read-write at
/// `/build`, `srpm` (if any) read-only at [`SANDBOX_SRPM`], a read-only `/usr` and
/// the public pieces of `/etc`, and nothing else of the host. With
/// `rpmdb`, the host's rpm database is bound read-only too (for
/// BuildRequires checks on a host whose rpm keeps it in `/var/lib/rpm`).
/// The environment is only what is set here: bubblewrap itself is started
/// with an empty one ([`Invocation::clear_env`]).
/// What a sandbox's filesystem is made of.
#[derive(Debug, Clone, Copy)]
pub enum SandboxFs<'a> {
    /// The host's `/usr` and public pieces of `/etc`, read-only (with the
    /// host's rpm database when `rpmdb`).
    Host { rpmdb: bool },
    /// A job's own root (its buildroot overlay), read-only once the
    /// sandbox's mount points are made in it (they land in the job's upper
    /// layer, never in the base).
    Root(&'a Path),
}

pub fn sandbox_argv(
    bwrap: &Bwrap,
    build_dir: &Path,
    srpm: Option<&Path>,
    fs: SandboxFs<'_>,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![bwrap.path.clone().into()];
    let mut push = |args: &[&dyn AsRef<OsStr>]| a.extend(args.iter().map(os));
    // New user, PID, IPC, UTS, network and cgroup namespaces (no nested
    // user namespace where bubblewrap can forbid it), no capabilities, an
    // unprivileged id.
    push(&[&"--unshare-all", &"--unshare-user"]);
    if bwrap.disable_userns {
        push(&[&"--disable-userns"]);
    }
    push(&[
        &"--uid",
        &SANDBOX_ID,
        &"--gid",
        &SANDBOX_ID,
        &"--cap-drop",
        &"ALL",
        // Killed with the worker; no controlling terminal to push input to.
        &"--die-with-parent",
        &"--new-session",
        &"--setenv",
        &"PATH",
        &SANDBOX_PATH,
        &"--setenv",
        &"HOME",
        &"/build/home",
        &"--setenv",
        &"LC_ALL",
        &"C",
        &"--setenv",
        &"TMPDIR",
        &"/tmp",
    ]);
    let rpmdb = match fs {
        SandboxFs::Root(root) => {
            // A fixed host name: rpm records it as the BuildHost.
            push(&[&"--bind", &root, &"/", &"--hostname", &"kiln-build"]);
            None
        }
        SandboxFs::Host { rpmdb } => {
            push(&[&"--ro-bind", &"/usr", &"/usr"]);
            Some(rpmdb)
        }
    };
    // `/bin`, `/lib`… as the host has them: links into /usr (merged /usr,
    // as on Debian 12), or directories bound read-only.
    for top in ["/bin", "/sbin", "/lib", "/lib64"]
        .into_iter()
        .filter(|_| rpmdb.is_some())
    {
        match std::fs::symlink_metadata(top) {
            Ok(m) if m.is_symlink() => {
                if let Ok(target) = std::fs::read_link(top) {
                    push(&[&"--symlink", &target, &top]);
                }
            }
            Ok(m) if m.is_dir() => push(&[&"--ro-bind", &top, &top]),
            _ => {}
        }
    }
    if rpmdb.is_some() {
        for piece in ETC_PIECES {
            let p = Path::new("/etc").join(piece);
            push(&[&"--ro-bind-try", &p, &p]);
        }
        push(&[&"--symlink", &"../proc/self/mounts", &"/etc/mtab"]);
    }
    if rpmdb == Some(true) {
        push(&[&"--ro-bind-try", &"/var/lib/rpm", &"/var/lib/rpm"]);
    }
    push(&[
        &"--proc",
        &"/proc",
        &"--dev",
        &"/dev",
        &"--tmpfs",
        &"/tmp",
        &"--bind",
        &build_dir,
        &SANDBOX_BUILD,
    ]);
    if let Some(srpm) = srpm {
        push(&[&"--ro-bind", &srpm, &SANDBOX_SRPM]);
    }
    if rpmdb.is_none() {
        push(&[&"--tmpfs", &"/var/tmp"]);
    }
    // The sandbox's root (a tmpfs holding the mount points, or the job's
    // buildroot) is read-only from here on.
    push(&[&"--remount-ro", &"/", &"--chdir", &SANDBOX_BUILD, &"--"]);
    a
}

/// `argv` in the bubblewrap sandbox ([`sandbox_argv`]): `build` at
/// `/build`, `srpm` (if any) at [`SANDBOX_SRPM`], the host's `/usr`, or
/// `root` (a job's overlay, mounted for the command) as `/`.
pub fn sandboxed(
    bwrap: &Bwrap,
    build: &Path,
    srpm: Option<&Path>,
    root: Option<&OverlayMount>,
    argv: Vec<OsString>,
) -> Invocation {
    let fs = match root {
        Some(o) => SandboxFs::Root(&o.target),
        None => SandboxFs::Host { rpmdb: false },
    };
    let mut full = sandbox_argv(bwrap, build, srpm, fs);
    full.extend(argv);
    Invocation {
        argv: full,
        cwd: build.to_path_buf(),
        env: Vec::new(),
        clear_env: true,
        pid_namespace: true,
        overlay: root.cloned(),
    }
}

/// Make `path` (and missing parents) as a directory only its owner may
/// enter.
pub fn make_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

impl Rpmbuild {
    /// How the next build runs (`bwrap` looked up on `PATH` once).
    fn plan(&self) -> SandboxPlan {
        sandbox_plan(self.sandbox, Bwrap::find())
    }

    /// The command for one job in the job directory `dir`: `rpmbuild
    /// --rebuild` with its `_topdir` in `dir/build`, in bubblewrap when
    /// `bwrap` is given.
    pub fn invocation(&self, spec: &JobSpec, dir: &Path, bwrap: Option<&Bwrap>) -> Invocation {
        let build = dir.join(BUILD_SUBDIR);
        match bwrap {
            Some(b) => {
                let mut argv = sandbox_argv(
                    b,
                    &build,
                    Some(&spec.srpm),
                    SandboxFs::Host {
                        rpmdb: !self.nodeps,
                    },
                );
                argv.extend(rpmbuild_argv(
                    spec,
                    Path::new(SANDBOX_BUILD),
                    Path::new(SANDBOX_SRPM),
                    self.nodeps,
                ));
                Invocation {
                    argv,
                    cwd: build,
                    env: Vec::new(),
                    clear_env: true,
                    pid_namespace: true,
                    overlay: None,
                }
            }
            None => Invocation {
                argv: rpmbuild_argv(spec, &build, &spec.srpm, self.nodeps),
                env: vec![
                    (os("HOME"), build.join("home").into_os_string()),
                    (os("LC_ALL"), os("C")),
                ],
                cwd: build,
                clear_env: false,
                pid_namespace: false,
                overlay: None,
            },
        }
    }

    /// The build inside the job's buildroot: the base root (made once),
    /// the job's overlay over it, the BuildRequires installed by dnf, then
    /// `rpmbuild` in bubblewrap with the root as `/`.
    async fn build_in_root(
        &self,
        spec: &JobSpec,
        (rs, roots): &(
            crate::buildroot::RootSpec,
            std::sync::Arc<crate::buildroot::Roots>,
        ),
        dir: &Path,
        log: &dyn LogSink,
        cancel: watch::Receiver<bool>,
    ) -> Result<Outcome, BackendError> {
        use crate::buildroot::{self as br, Installed, RootError};
        let fail = |message: String| Ok(Outcome::failed(message));
        // How a root that could not be had ends the build.
        let ended = |e: RootError| match e {
            RootError::Canceled => Ok(Outcome::canceled()),
            RootError::Init(m) => Ok(Outcome::failed(m)),
            RootError::Io(e) => Err(e.into()),
            RootError::Backend(e) => Err(e),
        };
        let Some(bwrap) = Bwrap::find() else {
            return fail("a buildroot needs bubblewrap (bwrap) on the worker".into());
        };
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return fail(
                "a buildroot needs the worker to run as root (dnf --installroot and overlayfs)"
                    .into(),
            );
        }
        let tee = br::Tee::new(log, &dir.join(br::ROOT_LOG))?;
        let held = match roots.base(rs, &tee, cancel.clone()).await {
            Ok(h) => h,
            Err(e) => return ended(e),
        };
        tee.write(br::describe_base(&held).as_bytes());
        let jr = br::JobRoot::new(dir, &held)?;
        let requires = match kiln_core::srpm::inspect_srpm(&spec.srpm) {
            Ok(i) => i.build_requires,
            Err(e) => return fail(format!("reading the SRPM's BuildRequires: {e}")),
        };
        match br::install_requires(roots, rs, spec, &jr, &requires, &tee, cancel.clone()).await {
            Ok(Installed::Ok) => {}
            Ok(Installed::Canceled) => return ended(RootError::Canceled),
            Ok(Installed::Unresolvable(m)) | Ok(Installed::Failed(m)) => {
                tee.write(format!("kiln: {m}\n").as_bytes());
                return fail(m);
            }
            Err(e) => return ended(e),
        }
        drop(tee);
        let build = dir.join(BUILD_SUBDIR);
        let mut argv = sandbox_argv(&bwrap, &build, Some(&spec.srpm), SandboxFs::Root(jr.path()));
        argv.extend(rpmbuild_argv(
            spec,
            Path::new(SANDBOX_BUILD),
            Path::new(SANDBOX_SRPM),
            false,
        ));
        let inv = Invocation {
            argv,
            cwd: build.clone(),
            env: Vec::new(),
            clear_env: true,
            pid_namespace: true,
            overlay: Some(jr.overlay.clone()),
        };
        log.write(format!("kiln: running (in the buildroot) {}\n", inv.display()).as_bytes());
        let status = run_logged(&inv, log, spec.timeout, cancel).await?;
        drop(held);
        Ok(outcome_of(status, &build, spec, log))
    }
}

/// How a build command's end reads as an outcome, with the packages it
/// left when it succeeded.
fn outcome_of(status: RunEnd, build: &Path, spec: &JobSpec, log: &dyn LogSink) -> Outcome {
    let mut packages = Vec::new();
    let (success, message) = match status {
        RunEnd::Exited(0) => {
            let (found, refused) = collect_packages(&build.join("topdir"));
            for r in refused.iter().take(20) {
                log.write(format!("kiln: not taking {r}\n").as_bytes());
            }
            packages = found;
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
    // The last line of the log (`kiln: build succeeded`, `kiln: build
    // failed: …`) is the worker's, once it has checked what the build made.
    Outcome {
        success,
        canceled: matches!(status, RunEnd::Canceled),
        message,
        packages,
    }
}

/// `rpmbuild --rebuild` with its directories under `build` (a path as the
/// build sees it).
fn rpmbuild_argv(spec: &JobSpec, build: &Path, srpm: &Path, nodeps: bool) -> Vec<OsString> {
    let mut argv = vec![os("rpmbuild"), os("--rebuild")];
    for def in [
        define_path("_topdir", &build.join("topdir")),
        define_path("_tmppath", &build.join("tmp")),
        if spec.disttag.is_empty() {
            os("dist %{nil}")
        } else {
            os(format!("dist {}", spec.disttag))
        },
    ] {
        argv.push(os("--define"));
        argv.push(def);
    }
    argv.push(os("--target"));
    argv.push(os(&spec.arch));
    if nodeps {
        argv.push(os("--nodeps"));
    }
    argv.push(srpm.into());
    argv
}

/// The packages rpmbuild left in `topdir/RPMS` and `topdir/SRPMS`: regular
/// files named `*.rpm` whose real path is inside those directories, by that
/// path. A symbolic link the build planted (to a file or a directory, or in
/// place of `topdir`, `RPMS` or `SRPMS`) is never followed. Returns the
/// packages and what was passed over, with why.
pub fn collect_packages(topdir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    let Some(top) = real_dir(topdir) else {
        refused.push(format!("{}: not a directory", topdir.display()));
        return (out, refused);
    };
    for sub in ["RPMS", "SRPMS"] {
        let d = topdir.join(sub);
        match std::fs::symlink_metadata(&d) {
            Err(_) => continue,
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                refused.push(format!("{sub}: not a directory"));
                continue;
            }
        }
        // `topdir` and `sub` are real directories: the real path of `sub`
        // is `top/sub`, unless something moved under our feet.
        let root = top.join(sub);
        if d.canonicalize().ok().as_deref() != Some(root.as_path()) {
            refused.push(format!("{sub}: not inside the build directory"));
            continue;
        }
        collect(&root, &root, 0, &mut out, &mut refused);
    }
    out.sort();
    (out, refused)
}

/// The real path of `dir` if it is a directory and not a symbolic link.
fn real_dir(dir: &Path) -> Option<PathBuf> {
    let m = std::fs::symlink_metadata(dir).ok()?;
    if !m.is_dir() {
        return None;
    }
    dir.canonicalize().ok()
}

fn collect(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    refused: &mut Vec<String>,
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    for e in rd.flatten() {
        let p = e.path();
        // The entry's own type: a symbolic link is not followed.
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if depth + 1 < COLLECT_DEPTH {
                collect(root, &p, depth + 1, out, refused);
            } else {
                refused.push(format!("{}: too deep", rel(&p)));
            }
        } else if ft.is_symlink() {
            refused.push(format!("{}: a symbolic link", rel(&p)));
        } else if p.extension().is_some_and(|x| x == "rpm") {
            if !ft.is_file() {
                refused.push(format!("{}: not a regular file", rel(&p)));
                continue;
            }
            match p.canonicalize() {
                Ok(c) if c == p && c.starts_with(root) => out.push(c),
                _ => refused.push(format!("{}: not inside the result directory", rel(&p))),
            }
        }
    }
}

/// The line every unsandboxed build's log gets, before anything runs.
pub fn unsandboxed_line(why: &str) -> String {
    format!(
        "kiln: WARNING: this build is NOT sandboxed ({why}): it runs as the worker's own user, \
         can read the worker's files and key, reach the network, and leave processes behind\n"
    )
}

impl Backend for Rpmbuild {
    fn name(&self) -> &'static str {
        "rpmbuild"
    }

    fn sandbox(&self) -> SandboxStatus {
        match self.plan() {
            SandboxPlan::Bwrap(_) => SandboxStatus::Sandboxed,
            SandboxPlan::Unsandboxed(why) => SandboxStatus::Unsandboxed(why),
            SandboxPlan::Refused(why) => SandboxStatus::Refused(why),
        }
    }

    fn build<'a>(
        &'a self,
        spec: &'a JobSpec,
        dir: &'a Path,
        log: &'a dyn LogSink,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'a, Result<Outcome, BackendError>> {
        Box::pin(async move {
            let build = dir.join(BUILD_SUBDIR);
            for d in [build.join("topdir"), build.join("tmp"), build.join("home")] {
                make_private_dir(&d).map_err(io_err(format!("creating {}", d.display())))?;
            }
            if let Some(root) = &spec.buildroot {
                return self.build_in_root(spec, root, dir, log, cancel).await;
            }
            let bwrap = match self.plan() {
                SandboxPlan::Bwrap(b) => Some(b),
                SandboxPlan::Unsandboxed(why) => {
                    log.write(unsandboxed_line(&why).as_bytes());
                    None
                }
                SandboxPlan::Refused(e) => return Ok(Outcome::failed(e)),
            };
            let inv = self.invocation(spec, dir, bwrap.as_ref());
            log.write(format!("kiln: running {}\n", inv.display()).as_bytes());
            let status = run_logged(&inv, log, spec.timeout, cancel).await?;
            Ok(outcome_of(status, &build, spec, log))
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
                canceled: false,
                message: String::new(),
                packages: vec![],
            })
        })
    }
}

#[derive(Debug)]
pub enum RunEnd {
    Exited(i32),
    Signaled,
    TimedOut,
    Canceled,
}

/// Run a command in its own process group with one pipe for its stdout and
/// stderr (lines stay whole and in order, as with `2>&1`), stream that to
/// `log`, and kill the whole group on timeout or cancel. In a PID namespace
/// (bubblewrap) everything the command started dies with it; outside one,
/// what is left in its process group is killed when it exits.
pub async fn run_logged(
    inv: &Invocation,
    log: &dyn LogSink,
    timeout: Duration,
    mut cancel: watch::Receiver<bool>,
) -> Result<RunEnd, BackendError> {
    let Some((prog, args)) = inv.argv.split_first() else {
        return Ok(RunEnd::Exited(127));
    };
    let prog_name = prog.to_string_lossy().into_owned();
    let (reader, writer) = std::io::pipe().map_err(io_err("making the output pipe"))?;
    let writer2 = writer
        .try_clone()
        .map_err(io_err("duplicating the output pipe"))?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args).current_dir(&inv.cwd);
    if inv.clear_env {
        cmd.env_clear();
    }
    cmd.envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .kill_on_drop(true)
        .process_group(0);
    if let Some(o) = &inv.overlay {
        o.apply(&mut cmd)
            .map_err(io_err(format!("preparing the overlay for {prog_name}")))?;
    }
    let spawned = cmd.spawn();
    // The command holds our copies of the write end: without them gone the
    // pipe would never reach its end.
    drop(cmd);
    let mut child = spawned.map_err(io_err(format!("starting {prog_name}")))?;
    let pid = child.id();
    let mut out = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
        .map_err(io_err("reading the output pipe"))?;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let drain = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(drain);
    let mut buf = vec![0u8; 16 * 1024];
    let mut open = true;
    let mut exited: Option<RunEnd> = None;
    let end = loop {
        if !open {
            if let Some(end) = exited.take() {
                break end;
            }
        }
        tokio::select! {
            n = out.read(&mut buf), if open => match n {
                Ok(0) | Err(_) => open = false,
                Ok(n) => log.write(&buf[..n]),
            },
            st = child.wait(), if exited.is_none() => {
                let st = st.map_err(io_err(format!("waiting for {prog_name}")))?;
                if !inv.pid_namespace {
                    // What the build left in its group goes with it.
                    kill_group(pid);
                }
                exited = Some(match st.code() {
                    Some(c) => RunEnd::Exited(c),
                    None => RunEnd::Signaled,
                });
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            _ = &mut drain, if exited.is_some() && open => {
                // A process that escaped the group holds the pipe: the
                // build is over all the same.
                open = false;
            }
            _ = &mut deadline, if exited.is_none() => {
                kill_group(pid);
                let _ = child.wait().await;
                break RunEnd::TimedOut;
            }
            r = cancel.changed(), if exited.is_none() => {
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

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child; it has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    struct Buf(Mutex<Vec<u8>>);
    impl LogSink for Buf {
        fn write(&self, d: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(d);
        }
    }
    impl Buf {
        fn new() -> Buf {
            Buf(Mutex::new(Vec::new()))
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn host(argv: &[&str], dir: &Path) -> Invocation {
        Invocation {
            argv: argv.iter().map(OsString::from).collect(),
            cwd: dir.to_path_buf(),
            env: vec![],
            clear_env: false,
            pid_namespace: false,
            overlay: None,
        }
    }

    fn bwrap() -> Bwrap {
        Bwrap::find().expect("these tests need bubblewrap (apt-get install bubblewrap)")
    }

    /// `argv` in the build sandbox, with `dir/build` as its build directory.
    fn sandboxed(argv: &[&str], dir: &Path) -> Invocation {
        let build = dir.join(BUILD_SUBDIR);
        make_private_dir(&build).unwrap();
        let srpm = dir.join("input.src.rpm");
        std::fs::write(&srpm, b"not really").unwrap();
        let mut a = sandbox_argv(
            &bwrap(),
            &build,
            Some(&srpm),
            SandboxFs::Host { rpmdb: false },
        );
        a.extend(argv.iter().map(OsString::from));
        Invocation {
            argv: a,
            cwd: build,
            env: vec![],
            clear_env: true,
            pid_namespace: true,
            overlay: None,
        }
    }

    /// Pids of the processes whose command line is exactly `argv`.
    fn pids_with_argv(argv: &[&str]) -> Vec<i32> {
        let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0u8])).collect();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
            .collect()
    }

    async fn wait_gone(argv: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pids_with_argv(argv).is_empty() {
            assert!(Instant::now() < deadline, "{argv:?} is still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_running(argv: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids_with_argv(argv).is_empty() {
            assert!(Instant::now() < deadline, "{argv:?} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stdout_and_stderr_share_one_pipe_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
        let (_tx, rx) = watch::channel(false);
        let log = Buf::new();
        let end = run_logged(
            &host(&["sh", "-c", script], dir.path()),
            &log,
            Duration::from_secs(30),
            rx,
        )
        .await
        .unwrap();
        assert!(matches!(end, RunEnd::Exited(0)), "{end:?}");
        let want: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
        assert_eq!(log.text(), want);
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = ["sleep", "3007101"];
        let script = "sleep 3007101 & echo started; wait";
        let (tx, rx) = watch::channel(false);
        let log = Buf::new();
        let task = async {
            wait_running(&marker).await;
            tx.send(true).unwrap();
        };
        let inv = host(&["sh", "-c", script], dir.path());
        let (end, _) = tokio::join!(run_logged(&inv, &log, Duration::from_secs(60), rx), task);
        assert!(matches!(end.unwrap(), RunEnd::Canceled));
        wait_gone(&marker).await;
    }

    #[tokio::test]
    async fn timeout_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = watch::channel(false);
        let log = Buf::new();
        let end = run_logged(
            &host(&["sleep", "30"], dir.path()),
            &log,
            Duration::from_millis(200),
            rx,
        )
        .await
        .unwrap();
        assert!(matches!(end, RunEnd::TimedOut));
    }

    #[tokio::test]
    async fn without_sandbox_a_child_holding_the_output_does_not_hold_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let marker = ["sleep", "3007102"];
        let (_tx, rx) = watch::channel(false);
        let log = Buf::new();
        let t0 = Instant::now();
        let end = run_logged(
            &host(&["sh", "-c", "sleep 3007102 & echo done"], dir.path()),
            &log,
            Duration::from_secs(60),
            rx,
        )
        .await
        .unwrap();
        assert!(matches!(end, RunEnd::Exited(0)), "{end:?}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(log.text(), "done\n");
        // Left in the build's process group: killed with it.
        wait_gone(&marker).await;
    }

    #[tokio::test]
    async fn in_the_sandbox_nothing_outlives_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let (escaped, held) = (["sleep", "3007103"], ["sleep", "3007104"]);
        let script = "setsid sleep 3007103 & sleep 3007104 & echo done";
        let (_tx, rx) = watch::channel(false);
        let log = Buf::new();
        let t0 = Instant::now();
        let end = run_logged(
            &sandboxed(&["sh", "-c", script], dir.path()),
            &log,
            Duration::from_secs(60),
            rx,
        )
        .await
        .unwrap();
        assert!(matches!(end, RunEnd::Exited(0)), "{end:?}: {}", log.text());
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert_eq!(log.text(), "done\n");
        // Both were gone once the PID namespace ended with the command.
        assert!(pids_with_argv(&escaped).is_empty());
        assert!(pids_with_argv(&held).is_empty());
    }

    #[tokio::test]
    async fn a_canceled_sandbox_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (escaped, main) = (["sleep", "3007105"], ["sleep", "3007106"]);
        let script = "setsid sleep 3007105 & sleep 3007106";
        let (tx, rx) = watch::channel(false);
        let log = Buf::new();
        let task = async {
            wait_running(&escaped).await;
            wait_running(&main).await;
            tx.send(true).unwrap();
        };
        let inv = sandboxed(&["sh", "-c", script], dir.path());
        let (end, _) = tokio::join!(run_logged(&inv, &log, Duration::from_secs(60), rx), task);
        assert!(matches!(end.unwrap(), RunEnd::Canceled));
        wait_gone(&escaped).await;
        wait_gone(&main).await;
    }

    /// A command with an overlay sees the lower layer through it, writes
    /// only to the upper one, and the mount is gone with the command (it
    /// lived in the command's own mount namespace).
    #[tokio::test]
    async fn an_overlay_lives_and_dies_with_its_command() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let (lower, upper, work, merged) = (
            d.join("lower"),
            d.join("upper"),
            d.join("work"),
            d.join("merged"),
        );
        for p in [&lower, &upper, &work, &merged] {
            make_private_dir(p).unwrap();
        }
        std::fs::write(lower.join("base"), b"from the base\n").unwrap();
        let m = merged.display().to_string();
        let script = format!("cat {m}/base; echo job > {m}/new; echo changed > {m}/base");
        let mut inv = host(&["sh", "-c", &script], d);
        inv.overlay = Some(OverlayMount {
            lower: lower.clone(),
            upper: upper.clone(),
            work,
            target: merged.clone(),
        });
        let log = Buf::new();
        let (_tx, rx) = watch::channel(false);
        let end = run_logged(&inv, &log, Duration::from_secs(30), rx)
            .await
            .unwrap();
        assert!(matches!(end, RunEnd::Exited(0)), "{end:?}: {}", log.text());
        assert_eq!(log.text(), "from the base\n");
        // The base is untouched; the job's writes are in its upper layer.
        assert_eq!(
            std::fs::read(lower.join("base")).unwrap(),
            b"from the base\n"
        );
        assert!(!lower.join("new").exists());
        assert_eq!(std::fs::read(upper.join("new")).unwrap(), b"job\n");
        assert_eq!(std::fs::read(upper.join("base")).unwrap(), b"changed\n");
        // Nothing is mounted here any more.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&m), "{mounts}");
        assert!(std::fs::read_dir(&merged).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn the_sandbox_sees_only_its_build_directory() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t-of-the-worker").unwrap();
        let script = format!(
            "id -u; ls /proc | grep -c '^[0-9]'; ls /; \
             cat {s} /proc/1/root{s} 2>/dev/null; \
             touch /build/mine && echo wrote-build; \
             touch /usr/x /x 2>/dev/null || echo ro-elsewhere; \
             cat /input/source.src.rpm; echo; env",
            s = secret.display()
        );
        let (_tx, rx) = watch::channel(false);
        let log = Buf::new();
        let end = run_logged(
            &sandboxed(&["sh", "-c", &script], dir.path()),
            &log,
            Duration::from_secs(60),
            rx,
        )
        .await
        .unwrap();
        let text = log.text();
        assert!(matches!(end, RunEnd::Exited(0)), "{end:?}: {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], SANDBOX_ID, "{text}");
        let procs: usize = lines[1].parse().unwrap();
        assert!(procs <= 4, "the build sees {procs} processes: {text}");
        for l in ["build", "usr", "proc", "tmp", "etc"] {
            assert!(lines.contains(&l), "/ lacks {l}: {text}");
        }
        for l in ["home", "root", "var", "srv", "mnt"] {
            assert!(!lines.contains(&l), "/ has {l}: {text}");
        }
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains("wrote-build\nro-elsewhere\nnot really"),
            "{text}"
        );
        // Nothing of the worker's environment (cargo sets CARGO_* for us).
        assert!(!text.contains("CARGO"), "{text}");
        assert!(text.contains("HOME=/build/home"), "{text}");
        assert!(dir.path().join("build/mine").is_file());
    }

    #[test]
    fn collect_takes_regular_packages_only() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("topdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("host.rpm"), b"host").unwrap();
        std::fs::write(outside.join("sub/deep.rpm"), b"host").unwrap();
        std::fs::create_dir_all(top.join("RPMS/noarch")).unwrap();
        std::fs::create_dir_all(top.join("SRPMS")).unwrap();
        std::fs::write(top.join("RPMS/noarch/good-1-1.noarch.rpm"), b"rpm").unwrap();
        std::fs::write(top.join("RPMS/noarch/notes.txt"), b"txt").unwrap();
        std::os::unix::fs::symlink(
            outside.join("host.rpm"),
            top.join("RPMS/noarch/link-1-1.noarch.rpm"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.join("sub"), top.join("RPMS/linked")).unwrap();
        let fifo = std::ffi::CString::new(
            top.join("SRPMS/fifo-1-1.src.rpm")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let (found, refused) = collect_packages(&top);
        let real_top = top.canonicalize().unwrap();
        assert_eq!(
            found,
            vec![real_top.join("RPMS/noarch/good-1-1.noarch.rpm")]
        );
        assert_eq!(refused.len(), 3, "{refused:?}");

        // `RPMS` itself replaced by a link to another directory.
        std::fs::remove_dir_all(top.join("RPMS")).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("RPMS")).unwrap();
        let (found, refused) = collect_packages(&top);
        assert!(found.is_empty(), "{found:?}");
        assert!(refused.iter().any(|r| r.starts_with("RPMS")), "{refused:?}");
    }

    #[test]
    fn argv_binds_only_the_build_directory_read_write() {
        let spec = JobSpec {
            job: 1,
            attempt: 1,
            arch: "noarch".into(),
            disttag: String::new(),
            srpm: PathBuf::from("/w/work/cache/abc"),
            timeout: Duration::from_secs(1),
            buildroot: None,
        };
        let r = Rpmbuild {
            nodeps: true,
            sandbox: Sandbox::On,
        };
        let inv = r.invocation(
            &spec,
            Path::new("/w/work/jobs/1-1"),
            Some(&Bwrap {
                path: PathBuf::from("/usr/bin/bwrap"),
                disable_userns: true,
            }),
        );
        let a: Vec<String> = inv
            .argv
            .iter()
            .map(|x| x.to_string_lossy().into_owned())
            .collect();
        let binds: Vec<(&str, &str)> = a
            .windows(3)
            .filter(|w| w[0] == "--bind" || w[0] == "--bind-try")
            .map(|w| (w[1].as_str(), w[2].as_str()))
            .collect();
        assert_eq!(binds, vec![("/w/work/jobs/1-1/build", "/build")]);
        for w in a.windows(3).filter(|w| w[0].starts_with("--ro-bind")) {
            assert!(
                ["/usr", "/bin", "/sbin", "/lib", "/lib64"].contains(&w[1].as_str())
                    || w[1].starts_with("/etc/")
                    || w[1] == spec.srpm.to_str().unwrap(),
                "unexpected bind of {}",
                w[1]
            );
        }
        for flag in [
            "--unshare-all",
            "--unshare-user",
            "--cap-drop",
            "--die-with-parent",
            "--new-session",
            "--disable-userns",
        ] {
            assert!(a.iter().any(|x| x == flag), "no {flag} in {a:?}");
        }
        assert!(a.contains(&"_topdir /build/topdir".to_string()), "{a:?}");
        assert_eq!(a.last().map(String::as_str), Some(SANDBOX_SRPM));
        assert!(inv.pid_namespace && inv.clear_env);
    }

    #[test]
    fn the_sandbox_plan() {
        let b = Bwrap {
            path: PathBuf::from("/usr/bin/bwrap"),
            disable_userns: true,
        };
        assert!(matches!(
            sandbox_plan(Sandbox::On, Some(b.clone())),
            SandboxPlan::Bwrap(_)
        ));
        assert!(matches!(
            sandbox_plan(Sandbox::Auto, Some(b.clone())),
            SandboxPlan::Bwrap(_)
        ));
        match sandbox_plan(Sandbox::On, None) {
            SandboxPlan::Refused(why) => {
                assert!(
                    why.starts_with("sandbox is on but bwrap is not installed"),
                    "{why}"
                )
            }
            p => panic!("{p:?}"),
        }
        match sandbox_plan(Sandbox::Auto, None) {
            SandboxPlan::Unsandboxed(why) => assert!(why.contains("not installed"), "{why}"),
            p => panic!("{p:?}"),
        }
        match sandbox_plan(Sandbox::Off, Some(b)) {
            SandboxPlan::Unsandboxed(why) => assert!(why.contains("off"), "{why}"),
            p => panic!("{p:?}"),
        }
    }

    /// Without bubblewrap (explicitly off here), the log says so before the
    /// build runs, and the outcome line is left to the worker.
    #[tokio::test]
    async fn an_unsandboxed_build_says_so_in_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let srpm = dir.path().join("input.src.rpm");
        std::fs::write(&srpm, b"not an srpm").unwrap();
        let spec = JobSpec {
            job: 1,
            attempt: 1,
            arch: "noarch".into(),
            disttag: String::new(),
            srpm,
            timeout: Duration::from_secs(60),
            buildroot: None,
        };
        let r = Rpmbuild {
            nodeps: true,
            sandbox: Sandbox::Off,
        };
        assert!(matches!(r.sandbox(), SandboxStatus::Unsandboxed(_)));
        let log = Buf::new();
        let (_tx, rx) = watch::channel(false);
        let out = r
            .build(&spec, &dir.path().join("job"), &log, rx)
            .await
            .unwrap();
        assert!(!out.success);
        let text = log.text();
        assert!(
            text.starts_with("kiln: WARNING: this build is NOT sandboxed (the sandbox is off"),
            "{text}"
        );
        assert!(!text.contains("kiln: build"), "{text}");
    }
}
