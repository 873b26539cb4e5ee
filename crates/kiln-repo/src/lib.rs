//! The repository builder: takes finished builds from `incoming/`, puts
//! their packages into the target's dnf repositories (signed when the target
//! signs), retires old versions and regenerates metadata, switching to it
//! atomically. Landings that arrive while createrepo_c runs are gathered and
//! published by the next run, so a burst causes a handful of runs.
//!
//! Crash safety: a build stays `pending` in the database until the metadata
//! that names its packages is live; a publication interrupted at any point
//! is simply done again (placing a package is idempotent: same header, same
//! file), so every build is published exactly once.

pub mod publish;
pub mod sign;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_core::state::PublishState;
use kiln_store::Store;
use tokio::sync::Notify;

pub use kiln_core::layout::Layout;
pub use publish::{BuildInput, Plan, TargetRepo};
pub use sign::Signer;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Io(#[from] kiln_core::error::IoError),
    #[error("{0}")]
    Tool(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
}

impl RepoError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
        move |source| RepoError::Io(kiln_core::error::io_at(path)(source))
    }
}

/// Called when a build's publication state changes: (build, state).
pub type OnChange = Arc<dyn Fn(i64, PublishState) + Send + Sync>;

pub struct RepoBuilder {
    store: Store,
    layout: Layout,
    createrepo: PathBuf,
    targets: HashMap<String, TargetRepo>,
    wake: Notify,
    regen: Mutex<HashSet<String>>,
    on_change: OnChange,
    /// createrepo_c runs so far.
    pub runs: AtomicU64,
    /// Publications (batches) so far.
    pub publications: AtomicU64,
    /// Publications that failed (a target's run, not a build).
    pub publication_failures: AtomicU64,
    /// How long a publication takes, from its snapshot to its record.
    pub publication_seconds: kiln_core::metrics::Histogram,
}

/// How long a failed publication waits before it is tried again.
const RETRY: Duration = Duration::from_secs(30);

impl RepoBuilder {
    pub fn new(
        store: Store,
        layout: Layout,
        createrepo: PathBuf,
        targets: Vec<TargetRepo>,
        on_change: OnChange,
    ) -> Arc<RepoBuilder> {
        Arc::new(RepoBuilder {
            store,
            layout,
            createrepo,
            targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
            wake: Notify::new(),
            regen: Mutex::new(HashSet::new()),
            on_change,
            runs: AtomicU64::new(0),
            publications: AtomicU64::new(0),
            publication_failures: AtomicU64::new(0),
            publication_seconds: kiln_core::metrics::Histogram::new(kiln_core::metrics::FAST),
        })
    }

    /// New builds may be waiting: publish them.
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    /// Regenerate every repository of a target.
    pub fn request_regen(&self, target: &str) -> Result<(), RepoError> {
        if !self.targets.contains_key(target) {
            return Err(RepoError::Config(format!("unknown target {target:?}")));
        }
        if let Ok(mut r) = self.regen.lock() {
            r.insert(target.to_string());
        }
        self.kick();
        Ok(())
    }

    /// Targets whose repositories have no metadata yet (first start).
    pub fn unpublished_targets(&self) -> Vec<String> {
        self.targets
            .values()
            .filter(|t| {
                t.repos().iter().any(|r| {
                    !self
                        .layout
                        .repo(&t.name, r)
                        .join("repodata/repomd.xml")
                        .exists()
                })
            })
            .map(|t| t.name.clone())
            .collect()
    }

    /// The builder's loop: wait to be kicked (or for a retry), publish
    /// everything pending, target by target.
    pub async fn run(self: Arc<Self>) {
        let mut retry_failed = true;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let pending = match self
                .store
                .read(move |c| kiln_store::pending_publications(c, retry_failed))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("repository builder: {e}");
                    vec![]
                }
            };
            retry_failed = false;
            let regen: HashSet<String> = self
                .regen
                .lock()
                .map(|mut r| std::mem::take(&mut *r))
                .unwrap_or_default();
            let mut by_target: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            for (b, t) in pending {
                by_target.entry(t).or_default().push(b);
            }
            for t in &regen {
                by_target.entry(t.clone()).or_default();
            }
            let mut failed = false;
            for (t, builds) in by_target {
                failed |= !self.publish_target(&t, builds, regen.contains(&t)).await;
            }
            if failed && retry_at.is_none() {
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
            match retry_at {
                Some(at) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep_until(at) => {
                            retry_at = None;
                            retry_failed = true;
                        }
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    async fn fail_all(&self, builds: Vec<i64>, msg: &str) {
        self.mark(
            builds
                .into_iter()
                .map(|b| (b, PublishState::Failed, Some(msg.to_string())))
                .collect(),
        )
        .await;
    }

    async fn mark(&self, builds: Vec<(i64, PublishState, Option<String>)>) {
        if builds.is_empty() {
            return;
        }
        let b2 = builds.clone();
        let r = self
            .store
            .write(move |t| {
                let now = kiln_store::now_ms();
                for (b, state, err) in &b2 {
                    kiln_store::set_publish(t, *b, *state, err.as_deref())?;
                    if *state == PublishState::Published {
                        kiln_store::stats::set_published_at(t, *b, now)?;
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!("recording publication state: {e}");
        }
        for (b, state, _) in builds {
            (self.on_change)(b, state);
        }
    }

    /// Publish some builds of one target. Returns false if anything failed.
    async fn publish_target(&self, name: &str, builds: Vec<i64>, all: bool) -> bool {
        let started = std::time::Instant::now();
        let ok = self.publish_target_inner(name, builds, all).await;
        self.publication_seconds
            .observe(started.elapsed().as_secs_f64());
        if !ok {
            self.publication_failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    async fn publish_target_inner(&self, name: &str, builds: Vec<i64>, all: bool) -> bool {
        let Some(target) = self.targets.get(name).cloned() else {
            let msg = format!("target {name:?} is not configured on this master");
            self.fail_all(builds, &msg).await;
            return false;
        };
        let t = name.to_string();
        let repos = target.repos();
        let ids = builds.clone();
        let snapshot = self
            .store
            .read(move |c| {
                let rows = kiln_store::repo_packages(c, &t)?;
                let mut gens = HashMap::new();
                for r in &repos {
                    gens.insert(r.clone(), kiln_store::repo_gen(c, &t, r)?);
                }
                let mut inputs = Vec::new();
                for b in &ids {
                    inputs.push(BuildInput {
                        id: *b,
                        artifacts: kiln_store::artifacts_of(c, *b)?,
                    });
                }
                Ok((rows, gens, inputs))
            })
            .await;
        let (rows, gens, inputs) = match snapshot {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("repository builder: {e}");
                return false;
            }
        };
        let (layout, createrepo, tgt) =
            (self.layout.clone(), self.createrepo.clone(), target.clone());
        let result = tokio::task::spawn_blocking(move || {
            publish::publish(&layout, &tgt, &createrepo, rows, gens, &inputs, all)
        })
        .await
        .unwrap_or_else(|e| Err(RepoError::Tool(format!("publication crashed: {e}"))));
        let plan = match result {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("publication failed: {e}");
                tracing::warn!("target {name}: {msg}");
                self.fail_all(builds, &msg).await;
                return false;
            }
        };
        self.runs
            .fetch_add(u64::from(plan.createrepo_runs), Ordering::Relaxed);
        self.publications.fetch_add(1, Ordering::Relaxed);
        let t = name.to_string();
        let (put, delete, gens) = (plan.put, plan.delete, plan.gens);
        let r = self
            .store
            .write(move |tx| {
                for p in &put {
                    kiln_store::put_repo_package(tx, p)?;
                }
                for (repo, file) in &delete {
                    kiln_store::delete_repo_package(tx, &t, repo, file)?;
                }
                for (repo, gen) in &gens {
                    kiln_store::set_repo_gen(tx, &t, repo, *gen)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!("recording publication of {name}: {e}");
            return false;
        }
        let ok = plan.failed.is_empty();
        let mut marks: Vec<(i64, PublishState, Option<String>)> = plan
            .published
            .into_iter()
            .map(|b| (b, PublishState::Published, None))
            .collect();
        marks.extend(
            plan.failed
                .into_iter()
                .map(|(b, e)| (b, PublishState::Failed, Some(e))),
        );
        self.mark(marks).await;
        tracing::info!("target {name}: published");
        ok
    }
}
