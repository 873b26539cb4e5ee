//! The master: owns the database, the scheduler and the files; serves the
//! worker endpoint (gRPC over mutual TLS) and the HTTP API.

pub mod api;
pub mod backup;
pub mod batch;
pub mod config;
mod grpc;
pub mod hooks;
pub mod housekeeping;
pub mod image;
mod image_rebuild;
mod intake;
pub mod logs;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod paths;
pub mod project;
pub mod query;
pub mod release;
pub mod result;
pub mod sched;
mod shared;
pub mod stats;
pub mod stats_page;
pub mod submit;
pub mod syncer;
mod tls;
pub mod web;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_core::pki::{Ca, RevocationList};
use kiln_store::{Store, StoreError};
use rand::RngCore;
use tokio::sync::{broadcast, Notify};

pub use config::{MasterConfig, Target};
use logs::Logs;
use paths::Paths;
use sched::{Sched, SchedConfig, SystemClock};
pub use shared::{Core, SchedView};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
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
    #[error("{0}")]
    Locked(String),
}

pub(crate) use kiln_core::error::io_err;

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
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e).into()),
    }
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    let token = hex::encode(b);
    write_secret(path, &token)?;
    Ok(token)
}

/// Write a secret file with mode 0600 (temporary name, then rename).
pub fn write_secret(path: &std::path::Path, content: &str) -> Result<(), MasterError> {
    Ok(
        kiln_core::fsutil::write_atomic(path, content.as_bytes(), 0o600)
            .map_err(io_err(format!("writing {}", path.display())))?,
    )
}

impl Master {
    /// Open the data directory, restore state and start both listeners.
    pub async fn start(mut cfg: MasterConfig) -> Result<Master, MasterError> {
        cfg.validate()?;
        let paths = Paths::new(&cfg.data);
        housekeeping::check_db_present(&paths)?;
        housekeeping::secure_data_dir(&paths)?;
        let lock = housekeeping::lock_data_dir(&paths)?;
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
        let releases = store.read(kiln_store::release::all).await?;
        let fixed = release::recover(&paths, &releases)
            .map_err(|e| MasterError::Recovery(format!("checking releases/: {e}")))?;
        if fixed > 0 {
            tracing::info!("releases/: {fixed} entries brought in line with the database");
        }
        let ca = Ca::load_or_create(&paths.ca_dir())?;
        let admin_token = read_or_create_token(&paths.admin_token())?;
        let revoked = RevocationList::new();
        for s in store.read(kiln_store::revoked_serials).await? {
            revoked.revoke(s);
        }
        let mut sched = Sched::new(
            SchedConfig {
                lease: Duration::from_secs(cfg.lease_secs),
                max_attempts: cfg.max_attempts,
                job_timeout_secs: cfg.job_timeout_secs,
                log_cap: cfg.log_cap,
                // Set once the API's address is known (below).
                buildroots: Default::default(),
            },
            Arc::new(SystemClock),
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
        // Subscribed before the repository builder starts: no publication
        // a waiting build needs can be announced before it listens.
        let publications = events.subscribe();
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
            paths.clone(),
            cfg.createrepo.clone(),
            repo_targets,
            Arc::new(move |build, state| {
                let _ = ev.send(sched::Event::Publish { build, state });
            }),
        );
        for t in repo.unpublished_targets() {
            repo.request_regen(&t)?;
        }
        tokio::spawn(repo.clone().run());
        let (srpms_made, made_rx) = tokio::sync::mpsc::unbounded_channel();
        let notify = Arc::new(notify::Notifier::new(&cfg).map_err(config::ConfigError::Bad)?);
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
            queries: Default::default(),
            srpms_made,
            triggers: Default::default(),
            api_bound: Default::default(),
            worker_bound: Default::default(),
            web: Default::default(),
            metrics: Default::default(),
            stats_cache: Default::default(),
            notify,
            _lock: lock,
            cfg,
        });
        if n_active > 0 {
            tracing::info!("restored {n_active} active builds");
        }
        // The API first: its address is where buildroot jobs find the
        // published repositories, which every Assign must say.
        // The web UI's hub listens before the API serves: no event a page
        // could miss.
        web::start(&core);
        let api_addr = api::serve(core.clone()).await?;
        let _ = core.api_bound.set(api_addr);
        // Its public URL known, notifications can be made and sent.
        notify::start(&core);
        let roots = buildroots(&core.cfg, api_addr);
        let images = image::image_bases(&core.cfg, api_addr);
        let ((), fx) = core.decide(|s, _| {
            s.set_buildroots(roots);
            s.set_image_bases(images);
        });
        core.apply(fx).await;
        // Builds restored `waiting` may wait for builds that ended (or were
        // published) while the master was down: settled once every queue is
        // known, before any worker can connect.
        check_waits(&core).await?;
        tokio::spawn(publication_task(core.clone(), publications));
        tokio::spawn(image_rebuild::task(core.clone(), core.events.subscribe()));
        project::load_config_projects(&core).await?;
        tokio::spawn(project::expand_task(core.clone(), made_rx));
        if let Some(m) = core.cfg.mqtt.clone() {
            // Never waits for the broker: it connects (and reconnects) on
            // its own.
            mqtt::spawn(core.clone(), m);
        }
        let worker_addr = tls::serve_workers(core.clone()).await?;
        let _ = core.worker_bound.set(worker_addr);
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
        let (next, fx) = core.decide(|s, fx| s.expire_leases(fx));
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

/// Settle, from the database, what waiting builds wait for among the builds
/// the scheduler no longer tracks: published ones release them; failed,
/// canceled, skipped or scratch ones fail them (a publication still pending
/// is announced later, see [`publication_task`]).
pub(crate) async fn check_waits(core: &Core) -> Result<(), StoreError> {
    let ids = core.sched().waited_for_untracked();
    if ids.is_empty() {
        return Ok(());
    }
    let q = ids.clone();
    let recorded = core
        .store
        .read(move |c| kiln_store::build_states(c, &q))
        .await?;
    let recorded: std::collections::HashMap<_, _> = recorded
        .into_iter()
        .map(|(id, state, publish)| (id, (state, publish)))
        .collect();
    let ((), fx) = core.decide(|s, fx| {
        for id in ids {
            s.dependency_recorded(fx, id, recorded.get(&id).copied());
        }
    });
    if !fx.is_empty() {
        core.apply(fx).await;
    }
    Ok(())
}

/// Releases the builds waiting for a build once it is published (the
/// repository builder's `Publish` event). It sleeps on the event stream;
/// should it fall behind (the stream lagged and dropped events), it reads
/// what it may have missed from the database instead.
async fn publication_task(core: Arc<Core>, mut events: broadcast::Receiver<sched::Event>) {
    use broadcast::error::RecvError;
    use kiln_core::state::PublishState;
    loop {
        match events.recv().await {
            Ok(sched::Event::Publish {
                build,
                state: PublishState::Published,
            }) => {
                let ((), fx) = core.decide(|s, fx| s.dependency_published(fx, build));
                if !fx.is_empty() {
                    core.apply(fx).await;
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    "{n} events passed unseen: reading what waiting builds wait for from the database"
                );
                let mut pause = Duration::from_secs(1);
                while let Err(e) = check_waits(&core).await {
                    tracing::error!(
                        "checking what waiting builds wait for: {e}; again in {pause:?}"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// What each target with a buildroot sends its jobs: its base, and Kiln's
/// own repositories as workers reach them (`public_url`).
fn buildroots(
    cfg: &MasterConfig,
    api_addr: SocketAddr,
) -> std::collections::HashMap<String, kiln_proto::Buildroot> {
    let public = cfg.public_url(api_addr);
    let kiln_repo = |t: &Target, gpgcheck: bool| kiln_proto::KilnRepo {
        target: t.name.clone(),
        url: format!("{public}/repos/{}/$basearch/", t.name),
        gpgkey: if gpgcheck && t.sign_key.is_some() {
            format!("{public}/repos/{0}/RPM-GPG-KEY-kiln-{0}", t.name)
        } else {
            String::new()
        },
    };
    cfg.targets
        .iter()
        .filter_map(|t| {
            let b = t.buildroot.as_ref()?;
            let own = b.own_repo.then_some(t);
            let extra = b.extra_repos_of.iter().filter_map(|n| cfg.target(n));
            Some((
                t.name.clone(),
                kiln_proto::Buildroot {
                    repos: b.repos.clone(),
                    packages: b.packages.clone(),
                    releasever: b.releasever.clone(),
                    gpgcheck: b.gpgcheck,
                    gpgkeys: b.gpgkeys.clone(),
                    kiln_repos: own
                        .into_iter()
                        .chain(extra)
                        .map(|t| kiln_repo(t, b.gpgcheck))
                        .collect(),
                },
            ))
        })
        .collect()
}
