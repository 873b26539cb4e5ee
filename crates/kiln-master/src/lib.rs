//! The master: owns the database, the scheduler and the files; serves the
//! worker endpoint (gRPC over mutual TLS) and the HTTP API.

pub mod api;
pub mod backup;
pub mod config;
mod grpc;
pub mod housekeeping;
mod intake;
pub mod logs;
pub mod paths;
pub mod sched;
pub mod syncer;
mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_core::pki::{Ca, RevocationList};
use kiln_store::{Store, StoreError};
use rand::RngCore;
use tokio::sync::{broadcast, Notify};

pub use config::{MasterConfig, Target};
use logs::Logs;
use paths::Paths;
use sched::{Effects, Sched};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] kiln_core::pki::PkiError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Repo(#[from] kiln_repo::RepoError),
    #[error("{0}")]
    Recovery(String),
    #[error("{0}")]
    LostDatabase(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MasterError {
    let what = what.into();
    move |source| MasterError::Io { what, source }
}

/// Everything the master's tasks share.
pub struct Core {
    pub cfg: MasterConfig,
    pub paths: Paths,
    pub store: Store,
    pub logs: Logs,
    /// Makes intake's small files durable (`durability = full` only).
    pub syncer: Option<Arc<syncer::Syncer>>,
    pub ca: Ca,
    pub revoked: RevocationList,
    pub admin_token: String,
    sched: Mutex<Sched>,
    lease_changed: Notify,
    /// The lease timer has no deadline and waits to be told of a new lease.
    lease_idle: std::sync::atomic::AtomicBool,
    /// Build ids that reached a final state.
    pub build_done: broadcast::Sender<i64>,
    /// Every durable state change, for live views.
    pub events: broadcast::Sender<sched::Event>,
    pub repo: Arc<kiln_repo::RepoBuilder>,
    /// Headers of SRPMs in the content-addressed store (immutable content,
    /// so a submit of a known SRPM reads nothing from disk).
    pub srpm_cache: Mutex<std::collections::HashMap<String, (u64, kiln_core::srpm::PackageInfo)>>,
    /// sha256 of artifacts verified as they were uploaded, by
    /// (job, attempt, name): intake need not hash them again.
    pub verified: Mutex<std::collections::HashMap<(i64, u32, String), String>>,
    /// Artifacts staged per job attempt (name → declared size), to bound
    /// what one attempt may stage and to clean up after its result.
    staging: Mutex<std::collections::HashMap<(i64, u32), std::collections::HashMap<String, u64>>>,
}

impl Core {
    /// Record an artifact a job attempt starts to stage; refuse it past
    /// `max_job_files` files or `max_job_upload` bytes for the attempt.
    pub(crate) fn stage(
        &self,
        job: i64,
        attempt: u32,
        name: &str,
        size: u64,
    ) -> Result<(), tonic::Status> {
        let mut st = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let e = st.entry((job, attempt)).or_default();
        let others: u64 = e.iter().filter(|(n, _)| *n != name).map(|(_, s)| s).sum();
        let files = e.len() + usize::from(!e.contains_key(name));
        if files as u64 > self.cfg.max_job_files {
            return Err(tonic::Status::resource_exhausted(format!(
                "job {job} may stage at most {} files (max_job_files)",
                self.cfg.max_job_files
            )));
        }
        if others.saturating_add(size) > self.cfg.max_job_upload {
            return Err(tonic::Status::resource_exhausted(format!(
                "job {job} may stage at most {} bytes in all (max_job_upload); {name} of {size} bytes is past it",
                self.cfg.max_job_upload
            )));
        }
        e.insert(name.to_string(), size);
        Ok(())
    }

    /// Forget what a job attempt staged; whether it had staged anything.
    pub(crate) fn unstage(&self, job: i64, attempt: u32) -> bool {
        self.staging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(job, attempt))
            .is_some()
    }

    pub fn sched(&self) -> MutexGuard<'_, Sched> {
        // A panic while holding the lock is a bug; keep serving with the
        // state as it is rather than cascading the panic.
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the effects of a scheduler decision: wait for the writes, send
    /// the messages, close the logs of ended jobs and wake build waiters.
    pub async fn apply(&self, fx: Effects) {
        // A new lease never ends before the ones already running, so the
        // timer only needs a nudge when it has no deadline at all.
        if self.lease_idle.load(std::sync::atomic::Ordering::SeqCst) {
            self.lease_changed.notify_one();
        }
        self.apply_quiet(fx).await
    }

    /// [`Core::apply`] without waking the lease timer: for the timer's own
    /// decisions (waking itself would leave a permit behind and turn its
    /// wait into a busy loop).
    async fn apply_quiet(&self, fx: Effects) {
        // The logs of ended jobs are queued behind the state changes that
        // end them, so both usually go in one commit.
        let logs_saved = self.logs.save(&fx.ended_jobs);
        match fx.finish().await {
            Ok((done, ended, events)) => {
                if !done.is_empty() {
                    // Succeeded builds were queued for publication in the
                    // same commit.
                    self.repo.kick();
                }
                for e in events {
                    let _ = self.events.send(e);
                }
                logs_saved.await;
                for (build, job) in ended {
                    self.logs.close(build, job);
                }
                for b in done {
                    let _ = self.build_done.send(b);
                }
            }
            Err(e) => tracing::error!("database write failed: {e}"),
        }
    }
}

/// A running master.
pub struct Master {
    pub core: Arc<Core>,
    pub api_addr: SocketAddr,
    pub worker_addr: SocketAddr,
}

fn read_or_create_token(path: &std::path::Path) -> Result<String, MasterError> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    }
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    let token = hex::encode(b);
    write_secret(path, &token)?;
    Ok(token)
}

/// Write a secret file with mode 0600 (temporary name, then rename).
pub fn write_secret(path: &std::path::Path, content: &str) -> Result<(), MasterError> {
    kiln_core::fsutil::write_atomic(path, content.as_bytes(), 0o600)
        .map_err(io_err(format!("writing {}", path.display())))
}

impl Master {
    /// Open the data directory, restore state and start both listeners.
    pub async fn start(mut cfg: MasterConfig) -> Result<Master, MasterError> {
        cfg.validate()?;
        let paths = Paths::new(&cfg.data);
        housekeeping::secure_data_dir(&paths)?;
        paths.create_dirs().map_err(io_err(format!(
            "creating directories in {}",
            cfg.data.display()
        )))?;
        let store = Store::open(&paths.db(), cfg.durability)?;
        housekeeping::check_not_lost(&paths, store.read(kiln_store::holds_nothing).await?)?;
        let cleaned = housekeeping::clean_tmp(&paths);
        if cleaned > 0 {
            tracing::info!("removed {cleaned} partial files from tmp/");
        }
        let ca = Ca::load_or_create(&paths.ca_dir())?;
        let admin_token = read_or_create_token(&paths.admin_token())?;
        let revoked = RevocationList::new();
        for s in store.read(kiln_store::revoked_serials).await? {
            revoked.revoke(s);
        }
        let mut sched = Sched::new(
            store.clone(),
            Duration::from_secs(cfg.lease_secs),
            cfg.max_attempts,
            cfg.job_timeout_secs,
            cfg.log_cap,
        );
        let rewritten = syncer::recover(&paths, &store)
            .await
            .map_err(|e| MasterError::Recovery(format!("rewriting incoming files: {e}")))?;
        if rewritten > 0 {
            tracing::info!("rewrote {rewritten} incoming files a crash may have lost");
        }
        let syncer = (cfg.durability == kiln_store::Durability::Full)
            .then(|| syncer::Syncer::new(&paths, store.clone()));
        if let Some(s) = &syncer {
            tokio::spawn(s.clone().run());
        }
        let active = store.read(kiln_store::active_builds).await?;
        let n_active = active.len();
        let attempts: std::collections::HashSet<(i64, u32)> = active
            .iter()
            .flat_map(|(_, jobs)| jobs.iter())
            .filter(|j| !j.state.is_final())
            .map(|j| (j.id, j.attempt))
            .collect();
        let cleaned = housekeeping::clean_uploads(&paths, &attempts);
        if cleaned > 0 {
            tracing::info!("removed {cleaned} staged uploads of attempts that are over");
        }
        sched.restore(active);
        sched.set_next_ids(store.read(kiln_store::next_ids).await?);
        let (build_done, _) = broadcast::channel(4096);
        let (events, _) = broadcast::channel::<sched::Event>(16384);
        let mut repo_targets = Vec::new();
        for t in &cfg.targets {
            let signer = match &t.sign_key {
                Some(key) => Some(kiln_repo::Signer::setup(
                    key,
                    &paths.gnupg(&t.name),
                    &paths.pubkey(&t.name),
                )?),
                None => None,
            };
            repo_targets.push(kiln_repo::TargetRepo {
                name: t.name.clone(),
                arches: t.arches.clone(),
                keep: t.keep,
                signer,
                tosign_dir: t.tosign_dir.clone(),
            });
        }
        let ev = events.clone();
        let repo = kiln_repo::RepoBuilder::new(
            store.clone(),
            paths.repo_layout(),
            cfg.createrepo.clone(),
            repo_targets,
            Arc::new(move |build, state| {
                let _ = ev.send(sched::Event::Publish {
                    build,
                    state: state.to_string(),
                });
            }),
        );
        for t in repo.unpublished_targets() {
            repo.request_regen(&t)?;
        }
        tokio::spawn(repo.clone().run());
        let core = Arc::new(Core {
            logs: Logs::new(paths.clone(), store.clone(), cfg.log_cap),
            syncer,
            paths,
            store,
            ca,
            revoked,
            admin_token,
            sched: Mutex::new(sched),
            lease_changed: Notify::new(),
            lease_idle: std::sync::atomic::AtomicBool::new(true),
            build_done,
            events,
            repo,
            srpm_cache: Mutex::new(std::collections::HashMap::new()),
            verified: Mutex::new(std::collections::HashMap::new()),
            staging: Mutex::new(std::collections::HashMap::new()),
            cfg,
        });
        if n_active > 0 {
            tracing::info!("restored {n_active} active builds");
        }
        let worker_addr = tls::serve_workers(core.clone()).await?;
        let api_addr = api::serve(core.clone()).await?;
        tokio::spawn(lease_task(core.clone()));
        Ok(Master {
            core,
            api_addr,
            worker_addr,
        })
    }
}

/// Sleeps until the earliest lease or timeout deadline (or until leases
/// change), then re-queues the jobs whose lease lapsed and fails the ones
/// past their timeout. A timer, not a polling loop: it never wakes itself.
async fn lease_task(core: Arc<Core>) {
    use std::sync::atomic::Ordering;
    loop {
        // Register as a waiter before looking, so a lease added after the
        // look (which finds the flag set and notifies) wakes this wait
        // rather than leaving a permit for a later one.
        let changed = core.lease_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        core.lease_idle.store(true, Ordering::SeqCst);
        let mut fx = Effects::default();
        let next = core.sched().expire_leases(&mut fx);
        if next.is_some() {
            core.lease_idle.store(false, Ordering::SeqCst);
        }
        core.apply_quiet(fx).await;
        match next {
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => changed.await,
        }
    }
}
