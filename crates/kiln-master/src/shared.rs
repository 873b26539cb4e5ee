//! `Core`: what the master's tasks share (configuration, files, database,
//! scheduler, logs, repository builder), and the one way scheduler
//! decisions take effect: [`Core::decide`], then [`Core::apply`].

use std::sync::{Arc, Mutex, MutexGuard};

use kiln_core::pki::{Ca, RevocationList};
use kiln_store::Store;
use tokio::sync::{broadcast, Notify};

use crate::config::MasterConfig;
use crate::logs::Logs;
use crate::paths::Paths;
use crate::sched::effects::Commit;
use crate::sched::{self, Effects, Sched, Write};
use crate::syncer;

/// The scheduler under its lock, read only.
pub struct SchedView<'a>(MutexGuard<'a, Sched>);

impl std::ops::Deref for SchedView<'_> {
    type Target = Sched;
    fn deref(&self) -> &Sched {
        &self.0
    }
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
    pub(crate) sched: Mutex<Sched>,
    pub(crate) lease_changed: Notify,
    /// The lease timer has no deadline and waits to be told of a new lease.
    pub(crate) lease_idle: std::sync::atomic::AtomicBool,
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
    /// The data directory's lock, held as long as the master lives.
    pub(crate) _lock: std::fs::File,
    pub(crate) staging:
        Mutex<std::collections::HashMap<(i64, u32), std::collections::HashMap<String, u64>>>,
    /// Queries put to workers (what an SRPM makes), waiting for their
    /// answers (see [`crate::query`]).
    pub queries: Queries,
    /// Builds from git whose srpm job made their SRPM, for the task that
    /// adds their jobs (`crate::project::expand_task`).
    pub(crate) srpms_made: tokio::sync::mpsc::UnboundedSender<i64>,
    /// Serializes triggers of builds from git (a delivery id is checked and
    /// recorded as one step).
    pub(crate) triggers: tokio::sync::Mutex<()>,
    /// Where the API listens, once it does.
    pub(crate) api_bound: std::sync::OnceLock<std::net::SocketAddr>,
    /// The worker listener's bound address, once it is bound.
    pub(crate) worker_bound: std::sync::OnceLock<std::net::SocketAddr>,
    /// The web UI's live event hub.
    pub web: crate::web::Hub,
    /// What `/metrics` shows.
    pub metrics: crate::metrics::Metrics,
    /// Notification sinks; the outbox rows of a write are queued in it.
    pub notify: Arc<crate::notify::Notifier>,
    /// The statistics last computed, and when (they are recomputed at most
    /// every few seconds).
    pub(crate) stats_cache:
        tokio::sync::Mutex<Option<(std::time::Instant, kiln_api::stats::StatsView)>>,
}

impl Core {
    /// The API's address (the configured one until it is bound).
    pub fn api_addr(&self) -> std::net::SocketAddr {
        self.api_bound.get().copied().unwrap_or(self.cfg.api_listen)
    }

    /// The worker listener's address (the configured one until it is
    /// bound).
    pub fn worker_addr(&self) -> std::net::SocketAddr {
        self.worker_bound
            .get()
            .copied()
            .unwrap_or(self.cfg.worker_listen)
    }
}

/// The queries put to workers and not answered yet, by id. An answer is
/// taken only from the session the query went to; when that session ends,
/// its queries' senders are dropped (the asker sees the worker gone).
#[derive(Default)]
pub struct Queries {
    next: std::sync::atomic::AtomicU64,
    pending: Mutex<std::collections::HashMap<u64, PendingQuery>>,
}

struct PendingQuery {
    worker: String,
    conn: u64,
    tx: tokio::sync::oneshot::Sender<kiln_proto::QueryResult>,
}

impl Queries {
    fn pending(&self) -> MutexGuard<'_, std::collections::HashMap<u64, PendingQuery>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new query id (never 0).
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// Wait for the answer to query `id`, sent to session `conn` of
    /// `worker`. Register under the scheduler lock, in the same look that
    /// found the session current, so its end cannot be missed
    /// ([`Queries::session_ended`] runs under that lock too).
    pub(crate) fn register(
        &self,
        id: u64,
        worker: &str,
        conn: u64,
        tx: tokio::sync::oneshot::Sender<kiln_proto::QueryResult>,
    ) {
        self.pending().insert(
            id,
            PendingQuery {
                worker: worker.to_string(),
                conn,
                tx,
            },
        );
    }

    /// Forget query `id` (answered, timed out, or never sent).
    pub(crate) fn forget(&self, id: u64) {
        self.pending().remove(&id);
    }

    /// An answer from session `conn` of `worker`: handed to whoever waits
    /// for it if that query went there. Whether it was taken.
    pub(crate) fn answer(&self, worker: &str, conn: u64, r: kiln_proto::QueryResult) -> bool {
        let mut p = self.pending();
        match p.get(&r.id) {
            Some(q) if q.worker == worker && q.conn == conn => {}
            _ => return false,
        }
        match p.remove(&r.id) {
            Some(q) => q.tx.send(r).is_ok(),
            None => false,
        }
    }

    /// Session `conn` of `worker` ended: its queries will not be answered
    /// (their senders are dropped). How many there were.
    pub(crate) fn session_ended(&self, worker: &str, conn: u64) -> usize {
        let mut p = self.pending();
        let before = p.len();
        p.retain(|_, q| !(q.worker == worker && q.conn == conn));
        before - p.len()
    }

    /// Queries waiting for an answer.
    pub fn outstanding(&self) -> usize {
        self.pending().len()
    }
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
            return Err(tonic::Status::out_of_range(format!(
                "job {job} may stage at most {} files (max_job_files)",
                self.cfg.max_job_files
            )));
        }
        if others.saturating_add(size) > self.cfg.max_job_upload {
            return Err(tonic::Status::out_of_range(format!(
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

    fn lock(&self) -> MutexGuard<'_, Sched> {
        // A panic while holding the lock is a bug; keep serving with the
        // state as it is rather than cascading the panic.
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A look at the scheduler (read only: every change goes through
    /// [`Core::decide`]).
    pub fn sched(&self) -> SchedView<'_> {
        SchedView(self.lock())
    }

    /// Make scheduler decisions: `f` runs under the scheduler lock and the
    /// database writes it decided are queued before the lock is released,
    /// so writes commit in the order the decisions were made. Apply the
    /// effects returned with [`Core::apply`].
    pub fn decide<R>(&self, f: impl FnOnce(&mut Sched, &mut Effects) -> R) -> (R, Effects) {
        let mut s = self.lock();
        let mut fx = Effects::default();
        let r = f(&mut s, &mut fx);
        self.queue_writes(&mut fx);
        drop(s);
        (r, fx)
    }

    /// Hand the decided writes to the database writer (in order).
    pub(crate) fn queue_writes(&self, fx: &mut Effects) {
        for w in std::mem::take(&mut fx.writes) {
            // The notifications a write announces are queued in its own
            // closure: the same commit as the state change.
            let nq = self.notify.plan(&w);
            let queued = nq.is_some();
            let c: Commit = match w {
                Write::InsertBuild { build, jobs } => Box::pin(self.store.write(move |t| {
                    kiln_store::insert_rows(t, &build, &jobs)?;
                    crate::notify::queue(t, &nq)
                })),
                Write::SaveJob(row) => Box::pin(self.store.write(move |t| {
                    kiln_store::save_job(t, &row)?;
                    crate::notify::queue(t, &nq)
                })),
                Write::FinishJob {
                    build,
                    artifacts,
                    job,
                } => Box::pin(self.store.write(move |t| {
                    for a in &artifacts {
                        kiln_store::add_artifact(t, build, a)?;
                    }
                    kiln_store::save_job(t, &job)?;
                    crate::notify::queue(t, &nq)
                })),
                Write::SetBuildState {
                    build,
                    state,
                    reason,
                    publish,
                } => Box::pin(self.store.write(move |t| {
                    kiln_store::set_build_state(t, build, state, reason.as_deref(), publish)?;
                    crate::notify::queue(t, &nq)
                })),
                Write::SetSource { build, source } => Box::pin(
                    self.store
                        .write(move |t| kiln_store::set_build_source(t, build, &source)),
                ),
                Write::Expand { build, jobs } => Box::pin(
                    self.store
                        .write(move |t| kiln_store::expand_build(t, &build, &jobs)),
                ),
                Write::Delivery { id, builds } => Box::pin(
                    self.store
                        .write(move |t| kiln_store::put_delivery(t, &id, &builds)),
                ),
            };
            fx.commits.push(self.notify.after_commit(c, queued));
        }
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
    pub(crate) async fn apply_quiet(&self, fx: Effects) {
        if let Err(e) = self.apply_inner(fx).await {
            tracing::error!("database write failed: {e}");
        }
    }

    /// [`Core::apply`], saying whether the writes committed (when they did
    /// not, nothing was sent).
    pub async fn try_apply(&self, fx: Effects) -> Result<(), kiln_store::StoreError> {
        if self.lease_idle.load(std::sync::atomic::Ordering::SeqCst) {
            self.lease_changed.notify_one();
        }
        self.apply_inner(fx).await
    }

    async fn apply_inner(&self, mut fx: Effects) -> Result<(), kiln_store::StoreError> {
        // The logs of ended jobs are queued behind the state changes that
        // end them, so both usually go in one commit.
        let logs_saved = self.logs.save(&fx.ended_jobs);
        let made = std::mem::take(&mut fx.srpms_made);
        match fx.finish().await {
            Ok((done, ended, events)) => {
                for b in made {
                    let _ = self.srpms_made.send(b);
                }
                if !done.is_empty() {
                    // Succeeded builds were queued for publication in the
                    // same commit.
                    self.repo.kick();
                }
                for e in events {
                    self.metrics.on_event(&e);
                    let _ = self.events.send(e);
                }
                logs_saved.await;
                for (build, job) in ended {
                    self.logs.close(build, job);
                }
                for b in done {
                    let _ = self.build_done.send(b);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Queries;
    use kiln_proto as pb;
    use tokio::sync::oneshot;

    fn result(id: u64) -> pb::QueryResult {
        pb::QueryResult {
            id,
            ok: true,
            ..Default::default()
        }
    }

    #[test]
    fn an_answer_is_taken_only_from_the_session_asked() {
        let q = Queries::default();
        let (a, b) = (q.next_id(), q.next_id());
        assert!(a != 0 && b != a);
        let (tx, mut rx) = oneshot::channel();
        q.register(a, "w1", 3, tx);
        assert!(!q.answer("w2", 3, result(a)), "another worker");
        assert!(!q.answer("w1", 4, result(a)), "another session of it");
        assert!(!q.answer("w1", 3, result(b)), "another query");
        assert!(rx.try_recv().is_err());
        assert!(q.answer("w1", 3, result(a)));
        assert_eq!(rx.try_recv().unwrap().id, a);
        assert_eq!(q.outstanding(), 0);
        assert!(!q.answer("w1", 3, result(a)), "answered once");
    }

    #[test]
    fn a_session_s_end_drops_its_queries_and_a_timeout_forgets_one() {
        let q = Queries::default();
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let (tx3, _rx3) = oneshot::channel();
        q.register(1, "w1", 3, tx1);
        q.register(2, "w1", 4, tx2);
        q.register(3, "w2", 3, tx3);
        assert_eq!(q.session_ended("w1", 3), 1);
        assert!(matches!(
            rx1.blocking_recv(),
            Err(oneshot::error::RecvError { .. })
        ));
        assert_eq!(q.outstanding(), 2);
        q.forget(3);
        assert_eq!(q.outstanding(), 1);
        assert!(q.answer("w1", 4, result(2)));
        assert_eq!(rx2.blocking_recv().unwrap().id, 2);
        assert_eq!(q.outstanding(), 0);
    }
}
