//! Images (issue 12), the worker's side: [`build_image`] makes the files of
//! one image recipe (`kiln_core::image::ImageRecipe`) from repositories.
//!
//! 1. **install**: `dnf makecache` of the repositories (their `repomd.xml`
//!    revisions are recorded), then `dnf --installroot` of the packages
//!    into `WORK/root`, through the buildroot machinery (`buildroot.rs`:
//!    the dnf configuration, `HOME` whose `.rpmmacros` puts the rpm
//!    database in the root, the shared package download cache).
//!    `SOURCE_DATE_EPOCH` for rpm is the newest timestamp of the
//!    repositories' metadata, so the install times in the rpm database are
//!    the same for the same repositories; dnf's own history, logs and cache
//!    in the root are removed.
//! 2. **files**: the recipe's files, written without following a link out
//!    of the root.
//! 3. **post**: each command in bubblewrap with the root as `/`
//!    (writable), no network, uid 0 of a user namespace.
//! 4. **test**: each command the same way over an overlay of the root
//!    (what a test writes is thrown away). A failure fails the image; the
//!    formats are still made (kept for inspection) and the log ends with
//!    the failed test's output.
//! 5. **formats** (`formats.rs`), after every time in the root is clamped
//!    to `SOURCE_DATE_EPOCH` = the newest installed package's build time.
//! 6. **boot** (`boot.rs`) when the recipe has `boot` and the tests passed.
//! 7. `manifest.json` and `SHA256SUMS` (of the formats and the manifest);
//!    `image.log` has everything written to the log sink.
//!
//! The worker must run as root (dnf --installroot, overlayfs, the owners
//! of the packages' files) with bubblewrap installed.

pub mod boot;
pub mod formats;
pub mod sandbox;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_core::error::{io_err, IoError};
use kiln_core::image::{ImageFormat, ImageRecipe, RecipeError};
use serde::Serialize;
use tokio::sync::watch;

use crate::backend::{
    make_private_dir, run_logged, Bwrap, Invocation, LogSink, OverlayMount, RunEnd,
};
use crate::buildroot::{self as br, RootSpec, Roots};

/// The log of an image build, beside its files.
pub const IMAGE_LOG: &str = "image.log";
pub const MANIFEST: &str = "manifest.json";
pub const SHA256SUMS: &str = "SHA256SUMS";

/// One image build.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub recipe: ImageRecipe,
    /// The arch to build for (the worker's own: scriptlets run on it).
    pub arch: String,
    /// The target's published repositories (base URLs); the recipe's
    /// `repos` are used after them. `$basearch` and `$releasever` are
    /// expanded in both.
    pub repos: Vec<String>,
    /// dnf's `--releasever` (empty: none given).
    pub releasever: String,
    pub gpgcheck: bool,
    pub gpgkeys: Vec<String>,
    /// The build's id: the filesystems' UUIDs and hash seeds derive from it.
    pub build_id: u64,
    /// Scratch directory of this build (made; at the end moved aside to
    /// `<work>.removing` and removed in a thread of its own: see
    /// [`wait_for_removals`]).
    pub work: PathBuf,
    /// Where the files go (made; must hold no `image.log` yet).
    pub out: PathBuf,
    /// The longest any one command (dnf, a post or test command, a format
    /// tool) may run.
    pub timeout: Duration,
}

/// A file of the build.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFile {
    pub name: String,
    /// The format it is, for image files (not the manifest, sums or log).
    pub format: Option<ImageFormat>,
    pub path: PathBuf,
    pub size: u64,
    /// Empty for `image.log` (it is written to the end).
    pub sha256: String,
}

/// Time spent in one phase: all of it, and the part spent in the tools
/// that do the work (dnf, the post/test commands, the format tools, qemu).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub phase: String,
    pub ms: u64,
    pub tool_ms: u64,
}

/// How a build ended.
#[derive(Debug, Clone, Serialize)]
pub struct ImageOutcome {
    pub success: bool,
    pub canceled: bool,
    /// The `test` commands (and the boot test, when asked) passed: the
    /// image may be promoted.
    pub tested: bool,
    /// Why it failed (empty when it succeeded).
    pub message: String,
    /// The formats, `manifest.json`, `SHA256SUMS`, `image.log` (whatever
    /// was made).
    pub files: Vec<ImageFile>,
    pub phases: Vec<Phase>,
    pub source_date_epoch: Option<i64>,
    /// Installed packages.
    pub packages: usize,
    pub total_ms: u64,
}

impl ImageOutcome {
    /// Time outside the tools (Kiln's own work), in ms.
    pub fn overhead_ms(&self) -> u64 {
        let tools: u64 = self.phases.iter().map(|p| p.tool_ms).sum();
        self.total_ms.saturating_sub(tools)
    }
}

/// Why a build could not be made at all (a failed image is an
/// [`ImageOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A tool the recipe needs is missing on this worker.
    #[error("{0}")]
    Tool(String),
    /// This worker cannot build images (not root, another arch…).
    #[error("{0}")]
    Unsupported(String),
}

/// The files of an installed package, for the manifest.
#[derive(Debug, Clone, Serialize)]
struct PackageEntry {
    nevra: String,
    name: String,
    epoch: u64,
    version: String,
    release: String,
    arch: String,
    buildtime: i64,
    /// The rpm file's sha256 (from dnf's package cache); empty when dnf's
    /// cache does not hold it.
    sha256: String,
    /// The repository it came from (dnf's id), when found.
    repo: String,
    /// The rpm file's name.
    file: String,
}

#[derive(Debug, Clone, Serialize)]
struct RepoEntry {
    id: String,
    url: String,
    /// `<revision>` of its `repomd.xml`.
    revision: String,
    repomd_sha256: String,
}

/// Phases and their times.
struct Clock {
    phases: Vec<Phase>,
    current: Option<(String, Instant, Duration)>,
}

impl Clock {
    fn start(&mut self, name: &str) {
        self.stop();
        self.current = Some((name.to_string(), Instant::now(), Duration::ZERO));
    }
    fn tool(&mut self, d: Duration) {
        if let Some(c) = self.current.as_mut() {
            c.2 += d;
        }
    }
    fn stop(&mut self) {
        if let Some((phase, t, tool)) = self.current.take() {
            self.phases.push(Phase {
                phase,
                ms: t.elapsed().as_millis() as u64,
                tool_ms: tool.as_millis() as u64,
            });
        }
    }
}

/// Passes output on and keeps the end of it (a failed test's output).
struct Keep<'a> {
    inner: &'a dyn LogSink,
    buf: Mutex<Vec<u8>>,
}

impl LogSink for Keep<'_> {
    fn write(&self, data: &[u8]) {
        self.inner.write(data);
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        b.extend_from_slice(data);
        let max = 64 * 1024;
        if b.len() > max {
            let cut = b.len() - max;
            b.drain(..cut);
        }
    }
}

fn say(log: &dyn LogSink, text: impl AsRef<str>) {
    log.write(format!("kiln: {}\n", text.as_ref()).as_bytes());
}

fn end_text(end: &RunEnd) -> String {
    br::describe(end)
}

/// Build `req` with the worker's roots machinery (its dnf cache and
/// `HOME`), writing progress to `log` (and to `OUT/image.log`).
pub async fn build_image(
    req: &ImageRequest,
    roots: &Roots,
    log: &dyn LogSink,
    cancel: watch::Receiver<bool>,
) -> Result<ImageOutcome, ImageError> {
    let checked = req.recipe.check()?;
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::Unsupported(
            "building an image needs the worker to run as root (dnf --installroot, overlayfs, \
             the packages' owners)"
                .into(),
        ));
    }
    if req.arch != kiln_core::names::host_arch() {
        return Err(ImageError::Unsupported(format!(
            "an image for {} cannot be built on this {} worker (its scriptlets run here)",
            req.arch,
            kiln_core::names::host_arch()
        )));
    }
    let bwrap = Bwrap::find()
        .ok_or_else(|| ImageError::Tool("building an image needs bubblewrap (bwrap)".into()))?;
    let mut tools: Vec<&str> = vec!["dnf", "rpm"];
    for f in &req.recipe.formats {
        for t in f.tools() {
            if sandbox::find_tool(t).is_none() {
                let pkg = match *t {
                    "mkfs.erofs" => "erofs-utils",
                    "mkfs.ext4" => "e2fsprogs",
                    "mksquashfs" => "squashfs-tools",
                    "qemu-img" => "qemu-utils",
                    o => o,
                };
                return Err(ImageError::Tool(format!(
                    "format {f} needs {t} ({pkg}), which is not installed on this worker"
                )));
            }
            if !tools.contains(t) {
                tools.push(t);
            }
        }
    }
    let qemu = match &req.recipe.boot {
        Some(_) => {
            let argv = boot::qemu_argv(&req.arch, Path::new("k"), Path::new("i"))
                .map_err(ImageError::Unsupported)?;
            let prog = argv[0].to_string_lossy().into_owned();
            if sandbox::find_tool(&prog).is_none() {
                return Err(ImageError::Tool(format!(
                    "the boot test needs {prog}, which is not installed on this worker"
                )));
            }
            Some(prog)
        }
        None => None,
    };
    let started = Instant::now();
    let mut clock = Clock {
        phases: Vec::new(),
        current: None,
    };
    clock.start("setup");
    // The tools' versions (for the manifest) are asked while the image is made.
    let mut all_tools: Vec<String> = tools.iter().map(|t| t.to_string()).collect();
    all_tools.push("bwrap".into());
    all_tools.extend(qemu.clone());
    let versions = tokio::spawn(async move {
        let answers = futures_util::future::join_all(
            all_tools
                .iter()
                .map(|t| sandbox::tool_version_owned(formats::version_argv(t))),
        )
        .await;
        all_tools
            .into_iter()
            .zip(answers)
            .collect::<BTreeMap<String, String>>()
    });
    make_private_dir(&req.out).map_err(io_err(format!("creating {}", req.out.display())))?;
    let _ = std::fs::remove_dir_all(&req.work);
    let _ = std::fs::remove_dir_all(trash_of(&req.work));
    make_private_dir(&req.work).map_err(io_err(format!("creating {}", req.work.display())))?;
    let tee = br::Tee::new(log, &req.out.join(IMAGE_LOG))?;
    let mut b = Build {
        req,
        roots,
        log: &tee,
        cancel,
        bwrap,
        clock,
        root: req.work.join("root"),
        name: req.recipe.name.clone(),
        versions: Some(versions),
        hashing: Vec::new(),
        pkg_hashing: Vec::new(),
    };
    let result = b.run(checked, qemu.as_deref()).await;
    b.clock.start("cleanup");
    remove_later(&req.work);
    b.clock.stop();
    let phases = b.clock.phases.clone();
    let (mut out, message) = match result {
        Ok(o) => (o, String::new()),
        Err(Stop::Failed(m, o)) => (o, m),
        Err(Stop::Canceled) => (
            Partial {
                canceled: true,
                ..Partial::default()
            },
            "canceled".into(),
        ),
        Err(Stop::Io(e)) => return Err(e.into()),
    };
    if !message.is_empty() && !out.canceled {
        say(&tee, format!("the image failed: {message}"));
    }
    if let Some(tail) = out.test_output.take() {
        // The failed test's output is the end of the log.
        tee.write(b"kiln: the failed test's output:\n");
        tee.write(&tail);
        if !tail.ends_with(b"\n") {
            tee.write(b"\n");
        }
    }
    drop(tee);
    let log_path = req.out.join(IMAGE_LOG);
    out.files.push(ImageFile {
        name: IMAGE_LOG.into(),
        format: None,
        size: std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0),
        path: log_path,
        sha256: String::new(),
    });
    Ok(ImageOutcome {
        success: message.is_empty(),
        canceled: out.canceled,
        tested: out.tested && message.is_empty(),
        message,
        files: out.files,
        phases,
        source_date_epoch: out.epoch,
        packages: out.packages,
        total_ms: started.elapsed().as_millis() as u64,
    })
}

/// What a build made so far.
#[derive(Default)]
struct Partial {
    canceled: bool,
    tested: bool,
    files: Vec<ImageFile>,
    epoch: Option<i64>,
    packages: usize,
    test_output: Option<Vec<u8>>,
}

enum Stop {
    Failed(String, Partial),
    Canceled,
    Io(IoError),
}

impl From<IoError> for Stop {
    fn from(e: IoError) -> Stop {
        Stop::Io(e)
    }
}

fn fail<T>(m: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Failed(m.into(), Partial::default()))
}

struct Build<'a> {
    req: &'a ImageRequest,
    roots: &'a Roots,
    log: &'a dyn LogSink,
    cancel: watch::Receiver<bool>,
    bwrap: Bwrap,
    clock: Clock,
    root: PathBuf,
    name: String,
    /// The tools' versions, asked at the start.
    versions: Option<tokio::task::JoinHandle<BTreeMap<String, String>>>,
    /// The sha256 of each format file, computed beside the next format.
    hashing: Vec<tokio::task::JoinHandle<std::io::Result<String>>>,
    /// The sha256 of each installed package's rpm file (by file name),
    /// computed while the image is made.
    pkg_hashing: Vec<(String, tokio::task::JoinHandle<std::io::Result<String>>)>,
}

/// What the walk of the finished root found.
struct Walk {
    entries: u64,
    bytes: u64,
}

impl Build<'_> {
    /// Run `inv` (logged), its time counted as the tools'.
    async fn tool(&mut self, inv: &Invocation, log: &dyn LogSink) -> Result<RunEnd, Stop> {
        let t = Instant::now();
        let end = run_logged(inv, log, self.req.timeout, self.cancel.clone())
            .await
            .map_err(|e| match e {
                crate::backend::BackendError::Io(e) => Stop::Io(e),
            })?;
        self.clock.tool(t.elapsed());
        if matches!(end, RunEnd::Canceled) {
            return Err(Stop::Canceled);
        }
        Ok(end)
    }

    fn spec(&self) -> RootSpec {
        let arch = self.req.arch.as_str();
        let expand = |s: &String| {
            s.replace("$basearch", arch)
                .replace("$releasever", &self.req.releasever)
        };
        let mut repos: Vec<String> = Vec::new();
        for r in self.req.repos.iter().chain(&self.req.recipe.repos) {
            let r = expand(r);
            if !repos.contains(&r) {
                repos.push(r);
            }
        }
        RootSpec {
            target: self.req.recipe.target.clone(),
            arch: arch.to_string(),
            repos,
            packages: self.req.recipe.packages.clone(),
            releasever: self.req.releasever.clone(),
            gpgcheck: self.req.gpgcheck,
            gpgkeys: self.req.gpgkeys.iter().map(expand).collect(),
            kiln_repos: Vec::new(),
        }
    }

    async fn run(
        &mut self,
        checked: kiln_core::image::Checked,
        qemu: Option<&str>,
    ) -> Result<Partial, Stop> {
        let recipe = &self.req.recipe;
        let spec = self.spec();
        for (i, r) in spec.repos.iter().enumerate() {
            kiln_core::image::check_repo_url(r)
                .or_else(|why| fail(format!("repository {i}: {why}")))?;
        }
        if spec.repos.is_empty() {
            return fail("no repository to install the packages from");
        }
        say(
            self.log,
            format!(
                "building image {} (build {}) for {}: {} from {}",
                recipe.name,
                self.req.build_id,
                self.req.arch,
                recipe.packages.join(" "),
                spec.repos.join(" ")
            ),
        );

        // 1. install
        self.clock.start("install");
        self.roots.prepare_dirs()?;
        make_private_dir(&self.root)
            .map_err(io_err(format!("creating {}", self.root.display())))?;
        let conf = self.req.work.join("dnf.conf");
        br::write_dnf_conf(&conf, &spec, &self.roots.cache, None, false)?;
        let install = br::dnf_invocation(
            self.roots,
            &conf,
            &self.root,
            &spec,
            &recipe.packages,
            None,
            &self.req.work,
        );
        let mut makecache = install.clone();
        if let Some(i) = makecache.argv.iter().position(|a| a == "-y") {
            makecache.argv.truncate(i);
        }
        makecache
            .argv
            .extend(["-y", "--refresh", "makecache"].map(OsString::from));
        say(self.log, format!("running {}", makecache.display()));
        match self.tool(&makecache, self.log).await? {
            RunEnd::Exited(0) => {}
            e => {
                return fail(format!(
                    "reading the repositories failed: dnf makecache {}",
                    end_text(&e)
                ))
            }
        }
        let repos = self.repo_revisions(&spec);
        let install_epoch = repos_epoch(&self.roots.cache, &spec);
        let mut install = install;
        if let Some(e) = install_epoch {
            // rpm takes the install time (and transaction id) from it.
            install
                .env
                .push(("SOURCE_DATE_EPOCH".into(), e.to_string().into()));
        }
        say(self.log, format!("running {}", install.display()));
        match self.tool(&install, self.log).await? {
            RunEnd::Exited(0) => {}
            e => {
                return fail(format!(
                    "installing the packages failed: dnf {}",
                    end_text(&e)
                ))
            }
        }
        for junk in [
            "var/lib/dnf",
            "var/cache/dnf",
            "var/log/dnf.log",
            "var/log/dnf.librepo.log",
            "var/log/dnf.rpm.log",
            "var/log/hawkey.log",
            "var/lib/rpm/.rpm.lock",
        ] {
            let p = self.root.join(junk);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        self.remove_dnf_cache_twin().await;
        let mut packages = self.installed(&spec).await?;
        let Some(epoch) = packages.iter().map(|p| p.buildtime).max() else {
            return fail("dnf installed nothing");
        };
        say(
            self.log,
            format!(
                "{} packages installed; SOURCE_DATE_EPOCH={epoch} (the newest package's build time)",
                packages.len()
            ),
        );
        let installed = packages.len();
        let partial = |files: Vec<ImageFile>| Partial {
            epoch: Some(epoch),
            packages: installed,
            files,
            ..Partial::default()
        };

        // 2. files
        self.clock.start("files");
        for (path, content) in &recipe.files {
            if let Err(why) = sandbox::write_in_root(&self.root, path, content) {
                return Err(Stop::Failed(format!("files: {why}"), partial(vec![])));
            }
            say(self.log, format!("wrote {path} ({} bytes)", content.len()));
        }

        // 3. post
        self.clock.start("post");
        if !(recipe.post.is_empty() && recipe.test.is_empty())
            && sandbox::resolve_in_root(&self.root, "/bin/sh", true)
                .map(|p| !p.is_file())
                .unwrap_or(true)
        {
            return Err(Stop::Failed(
                "the image has no /bin/sh to run the post and test commands with".into(),
                partial(vec![]),
            ));
        }
        for (i, c) in recipe.post.iter().enumerate() {
            let inv = self.in_root(&self.root, None, c);
            say(self.log, format!("post[{i}]: {c}"));
            match self.tool(&inv, self.log).await? {
                RunEnd::Exited(0) => {}
                e => {
                    return Err(Stop::Failed(
                        format!("post[{i}] ({c}) {}", end_text(&e)),
                        partial(vec![]),
                    ))
                }
            }
        }

        // 4. test
        self.clock.start("test");
        let mut failed_test: Option<(String, Vec<u8>)> = None;
        if !recipe.test.is_empty() {
            let t = self.req.work.join("test");
            let overlay = OverlayMount {
                lower: self.root.clone(),
                upper: t.join("upper"),
                work: t.join("work"),
                target: t.join("merged"),
            };
            for d in [&overlay.upper, &overlay.work, &overlay.target] {
                make_private_dir(d).map_err(io_err(format!("creating {}", d.display())))?;
            }
            for (i, c) in recipe.test.iter().enumerate() {
                let inv = self.in_root(&overlay.target, Some(overlay.clone()), c);
                say(self.log, format!("test[{i}]: {c}"));
                let keep = Keep {
                    inner: self.log,
                    buf: Mutex::new(Vec::new()),
                };
                let end = self.tool(&inv, &keep).await?;
                if !matches!(end, RunEnd::Exited(0)) {
                    let out = keep.buf.into_inner().unwrap_or_else(|p| p.into_inner());
                    say(self.log, format!("test[{i}] {}", end_text(&end)));
                    failed_test = Some((format!("test[{i}] ({c}) {}", end_text(&end)), out));
                    break;
                }
            }
            if failed_test.is_none() {
                say(
                    self.log,
                    format!("{} test commands passed", recipe.test.len()),
                );
            }
        }

        // 5. formats
        self.clock.start("prepare");
        self.tidy_rpmdb();
        let (walk, list) = self.clamp_and_list(epoch)?;
        let size = checked.size.unwrap_or_else(|| default_size(&walk));
        let needs_size = recipe.formats.iter().any(|f| f.sized());
        if needs_size && walk.bytes + walk.entries * 4096 > size {
            return Err(Stop::Failed(
                format!(
                    "the root ({} MiB in {} entries) does not fit in size {} MiB",
                    walk.bytes >> 20,
                    walk.entries,
                    size >> 20
                ),
                partial(vec![]),
            ));
        }
        let raw = self.req.work.join("raw.ext4");
        let mut files = Vec::new();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        for &f in &recipe.formats {
            self.clock.start(&format!("format:{f}"));
            let out = self.req.out.join(format!("{}.{}", self.name, f.as_str()));
            let _ = std::fs::remove_file(&out);
            let ext4_file = self.req.out.join(format!("{}.ext4", self.name));
            // qcow2 is converted from the ext4 file when the recipe makes one first.
            let raw_for = if recipe.formats.contains(&ImageFormat::Ext4) && ext4_file.is_file() {
                ext4_file.clone()
            } else {
                raw.clone()
            };
            let inp = formats::FormatInput {
                root: &self.root,
                name: &self.name,
                epoch,
                build_id: self.req.build_id,
                list: &list,
                size,
                inodes: walk.entries + walk.entries / 4 + 256,
                raw_ext4: &raw_for,
                threads,
            };
            let mut plan = formats::plan(f, &inp, &out);
            if f == ImageFormat::Qcow2 && raw_for == ext4_file {
                // The ext4 file is made: only the conversion is left.
                plan.stages.remove(0);
            }
            if plan.sized_file && !plan.stages.is_empty() {
                let target = if f == ImageFormat::Ext4 {
                    &out
                } else {
                    &raw_for
                };
                if !(f == ImageFormat::Qcow2 && raw_for == ext4_file) {
                    let file = std::fs::File::create(target)
                        .map_err(io_err(format!("creating {}", target.display())))?;
                    file.set_len(size)
                        .map_err(io_err(format!("sizing {}", target.display())))?;
                }
            }
            let t = Instant::now();
            let mut end = RunEnd::Exited(0);
            if plan.to_stdout {
                let file = std::fs::File::create(&out)
                    .map_err(io_err(format!("creating {}", out.display())))?;
                let stdin = match &plan.stdin {
                    Some(p) => Some(
                        std::fs::File::open(p)
                            .map_err(io_err(format!("opening {}", p.display())))?,
                    ),
                    None => None,
                };
                let shown: Vec<String> = plan.stages.iter().map(|s| s.display()).collect();
                say(self.log, format!("running {}", shown.join(" | ")));
                end = sandbox::run_pipeline(
                    &plan.stages,
                    &self.root,
                    stdin,
                    file,
                    self.log,
                    self.req.timeout,
                    self.cancel.clone(),
                )
                .await?;
            } else {
                for s in &plan.stages {
                    say(self.log, format!("running {}", s.display()));
                    let inv = Invocation {
                        argv: s.argv.clone(),
                        cwd: self.req.work.clone(),
                        env: std::iter::once((
                            "PATH".into(),
                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                        ))
                        .chain(std::iter::once(("LC_ALL".into(), "C".into())))
                        .chain(s.env.iter().cloned())
                        .collect(),
                        clear_env: true,
                        pid_namespace: false,
                        overlay: None,
                    };
                    end = run_logged(&inv, self.log, self.req.timeout, self.cancel.clone())
                        .await
                        .map_err(|e| match e {
                            crate::backend::BackendError::Io(e) => Stop::Io(e),
                        })?;
                    if !matches!(end, RunEnd::Exited(0)) {
                        break;
                    }
                }
            }
            self.clock.tool(t.elapsed());
            match end {
                RunEnd::Exited(0) => {}
                RunEnd::Canceled => return Err(Stop::Canceled),
                e => {
                    return Err(Stop::Failed(
                        format!("making the {f} image failed: {}", end_text(&e)),
                        partial(files),
                    ))
                }
            }
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            say(self.log, format!("{} made ({} bytes)", out.display(), size));
            // Hashed while the next format is made.
            let p = out.clone();
            self.hashing.push(tokio::task::spawn_blocking(move || {
                kiln_core::fsutil::sha256_file(&p).map(|h| h.0)
            }));
            files.push(ImageFile {
                name: format!("{}.{}", self.name, f.as_str()),
                format: Some(f),
                path: out,
                size,
                sha256: String::new(),
            });
        }
        let _ = std::fs::remove_file(&raw);

        // 6. boot
        let mut boot_result = serde_json::Value::Null;
        let mut failure: Option<String> = None;
        let mut test_output = None;
        if let Some((m, out)) = failed_test {
            failure = Some(m);
            test_output = Some(out);
        }
        if let (Some(b), Some(qemu), None) = (&recipe.boot, qemu, &failure) {
            self.clock.start("boot");
            let kernel = sandbox::resolve_in_root(&self.root, &b.kernel, true)
                .ok()
                .filter(|p| p.is_file());
            let initrd = match &b.initrd {
                Some(i) => sandbox::resolve_in_root(&self.root, i, true)
                    .ok()
                    .filter(|p| p.is_file()),
                None => Some(self.req.out.join(format!("{}.cpio", self.name))),
            };
            let timeout = checked
                .boot_timeout
                .unwrap_or(kiln_core::image::DEFAULT_BOOT_TIMEOUT);
            match (kernel, initrd) {
                (None, _) => {
                    failure = Some(format!(
                        "boot: the kernel {} is not a file in the image",
                        b.kernel
                    ))
                }
                (_, None) => {
                    failure = Some(format!(
                        "boot: the initrd {} is not a file in the image",
                        b.initrd.clone().unwrap_or_default()
                    ))
                }
                (Some(k), Some(i)) => {
                    let argv = boot::qemu_argv(&self.req.arch, &k, &i)
                        .map_err(|m| Stop::Failed(m, Partial::default()))?;
                    let shown: Vec<String> = argv
                        .iter()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect();
                    say(
                        self.log,
                        format!(
                            "boot test ({qemu}, expecting {:?} within {} s): {}",
                            b.expect,
                            timeout.as_secs(),
                            shown.join(" ")
                        ),
                    );
                    let t = Instant::now();
                    let end = boot::boot(&argv, &b.expect, timeout, self.log, self.cancel.clone())
                        .await?;
                    self.clock.tool(t.elapsed());
                    boot_result = serde_json::json!({ "expect": b.expect, "result": format!("{end:?}"), "ms": t.elapsed().as_millis() as u64 });
                    match end {
                        boot::BootEnd::Passed(d) => say(
                            self.log,
                            format!(
                                "boot test passed: {:?} after {:.1} s",
                                b.expect,
                                d.as_secs_f64()
                            ),
                        ),
                        boot::BootEnd::Canceled => return Err(Stop::Canceled),
                        boot::BootEnd::TimedOut => {
                            failure = Some(format!(
                                "boot test: {:?} did not appear within {} s",
                                b.expect,
                                timeout.as_secs()
                            ))
                        }
                        boot::BootEnd::Exited(c) => {
                            failure = Some(format!(
                                "boot test: qemu ended ({}) before {:?} appeared",
                                c.map(|c| format!("status {c}"))
                                    .unwrap_or("killed by a signal".into()),
                                b.expect
                            ))
                        }
                    }
                }
            }
        }

        // 7. manifest and sums
        self.clock.start("manifest");
        for (file, t) in std::mem::take(&mut self.pkg_hashing) {
            let h = t.await;
            let p = packages.iter_mut().find(|p| p.file == file);
            if let (Some(p), Ok(Ok(h))) = (p, h) {
                p.sha256 = h;
            }
        }
        let versions = match self.versions.take() {
            Some(t) => t.await.unwrap_or_default(),
            None => BTreeMap::new(),
        };
        for (f, t) in files.iter_mut().zip(std::mem::take(&mut self.hashing)) {
            f.sha256 = t
                .await
                .map_err(|e| Stop::Io(io_err("hashing")(std::io::Error::other(e.to_string()))))?
                .map_err(io_err(format!("hashing {}", f.path.display())))?;
        }
        let manifest = serde_json::json!({
            "name": recipe.name,
            "version": recipe.version,
            "build_id": self.req.build_id,
            "arch": self.req.arch,
            "source_date_epoch": epoch,
            "install_epoch": install_epoch,
            "recipe": recipe,
            "repos": repos,
            "packages": packages,
            "tools": versions,
            "files": files.iter().map(|f| serde_json::json!({"name": f.name, "format": f.format, "size": f.size, "sha256": f.sha256})).collect::<Vec<_>>(),
            "tested": failure.is_none(),
            "test_failure": failure,
            "boot": boot_result,
            "phases": self.clock.phases.iter().map(|p| serde_json::json!({"phase": p.phase, "ms": p.ms, "tool_ms": p.tool_ms})).collect::<Vec<_>>(),
        });
        let mpath = self.req.out.join(MANIFEST);
        let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        kiln_core::fsutil::write_atomic(&mpath, &text, 0o644)
            .map_err(io_err(format!("writing {}", mpath.display())))?;
        files.push(ImageFile {
            name: MANIFEST.into(),
            format: None,
            size: text.len() as u64,
            sha256: kiln_core::fsutil::sha256_bytes(&text),
            path: mpath,
        });
        let mut sums = String::new();
        for f in &files {
            sums += &format!("{}  {}\n", f.sha256, f.name);
        }
        let spath = self.req.out.join(SHA256SUMS);
        kiln_core::fsutil::write_atomic(&spath, sums.as_bytes(), 0o644)
            .map_err(io_err(format!("writing {}", spath.display())))?;
        files.push(ImageFile {
            name: SHA256SUMS.into(),
            format: None,
            size: sums.len() as u64,
            sha256: kiln_core::fsutil::sha256_bytes(sums.as_bytes()),
            path: spath,
        });
        let trimmed = self.roots.trim_cache();
        if trimmed > 0 {
            say(
                self.log,
                format!(
                    "removed {} MB of old packages from dnf's cache",
                    trimmed >> 20
                ),
            );
        }
        self.clock.stop();
        let mut p = partial(files);
        p.tested = failure.is_none();
        p.test_output = test_output;
        match failure {
            None => Ok(p),
            Some(m) => Err(Stop::Failed(m, p)),
        }
    }

    /// `sh -c CMD` in bubblewrap with `root` as `/` (with `overlay`
    /// mounted for the command when given).
    fn in_root(&self, root: &Path, overlay: Option<OverlayMount>, cmd: &str) -> Invocation {
        let mut argv = sandbox::root_argv(&self.bwrap, root);
        argv.extend(["/bin/sh".into(), "-c".into(), OsString::from(cmd)]);
        Invocation {
            argv,
            cwd: self.req.work.clone(),
            env: Vec::new(),
            clear_env: true,
            pid_namespace: true,
            overlay,
        }
    }

    /// The installed packages, with the sha256 of their rpm files in
    /// dnf's cache.
    async fn installed(&mut self, spec: &RootSpec) -> Result<Vec<PackageEntry>, Stop> {
        let t = Instant::now();
        let out = tokio::process::Command::new("rpm")
            .arg("--root")
            .arg(&self.root)
            .args([
                "--define",
                "_dbpath /var/lib/rpm",
                "-qa",
                "--qf",
                "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{BUILDTIME}\\n",
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(io_err("running rpm -qa in the image"))?;
        let _ = t;
        if !out.status.success() {
            return fail(format!(
                "reading the image's rpm database failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut cached: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
        for (i, _) in spec.repos.iter().enumerate() {
            let id = spec.base_repo_id(i);
            for dir in cache_dirs(&self.roots.cache, &id) {
                for e in std::fs::read_dir(dir.join("packages"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let name = e.file_name().to_string_lossy().into_owned();
                    cached.entry(name).or_insert((id.clone(), e.path()));
                }
            }
        }
        let mut list = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 6 || f[0] == "gpg-pubkey" {
                continue;
            }
            let p = |s: &str| kiln_core::names::printable(s);
            let epoch: u64 = f[1].parse().unwrap_or(0);
            let file = format!("{}-{}-{}.{}.rpm", f[0], f[2], f[3], f[4]);
            let repo = match cached.get(&file) {
                Some((id, path)) => {
                    // Hashed while the image is made.
                    let path = path.clone();
                    self.pkg_hashing.push((
                        file.clone(),
                        tokio::task::spawn_blocking(move || {
                            kiln_core::fsutil::sha256_file(&path).map(|h| h.0)
                        }),
                    ));
                    id.clone()
                }
                None => {
                    say(
                        self.log,
                        format!("{file} is not in dnf's package cache: no sha256 in the manifest"),
                    );
                    String::new()
                }
            };
            let sha256 = String::new();
            list.push(PackageEntry {
                nevra: if epoch > 0 {
                    format!("{}-{}:{}-{}.{}", p(f[0]), epoch, p(f[2]), p(f[3]), p(f[4]))
                } else {
                    format!("{}-{}-{}.{}", p(f[0]), p(f[2]), p(f[3]), p(f[4]))
                },
                name: p(f[0]),
                epoch,
                version: p(f[2]),
                release: p(f[3]),
                arch: p(f[4]),
                buildtime: f[5].parse().unwrap_or(0),
                sha256,
                repo,
                file,
            });
        }
        list.sort_by(|a, b| a.nevra.cmp(&b.nevra));
        Ok(list)
    }

    /// dnf leaves files (`expired_repos.json`) in its cache directory's
    /// path under the installroot: remove that directory, and the
    /// directories above it that no package owns.
    async fn remove_dnf_cache_twin(&mut self) {
        let Ok(rel) = self.roots.cache.strip_prefix("/") else {
            return;
        };
        let twin = self.root.join(rel);
        if !twin.exists() {
            return;
        }
        let _ = std::fs::remove_dir_all(&twin);
        let mut above: Vec<PathBuf> = rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .map(|a| Path::new("/").join(a))
            .collect();
        above.retain(|a| self.root.join(a.strip_prefix("/").unwrap_or(a)).is_dir());
        if above.is_empty() {
            return;
        }
        let out = tokio::process::Command::new("rpm")
            .arg("--root")
            .arg(&self.root)
            .args([
                "--define",
                "_dbpath /var/lib/rpm",
                "-qf",
                "--qf",
                "owned\\n",
                "--",
            ])
            .args(&above)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        let Ok(out) = out else { return };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != above.len() {
            return;
        }
        // Deepest first; a directory still holding anything stays.
        for (a, l) in above.iter().zip(lines) {
            if l.contains("not owned by any package") {
                let _ = std::fs::remove_dir(self.root.join(a.strip_prefix("/").unwrap_or(a)));
            }
        }
    }

    /// rpm's sqlite database without the shared-memory index and write-ahead
    /// log that reading it leaves (when the log is empty: all is in the
    /// database).
    fn tidy_rpmdb(&self) {
        let db = self.root.join("var/lib/rpm");
        let wal = db.join("rpmdb.sqlite-wal");
        match std::fs::symlink_metadata(&wal) {
            Ok(m) if m.is_file() && m.len() == 0 => {
                let _ = std::fs::remove_file(&wal);
                let _ = std::fs::remove_file(db.join("rpmdb.sqlite-shm"));
            }
            Ok(_) => say(
                self.log,
                "rpm's write-ahead log is not empty: kept (the image is not reproducible)",
            ),
            Err(_) => {
                let _ = std::fs::remove_file(db.join("rpmdb.sqlite-shm"));
            }
        }
        let _ = std::fs::remove_file(db.join(".rpm.lock"));
    }

    /// Each repository's `repomd.xml` revision as dnf fetched it.
    fn repo_revisions(&self, spec: &RootSpec) -> Vec<RepoEntry> {
        spec.repos
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let id = spec.base_repo_id(i);
                let data = newest_repomd(&self.roots.cache, &id).unwrap_or_default();
                let text = String::from_utf8_lossy(&data);
                RepoEntry {
                    revision: xml_values(&text, "revision")
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                    repomd_sha256: if data.is_empty() {
                        String::new()
                    } else {
                        kiln_core::fsutil::sha256_bytes(&data)
                    },
                    id,
                    url: url.clone(),
                }
            })
            .collect()
    }

    /// Clamp every time in the root to `epoch` (atime = mtime), and write
    /// the sorted list of its entries (NUL-terminated `./path`) for cpio.
    fn clamp_and_list(&self, epoch: i64) -> Result<(Walk, PathBuf), Stop> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::MetadataExt;
        let mut names: Vec<Vec<u8>> = vec![b".".to_vec()];
        let mut walk = Walk {
            entries: 1,
            bytes: 0,
        };
        let mut stack = vec![PathBuf::new()];
        let mut dirs = vec![self.root.clone()];
        while let Some(rel) = stack.pop() {
            let dir = self.root.join(&rel);
            let rd =
                std::fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
            for e in rd.flatten() {
                let r = rel.join(e.file_name());
                let path = self.root.join(&r);
                let Ok(m) = path.symlink_metadata() else {
                    continue;
                };
                walk.entries += 1;
                walk.bytes += m.blocks() * 512;
                let mut n = b"./".to_vec();
                n.extend_from_slice(r.as_os_str().as_bytes());
                names.push(n);
                if m.is_dir() {
                    stack.push(r);
                    dirs.push(path);
                } else {
                    clamp(&path, &m, epoch);
                }
            }
        }
        // Directories last: nothing is made in them any more.
        for d in dirs {
            if let Ok(m) = d.symlink_metadata() {
                clamp(&d, &m, epoch);
            }
        }
        names.sort();
        let mut data = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names {
            data.extend_from_slice(&n);
            data.push(0);
        }
        let list = self.req.work.join("entries.list");
        std::fs::write(&list, &data).map_err(io_err(format!("writing {}", list.display())))?;
        say(
            self.log,
            format!(
                "the root holds {} entries, {} MiB; times clamped to {epoch}",
                walk.entries,
                walk.bytes >> 20
            ),
        );
        Ok((walk, list))
    }
}

/// Set atime and mtime of `path` (not following a link) to
/// `min(mtime, epoch)`.
fn clamp(path: &Path, m: &std::fs::Metadata, epoch: i64) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let (mt, mt_ns) = (m.mtime(), m.mtime_nsec());
    let (sec, nsec) = if mt >= epoch { (epoch, 0) } else { (mt, mt_ns) };
    if m.atime() == sec && m.atime_nsec() == nsec && mt == sec && mt_ns == nsec {
        return;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = [t, t];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two valid
    // timespecs; utimensat(2) reads them and nothing else.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

/// Where a build's scratch directory goes to be removed.
fn trash_of(work: &Path) -> PathBuf {
    let mut name = work.file_name().unwrap_or_default().to_os_string();
    name.push(".removing");
    work.with_file_name(name)
}

/// Removals of scratch directories still under way.
static REMOVALS: Mutex<Vec<std::thread::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Move the scratch directory aside (at once) and remove it in a thread of
/// its own: the build's outcome does not wait for the disk. A build of the
/// same scratch directory removes what a stop left there first;
/// [`wait_for_removals`] waits for the removals under way.
fn remove_later(work: &Path) {
    let trash = trash_of(work);
    let _ = std::fs::remove_dir_all(&trash);
    if std::fs::rename(work, &trash).is_err() {
        let _ = std::fs::remove_dir_all(work);
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("image-cleanup".into())
        .spawn(move || {
            let _ = std::fs::remove_dir_all(&trash);
        });
    if let Ok(h) = spawned {
        let mut r = REMOVALS.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|h| !h.is_finished());
        r.push(h);
    }
}

/// Wait until the scratch directories of the builds that ended are
/// removed (before a process that built images exits).
pub fn wait_for_removals() {
    let handles: Vec<_> = std::mem::take(&mut *REMOVALS.lock().unwrap_or_else(|p| p.into_inner()));
    for h in handles {
        let _ = h.join();
    }
}

/// What the root holds plus a quarter, plus 16 MiB, in whole MiB.
fn default_size(w: &Walk) -> u64 {
    let need = w.bytes + w.entries * 4096;
    let size = need + need / 4 + (16 << 20);
    size.div_ceil(1 << 20) << 20
}

/// dnf's cache directories of repository `id` (`<id>-<hash>`), newest first.
fn cache_dirs(cache: &Path, id: &str) -> Vec<PathBuf> {
    let prefix = format!("{id}-");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_dir()
                .then(|| (m.modified().unwrap_or(std::time::UNIX_EPOCH), e.path()))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.1).collect()
}

fn newest_repomd(cache: &Path, id: &str) -> Option<Vec<u8>> {
    cache_dirs(cache, id)
        .into_iter()
        .find_map(|d| std::fs::read(d.join("repodata").join("repomd.xml")).ok())
}

/// The texts of `<tag>…</tag>` in `xml` (repomd.xml is flat and small).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(kiln_core::names::printable(after[..j].trim()));
        rest = &after[j + close.len()..];
    }
    out
}

/// The newest time in the repositories' metadata (`<timestamp>`s and
/// numeric `<revision>`s): the same repositories give the same value.
fn repos_epoch(cache: &Path, spec: &RootSpec) -> Option<i64> {
    (0..spec.repos.len())
        .filter_map(|i| newest_repomd(cache, &spec.base_repo_id(i)))
        .flat_map(|data| {
            let text = String::from_utf8_lossy(&data).into_owned();
            let mut v = xml_values(&text, "timestamp");
            v.extend(xml_values(&text, "revision"));
            v
        })
        .filter_map(|v| v.parse::<i64>().ok())
        .filter(|&t| t > 0 && t < 1 << 40)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repomd_values_are_read() {
        let x = "<repomd><revision>1700000000</revision><data type=\"primary\"><timestamp>1700000005</timestamp></data>\
                 <data><timestamp>1699999999</timestamp></data></repomd>";
        assert_eq!(xml_values(x, "revision"), ["1700000000"]);
        assert_eq!(xml_values(x, "timestamp").len(), 2);
    }

    #[test]
    fn the_default_size_leaves_room() {
        let w = Walk {
            entries: 1000,
            bytes: 100 << 20,
        };
        let s = default_size(&w);
        assert!(
            s > (100 << 20) + 1000 * 4096 && s.is_multiple_of(1 << 20),
            "{s}"
        );
    }
}
