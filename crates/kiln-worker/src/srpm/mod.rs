//! The srpm job (issue 9, builds from git): an SRPM made on the worker from
//! an upstream repository (the software) and a packaging repository (the
//! spec and patches), or from one repository holding both (Packit style).
//!
//! 1. Every URL, ref and path is checked again (`kiln_core::git`).
//! 2. Each repository is fetched into the worker's bare mirror of it
//!    ([`mirror`]): only the ref asked for (and upstream's tags in CI mode,
//!    to count the commits since the last one), so a second build of a
//!    project fetches only what is new. The commit built is the ref's tip,
//!    or exactly `upstream_commit` when given.
//! 3. The packaging tree (`git archive` of its commit) is unpacked into
//!    `SOURCES` in the sandbox; the spec is the one named, or the one
//!    `*.spec` at the top.
//! 4. The version: release mode, the tag without a leading `v` (it must
//!    agree with the spec's `Version` unless the tag wins); CI mode, the
//!    snapshot `VERSION^YYYYMMDD.HHMMSS.N.gSHA7` of the upstream commit's
//!    committer date (or, for an rpm without `^`, `Release:
//!    0.N.YYYYMMDDgitSHA7%{?dist}`). The spec copy's `Version:` (or
//!    `Release:`) line is rewritten.
//! 5. `Source0`'s file name, as rpm evaluates the spec (in the sandbox),
//!    names the upstream tarball: `git archive --prefix=NAME-VERSION/` of
//!    the commit, compressed to match (`gzip -n`: the same commit gives
//!    the same bytes).
//! 6. `rpmbuild -bs` in the sandbox without network
//!    (`_disable_source_fetch`), on the worker's system or inside the
//!    target's base root when the target has a buildroot.
//!
//! git runs in the worker's context with the network; the spec's macros
//! (rpmspec, rpmbuild) only ever run in bubblewrap, without it.

pub mod mirror;
mod spec;
mod tarball;
#[cfg(test)]
pub(crate) mod tests;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_core::git::{self as kgit, GitMode, RepoUrl, Scheme};
use kiln_core::names::printable;
use kiln_proto as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{self, make_private_dir, Bwrap, Invocation, LogSink, Outcome, OverlayMount};
use crate::buildroot::{self as br, RootSpec, Roots};
use crate::query::{QueryError, Ran};
pub use mirror::FetchStat;
use mirror::{Git, Mirror};
use spec::Versioned;

/// The environment variable of the worker's `git_ssh_key` setting (the
/// private key for ssh:// repositories), named in messages.
pub const SSH_KEY_ENV: &str = "KILN_WORKER_GIT_SSH_KEY";

/// Largest spec read.
const MAX_SPEC: u64 = 4 << 20;

/// Where the SRPM is made, inside the job's build directory (`/build` in
/// the sandbox).
const SOURCES: &str = "SOURCES";
const SPECS: &str = "SPECS";
/// The packaging tree on its way into `SOURCES`.
const TREE_TAR: &str = ".kiln-tree.tar";

/// What a worker gives its srpm jobs.
#[derive(Debug, Clone)]
pub struct SrpmEnv {
    /// The worker's work directory: the mirrors are in `cache/git/`.
    pub work: PathBuf,
    /// The private key for ssh:// repositories.
    pub ssh_key: Option<PathBuf>,
}

impl SrpmEnv {
    /// Without an ssh key.
    pub fn new(work: &Path) -> SrpmEnv {
        SrpmEnv {
            work: work.to_path_buf(),
            ssh_key: None,
        }
    }

    /// The folder holding the mirrors' folder.
    fn cache(&self) -> PathBuf {
        self.work.join("cache")
    }
}

/// One srpm job.
#[derive(Debug, Clone)]
pub struct SrpmRequest {
    pub source: pb::GitSource,
    /// The target's `%{dist}` (empty: none).
    pub disttag: String,
    /// For the whole job: fetches, base root, rpmspec, rpmbuild.
    pub timeout: Duration,
    /// Read the spec and make the SRPM inside this base root.
    pub buildroot: Option<(RootSpec, Arc<Roots>)>,
}

/// What an srpm job made: the outcome (the SRPM as its one package), what
/// it was made from (as far as the job got), and its fetches.
#[derive(Debug)]
pub struct Made {
    pub outcome: Outcome,
    pub source: pb::SourceMade,
    pub fetches: Vec<FetchStat>,
}

/// Why the job stopped early.
pub(crate) enum Stop {
    /// The job fails with this (its first line is the job's message).
    Failed(String),
    Canceled,
    Io(kiln_core::error::IoError),
}

impl From<kiln_core::error::IoError> for Stop {
    fn from(e: kiln_core::error::IoError) -> Stop {
        Stop::Io(e)
    }
}

fn failed<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Failed(why.into()))
}

/// The job's log, deadline and cancel, for every command it runs.
pub(crate) struct Ctx<'a> {
    log: &'a dyn LogSink,
    deadline: Instant,
    timeout: Duration,
    cancel: watch::Receiver<bool>,
}

impl Ctx<'_> {
    /// `kiln: LINE` in the job log.
    pub(crate) fn log(&self, line: &str) {
        self.log.write(format!("kiln: {line}\n").as_bytes());
    }

    /// A command's output, as it printed it.
    pub(crate) fn write_output(&self, text: &[u8]) {
        if !text.is_empty() {
            self.log.write(text);
            if !text.ends_with(b"\n") {
                self.log.write(b"\n");
            }
        }
    }

    fn timed_out(&self) -> Stop {
        Stop::Failed(format!("timed out after {} s", self.timeout.as_secs()))
    }

    /// Run `inv` (logged as `$ SHOWN`) within the job's deadline, killed
    /// when the job is canceled: how it ended and what it printed.
    pub(crate) async fn run(&self, inv: &Invocation, shown: &str) -> Result<Ran, Stop> {
        self.log(&format!("$ {shown}"));
        match crate::query::run_captured(inv, self.deadline, "a command", Some(self.cancel.clone()))
            .await
        {
            Ok(r) => Ok(r),
            Err(QueryError::Canceled) => Err(Stop::Canceled),
            Err(QueryError::TimedOut { .. }) => Err(self.timed_out()),
            Err(QueryError::Io(e)) => Err(Stop::Io(e)),
            Err(QueryError::TooMuchOutput { .. }) => failed(format!(
                "{shown}: printed more than {} bytes",
                crate::query::MAX_OUTPUT
            )),
            Err(e) => failed(e.to_string()),
        }
    }

    /// A command that failed: its output goes to the log, and the job
    /// fails with `what` and the command's own error line.
    pub(crate) fn failed(&self, what: impl std::fmt::Display, ran: &Ran, prog: &str) -> Stop {
        self.write_output(&ran.text);
        Stop::Failed(format!("{what}: {}", error_line(ran, prog)))
    }

    /// `f`, unless the job is canceled or its time is up first.
    pub(crate) async fn bounded<F: Future>(&self, f: F) -> Result<F::Output, Stop> {
        let mut cancel = self.cancel.clone();
        let canceled = async move {
            loop {
                if *cancel.borrow_and_update() || cancel.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            r = f => Ok(r),
            _ = canceled => Err(Stop::Canceled),
            _ = tokio::time::sleep_until(self.deadline) => Err(self.timed_out()),
        }
    }
}

/// The line that says why a command failed: its first `fatal:` or
/// `error:` line, else its last line, else its exit status.
pub(crate) fn error_line(ran: &Ran, prog: &str) -> String {
    let text = String::from_utf8_lossy(&ran.text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pick = lines
        .iter()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or(lines.last());
    match (pick, ran.end) {
        (Some(l), _) => printable(&l.chars().take(300).collect::<String>()),
        (None, Some(c)) => format!("{prog} exited with status {c}"),
        (None, None) => format!("{prog} was killed by a signal"),
    }
}

/// The first line of `s`.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// A job's source, checked.
struct Checked {
    mode: GitMode,
    upstream: RepoUrl,
    /// A branch, tag or commit id (`HEAD` when none was given).
    upstream_ref: String,
    upstream_commit: Option<String>,
    packaging: Option<(RepoUrl, String)>,
    spec: Option<String>,
}

/// Check every URL, ref and path of `s` again (the master did once).
fn check(s: &pb::GitSource) -> Result<Checked, Stop> {
    let bad = |e: kgit::GitNameError| Stop::Failed(e.to_string());
    let mode = match s.mode.as_str() {
        "" => GitMode::Ci,
        m => m.parse::<GitMode>().map_err(Stop::Failed)?,
    };
    let upstream = kgit::check_repo_url(&s.upstream_url).map_err(bad)?;
    let upstream_ref = if s.upstream_ref.is_empty() {
        "HEAD".to_string()
    } else {
        kgit::check_ref(&s.upstream_ref).map_err(bad)?;
        s.upstream_ref.clone()
    };
    let upstream_commit = match s.upstream_commit.as_str() {
        "" => None,
        c if kgit::is_commit_id(c) => Some(c.to_string()),
        c => {
            return failed(format!(
                "upstream commit {} is not a full commit id",
                kiln_core::names::shown(c)
            ))
        }
    };
    let packaging = match s.packaging_url.as_str() {
        "" if !s.packaging_ref.is_empty() => {
            return failed("a packaging ref without a packaging repository")
        }
        "" => None,
        url => {
            let r = if s.packaging_ref.is_empty() {
                "HEAD".to_string()
            } else {
                kgit::check_ref(&s.packaging_ref).map_err(bad)?;
                s.packaging_ref.clone()
            };
            Some((kgit::check_repo_url(url).map_err(bad)?, r))
        }
    };
    let spec = match s.spec.as_str() {
        "" => None,
        p => {
            kgit::check_repo_path(p).map_err(bad)?;
            Some(p.to_string())
        }
    };
    Ok(Checked {
        mode,
        upstream,
        upstream_ref,
        upstream_commit,
        packaging,
        spec,
    })
}

/// `GIT_SSH_COMMAND` for ssh:// repositories: the worker's key, no
/// prompt, no agent's other keys, new hosts remembered in the mirrors'
/// folder. Only paths a shell reads as one plain word.
fn ssh_command(env: &SrpmEnv) -> Result<String, Stop> {
    let Some(key) = &env.ssh_key else {
        return failed(format!(
            "an ssh:// repository needs a key: set git_ssh_key ({SSH_KEY_ENV}) in the worker's settings"
        ));
    };
    let known = env.cache().join(mirror::MIRRORS_DIR).join("known_hosts");
    fn plain(p: &Path) -> Option<&str> {
        p.to_str().filter(|s| {
            s.starts_with('/')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/+-".contains(c))
        })
    }
    let (Some(k), Some(kh)) = (plain(key), plain(&known)) else {
        return failed(format!(
            "the ssh key path {} (or the worker's directory) is not a plain absolute path \
             (letters, digits, `._/+-`)",
            printable(&key.to_string_lossy())
        ));
    };
    if !std::fs::metadata(key).is_ok_and(|m| m.is_file()) {
        return failed(format!("the ssh key {k} is not a readable file"));
    }
    Ok(format!(
        "ssh -F /dev/null -i {k} -o BatchMode=yes -o IdentitiesOnly=yes \
         -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={kh}"
    ))
}

/// Make the SRPM `req` asks for in the job directory `dir`, logging to
/// `log`; stopped (its commands killed) when `cancel` turns true. The
/// outcome's one package is the SRPM (in `dir/build/topdir/SRPMS`).
pub async fn make_srpm(
    env: &SrpmEnv,
    req: &SrpmRequest,
    dir: &Path,
    log: &dyn LogSink,
    cancel: watch::Receiver<bool>,
) -> Made {
    let ctx = Ctx {
        log,
        deadline: Instant::now() + req.timeout,
        timeout: req.timeout,
        cancel,
    };
    let mut job = Job {
        env,
        req,
        dir,
        build: dir.join(backend::BUILD_SUBDIR),
        ctx,
        git: None,
        bwrap: None,
        root: None,
        made: pb::SourceMade::default(),
        fetches: Vec::new(),
    };
    let outcome = match job.steps().await {
        Ok(srpm) => Outcome {
            success: true,
            canceled: false,
            message: String::new(),
            packages: vec![srpm],
        },
        Err(Stop::Failed(why)) => Outcome::failed(first_line(&why)),
        Err(Stop::Canceled) => Outcome::canceled(),
        Err(Stop::Io(e)) => Outcome::failed(format!("worker error: {e}")),
    };
    Made {
        outcome,
        source: job.made,
        fetches: job.fetches,
    }
}

/// One srpm job as it goes.
struct Job<'a> {
    env: &'a SrpmEnv,
    req: &'a SrpmRequest,
    dir: &'a Path,
    /// `dir/build`: `/build` in the sandbox.
    build: PathBuf,
    ctx: Ctx<'a>,
    git: Option<Git>,
    bwrap: Option<Bwrap>,
    /// The job's overlay over the target's base root, when the SRPM is
    /// made inside it.
    root: Option<OverlayMount>,
    made: pb::SourceMade,
    fetches: Vec<FetchStat>,
}

impl Job<'_> {
    fn git(&self) -> Result<&Git, Stop> {
        self.git
            .as_ref()
            .ok_or_else(|| Stop::Failed("worker error: git is not set up".into()))
    }

    async fn steps(&mut self) -> Result<PathBuf, Stop> {
        let src = check(&self.req.source)?;
        let Some(bwrap) = Bwrap::find() else {
            return failed(
                "making an SRPM needs bubblewrap (bwrap) on the worker: the spec's macros can run anything",
            );
        };
        self.bwrap = Some(bwrap);
        let ssh = [Some(&src.upstream), src.packaging.as_ref().map(|p| &p.0)]
            .into_iter()
            .flatten()
            .any(|u| u.scheme == Scheme::Ssh);
        let ssh = if ssh {
            Some(ssh_command(self.env)?)
        } else {
            None
        };
        if self.dir.to_str().is_none() {
            return failed("worker error: the job directory's path is not UTF-8");
        }
        let home = self.dir.join("git-home");
        for d in [
            home.clone(),
            self.build.join(SOURCES),
            self.build.join(SPECS),
            self.build.join("topdir"),
            self.build.join("tmp"),
            self.build.join("home"),
        ] {
            make_private_dir(&d).map_err(kiln_core::error::io_err(format!(
                "creating {}",
                d.display()
            )))?;
        }
        self.git = Some(Git::new(&home, ssh));
        self.ctx.log(&format!(
            "making an SRPM from git ({} mode): upstream {}#{}{}",
            src.mode.as_str(),
            kgit::redact_url(&src.upstream.url),
            src.upstream_ref,
            match &src.packaging {
                Some((u, r)) => format!(", packaging {}#{r}", kgit::redact_url(&u.url)),
                None => ", spec in upstream".into(),
            }
        ));

        // The sources.
        let (up_mirror, up_commit, tag) = self.fetch_upstream(&src).await?;
        self.made.upstream_commit = up_commit.clone();
        let (pk_mirror, pk_commit, where_) = match &src.packaging {
            Some((url, r)) => {
                let m = Mirror::hold(&self.ctx, &self.env.cache(), &url.url).await?;
                let st = m
                    .fetch(
                        &self.ctx,
                        self.git()?,
                        r,
                        &[&format!("+{r}:{}", kiln_ref(r))],
                    )
                    .await?;
                self.fetches.push(st);
                let c = self
                    .resolve(
                        &m,
                        &kiln_ref(r),
                        &format!("{}#{r}", kgit::redact_url(&url.url)),
                    )
                    .await?;
                self.ctx.log(&format!(
                    "packaging {}#{r} is at {c}",
                    kgit::redact_url(&url.url)
                ));
                self.made.packaging_commit = c.clone();
                (m.path.clone(), c, "packaging repository")
            }
            None => (up_mirror.clone(), up_commit.clone(), "upstream repository"),
        };
        let _base = self.enter_root().await?;

        // The spec.
        self.unpack_tree(&pk_mirror, &pk_commit).await?;
        let (spec_name, text) = self.read_spec(src.spec.as_deref(), &pk_commit, where_)?;
        let spec_path = self.build.join(SPECS).join(&spec_name);
        self.write_spec(&spec_path, &text)?;
        let caret = self.rpm_knows_caret().await?;
        let orig = self.evaluate(&spec_name).await?;
        self.ctx.log(&format!(
            "the spec says {} {}-{}",
            orig.name, orig.version, orig.release
        ));

        // The version.
        let versioned = match (&src.mode, &tag) {
            (GitMode::Release, Some(tag)) => self.release_version(tag, &orig)?,
            _ => self.snapshot(&up_mirror, &up_commit, &orig, caret).await?,
        };
        let text = match &versioned {
            Versioned::Version(v) => {
                self.made.version = v.clone();
                kgit::set_spec_tag(&text, "Version", v)
                    .ok_or_else(|| Stop::Failed("the spec has no Version: line to set".into()))?
            }
            Versioned::Release(r) => {
                self.made.version = orig.version.clone();
                self.made.release = r.clone();
                kgit::set_spec_tag(&text, "Release", &format!("{r}%{{?dist}}"))
                    .ok_or_else(|| Stop::Failed("the spec has no Release: line to set".into()))?
            }
        };
        self.write_spec(&spec_path, &text)?;
        let facts = self.evaluate(&spec_name).await?;
        match &versioned {
            Versioned::Version(v) if &facts.version != v => {
                return failed(format!(
                    "the spec's version is {} after setting its Version: line to {v} \
                     (is the version set again further on?)",
                    facts.version
                ))
            }
            Versioned::Release(r) if !facts.release.starts_with(r.as_str()) => {
                return failed(format!(
                    "the spec's release is {} after setting its Release: line to {r}",
                    facts.release
                ))
            }
            _ => {}
        }

        // The upstream tarball, then the SRPM.
        let source0 = self.source0(&spec_name).await?;
        self.tarball(&up_mirror, &up_commit, &facts, &source0)
            .await?;
        self.rpmbuild(&spec_name).await
    }

    /// Fetch upstream's ref (a tag in release mode; with every tag in CI
    /// mode) and find the commit to build: the mirror, the commit, and the
    /// tag (release mode).
    async fn fetch_upstream(
        &mut self,
        src: &Checked,
    ) -> Result<(PathBuf, String, Option<String>), Stop> {
        let url = &src.upstream.url;
        let shown_url = kgit::redact_url(url);
        let r = &src.upstream_ref;
        let (tag, dst, mut refspecs) = match src.mode {
            GitMode::Release => {
                let tag = match r.strip_prefix("refs/tags/") {
                    Some(t) => t.to_string(),
                    None if r.starts_with("refs/") || r == "HEAD" => {
                        return failed(format!("a release build needs a tag, and {r} is not one"))
                    }
                    None => r.clone(),
                };
                let dst = format!("refs/tags/{tag}");
                (Some(tag), dst.clone(), vec![format!("+{dst}:{dst}")])
            }
            GitMode::Ci => {
                let dst = kiln_ref(r);
                (None, dst.clone(), vec![format!("+{r}:{dst}")])
            }
        };
        if src.mode == GitMode::Ci {
            refspecs.push("+refs/tags/*:refs/tags/*".into());
        }
        let m = Mirror::hold(&self.ctx, &self.env.cache(), url).await?;
        let specs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
        let st = m.fetch(&self.ctx, self.git()?, r, &specs).await?;
        self.fetches.push(st);
        let at_ref = self.resolve(&m, &dst, &format!("{shown_url}#{r}")).await?;
        let commit = match &src.upstream_commit {
            None => at_ref,
            Some(want) => {
                let c = self.asked_commit(&m, want).await?;
                if tag.is_some() && c != at_ref {
                    return failed(format!(
                        "tag {r} is at {}, not at the commit asked for ({})",
                        kgit::short_commit(&at_ref),
                        kgit::short_commit(want)
                    ));
                }
                c
            }
        };
        self.ctx
            .log(&format!("upstream {shown_url}#{r} is at {commit}"));
        Ok((m.path.clone(), commit, tag))
    }

    /// The commit `rev` names in the mirror `m` (`what` names it in the
    /// message when it names none).
    async fn resolve(&self, m: &Mirror, rev: &str, what: &str) -> Result<String, Stop> {
        match m.commit_of(&self.ctx, self.git()?, rev).await? {
            Some(c) => Ok(c),
            None => failed(format!("{what} is not a commit")),
        }
    }

    /// The commit asked for: in the mirror already, or fetched by its id.
    async fn asked_commit(&mut self, m: &Mirror, want: &str) -> Result<String, Stop> {
        let probe = format!("{want}^{{commit}}");
        if !self
            .git()?
            .test(&self.ctx, &m.path, &["cat-file", "-e", &probe])
            .await?
        {
            let st = m.fetch(&self.ctx, self.git()?, want, &[want]).await?;
            self.fetches.push(st);
        }
        match m.commit_of(&self.ctx, self.git()?, want).await? {
            Some(c) => Ok(c),
            None => failed(format!(
                "commit {want} is not in {}",
                kgit::redact_url(&self.req.source.upstream_url)
            )),
        }
    }

    /// Into the target's base root, when the target has a buildroot (and
    /// the worker runs as root: it mounts the overlay). The base stays
    /// held while the returned value lives.
    async fn enter_root(&mut self) -> Result<Option<br::Held>, Stop> {
        let Some((rs, roots)) = &self.req.buildroot else {
            return Ok(None);
        };
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            self.ctx.log(
                "the worker does not run as root: the spec is read and the SRPM made with \
                 this worker's own rpm, not in the target's base root",
            );
            return Ok(None);
        }
        let tee = br::Tee::new(self.ctx.log, &self.dir.join(br::ROOT_LOG))?;
        let held = match roots.base(rs, &tee, self.ctx.cancel.clone()).await {
            Ok(h) => h,
            Err(br::RootError::Canceled) => return Err(Stop::Canceled),
            Err(br::RootError::Init(m)) => return failed(m),
            Err(br::RootError::Io(e)) => return Err(Stop::Io(e)),
            Err(br::RootError::Backend(backend::BackendError::Io(e))) => return Err(Stop::Io(e)),
        };
        tee.write(br::describe_base(&held).as_bytes());
        self.root = Some(br::JobRoot::new(self.dir, &held)?.overlay);
        Ok(Some(held))
    }

    /// Run `argv` in the sandbox (inside the base root when the job has
    /// one and `in_root`), without network, `build` at `/build`.
    async fn sandboxed(&self, argv: &[&str], in_root: bool) -> Result<Ran, Stop> {
        let bwrap = self
            .bwrap
            .as_ref()
            .ok_or_else(|| Stop::Failed("worker error: no sandbox".into()))?;
        let root = self.root.as_ref().filter(|_| in_root);
        let inv = backend::sandboxed(
            bwrap,
            &self.build,
            None,
            root,
            argv.iter().map(OsString::from).collect(),
        );
        let (prog, args) = argv.split_first().unwrap_or((&"", &[]));
        let place = if root.is_some() {
            " (in the sandbox, in the target's base root)"
        } else {
            " (in the sandbox)"
        };
        self.ctx
            .run(&inv, &format!("{}{place}", mirror::shown(prog, args)))
            .await
    }

    /// The packaging tree (or upstream's, Packit style) into `SOURCES`:
    /// `git archive` of the commit, unpacked by tar in the sandbox (what
    /// the tree holds is written by the sandbox's user, never through a
    /// link it planted).
    async fn unpack_tree(&self, mirror: &Path, commit: &str) -> Result<(), Stop> {
        let tar = self.build.join(TREE_TAR);
        let out = format!("--output={}", tar.display());
        self.git()?
            .run(
                &self.ctx,
                mirror,
                &["archive", "--format=tar", &out, commit],
                || format!("archiving {}", kgit::short_commit(commit)),
            )
            .await?;
        let inside = format!("/build/{TREE_TAR}");
        let ran = self
            .sandboxed(
                &[
                    "tar",
                    "-xf",
                    &inside,
                    "-C",
                    "/build/SOURCES",
                    "--no-same-owner",
                ],
                false,
            )
            .await?;
        let _ = std::fs::remove_file(&tar);
        if ran.end != Some(0) {
            return Err(self.ctx.failed(
                format!("unpacking the tree of {}", kgit::short_commit(commit)),
                &ran,
                "tar",
            ));
        }
        Ok(())
    }
}

/// Where a fetched ref is kept in a mirror: `refs/kiln/<hash of the ref>`
/// (refs of one repository never clash, whatever their names).
fn kiln_ref(r: &str) -> String {
    format!(
        "refs/kiln/{}",
        &kiln_core::fsutil::sha256_bytes(r.as_bytes())[..16]
    )
}
