//! The in-memory scheduler: queues of pending jobs per (channel, arch),
//! connected workers and their slots, leases. The database is the durable
//! record; this is rebuilt from it at start.
//!
//! Every mutation here queues its database write while the lock is held, so
//! writes commit in the order the changes were made; messages to workers are
//! sent only after those writes are durable (see [`Effects`]).
//!
//! This file holds the scheduler's types, its constructor and its small
//! queries; its decisions are split by concern: `jobs` (builds and jobs
//! through their life: submit, restore, results, re-queue, cancel, a build's
//! state, builds that wait for others to be published), `queue` (the
//! priority queues, dispatch and assignment), `workers` (sessions,
//! heartbeats, drain, slots, the API's view) and `leases` (lapsed leases and
//! timeouts).

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

// `tests.rs` names `BuildState` through `super::*`.
#[cfg(test)]
use kiln_core::state::BuildState;
use kiln_core::state::JobState;
use kiln_proto as pb;
use kiln_store::{ArtifactRow, BuildRow, JobRow};
use tokio::sync::mpsc;

mod clock;
pub(crate) mod effects;
#[cfg(test)]
mod git_tests;
mod jobs;
mod leases;
mod queue;
#[cfg(test)]
mod tests;
mod workers;

pub use clock::{Clock, SystemClock};
pub use effects::{Effects, Event, Outbox, Write};

#[derive(Debug, PartialEq, Eq)]
struct QEntry {
    priority: i64,
    job: i64,
}

impl Ord for QEntry {
    fn cmp(&self, o: &Self) -> Ordering {
        // Higher priority first, then the older (smaller id) job.
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.job.cmp(&self.job))
    }
}

impl PartialOrd for QEntry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

struct ActiveBuild {
    row: BuildRow,
    jobs: Vec<i64>,
}

struct ActiveJob {
    row: JobRow,
    lease_until: Instant,
}

pub struct WorkerLive {
    pub conn: u64,
    pub arches: Vec<String>,
    /// Declared arches plus the ones they can build (x86_64 -> i686, noarch).
    serves: HashSet<String>,
    pub channels: Vec<String>,
    pub capacity: u32,
    pub running: HashSet<i64>,
    pub draining: bool,
    pub serial: u64,
    /// Takes jobs of targets without a buildroot (built on its own system).
    pub host_builds: bool,
    tx: mpsc::UnboundedSender<pb::MasterMsg>,
}

/// A queue: channel, arch, and whether its jobs build on the worker's own
/// system (a target without a buildroot), which some workers refuse.
type QKey = (String, String, bool);

impl WorkerLive {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.running.len() as u32)
    }
    fn serves(&self, channel: &str, arch: &str) -> bool {
        self.serves.contains(arch) && self.channels.iter().any(|c| c == channel)
    }
    /// The queues of (channel, arch) this worker takes jobs from.
    fn keys(&self, channel: &str, arch: &str) -> Vec<QKey> {
        let mut k = vec![(channel.to_string(), arch.to_string(), false)];
        if self.host_builds {
            k.push((channel.to_string(), arch.to_string(), true));
        }
        k
    }
}

/// A worker as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerView {
    pub arches: Vec<String>,
    pub channels: Vec<String>,
    pub capacity: u32,
    pub running: Vec<i64>,
    pub draining: bool,
}

/// Why the scheduler refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("job {0} is no longer active")]
    JobGone(i64),
    #[error("stale result: job {job} is at attempt {current}, this is attempt {given}")]
    Stale { job: i64, current: u32, given: u32 },
    #[error("job {job} is not held by worker {worker}")]
    NotHeld { job: i64, worker: String },
    #[error("build {0} is not active")]
    BuildNotActive(i64),
}

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// A running job's lease, renewed by heartbeats.
    pub lease: Duration,
    pub max_attempts: u32,
    /// The build timeout (0: none); the master enforces it one lease later.
    pub job_timeout_secs: u64,
    /// Sent to workers in `Assign`.
    pub log_cap: u64,
    /// Per target with a buildroot: what its jobs build in.
    pub buildroots: HashMap<String, pb::Buildroot>,
}

/// A worker's session as it introduces itself.
#[derive(Debug, Clone)]
pub struct Hello {
    pub name: String,
    pub serial: u64,
    pub arches: Vec<String>,
    pub channels: Vec<String>,
    pub capacity: u32,
    pub draining: bool,
    /// Takes jobs of targets without a buildroot.
    pub host_builds: bool,
}

/// A job's result as a worker reports it (artifacts verified and filed).
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job: i64,
    pub attempt: u32,
    pub success: bool,
    pub message: String,
    pub artifacts: Vec<ArtifactRow>,
    /// An srpm job's: what it made the SRPM from.
    pub made: Option<Made>,
}

/// The arch of an srpm job (a build from git makes its SRPM first); every
/// worker serves it.
pub const SRC_ARCH: &str = "src";

/// What an srpm job made its SRPM from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub upstream_commit: String,
    pub packaging_commit: Option<String>,
    pub version: String,
    pub release: Option<String>,
}

/// What follows from the SRPM an srpm job made (see `Sched::expand`).
#[derive(Debug, Clone)]
pub enum Expansion {
    /// Build it: the build's row now names the SRPM; one job per arch.
    Build {
        srpm: SrpmFacts,
        excluded: Vec<kiln_store::Excluded>,
        arches: Vec<String>,
    },
    /// The version gate skips it (why, with both versions).
    Skip { srpm: SrpmFacts, reason: String },
    /// The SRPM cannot be built (why).
    Fail { reason: String },
}

/// An SRPM a build now names.
#[derive(Debug, Clone)]
pub struct SrpmFacts {
    pub package: String,
    pub evr: String,
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// What the scheduler measures as it decides (for `/metrics`).
pub struct SchedMetrics {
    /// From a job's creation (or re-queue) to its assignment.
    pub queue_wait: kiln_core::metrics::Histogram,
    /// From a job's assignment to its result.
    pub job_duration: kiln_core::metrics::Histogram,
    /// From a build's submission to its end (skipped builds not counted).
    pub build_duration: kiln_core::metrics::Histogram,
}

impl Default for SchedMetrics {
    fn default() -> Self {
        use kiln_core::metrics::{Histogram, SLOW};
        SchedMetrics {
            queue_wait: Histogram::new(SLOW),
            job_duration: Histogram::new(SLOW),
            build_duration: Histogram::new(SLOW),
        }
    }
}

/// A queue as the dashboard and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    pub channel: String,
    pub arch: String,
    /// Pending jobs (of builds not waiting for others).
    pub pending: usize,
    /// When the oldest of them was created (Unix ms).
    pub oldest_ms: Option<i64>,
}

pub struct Sched {
    /// What it measures.
    pub metrics: SchedMetrics,
    clock: Arc<dyn Clock>,
    lease: Duration,
    max_attempts: u32,
    job_timeout_secs: u64,
    log_cap: u64,
    buildroots: HashMap<String, pb::Buildroot>,
    /// Per target: where its image jobs take packages (recipe and version
    /// filled in per build).
    image_bases: HashMap<String, pb::ImageJob>,
    builds: HashMap<i64, ActiveBuild>,
    jobs: HashMap<i64, ActiveJob>,
    queues: HashMap<QKey, BinaryHeap<QEntry>>,
    workers: HashMap<String, WorkerLive>,
    /// Jobs holding a lease (assigned or running): few, bounded by capacity.
    leased: HashSet<i64>,
    /// Waiting builds: the builds each still waits for (to be published).
    waiting: HashMap<i64, BTreeSet<i64>>,
    /// What a waiting build needs of a build it waits for (a batch's
    /// BuildRequires), when known: for its waiting reason only.
    waits_what: HashMap<(i64, i64), String>,
    /// The reverse: a build → the waiting builds that wait for it.
    waited_by: HashMap<i64, BTreeSet<i64>>,
    /// The package of each build that is waited for, when known (it was
    /// tracked here), for the reasons given.
    waited_package: HashMap<i64, String>,
    next_conn: u64,
    /// The ids the next build and job get (allocated here, under the
    /// scheduler lock, so a build can be dispatched in the same group
    /// commit that stores it).
    next_build: i64,
    next_job: i64,
}

impl Sched {
    pub fn new(cfg: SchedConfig, clock: Arc<dyn Clock>) -> Sched {
        Sched {
            metrics: SchedMetrics::default(),
            clock,
            lease: cfg.lease,
            max_attempts: cfg.max_attempts,
            job_timeout_secs: cfg.job_timeout_secs,
            log_cap: cfg.log_cap,
            buildroots: cfg.buildroots,
            image_bases: HashMap::new(),
            builds: HashMap::new(),
            jobs: HashMap::new(),
            queues: HashMap::new(),
            workers: HashMap::new(),
            leased: HashSet::new(),
            waiting: HashMap::new(),
            waits_what: HashMap::new(),
            waited_by: HashMap::new(),
            waited_package: HashMap::new(),
            next_conn: 0,
            next_build: 1,
            next_job: 1,
        }
    }

    /// Where id allocation goes on (from `kiln_store::next_ids` at start).
    pub fn set_next_ids(&mut self, (build, job): (i64, i64)) {
        self.next_build = build;
        self.next_job = job;
    }

    /// Ids for `n` new jobs of an existing build.
    fn allocate_jobs(&mut self, n: usize) -> Vec<i64> {
        let ids = (self.next_job..).take(n).collect();
        self.next_job += n as i64;
        ids
    }

    /// Ids for a new build and its `jobs` jobs.
    pub fn allocate_ids(&mut self, jobs: usize) -> (i64, Vec<i64>) {
        let id = self.next_build;
        self.next_build += 1;
        let ids = (self.next_job..).take(jobs).collect();
        self.next_job += jobs as i64;
        (id, ids)
    }

    /// What the jobs of targets with a buildroot build in (sent in their
    /// Assign).
    pub fn set_buildroots(&mut self, b: HashMap<String, pb::Buildroot>) {
        self.buildroots = b;
        // Jobs queued before (restored at start) move to the queues their
        // target now implies: with a buildroot, or built on the host.
        let mut moved = Vec::new();
        for (_, heap) in std::mem::take(&mut self.queues) {
            for e in heap {
                let Some(j) = self
                    .jobs
                    .get(&e.job)
                    .filter(|j| j.row.state == JobState::Pending)
                else {
                    continue;
                };
                if let Some(b) = self.builds.get(&j.row.build) {
                    let host = self.host_build(&b.row.target);
                    moved.push(((b.row.channel.clone(), j.row.arch.clone(), host), e));
                }
            }
        }
        for (key, e) in moved {
            self.queues.entry(key).or_default().push(e);
        }
    }

    /// Whether a target's jobs build on the worker's own system.
    pub(crate) fn host_build(&self, target: &str) -> bool {
        !self.buildroots.contains_key(target)
    }

    /// Where the image jobs of each target take their packages (sent in
    /// their Assign).
    pub fn set_image_bases(&mut self, b: HashMap<String, pb::ImageJob>) {
        self.image_bases = b;
    }

    /// The image job of an image build (its recipe, version and target's
    /// repositories).
    pub(crate) fn image_job(
        bases: &HashMap<String, pb::ImageJob>,
        b: &BuildRow,
    ) -> Option<pb::ImageJob> {
        let recipe = b.image.as_ref()?;
        let mut j = bases.get(&b.target).cloned().unwrap_or_default();
        j.recipe_json = recipe.clone();
        j.version = b.evr.clone();
        Some(j)
    }

    /// The recipe name of an active image build (`None`: not active, or a
    /// package build).
    pub fn image_of(&self, build: i64) -> Option<String> {
        self.builds
            .get(&build)
            .filter(|b| b.row.image.is_some())
            .map(|b| b.row.package.clone())
    }

    /// The package an active build builds.
    pub fn package_of(&self, build: i64) -> Option<String> {
        self.builds.get(&build).map(|b| b.row.package.clone())
    }

    /// Active builds from git whose srpm job made their SRPM but whose
    /// jobs are not added yet (`Sched::expand`): after a restart, or when
    /// their expansion could not be decided.
    pub fn unexpanded(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .builds
            .values()
            .filter(|b| {
                b.row.awaits_srpm()
                    && b.row.state != kiln_core::state::BuildState::Canceled
                    && b.jobs.iter().all(|j| {
                        self.jobs
                            .get(j)
                            .is_some_and(|j| j.row.state == JobState::Succeeded)
                    })
            })
            .map(|b| b.row.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Active builds from git of `project` for `target` at `git_ref` that a
    /// new one replaces: those whose srpm job has not started (and, with
    /// `running`, the ones building too), oldest first.
    pub fn superseded(
        &self,
        project: &str,
        target: &str,
        git_ref: &str,
        running: bool,
    ) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .builds
            .values()
            .filter(|b| {
                b.row.target == target
                    && b.row.state != kiln_core::state::BuildState::Canceled
                    && b.row
                        .source
                        .as_ref()
                        .is_some_and(|s| s.project == project && s.git_ref == git_ref)
                    && (running
                        || (b.row.awaits_srpm()
                            && b.jobs.iter().all(|j| {
                                self.jobs
                                    .get(j)
                                    .is_some_and(|j| j.row.state == JobState::Pending)
                            })))
            })
            .map(|b| b.row.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn is_active_build(&self, id: i64) -> bool {
        self.builds.contains_key(&id)
    }

    /// The builds a waiting build still waits for (empty if it does not
    /// wait).
    /// The buildroot a target's jobs build in, if it has one.
    pub fn buildroot_of(&self, target: &str) -> Option<pb::Buildroot> {
        self.buildroots.get(target).cloned()
    }

    /// Note what waiting build `build` needs of `dep` (for its waiting
    /// reason; kept in memory only).
    pub fn note_waits_what(&mut self, build: i64, dep: i64, what: &str) {
        if self.waiting.get(&build).is_some_and(|d| d.contains(&dep)) {
            self.waits_what.insert((build, dep), what.to_string());
        }
    }

    pub fn waits_for(&self, build: i64) -> Vec<i64> {
        self.waiting
            .get(&build)
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The builds some waiting build waits for that this scheduler no
    /// longer tracks (ended, perhaps published, maybe while the master was
    /// down): their outcome is read from the database
    /// ([`Sched::dependency_recorded`]).
    pub fn waited_for_untracked(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .waited_by
            .keys()
            .filter(|id| !self.builds.contains_key(id))
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The job's current attempt and worker, if it is still active.
    pub fn job_current(&self, job: i64) -> Option<(i64, u32, Option<String>, String, JobState)> {
        self.jobs.get(&job).map(|j| {
            (
                j.row.build,
                j.row.attempt,
                j.row.worker.clone(),
                j.row.arch.clone(),
                j.row.state,
            )
        })
    }

    /// The first job of a build (tests).
    #[cfg(test)]
    pub(crate) fn job_current_of(&self, build: i64) -> i64 {
        self.builds
            .get(&build)
            .and_then(|b| b.jobs.first().copied())
            .unwrap_or(0)
    }

    /// The queues with pending jobs, by (channel, arch), sorted.
    pub fn queue_summary(&self) -> Vec<QueueView> {
        let mut m: std::collections::BTreeMap<(String, String), QueueView> = Default::default();
        for j in self.jobs.values() {
            if j.row.state != JobState::Pending || self.waiting.contains_key(&j.row.build) {
                continue;
            }
            let Some(b) = self.builds.get(&j.row.build) else {
                continue;
            };
            let q = m
                .entry((b.row.channel.clone(), j.row.arch.clone()))
                .or_insert_with(|| QueueView {
                    channel: b.row.channel.clone(),
                    arch: j.row.arch.clone(),
                    pending: 0,
                    oldest_ms: None,
                });
            q.pending += 1;
            q.oldest_ms = Some(
                q.oldest_ms
                    .map_or(j.row.created_at, |o| o.min(j.row.created_at)),
            );
        }
        m.into_values().collect()
    }

    /// Jobs holding a lease (assigned or running), and workers connected.
    pub fn running_and_workers(&self) -> (usize, usize) {
        (self.leased.len(), self.workers.len())
    }

    pub fn queued_jobs(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.row.state == JobState::Pending)
            .count()
    }
}
