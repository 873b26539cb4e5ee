//! What a scheduler decision leaves to do, as plain data: the database
//! writes to make (in decision order) and the messages to send once they
//! are durable. `Core::decide` queues the writes while the scheduler lock is
//! still held (so they commit in the order the decisions were made), then
//! `Core::apply` waits for them and sends.

use std::future::Future;
use std::pin::Pin;

use kiln_core::state::{BuildState, JobState, PublishState};
use kiln_proto as pb;
use kiln_store::{ArtifactRow, BuildRow, JobRow, StoreError};
use tokio::sync::mpsc;

/// A database write decided by the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A new build and its jobs (ids allocated by the scheduler).
    InsertBuild { build: BuildRow, jobs: Vec<JobRow> },
    /// A job's row as it is now.
    SaveJob(JobRow),
    /// A job's result: its artifacts, and its row.
    FinishJob {
        build: i64,
        artifacts: Vec<ArtifactRow>,
        job: JobRow,
    },
    /// A build's new state. The domain decided what follows from it
    /// (`publish`: queued for publication when it succeeded and is not a
    /// scratch build).
    SetBuildState {
        build: i64,
        state: BuildState,
        reason: Option<String>,
        publish: Option<PublishState>,
    },
    /// What a build's srpm job found (commit ids, version).
    SetSource {
        build: i64,
        source: kiln_core::git::BuildSource,
    },
    /// A build from git now names the SRPM its srpm job made, and has jobs
    /// to build it (none when skipped).
    Expand { build: BuildRow, jobs: Vec<JobRow> },
    /// A webhook's or MQTT message's delivery id and the builds it started.
    Delivery { id: String, builds: Vec<i64> },
}

/// A message for a worker's session, sent only after the writes.
pub struct Outbox {
    pub worker: String,
    pub tx: mpsc::UnboundedSender<pb::MasterMsg>,
    pub msg: pb::MasterMsg,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("worker", &self.worker)
            .field("msg", &self.msg)
            .finish()
    }
}

pub(crate) type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// The effects of one or more decisions.
#[derive(Default)]
#[must_use]
pub struct Effects {
    /// Writes not yet handed to the database, in decision order.
    pub writes: Vec<Write>,
    /// Messages to send once every write is durable.
    pub sends: Vec<Outbox>,
    pub done_builds: Vec<i64>,
    pub ended_jobs: Vec<(i64, i64)>,
    /// Builds from git whose srpm job made their SRPM: what follows is
    /// decided once that is durable (`Sched::expand`).
    pub srpms_made: Vec<i64>,
    /// State changes to announce once durable.
    pub events: Vec<Event>,
    /// The writes once queued (by `Core::decide`, under the lock).
    pub(crate) commits: Vec<Commit>,
}

impl Effects {
    pub(crate) fn send(
        &mut self,
        worker: &str,
        tx: &mpsc::UnboundedSender<pb::MasterMsg>,
        msg: pb::master_msg::Msg,
    ) {
        self.sends.push(Outbox {
            worker: worker.to_string(),
            tx: tx.clone(),
            msg: pb::MasterMsg { msg: Some(msg) },
        });
    }

    /// Nothing was decided: no write, message, ended build or job, or
    /// event (applying it would only wake the lease timer).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.commits.is_empty()
            && self.sends.is_empty()
            && self.done_builds.is_empty()
            && self.ended_jobs.is_empty()
            && self.srpms_made.is_empty()
            && self.events.is_empty()
    }

    /// Wait for the queued writes; then send the messages. Returns the
    /// builds that reached a final state, the (build, job) pairs that
    /// ended, and the events.
    pub async fn finish(self) -> Result<(Vec<i64>, Vec<(i64, i64)>, Vec<Event>), StoreError> {
        debug_assert!(
            self.writes.is_empty(),
            "effects applied without queuing their writes (use Core::decide)"
        );
        for c in self.commits {
            c.await?;
        }
        for o in self.sends {
            let _ = o.tx.send(o.msg);
        }
        Ok((self.done_builds, self.ended_jobs, self.events))
    }
}

/// A state change, as announced on the event stream (`api/logs.rs` makes
/// it a `kiln_api::Event`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Job {
        build: i64,
        job: i64,
        arch: String,
        state: JobState,
        worker: Option<String>,
        attempt: u32,
    },
    Build {
        build: i64,
        state: BuildState,
    },
    /// A build's publication to its target's repositories.
    Publish {
        build: i64,
        state: PublishState,
    },
}
