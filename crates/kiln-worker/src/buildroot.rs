//! Buildroots: a job of a target with `[target.buildroot]` builds inside a
//! root made from the target's repositories, not on the worker's system.
//!
//! - The **base root** (`packages` from the base `repos`) is made once with
//!   `dnf --installroot` in `work/roots/<id>/root` and kept, per (target,
//!   arch, configuration); it is made again beside the old one when the
//!   configuration or a base repository's metadata changes. Jobs that need
//!   the same base while it is being made wait for it (one init).
//! - **Per job**, the base is the lower layer of an overlay whose upper
//!   layer is the job's own (`JOBDIR/root/upper`): the base is never
//!   written. The overlay is mounted inside the private mount namespace of
//!   each command that uses it (dnf, then bubblewrap), so it is gone with
//!   the command: nothing to unmount, nothing left after a crash.
//! - The SRPM's `BuildRequires` are installed by dnf from the base repos
//!   and Kiln's own repositories (read fresh: `metadata_expire=0`), with
//!   the network; then `rpmbuild` runs inside the root in bubblewrap,
//!   without it.
//! - What dnf did goes to the job's log and to `root.log`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_core::error::io_err;
use kiln_proto as pb;
use serde::{Deserialize, Serialize};

use crate::backend::{
    make_private_dir, run_logged, BackendError, Invocation, JobSpec, LogSink, OverlayMount, RunEnd,
};

/// The file in a job directory (beside `build.log`) with what dnf did.
pub const ROOT_LOG: &str = "root.log";
/// How long the base repositories' metadata is trusted before dnf checks
/// it again (a change makes a new base root).
const BASE_METADATA_EXPIRE_SECS: u64 = 300;
/// Base roots kept per (target, arch) besides the ones in use: the current
/// one and the one before.
const KEEP_ROOTS: usize = 2;
/// A base root's init may take this long (a slow mirror, many packages).
const INIT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The worker's base roots and dnf's shared download cache.
#[derive(Debug)]
pub struct Roots {
    /// `work/roots`: one folder per base root.
    dir: PathBuf,
    /// dnf's metadata and package cache, shared by all roots and jobs.
    pub(crate) cache: PathBuf,
    /// `HOME` for dnf: its `.rpmmacros` puts a root's rpm database inside
    /// the root (`/var/lib/rpm`).
    home: PathBuf,
    /// The master's CA, for Kiln's own repositories over https.
    ca: Option<PathBuf>,
    /// Downloaded packages kept in `cache` past this many bytes are
    /// removed, oldest first.
    cache_max: u64,
    state: Mutex<State>,
    /// Jobs starting at once make the shared directories one at a time.
    prep: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// One init at a time per configuration.
    making: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Base roots jobs are using now (never removed while used).
    in_use: HashMap<String, usize>,
}

/// What is kept beside a base root (`work/roots/<id>/meta.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootMeta {
    pub id: String,
    pub target: String,
    pub arch: String,
    /// The configuration's hash: roots with the same one are
    /// interchangeable but for their repositories' revisions.
    pub config: String,
    pub repos: Vec<String>,
    pub packages: Vec<String>,
    pub releasever: String,
    /// Per base repository: a digest of its `repomd.xml` when the root was
    /// made.
    pub revisions: BTreeMap<String, String>,
    /// Every package installed, `name-epoch:version-release.arch`.
    pub installed: Vec<String>,
    pub created_ms: u64,
    pub init_ms: u64,
    pub size: u64,
    pub uses: u64,
}

/// A job's buildroot as the master sends it, expanded for the job's arch.
#[derive(Debug, Clone)]
pub struct RootSpec {
    pub target: String,
    pub arch: String,
    pub repos: Vec<String>,
    pub packages: Vec<String>,
    pub releasever: String,
    pub gpgcheck: bool,
    pub gpgkeys: Vec<String>,
    /// Kiln's own repositories: (target, url, gpgkey).
    pub kiln_repos: Vec<(String, String, String)>,
}

impl RootSpec {
    /// A noarch job builds in a root of the worker's own arch.
    pub fn new(target: &str, job_arch: &str, b: &pb::Buildroot) -> RootSpec {
        let arch = if job_arch == "noarch" {
            kiln_core::names::host_arch()
        } else {
            job_arch
        };
        let expand = |s: &str| {
            s.replace("$basearch", arch)
                .replace("$releasever", &b.releasever)
        };
        RootSpec {
            target: target.to_string(),
            arch: arch.to_string(),
            repos: b.repos.iter().map(|r| expand(r)).collect(),
            packages: b.packages.clone(),
            releasever: b.releasever.clone(),
            gpgcheck: b.gpgcheck,
            gpgkeys: b.gpgkeys.iter().map(|r| expand(r)).collect(),
            kiln_repos: b
                .kiln_repos
                .iter()
                .map(|k| (k.target.clone(), expand(&k.url), expand(&k.gpgkey)))
                .collect(),
        }
    }

    /// The base configuration's hash (what makes two base roots the same).
    fn config_hash(&self) -> String {
        let text = serde_json::json!({
            "target": self.target, "arch": self.arch, "repos": self.repos,
            "packages": self.packages, "releasever": self.releasever,
            "gpgcheck": self.gpgcheck, "gpgkeys": self.gpgkeys,
        })
        .to_string();
        kiln_core::fsutil::sha256_bytes(text.as_bytes())[..16].to_string()
    }

    /// dnf's name of the `i`th base repository (named after its URL, so
    /// targets sharing a mirror share its cached metadata).
    pub(crate) fn base_repo_id(&self, i: usize) -> String {
        let h = kiln_core::fsutil::sha256_bytes(self.repos[i].as_bytes());
        format!("{}-base{}-{}", self.target, i, &h[..8])
    }

    /// What the unresolvable message lists as searched.
    fn searched(&self) -> String {
        let mut names: Vec<String> = (0..self.repos.len())
            .map(|i| {
                if self.repos.len() == 1 {
                    format!("{}-base", self.target)
                } else {
                    format!("{}-base{i}", self.target)
                }
            })
            .collect();
        names.extend(
            self.kiln_repos
                .iter()
                .map(|(t, _, _)| format!("{t} (kiln)")),
        );
        names.join(", ")
    }
}

/// A base root a job holds (released when dropped).
pub struct Held {
    roots: Arc<Roots>,
    pub meta: RootMeta,
    pub root: PathBuf,
    /// This job made it (the init's output is in its log).
    pub made_now: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut st = self.roots.lock();
        if let Some(n) = st.in_use.get_mut(&self.meta.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_use.remove(&self.meta.id);
            }
        }
    }
}

/// Why a job could not get its root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// dnf could not make the base root (the job fails with this).
    #[error("{0}")]
    Init(String),
    #[error("canceled")]
    Canceled,
}

impl Roots {
    /// The roots under `work/roots`; `ca` is the master's CA certificate;
    /// dnf's package cache is kept under `cache_max` bytes.
    pub fn new(work: &Path, ca: Option<PathBuf>, cache_max: u64) -> Roots {
        Roots {
            dir: work.join("roots"),
            cache: work.join("dnf-cache"),
            home: work.join("dnf-home"),
            ca,
            cache_max,
            state: Mutex::new(State::default()),
            prep: Mutex::new(()),
        }
    }

    /// Remove downloaded packages, least recently written first, until
    /// the cache holds at most `cache_max` bytes of them (metadata stays).
    /// Returns what was removed.
    pub fn trim_cache(&self) -> u64 {
        let mut pkgs: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
        let mut stack = vec![self.cache.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(e.path());
                } else if m.is_file() && e.path().extension().is_some_and(|x| x == "rpm") {
                    let t = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                    pkgs.push((t, m.len(), e.path()));
                }
            }
        }
        let mut total: u64 = pkgs.iter().map(|p| p.1).sum();
        pkgs.sort();
        let mut removed = 0;
        for (_, len, path) in pkgs {
            if total <= self.cache_max {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed += len;
            }
        }
        removed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remove the base roots a stop left half made (`.<id>.tmp`); at
    /// start, before any job. Returns how many.
    pub fn remove_partial(&self) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                && name.ends_with(".tmp")
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Every base root on disk, newest first.
    pub fn list(&self) -> Vec<RootMeta> {
        list_roots(&self.dir)
    }

    pub(crate) fn prepare_dirs(&self) -> Result<(), kiln_core::error::IoError> {
        let _one = self.prep.lock().unwrap_or_else(|p| p.into_inner());
        for d in [&self.dir, &self.cache, &self.home] {
            make_private_dir(d).map_err(io_err(format!("creating {}", d.display())))?;
            // The overlay's options are a comma-separated list.
            if d.to_string_lossy().contains([',', ':', '\\']) {
                return Err(io_err(format!("the work directory {}", d.display()))(
                    std::io::Error::other(
                        "has a ',', ':' or '\\' in its path (overlayfs cannot take it)",
                    ),
                ));
            }
        }
        let macros = self.home.join(".rpmmacros");
        if !macros.exists() {
            kiln_core::fsutil::write_atomic(&macros, b"%_dbpath /var/lib/rpm\n", 0o600)
                .map_err(io_err(format!("writing {}", macros.display())))?;
        }
        Ok(())
    }

    /// The base root for `spec`: the current one, or a new one made now
    /// (its init logged to `log`). Held until the returned value is dropped.
    pub async fn base(
        self: &Arc<Self>,
        spec: &RootSpec,
        log: &dyn LogSink,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Held, RootError> {
        self.prepare_dirs()?;
        let config = spec.config_hash();
        let gate = self
            .lock()
            .making
            .entry(config.clone())
            .or_default()
            .clone();
        let _one_init = gate.lock().await;
        let current = self
            .list()
            .into_iter()
            .find(|m| m.config == config && m.target == spec.target && m.arch == spec.arch);
        let revisions = self.revisions(spec);
        let (meta, made_now) = match current {
            Some(m) if !changed(&m.revisions, &revisions) => (m, false),
            old => {
                if let Some(o) = &old {
                    log.write(
                        format!(
                            "kiln: the base repositories changed since base root {} was made: making a new one\n",
                            o.id
                        )
                        .as_bytes(),
                    );
                }
                (self.make_base(spec, &config, log, cancel).await?, true)
            }
        };
        {
            let mut st = self.lock();
            *st.in_use.entry(meta.id.clone()).or_default() += 1;
        }
        let mut meta = meta;
        {
            // Counted under one lock: jobs sharing a base write its meta.json
            // one at a time, from what is on disk now.
            let _one = self.prep.lock().unwrap_or_else(|p| p.into_inner());
            let dir = self.dir.join(&meta.id);
            if let Some(now) = std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|d| serde_json::from_slice::<RootMeta>(&d).ok())
            {
                meta.uses = now.uses;
            }
            meta.uses += 1;
            let _ = write_meta(&dir, &meta);
        }
        if made_now {
            self.prune(&spec.target, &spec.arch);
        }
        Ok(Held {
            root: self.dir.join(&meta.id).join("root"),
            roots: self.clone(),
            meta,
            made_now,
        })
    }

    /// Digests of the base repositories' `repomd.xml` as dnf last fetched
    /// them (its cache), by repository.
    fn revisions(&self, spec: &RootSpec) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return out;
        };
        let dirs: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        for i in 0..spec.repos.len() {
            let id = spec.base_repo_id(i);
            let prefix = format!("{id}-");
            for (name, path) in &dirs {
                if name.starts_with(&prefix) {
                    if let Ok(data) = std::fs::read(path.join("repodata").join("repomd.xml")) {
                        out.insert(id.clone(), kiln_core::fsutil::sha256_bytes(&data));
                    }
                }
            }
        }
        out
    }

    async fn make_base(
        &self,
        spec: &RootSpec,
        config: &str,
        log: &dyn LogSink,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<RootMeta, RootError> {
        let started = Instant::now();
        let created_ms = now_ms();
        let id = format!("{}-{}-{}-{}", spec.target, spec.arch, config, created_ms);
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let root = tmp.join("root");
        make_private_dir(&root).map_err(io_err(format!("creating {}", root.display())))?;
        let conf = tmp.join("dnf.conf");
        write_dnf_conf(&conf, spec, &self.cache, self.ca.as_deref(), false)?;
        log.write(
            format!(
                "kiln: making the base root {id}: {} from {}\n",
                spec.packages.join(" "),
                spec.repos.join(" ")
            )
            .as_bytes(),
        );
        let inv = dnf_invocation(self, &conf, &root, spec, &spec.packages, None, &tmp);
        log.write(format!("kiln: running {}\n", inv.display()).as_bytes());
        let end = run_logged(&inv, log, INIT_TIMEOUT, cancel).await?;
        match end {
            RunEnd::Exited(0) => {}
            RunEnd::Canceled => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(RootError::Canceled);
            }
            other => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(RootError::Init(format!(
                    "making the base root failed: dnf {}",
                    describe(&other)
                )));
            }
        }
        let installed = installed_packages(&root).await;
        let meta = RootMeta {
            id: id.clone(),
            target: spec.target.clone(),
            arch: spec.arch.clone(),
            config: config.to_string(),
            repos: spec.repos.clone(),
            packages: spec.packages.clone(),
            releasever: spec.releasever.clone(),
            revisions: self.revisions(spec),
            installed,
            created_ms,
            init_ms: started.elapsed().as_millis() as u64,
            size: dir_size(&root),
            uses: 0,
        };
        write_meta(&tmp, &meta)?;
        let dest = self.dir.join(&id);
        std::fs::rename(&tmp, &dest).map_err(io_err(format!("renaming {}", tmp.display())))?;
        log.write(
            format!(
                "kiln: base root {id} made in {:.1} s ({} packages, {} MB)\n",
                meta.init_ms as f64 / 1000.0,
                meta.installed.len(),
                meta.size >> 20
            )
            .as_bytes(),
        );
        Ok(meta)
    }

    /// Remove the base roots of (target, arch) past the newest
    /// [`KEEP_ROOTS`], unless a job uses them.
    fn prune(&self, target: &str, arch: &str) {
        let st = self.lock();
        let old = self
            .list()
            .into_iter()
            .filter(|m| m.target == target && m.arch == arch)
            .skip(KEEP_ROOTS)
            .filter(|m| !st.in_use.contains_key(&m.id));
        for m in old {
            let _ = std::fs::remove_dir_all(self.dir.join(&m.id));
        }
    }
}

fn changed(then: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> bool {
    // A repository dnf has no metadata of now is not taken as changed.
    now.iter().any(|(k, v)| then.get(k).is_some_and(|t| t != v))
}

pub(crate) fn describe(end: &RunEnd) -> String {
    match end {
        RunEnd::Exited(c) => format!("exited with status {c}"),
        RunEnd::Signaled => "was killed by a signal".into(),
        RunEnd::TimedOut => "timed out".into(),
        RunEnd::Canceled => "was canceled".into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The base roots under `dir` (from their `meta.json`), newest first.
pub fn list_roots(dir: &Path) -> Vec<RootMeta> {
    let mut out: Vec<RootMeta> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let data = std::fs::read(e.path().join("meta.json")).ok()?;
            serde_json::from_slice(&data).ok()
        })
        .collect();
    out.sort_by_key(|m: &RootMeta| std::cmp::Reverse(m.created_ms));
    out
}

fn write_meta(dir: &Path, meta: &RootMeta) -> Result<(), kiln_core::error::IoError> {
    let text = serde_json::to_vec_pretty(meta).unwrap_or_default();
    let path = dir.join("meta.json");
    kiln_core::fsutil::write_atomic(&path, &text, 0o600)
        .map_err(io_err(format!("writing {}", path.display())))
}

fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.path().symlink_metadata() {
                total += m.blocks() * 512;
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    total
}

/// Every package in a root's rpm database.
async fn installed_packages(root: &Path) -> Vec<String> {
    let out = tokio::process::Command::new("rpm")
        .arg("--root")
        .arg(root)
        .args([
            "--define",
            "_dbpath /var/lib/rpm",
            "-qa",
            "--qf",
            "%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\\n",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await;
    let mut list: Vec<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(kiln_core::names::printable)
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

/// dnf's configuration for a root: no repository of the host, the shared
/// cache, the base repos (checked every few minutes) and, for a job, Kiln's
/// own repositories (checked every time, and skipped while not yet
/// published).
pub(crate) fn write_dnf_conf(
    path: &Path,
    spec: &RootSpec,
    cache: &Path,
    ca: Option<&Path>,
    with_kiln: bool,
) -> Result<(), kiln_core::error::IoError> {
    let yes = |b: bool| if b { "1" } else { "0" };
    let mut c = format!(
        "[main]\ncachedir={}\nkeepcache=1\ninstall_weak_deps=0\ntsflags=nodocs\nbest=1\n\
         plugins=0\nreposdir=\ngpgcheck={}\nskip_if_unavailable=0\n\n",
        cache.display(),
        yes(spec.gpgcheck)
    );
    for (i, url) in spec.repos.iter().enumerate() {
        c += &format!(
            "[{id}]\nname={id}\nbaseurl={url}\nenabled=1\ngpgcheck={}\nmetadata_expire={BASE_METADATA_EXPIRE_SECS}\n",
            yes(spec.gpgcheck),
            id = spec.base_repo_id(i)
        );
        if !spec.gpgkeys.is_empty() {
            c += &format!("gpgkey={}\n", spec.gpgkeys.join(" "));
        }
        c += "\n";
    }
    if with_kiln {
        for (t, url, key) in &spec.kiln_repos {
            c += &format!(
                "[kiln-{t}]\nname={t} (kiln)\nbaseurl={url}\nenabled=1\nmetadata_expire=0\n\
                 skip_if_unavailable=1\ngpgcheck={}\n",
                yes(!key.is_empty())
            );
            if !key.is_empty() {
                c += &format!("gpgkey={key}\n");
            }
            if let (true, Some(ca)) = (url.starts_with("https://"), ca) {
                c += &format!("sslcacert={}\n", ca.display());
            }
            c += "\n";
        }
    }
    kiln_core::fsutil::write_atomic(path, c.as_bytes(), 0o600)
        .map_err(io_err(format!("writing {}", path.display())))
}

/// `dnf install` into `root` (through `overlay` when given), run from
/// `cwd`, with nothing of the worker's environment but a proxy.
pub(crate) fn dnf_invocation(
    roots: &Roots,
    conf: &Path,
    root: &Path,
    spec: &RootSpec,
    what: &[String],
    overlay: Option<OverlayMount>,
    cwd: &Path,
) -> Invocation {
    let os = |s: &str| OsString::from(s);
    let mut argv = vec![os("dnf"), os("--config")];
    argv.push(conf.into());
    argv.push(os("--installroot"));
    argv.push(root.into());
    if !spec.releasever.is_empty() {
        argv.push(os("--releasever"));
        argv.push(os(&spec.releasever));
    }
    let mut cachedir = OsString::from("--setopt=cachedir=");
    cachedir.push(&roots.cache);
    argv.push(cachedir);
    argv.push(os("--setopt=reposdir="));
    argv.extend(["-y", "--nodocs", "install", "--"].map(os));
    argv.extend(what.iter().map(|w| os(w)));
    let mut env = vec![
        (os("HOME"), roots.home.clone().into_os_string()),
        (
            os("PATH"),
            os("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ),
        (os("LC_ALL"), os("C.UTF-8")),
    ];
    for k in [
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        if let Some(v) = std::env::var_os(k) {
            env.push((os(k), v));
        }
    }
    Invocation {
        argv,
        cwd: cwd.to_path_buf(),
        env,
        clear_env: true,
        pid_namespace: false,
        overlay,
    }
}

/// A job's private root over a base: directories in the job directory.
pub struct JobRoot {
    pub overlay: OverlayMount,
    /// What dnf did for this job (`root.log`).
    pub log_path: PathBuf,
}

impl JobRoot {
    pub fn new(job_dir: &Path, base: &Held) -> Result<JobRoot, kiln_core::error::IoError> {
        let d = job_dir.join("root");
        let (upper, work, merged) = (d.join("upper"), d.join("work"), d.join("merged"));
        for p in [&upper, &work, &merged] {
            make_private_dir(p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        Ok(JobRoot {
            overlay: OverlayMount {
                lower: base.root.clone(),
                upper,
                work,
                target: merged,
            },
            log_path: job_dir.join(ROOT_LOG),
        })
    }

    /// The root as commands see it (inside their mount namespace).
    pub fn path(&self) -> &Path {
        &self.overlay.target
    }
}

/// How installing the BuildRequires ended.
pub enum Installed {
    Ok,
    /// Not in any repository: the job fails with this first line.
    Unresolvable(String),
    Failed(String),
    Canceled,
}

/// Install `requires` into the job's root with dnf (base repos and Kiln's
/// own), logging to `log` and `root.log`.
pub async fn install_requires(
    roots: &Roots,
    spec: &RootSpec,
    job: &JobSpec,
    jr: &JobRoot,
    requires: &[String],
    log: &dyn LogSink,
    cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<Installed, RootError> {
    let conf = jr
        .log_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("dnf.conf");
    write_dnf_conf(&conf, spec, &roots.cache, roots.ca.as_deref(), true)?;
    // A requirement that looks like an option is not passed to dnf.
    if let Some(bad) = requires.iter().find(|r| r.starts_with('-') || r.is_empty()) {
        return Ok(Installed::Unresolvable(format!(
            "unresolvable BuildRequires: {bad:?} is not a dependency"
        )));
    }
    if requires.is_empty() {
        log.write(b"kiln: no BuildRequires to install\n");
        return Ok(Installed::Ok);
    }
    let inv = dnf_invocation(
        roots,
        &conf,
        jr.path(),
        spec,
        requires,
        Some(jr.overlay.clone()),
        jr.log_path.parent().unwrap_or(Path::new(".")),
    );
    log.write(
        format!(
            "kiln: installing the BuildRequires: {}\n",
            requires.join(", ")
        )
        .as_bytes(),
    );
    log.write(format!("kiln: running {}\n", inv.display()).as_bytes());
    let captured = Capture::new(log);
    let end = run_logged(&inv, &captured, job.timeout, cancel).await?;
    let out = captured.text();
    let trimmed = roots.trim_cache();
    if trimmed > 0 {
        log.write(
            format!(
                "kiln: removed {} MB of old packages from dnf's cache\n",
                trimmed >> 20
            )
            .as_bytes(),
        );
    }
    Ok(match end {
        RunEnd::Exited(0) => Installed::Ok,
        RunEnd::Canceled => Installed::Canceled,
        other => {
            let missing = unresolvable(&out, requires);
            if missing.is_empty() {
                Installed::Failed(format!(
                    "installing the BuildRequires failed: dnf {}",
                    describe(&other)
                ))
            } else {
                Installed::Unresolvable(format!(
                    "unresolvable BuildRequires: {} (not in: {})",
                    missing.join(", "),
                    spec.searched()
                ))
            }
        }
    })
}

/// The requirements dnf said it found nothing for.
fn unresolvable(out: &str, requires: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    for line in out.lines() {
        let l = line.trim();
        let arg = l
            .strip_prefix("No match for argument:")
            .or_else(|| l.strip_prefix("Error: Unable to find a match:"))
            .map(str::trim);
        if let Some(a) = arg {
            for r in requires {
                if (a == r || a.split_whitespace().any(|w| w == r)) && !missing.contains(r) {
                    missing.push(r.clone());
                }
            }
            if !requires.iter().any(|r| a.contains(r.as_str())) && !a.is_empty() {
                let a = kiln_core::names::printable(a);
                if !missing.contains(&a) {
                    missing.push(a);
                }
            }
        }
        if let Some(rest) = l.split_once("nothing provides ").map(|(_, r)| r) {
            let what = rest.split(" needed by ").next().unwrap_or(rest).trim();
            let what = kiln_core::names::printable(what);
            if !missing.contains(&what) {
                missing.push(what);
            }
        }
    }
    missing
}

/// Passes output on and keeps a copy (dnf's output is small).
struct Capture<'a> {
    inner: &'a dyn LogSink,
    buf: Mutex<Vec<u8>>,
}

impl<'a> Capture<'a> {
    fn new(inner: &'a dyn LogSink) -> Capture<'a> {
        Capture {
            inner,
            buf: Mutex::new(Vec::new()),
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl LogSink for Capture<'_> {
    fn write(&self, data: &[u8]) {
        self.inner.write(data);
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() < 4 << 20 {
            b.extend_from_slice(data);
        }
    }
}

/// Writes to the job's log and to `root.log`.
pub struct Tee<'a> {
    pub log: &'a dyn LogSink,
    pub file: Mutex<Option<std::fs::File>>,
}

impl<'a> Tee<'a> {
    pub fn new(log: &'a dyn LogSink, path: &Path) -> Result<Tee<'a>, kiln_core::error::IoError> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        Ok(Tee {
            log,
            file: Mutex::new(Some(f)),
        })
    }
}

impl LogSink for Tee<'_> {
    fn write(&self, data: &[u8]) {
        use std::io::Write;
        self.log.write(data);
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = f.write_all(data);
        }
    }
}

/// `root.log`'s opening: the base root and what it holds.
pub fn describe_base(held: &Held) -> String {
    let m = &held.meta;
    let mut s = format!(
        "kiln: buildroot of target {} ({}), base root {} {} (made {} ms after the epoch, in {:.1} s, used {} times)\n\
         kiln: base repos: {}\nkiln: base packages ({} installed):\n",
        m.target,
        m.arch,
        m.id,
        if held.made_now { "made for this job" } else { "reused" },
        m.created_ms,
        m.init_ms as f64 / 1000.0,
        m.uses,
        m.repos.join(" "),
        m.installed.len()
    );
    for p in &m.installed {
        s += "  ";
        s += p;
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RootSpec {
        RootSpec::new(
            "el9",
            "x86_64",
            &pb::Buildroot {
                repos: vec!["https://m.example/el9/$basearch/os/".into()],
                packages: vec!["bash".into(), "rpm-build".into()],
                releasever: "9".into(),
                gpgcheck: false,
                gpgkeys: vec![],
                kiln_repos: vec![pb::KilnRepo {
                    target: "el9".into(),
                    url: "https://kiln:8080/repos/el9/$basearch/".into(),
                    gpgkey: String::new(),
                }],
            },
        )
    }

    #[test]
    fn basearch_is_expanded_and_the_config_hash_follows_the_config() {
        let s = spec();
        assert_eq!(s.repos, ["https://m.example/el9/x86_64/os/"]);
        assert_eq!(s.kiln_repos[0].1, "https://kiln:8080/repos/el9/x86_64/");
        let mut other = s.clone();
        assert_eq!(s.config_hash(), other.config_hash());
        other.packages.push("gcc".into());
        assert_ne!(s.config_hash(), other.config_hash());
        // Kiln's own repositories are not part of the base.
        let mut k = s.clone();
        k.kiln_repos.clear();
        assert_eq!(s.config_hash(), k.config_hash());
    }

    #[test]
    fn dnf_says_what_it_could_not_find() {
        let out = "Last metadata expiration check: 0:00:01 ago.\n\
                   No match for argument: libgreet-devel >= 2\n\
                   Error: Unable to find a match: libgreet-devel >= 2\n";
        let req = vec!["gcc".to_string(), "libgreet-devel >= 2".to_string()];
        assert_eq!(unresolvable(out, &req), ["libgreet-devel >= 2"]);
        let out2 = " Problem: conflicting requests\n  - nothing provides libz.so.1()(64bit) needed by foo-1-1.x86_64\n";
        assert_eq!(unresolvable(out2, &req), ["libz.so.1()(64bit)"]);
        assert!(unresolvable("Error: some network failure\n", &req).is_empty());
    }

    #[test]
    fn a_changed_revision_counts_a_missing_one_does_not() {
        let a: BTreeMap<String, String> = [("r".to_string(), "1".to_string())].into();
        let b: BTreeMap<String, String> = [("r".to_string(), "2".to_string())].into();
        assert!(changed(&a, &b));
        assert!(!changed(&a, &a));
        assert!(!changed(&a, &BTreeMap::new()));
    }

    #[test]
    fn a_noarch_job_uses_a_root_of_the_host_arch() {
        let b = pb::Buildroot {
            repos: vec!["http://m/$basearch/".into()],
            ..Default::default()
        };
        let s = RootSpec::new("t", "noarch", &b);
        assert_eq!(s.arch, kiln_core::names::host_arch());
        assert_eq!(
            s.repos,
            [format!("http://m/{}/", kiln_core::names::host_arch())]
        );
    }

    #[test]
    fn the_package_cache_is_trimmed_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::new(tmp.path(), None, 250);
        let pk = tmp.path().join("dnf-cache/base-1234/packages");
        std::fs::create_dir_all(&pk).unwrap();
        std::fs::write(pk.parent().unwrap().join("repomd.xml"), vec![0u8; 500]).unwrap();
        for (i, name) in ["old.rpm", "mid.rpm", "new.rpm"].iter().enumerate() {
            let p = pk.join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        assert_eq!(roots.trim_cache(), 100);
        assert!(!pk.join("old.rpm").exists());
        assert!(pk.join("mid.rpm").exists() && pk.join("new.rpm").exists());
        // Metadata is not counted nor removed.
        assert!(pk.parent().unwrap().join("repomd.xml").exists());
        assert_eq!(roots.trim_cache(), 0);
    }

    #[test]
    fn a_half_made_base_is_removed_at_start_a_made_one_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::new(tmp.path(), None, 1 << 30);
        let dir = tmp.path().join("roots");
        std::fs::create_dir_all(dir.join(".el9-x86_64-abc-1.tmp/root/usr")).unwrap();
        std::fs::create_dir_all(dir.join("el9-x86_64-abc-2/root")).unwrap();
        assert_eq!(roots.remove_partial(), 1);
        assert!(!dir.join(".el9-x86_64-abc-1.tmp").exists());
        assert!(dir.join("el9-x86_64-abc-2/root").exists());
    }

    #[test]
    fn the_searched_repositories_are_named() {
        assert_eq!(spec().searched(), "el9-base, el9 (kiln)");
    }
}
