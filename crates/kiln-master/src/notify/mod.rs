//! Notifications (issue 11): the outbox written with each state change,
//! and one delivery task per sink.
//!
//! - **Same commit.** `Core::queue_writes` asks [`Notifier::plan`] what a
//!   scheduler write announces (in memory: the event's name against every
//!   sink's `events`), and the write's own closure calls [`queue`], which
//!   reads the build's row in that transaction, makes the [`Notice`],
//!   matches the sinks' `targets` globs and inserts one outbox row per
//!   sink. A publication is marked by the repository builder, and a build
//!   is skipped by several writes (at submit, after its SRPM was made):
//!   the database's triggers queue those events in that commit and the
//!   fan-out task ([`fan_out_task`]) turns them into per-sink rows.
//!   Worker events are queued by the writes that enroll and revoke, and by
//!   the disconnect timer ([`worker_left`]).
//! - **Enriched at delivery**: a failure's last log lines (the log is
//!   stored just after the commit that ends the job).
//! - **Delivery** (`deliver.rs`): a task per sink, woken by a `Notify`
//!   once rows are committed (the commit's future wakes it), sends its
//!   rows in order with a timeout per attempt; a failure is retried with
//!   exponential backoff and jitter from 1 s to 10 min until the row is
//!   older than the sink's `max_age_hours`, then the row is `dead`. A sink
//!   that hangs holds up only its own task.
//! - A worker is lost when its session ended and it has not come back
//!   within a lease period (`lease_secs`), or at once when the master
//!   ended its session because it fell silent (no heartbeat for twice the
//!   lease: `grpc::silence_limit`) while its connection stayed open.
//! - For tests, a `[[notify]]` table also takes `retry_base_ms` (the first
//!   backoff; default 1000) and `max_age_secs` (overrides `max_age_hours`);
//!   neither is documented as a setting.

pub(crate) mod api;
pub mod config;
mod deliver;
mod event;

use std::sync::Arc;
use std::time::Duration;

use kiln_notify::Notice;
use kiln_store::JobRow;
use tokio::sync::Notify;

pub use config::{SinkConfig, SinkKind};
pub use deliver::Transport;

use crate::sched::effects::Commit;
use crate::sched::Write;
use crate::shared::Core;

/// `/api/v1/notify...` (sinks, test, retry), documented in the OpenAPI
/// description.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<Arc<Core>> {
    api::routes()
}

/// One configured sink: its settings, its transport and its task's bell.
pub struct Sink {
    pub cfg: SinkConfig,
    pub transport: Transport,
    /// Rung when rows may have been committed for it.
    pub(crate) wake: Notify,
    /// Rung when an admin changed its rows (dead rows queued again): its
    /// head may have changed, even while the head waits for a retry.
    pub(crate) kick: Notify,
}

/// The sinks, and what the scheduler's writes need to queue events.
pub struct Notifier {
    pub sinks: Vec<Arc<Sink>>,
    filters: Arc<Vec<SinkConfig>>,
    /// The master's public URL (known once the API is bound).
    base: std::sync::OnceLock<Arc<str>>,
    retention: Duration,
}

impl Notifier {
    /// Make the sinks' transports (IRC and MQTT clients start connecting).
    pub fn new(cfg: &crate::MasterConfig) -> Result<Notifier, String> {
        let mut sinks = Vec::new();
        for s in &cfg.notify {
            let transport = Transport::new(s).map_err(|e| format!("[[notify]] {}: {e}", s.name))?;
            sinks.push(Arc::new(Sink {
                cfg: s.clone(),
                transport,
                wake: Notify::new(),
                kick: Notify::new(),
            }));
        }
        Ok(Notifier {
            filters: Arc::new(cfg.notify.clone()),
            sinks,
            base: Default::default(),
            retention: Duration::from_secs(cfg.notify_retention_days.max(1) * 86_400),
        })
    }

    /// A sink by name.
    pub fn sink(&self, name: &str) -> Option<&Arc<Sink>> {
        self.sinks.iter().find(|s| s.cfg.name == name)
    }

    /// How long delivered and dead rows are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    fn base(&self) -> Arc<str> {
        self.base.get().cloned().unwrap_or_else(|| Arc::from(""))
    }

    /// Whether any sink takes events named `event` (before its target is
    /// known).
    fn wanted(&self, event: &str) -> bool {
        self.filters.iter().any(|s| {
            s.events
                .as_ref()
                .is_none_or(|v| v.iter().any(|e| e == event))
        })
    }

    /// What a scheduler write announces, if any sink may want it.
    pub(crate) fn plan(&self, w: &Write) -> Option<Pending> {
        if self.filters.is_empty() {
            return None;
        }
        let what = match w {
            Write::InsertBuild { build, .. } => What::Build {
                id: build.id,
                event: "build.queued",
                target: Some(build.target.clone()),
            },
            Write::SetBuildState { build, state, .. } => What::Build {
                id: *build,
                event: event::build_event(*state)?,
                target: None,
            },
            Write::SaveJob(j) | Write::FinishJob { job: j, .. }
                if j.state == kiln_core::state::JobState::Failed =>
            {
                What::Job(Box::new(j.clone()))
            }
            _ => return None,
        };
        if !self.wanted(what.event()) {
            return None;
        }
        Some(Pending {
            what,
            filters: self.filters.clone(),
            base: self.base(),
        })
    }

    /// A worker event, to queue in the write that causes it (enrollment,
    /// revocation) or on its own (a lost worker).
    pub(crate) fn worker(&self, event: &'static str, worker: &str) -> Option<Pending> {
        if self.filters.is_empty() || !self.wanted(event) {
            return None;
        }
        Some(Pending {
            what: What::Worker {
                event,
                name: worker.to_string(),
            },
            filters: self.filters.clone(),
            base: self.base(),
        })
    }

    /// A release event (`release.promoted`, `release.rolled_back`), to
    /// queue in the write that records the promotion or rollback.
    pub(crate) fn release(&self, event: &'static str, r: ReleaseFacts) -> Option<Pending> {
        if self.filters.is_empty() || !self.wanted(event) {
            return None;
        }
        Some(Pending {
            what: What::Release {
                event,
                facts: Box::new(r),
            },
            filters: self.filters.clone(),
            base: self.base(),
        })
    }

    /// Wake every sink's task (rows may have been committed).
    pub fn wake(&self) {
        for s in &self.sinks {
            s.wake.notify_one();
        }
    }

    /// `c`, waking the sinks once it committed when it queued events.
    pub(crate) fn after_commit(self: &Arc<Self>, c: Commit, queued: bool) -> Commit {
        if !queued {
            return c;
        }
        let me = self.clone();
        Box::pin(async move {
            let r = c.await;
            if r.is_ok() {
                me.wake();
            }
            r
        })
    }
}

/// An event to queue inside a write's transaction.
#[derive(Clone)]
pub(crate) struct Pending {
    what: What,
    filters: Arc<Vec<SinkConfig>>,
    base: Arc<str>,
}

impl Pending {
    /// A worker event for `name` (known only inside the write).
    pub(crate) fn for_worker(mut self, name: &str) -> Pending {
        if let What::Worker { name: n, .. } = &mut self.what {
            *n = name.to_string();
        }
        self
    }
}

#[derive(Clone)]
enum What {
    Build {
        id: i64,
        event: &'static str,
        /// The build's target when the write has it (an insert); else
        /// read if a sink filters on targets.
        target: Option<String>,
    },
    Job(Box<JobRow>),
    Worker {
        event: &'static str,
        name: String,
    },
    Release {
        event: &'static str,
        facts: Box<ReleaseFacts>,
    },
}

/// What a release event tells: which release, channel and version, from
/// which image build, by whom.
#[derive(Clone, Debug)]
pub(crate) struct ReleaseFacts {
    pub release: String,
    pub channel: String,
    pub version: String,
    pub build: i64,
    pub who: Option<String>,
}

impl What {
    fn event(&self) -> &'static str {
        match self {
            What::Build { event, .. }
            | What::Worker { event, .. }
            | What::Release { event, .. } => event,
            What::Job(_) => "job.failed",
        }
    }
}

/// Queue the outbox rows of `p` in the write's transaction (after its
/// state change). A notice that cannot be made is logged and left out;
/// a database error fails the write (and so the state change with it).
pub(crate) fn queue(
    t: &kiln_store::notify::Connection,
    p: &Option<Pending>,
) -> kiln_store::Result<()> {
    let Some(p) = p else {
        return Ok(());
    };
    let notice = match &p.what {
        What::Build { id, event, target } => {
            return queue_build(t, &p.filters, *id, event, target.as_deref());
        }
        What::Job(j) => {
            let Some(b) = kiln_store::get_build(t, j.build)? else {
                return Ok(());
            };
            event::job_notice(j, &b, &p.base)
        }
        What::Worker { event, name } => event::worker_notice(event, name),
        What::Release { event, facts } => {
            let b = kiln_store::get_build(t, facts.build)?;
            event::release_notice(event, facts, b.as_ref(), &p.base)
        }
    };
    enqueue(t, &p.filters, &notice)
}

/// A build's event is queued with an empty notice: its delivery makes it
/// from the build's row ([`event::later_build_notice`]: the event's id,
/// time and state). The dispatch's commit then holds one small row per
/// sink and nothing else: no read of the build's row (only its target,
/// when a sink filters on targets and the write did not have the row),
/// no JSON.
fn queue_build(
    t: &kiln_store::notify::Connection,
    filters: &[SinkConfig],
    id: i64,
    event: &str,
    target: Option<&str>,
) -> kiln_store::Result<()> {
    // The target is read only if a sink that takes the event filters on it.
    let read;
    let target = match target {
        None if filters
            .iter()
            .any(|s| s.targets.is_some() && s.takes(event, None)) =>
        {
            read = kiln_store::build_target(t, id)?;
            match read.as_deref() {
                Some(target) => Some(target),
                None => return Ok(()),
            }
        }
        target => target,
    };
    let sinks = matching(filters, event, target);
    if sinks.is_empty() {
        return Ok(());
    }
    kiln_store::notify::enqueue(
        t,
        &sinks,
        &kiln_store::notify::NewNotice {
            event_id: event::new_id(),
            event: event.to_string(),
            build: Some(id),
            notice: String::new(),
        },
        kiln_store::now_ms(),
    )
}

/// Insert `n` for every sink of `filters` that takes it.
fn enqueue(
    t: &kiln_store::notify::Connection,
    filters: &[SinkConfig],
    n: &Notice,
) -> kiln_store::Result<()> {
    let sinks = matching(filters, &n.event, n.target.as_deref());
    if sinks.is_empty() {
        return Ok(());
    }
    let json = match serde_json::to_string(n) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!("cannot encode notice {}: {e}", n.id);
            return Ok(());
        }
    };
    kiln_store::notify::enqueue(
        t,
        &sinks,
        &kiln_store::notify::NewNotice {
            event_id: n.id.clone(),
            event: n.event.clone(),
            build: n.build,
            notice: json,
        },
        kiln_store::now_ms(),
    )
}

/// The names of the sinks that take `event` of `target`.
fn matching(filters: &[SinkConfig], event: &str, target: Option<&str>) -> Vec<String> {
    filters
        .iter()
        .filter(|s| s.takes(event, target))
        .map(|s| s.name.clone())
        .collect()
}

/// Start the delivery tasks and the fan-out task (once the API's address,
/// and so the public URL, is known).
pub fn start(core: &Arc<Core>) {
    let base: Arc<str> = Arc::from(core.cfg.public_url(core.api_addr()));
    let _ = core.notify.base.set(base);
    for s in &core.notify.sinks {
        tokio::spawn(deliver::run(core.clone(), s.clone()));
    }
    tokio::spawn(fan_out_task(core.clone()));
    tokio::spawn(prune_task(core.clone()));
}

/// At start, retires the queued rows of sinks removed from the config;
/// prunes old delivered and dead rows now and once a day.
async fn prune_task(core: Arc<Core>) {
    let names = core
        .notify
        .sinks
        .iter()
        .map(|s| s.cfg.name.clone())
        .collect();
    match crate::housekeeping::retire_unconfigured_sinks(&core.store, names).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            "notifications: {n} queued for sinks no longer configured, marked dead \
             (`kiln notify retry NAME` once the sink is back)"
        ),
        Err(e) => tracing::error!("notifications: retiring removed sinks' rows: {e}"),
    }
    loop {
        match crate::housekeeping::prune_notifications(&core.store, core.notify.retention()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("notifications: pruned {n} old outbox rows"),
            Err(e) => tracing::error!("notifications: pruning the outbox: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(86_400)).await;
    }
}

/// Turns the events the database's triggers queued (sink `""`: builds
/// published, builds skipped) into rows per sink. Runs at start and
/// whenever a publication or a skip is announced.
async fn fan_out_task(core: Arc<Core>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = core.events.subscribe();
    loop {
        if let Err(e) = fan_out_once(&core).await {
            tracing::error!("notifications: fanning out publications: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match events.recv().await {
                Ok(crate::sched::Event::Publish { .. })
                | Ok(crate::sched::Event::Build {
                    state: kiln_core::state::BuildState::Skipped,
                    ..
                })
                | Err(RecvError::Lagged(_)) => break,
                Ok(_) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }
}

async fn fan_out_once(core: &Arc<Core>) -> kiln_store::Result<()> {
    loop {
        let rows = core
            .store
            .read(|c| kiln_store::notify::pending_fan_out(c, 256))
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let filters = core.notify.filters.clone();
        core.store
            .write(move |t| {
                let now = kiln_store::now_ms();
                for r in &rows {
                    // The notice is made at delivery, like any build
                    // event's; a build that is gone goes to no sink.
                    let target = r
                        .build
                        .map(|b| kiln_store::build_target(t, b))
                        .transpose()?;
                    let sinks = match target.flatten() {
                        Some(target) => matching(&filters, &r.event, Some(&target)),
                        None => Vec::new(),
                    };
                    kiln_store::notify::fan_out(t, r.id, &sinks, "", now)?;
                }
                Ok(())
            })
            .await?;
        core.notify.wake();
        if n < 256 {
            return Ok(());
        }
    }
}

/// A worker's session ended: if it has not come back within `grace` (a
/// lease period, `lease_secs`, for one that hung up: by then its jobs are
/// given to others too; none for one the master cut off because it fell
/// silent), `worker.lost` is queued.
pub(crate) fn worker_left(core: &Arc<Core>, worker: &str, grace: Duration) {
    if core.notify.worker("worker.lost", worker).is_none() {
        return;
    }
    let core = core.clone();
    let worker = worker.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if core.sched().worker_connected(&worker) {
            return;
        }
        let p = core.notify.worker("worker.lost", &worker);
        let r = core.store.write(move |t| queue(t, &p)).await;
        match r {
            Ok(()) => core.notify.wake(),
            Err(e) => tracing::error!("notifications: queuing worker.lost of {worker}: {e}"),
        }
    });
}
