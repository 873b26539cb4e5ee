//! git for the srpm job: one bare mirror per repository URL in the
//! worker's cache, fetched incrementally (only the refs a job needs), one
//! job at a time per mirror. git runs here, in the worker's own context
//! (it has the network; the spec and rpmbuild never do), by argument
//! vector, with hooks, credential helpers, prompts and every protocol but
//! https, ssh, git and file turned off, its configuration only what is set
//! here, `HOME` a job-private folder, bounded by the job's deadline and
//! killed with the job.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_core::git::redact_url;

use super::{Ctx, Stop};
use crate::backend::{make_private_dir, Invocation};
use crate::query::Ran;

/// The folder of the mirrors, under the worker's input cache.
pub const MIRRORS_DIR: &str = "git";

/// `-c` settings every git command gets. `protocol.allow=never` first,
/// then the four kinds of URL Kiln takes (`ext::` stays refused, and a
/// redirect to plain http fails).
const GIT_CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.ssh.allow=always",
    "protocol.git.allow=always",
    "protocol.file.allow=always",
    "protocol.ext.allow=never",
    "credential.helper=",
    "core.askPass=",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    // An automatic gc runs inside the fetch (and its time bound), never
    // in the background after it.
    "gc.autoDetach=false",
    "maintenance.autoDetach=false",
    "advice.detachedHead=false",
];

/// What the worker's environment passes on to git: its `PATH`, proxies and
/// CA bundles. Nothing else (no `GIT_*` of the worker's).
const PASSED_ENV: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// How git runs for one job.
pub(super) struct Git {
    env: Vec<(OsString, OsString)>,
}

impl Git {
    /// git with `home` as its `HOME` and, for ssh:// URLs, `ssh` as its
    /// `GIT_SSH_COMMAND`.
    pub(super) fn new(home: &Path, ssh: Option<String>) -> Git {
        let mut env: Vec<(OsString, OsString)> = PASSED_ENV
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
            .collect();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
        }
        for (k, v) in [
            ("LC_ALL", "C"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_ASKPASS", "true"),
            ("SSH_ASKPASS", "true"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_PROTOCOL_FROM_USER", "0"),
        ] {
            env.push((k.into(), v.into()));
        }
        env.push(("HOME".into(), home.as_os_str().to_owned()));
        if let Some(ssh) = ssh {
            env.push(("GIT_SSH_COMMAND".into(), ssh.into()));
        }
        Git { env }
    }

    /// `git -c … ARGS` run in `cwd`.
    pub(super) fn inv(&self, cwd: &Path, args: Vec<OsString>) -> Invocation {
        let mut argv: Vec<OsString> = vec!["git".into()];
        for c in GIT_CONFIG {
            argv.push("-c".into());
            argv.push(c.into());
        }
        argv.extend(args);
        Invocation {
            argv,
            cwd: cwd.to_path_buf(),
            env: self.env.clone(),
            clear_env: true,
            pid_namespace: false,
            overlay: None,
        }
    }

    /// Run `git ARGS` at `at` (logged; its output kept).
    async fn exec(&self, ctx: &Ctx<'_>, at: At<'_>, args: &[&str]) -> Result<Ran, Stop> {
        let (cwd, mut full) = match at {
            At::Repo(repo) => {
                let mut d = OsString::from("--git-dir=");
                d.push(repo);
                (repo, vec![d])
            }
            At::Dir(dir) => (dir, Vec::new()),
        };
        full.extend(args.iter().map(OsString::from));
        // Logged as `git ARGS` (without the `--git-dir`).
        ctx.run(&self.inv(cwd, full), &shown("git", args)).await
    }

    /// Run `git ARGS` at `at`: its output when it succeeds; when it fails,
    /// the job fails with `what` and git's own error line.
    async fn checked(
        &self,
        ctx: &Ctx<'_>,
        at: At<'_>,
        args: &[&str],
        what: impl FnOnce() -> String,
    ) -> Result<String, Stop> {
        let ran = self.exec(ctx, at, args).await?;
        if ran.end == Some(0) {
            return Ok(String::from_utf8_lossy(&ran.text).into_owned());
        }
        Err(ctx.failed(what(), &ran, "git"))
    }

    /// Run `git ARGS` on the repository `repo` (logged; its output kept).
    pub(super) async fn raw(&self, ctx: &Ctx<'_>, repo: &Path, args: &[&str]) -> Result<Ran, Stop> {
        self.exec(ctx, At::Repo(repo), args).await
    }

    /// Run `git ARGS` on the repository `repo`, as [`Git::checked`] does.
    pub(super) async fn run(
        &self,
        ctx: &Ctx<'_>,
        repo: &Path,
        args: &[&str],
        what: impl FnOnce() -> String,
    ) -> Result<String, Stop> {
        self.checked(ctx, At::Repo(repo), args, what).await
    }

    /// Run `git ARGS` in the folder `cwd` (a work tree), its output kept.
    pub(super) async fn raw_in(
        &self,
        ctx: &Ctx<'_>,
        cwd: &Path,
        args: &[&str],
    ) -> Result<Ran, Stop> {
        self.exec(ctx, At::Dir(cwd), args).await
    }

    /// Run `git ARGS` in the folder `cwd` (a work tree, or where a clone
    /// goes), as [`Git::checked`] does.
    pub(super) async fn run_in(
        &self,
        ctx: &Ctx<'_>,
        cwd: &Path,
        args: &[&str],
        what: impl FnOnce() -> String,
    ) -> Result<String, Stop> {
        self.checked(ctx, At::Dir(cwd), args, what).await
    }

    /// Whether `git ARGS` on `repo` exits with status 0 (a check: its
    /// output goes nowhere).
    pub(super) async fn test(
        &self,
        ctx: &Ctx<'_>,
        repo: &Path,
        args: &[&str],
    ) -> Result<bool, Stop> {
        Ok(self.raw(ctx, repo, args).await?.end == Some(0))
    }
}

/// Where a git command runs.
#[derive(Clone, Copy)]
enum At<'a> {
    /// On the repository (`--git-dir=`), from its folder.
    Repo(&'a Path),
    /// In the folder (a work tree, or where a clone goes).
    Dir(&'a Path),
}

/// A command line as the job log shows it: URLs without credentials, an
/// argument a shell would split or expand in single quotes.
pub(super) fn shown(prog: &str, args: &[&str]) -> String {
    let mut s = prog.to_string();
    for a in args {
        let a = if a.contains("://") {
            redact_url(a)
        } else {
            a.to_string()
        };
        s.push(' ');
        if a.is_empty()
            || a.contains(|c: char| c.is_whitespace() || "'\"\\$`*?[]{}()<>|&;#~!".contains(c))
        {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    kiln_core::names::printable(&s)
}

/// One fetch into a mirror, as the job log and the benchmark report it.
#[derive(Debug, Clone)]
pub struct FetchStat {
    /// The URL, without credentials.
    pub url: String,
    pub what: String,
    /// The mirror was made by this fetch (`false`: it was there, and only
    /// what was new came).
    pub created: bool,
    /// How much the mirror grew on disk.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// A repository's mirror, held by one job at a time.
pub(super) struct Mirror {
    pub path: PathBuf,
    url: String,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// One lock per mirror, for the jobs of this process.
fn locks() -> &'static Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS.get_or_init(Default::default)
}

impl Mirror {
    /// The mirror of `url` under `cache`, once no other job uses it
    /// (waiting ends with the job's cancel or deadline).
    pub(super) async fn hold(ctx: &Ctx<'_>, cache: &Path, url: &str) -> Result<Mirror, Stop> {
        let dir = cache.join(MIRRORS_DIR);
        make_private_dir(&dir)
            .map_err(kiln_core::error::io_err("making the git mirrors' folder"))?;
        let path = dir.join(kiln_core::git::mirror_name(url));
        let lock = locks()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.clone())
            .or_default()
            .clone();
        let held = match lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                ctx.log(&format!(
                    "waiting for the mirror of {} (another job fetches it)",
                    redact_url(url)
                ));
                ctx.bounded(lock.lock_owned()).await?
            }
        };
        Ok(Mirror {
            path,
            url: url.to_string(),
            _held: held,
        })
    }

    /// Fetch `refspecs` from the mirror's URL (making the mirror first if
    /// there is none): `what` names them in the log line
    /// `kiln: fetching URL WHAT: mirror created|mirror updated, N bytes
    /// received in M ms`.
    pub(super) async fn fetch(
        &self,
        ctx: &Ctx<'_>,
        git: &Git,
        what: &str,
        refspecs: &[&str],
    ) -> Result<FetchStat, Stop> {
        let t0 = Instant::now();
        let created = !self.path.join("HEAD").is_file();
        if created {
            self.create(ctx, git).await?;
        } else {
            let stale = remove_stale_locks(&self.path);
            if stale > 0 {
                ctx.log(&format!(
                    "removed {stale} lock files an interrupted git left in the mirror"
                ));
            }
        }
        let before = dir_size(&self.path);
        let mut args = vec![
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-recurse-submodules",
            "--no-write-fetch-head",
            "--",
            &self.url,
        ];
        args.extend_from_slice(refspecs);
        let shown_url = redact_url(&self.url);
        git.run(ctx, &self.path, &args, || {
            format!("fetching {shown_url}#{what}")
        })
        .await?;
        let stat = FetchStat {
            url: shown_url,
            what: what.to_string(),
            created,
            bytes: dir_size(&self.path).saturating_sub(before),
            elapsed: t0.elapsed(),
        };
        ctx.log(&format!(
            "fetching {} {}: mirror {}, {} bytes received in {} ms",
            stat.url,
            stat.what,
            if created { "created" } else { "updated" },
            stat.bytes,
            stat.elapsed.as_millis()
        ));
        Ok(stat)
    }

    /// `git init --bare` in a new folder beside the mirror, renamed into
    /// place once made (a stop halfway leaves no mirror half made).
    async fn create(&self, ctx: &Ctx<'_>, git: &Git) -> Result<(), Stop> {
        let parent = self.path.parent().unwrap_or(&self.path);
        let tmp = parent.join(format!(".new-{:016x}.git", rand::random::<u64>()));
        let tmp_s = tmp.to_string_lossy().into_owned();
        let ran = ctx
            .run(
                &git.inv(
                    parent,
                    vec![
                        "init".into(),
                        "--bare".into(),
                        "--quiet".into(),
                        tmp.clone().into(),
                    ],
                ),
                &shown("git", &["init", "--bare", "--quiet", &tmp_s]),
            )
            .await?;
        if ran.end != Some(0) {
            crate::run::remove_job_dir(&tmp);
            return Err(ctx.failed(
                format!("making the mirror of {}", redact_url(&self.url)),
                &ran,
                "git init",
            ));
        }
        // A mirror whose HEAD went missing is made again.
        if std::fs::symlink_metadata(&self.path).is_ok() {
            crate::run::remove_job_dir(&self.path);
        }
        std::fs::rename(&tmp, &self.path).map_err(kiln_core::error::io_err(
            "putting a new git mirror in place",
        ))?;
        Ok(())
    }

    /// The commit `rev` names in the mirror, if any (a tag is peeled).
    pub(super) async fn commit_of(
        &self,
        ctx: &Ctx<'_>,
        git: &Git,
        rev: &str,
    ) -> Result<Option<String>, Stop> {
        let peeled = format!("{rev}^{{commit}}");
        let ran = git
            .raw(
                ctx,
                &self.path,
                &["rev-parse", "--verify", "--quiet", &peeled],
            )
            .await?;
        let text = String::from_utf8_lossy(&ran.text);
        Ok(text
            .lines()
            .map(str::trim)
            .rfind(|l| kiln_core::git::is_commit_id(l))
            .filter(|_| ran.end == Some(0))
            .map(str::to_string))
    }
}

/// Remove the `*.lock` files of a mirror (its refs, `packed-refs`,
/// `config`, `HEAD`, `shallow`): with the mirror held, none is in use, so
/// each is what a git killed mid-fetch (a cancel, a timeout, the worker
/// stopped) left, and would fail every later fetch. How many there were.
fn remove_stale_locks(mirror: &Path) -> usize {
    fn walk(d: &Path, depth: usize, n: &mut usize) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 64 => walk(&e.path(), depth + 1, n),
                Ok(t)
                    if t.is_file()
                        && e.file_name().to_string_lossy().ends_with(".lock")
                        && std::fs::remove_file(e.path()).is_ok() =>
                {
                    *n += 1
                }
                _ => {}
            }
        }
    }
    let mut n = 0;
    for top in [
        "packed-refs.lock",
        "config.lock",
        "HEAD.lock",
        "shallow.lock",
        "FETCH_HEAD.lock",
    ] {
        if std::fs::remove_file(mirror.join(top)).is_ok() {
            n += 1;
        }
    }
    walk(&mirror.join("refs"), 0, &mut n);
    n
}

/// At the worker's start: the new mirrors a stop left half made (no job
/// holds a mirror yet). How many.
pub fn remove_partial(cache: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(cache.join(MIRRORS_DIR)) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".new-"))
        .map(|e| crate::run::remove_job_dir(&e.path()))
        .count()
}

/// Bytes the regular files under `dir` take (no link followed).
pub(super) fn dir_size(dir: &Path) -> u64 {
    fn walk(d: &Path, depth: usize) -> u64 {
        let Ok(rd) = std::fs::read_dir(d) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() && depth < 64 => walk(&e.path(), depth + 1),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    walk(dir, 0)
}
