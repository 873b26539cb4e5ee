//! The in-memory scheduler: queues of pending jobs per (channel, arch),
//! connected workers and their slots, leases. The database is the durable
//! record; this is rebuilt from it at start.
//!
//! Every mutation here queues its database write while the lock is held, so
//! writes commit in the order the changes were made; messages to workers are
//! sent only after those writes are durable (see [`Effects`]).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use kiln_core::names::compatible_arches;
use kiln_core::state::{build_state_from_jobs, BuildState, JobState};
use kiln_proto as pb;
use kiln_store::{now_ms, ArtifactRow, BuildRow, JobRow, Store, StoreError};
use tokio::sync::mpsc;

type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// What a scheduler decision leaves to do once the lock is released: wait
/// for the writes, then tell the workers and the waiters.
#[derive(Default)]
#[must_use]
pub struct Effects {
    commits: Vec<Commit>,
    sends: Vec<(mpsc::UnboundedSender<pb::MasterMsg>, pb::MasterMsg)>,
    pub done_builds: Vec<i64>,
    pub ended_jobs: Vec<(i64, i64)>,
    /// State changes to announce once durable.
    pub events: Vec<Event>,
}

/// A state change, as announced on the event stream.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
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
        state: String,
    },
}

impl Effects {
    fn commit<T: Send + 'static>(
        &mut self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) {
        self.commits
            .push(Box::pin(async move { f.await.map(|_| ()) }));
    }

    /// Wait for the writes; then send the messages. Returns the builds that
    /// reached a final state and the (build, job) pairs that ended.
    pub async fn finish(self) -> Result<(Vec<i64>, Vec<(i64, i64)>, Vec<Event>), StoreError> {
        for c in self.commits {
            c.await?;
        }
        for (tx, msg) in self.sends {
            let _ = tx.send(msg);
        }
        Ok((self.done_builds, self.ended_jobs, self.events))
    }
}

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
    tx: mpsc::UnboundedSender<pb::MasterMsg>,
}

impl WorkerLive {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.running.len() as u32)
    }
    fn serves(&self, channel: &str, arch: &str) -> bool {
        self.serves.contains(arch) && self.channels.iter().any(|c| c == channel)
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

pub struct Sched {
    store: Store,
    lease: Duration,
    max_attempts: u32,
    job_timeout_secs: u64,
    log_cap: u64,
    builds: HashMap<i64, ActiveBuild>,
    jobs: HashMap<i64, ActiveJob>,
    queues: HashMap<(String, String), BinaryHeap<QEntry>>,
    workers: HashMap<String, WorkerLive>,
    /// Jobs holding a lease (assigned or running): few, bounded by capacity.
    leased: HashSet<i64>,
    next_conn: u64,
    /// The ids the next build and job get (allocated here, under the
    /// scheduler lock, so a build can be dispatched in the same group
    /// commit that stores it).
    next_build: i64,
    next_job: i64,
}

/// Expand declared arches with the ones each can also build.
fn expand_arches(arches: &[String]) -> HashSet<String> {
    let mut s: HashSet<String> = arches.iter().cloned().collect();
    for a in arches {
        s.extend(compatible_arches(a).iter().map(|x| x.to_string()));
    }
    s
}

impl Sched {
    pub fn new(
        store: Store,
        lease: Duration,
        max_attempts: u32,
        job_timeout_secs: u64,
        log_cap: u64,
    ) -> Sched {
        Sched {
            store,
            lease,
            max_attempts,
            job_timeout_secs,
            log_cap,
            builds: HashMap::new(),
            jobs: HashMap::new(),
            queues: HashMap::new(),
            workers: HashMap::new(),
            leased: HashSet::new(),
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

    /// Ids for a new build and its `jobs` jobs.
    pub fn allocate_ids(&mut self, jobs: usize) -> (i64, Vec<i64>) {
        let id = self.next_build;
        self.next_build += 1;
        let ids = (self.next_job..).take(jobs).collect();
        self.next_job += jobs as i64;
        (id, ids)
    }

    /// A build whose insert failed: drop it and its jobs from memory (its
    /// dispatch writes failed with it, so nothing was sent).
    pub fn forget_build(&mut self, fx: &mut Effects, build: i64) {
        let Some(b) = self.builds.remove(&build) else {
            return;
        };
        let mut workers = Vec::new();
        for id in b.jobs {
            self.leased.remove(&id);
            if let Some(j) = self.jobs.remove(&id) {
                if let Some(w) = j.row.worker {
                    if let Some(live) = self.workers.get_mut(&w) {
                        live.running.remove(&id);
                    }
                    workers.push(w);
                }
            }
        }
        for w in workers {
            self.fill_worker(fx, &w);
        }
    }

    /// Load active builds from the database after a start. Running jobs get
    /// a fresh lease, so their workers have time to reconnect and report.
    pub fn restore(&mut self, active: Vec<(BuildRow, Vec<JobRow>)>) {
        for (b, jobs) in active {
            self.add_build(b, jobs);
        }
    }

    /// Track a newly committed build and queue its pending jobs.
    pub fn add_build(&mut self, b: BuildRow, jobs: Vec<JobRow>) {
        let ids = jobs.iter().map(|j| j.id).collect();
        // Final jobs are kept too: the build's state is derived from all
        // of its jobs (a restored build may already have a failed one).
        for j in jobs {
            if j.state.is_final() {
                self.jobs.insert(
                    j.id,
                    ActiveJob {
                        row: j,
                        lease_until: Instant::now(),
                    },
                );
                continue;
            }
            if j.state == JobState::Pending {
                self.enqueue(&b, j.id, &j.arch);
            } else {
                self.leased.insert(j.id);
            }
            self.jobs.insert(
                j.id,
                ActiveJob {
                    row: j,
                    lease_until: Instant::now() + self.lease,
                },
            );
        }
        self.builds.insert(b.id, ActiveBuild { row: b, jobs: ids });
    }

    fn enqueue(&mut self, b: &BuildRow, job: i64, arch: &str) {
        self.queues
            .entry((b.channel.clone(), arch.to_string()))
            .or_default()
            .push(QEntry {
                priority: b.priority,
                job,
            });
    }

    pub fn is_active_build(&self, id: i64) -> bool {
        self.builds.contains_key(&id)
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

    fn save(&self, fx: &mut Effects, row: &JobRow) {
        fx.events.push(Event::Job {
            build: row.build,
            job: row.id,
            arch: row.arch.clone(),
            state: row.state,
            worker: row.worker.clone(),
            attempt: row.attempt,
        });
        let row = row.clone();
        fx.commit(self.store.write(move |t| kiln_store::save_job(t, &row)));
    }

    /// Recompute a build's state from its jobs, persist a change, and drop
    /// the build from memory once it is final.
    fn settle_build(&mut self, fx: &mut Effects, build: i64) {
        let Some(b) = self.builds.get(&build) else {
            return;
        };
        let states: Vec<JobState> = b
            .jobs
            .iter()
            .map(|id| {
                self.jobs
                    .get(id)
                    .map(|j| j.row.state)
                    .unwrap_or(JobState::Failed)
            })
            .collect();
        let mut new = build_state_from_jobs(&states);
        if b.row.state == BuildState::Canceled {
            new = BuildState::Canceled;
        }
        let changed = new != b.row.state;
        if changed {
            fx.events.push(Event::Build { build, state: new });
            fx.commit(
                self.store
                    .write(move |t| kiln_store::set_build_state(t, build, new, None)),
            );
        }
        if new.is_final() {
            if let Some(b) = self.builds.remove(&build) {
                for id in b.jobs {
                    if self.jobs.get(&id).is_some_and(|j| j.row.state.is_final()) {
                        self.jobs.remove(&id);
                    }
                }
            }
            fx.done_builds.push(build);
        } else if let Some(b) = self.builds.get_mut(&build) {
            b.row.state = new;
        }
    }

    /// Put a job on a worker: memory, database, and the Assign message.
    fn assign(&mut self, fx: &mut Effects, job: i64, worker: &str) {
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let Some(b) = self.builds.get(&j.row.build) else {
            return;
        };
        j.row.state = JobState::Assigned;
        j.row.worker = Some(worker.to_string());
        j.row.started_at = Some(now_ms());
        j.row.finished_at = None;
        j.lease_until = Instant::now() + self.lease;
        w.running.insert(job);
        self.leased.insert(job);
        let msg = pb::MasterMsg {
            msg: Some(pb::master_msg::Msg::Assign(pb::Assign {
                job_id: job as u64,
                attempt: j.row.attempt,
                build_id: b.row.id as u64,
                arch: j.row.arch.clone(),
                target: b.row.target.clone(),
                disttag: b.row.disttag.clone(),
                srpm_name: b.row.srpm_name.clone(),
                srpm_sha256: b.row.srpm_sha256.clone(),
                srpm_size: b.row.srpm_size,
                timeout_secs: self.job_timeout_secs,
                log_cap: self.log_cap,
            })),
        };
        fx.sends.push((w.tx.clone(), msg));
        let row = j.row.clone();
        let build = row.build;
        self.save(fx, &row);
        self.settle_build(fx, build);
    }

    /// Pop the best pending job among the given queues, skipping stale
    /// entries (canceled or already re-queued jobs).
    fn pop_best(&mut self, keys: &[(String, String)]) -> Option<i64> {
        loop {
            let mut best: Option<(&(String, String), &QEntry)> = None;
            for k in keys {
                if let Some(top) = self.queues.get(k).and_then(|q| q.peek()) {
                    if best.is_none_or(|(_, b)| top > b) {
                        best = Some((k, top));
                    }
                }
            }
            let key = best?.0.clone();
            let e = self.queues.get_mut(&key)?.pop()?;
            if self
                .jobs
                .get(&e.job)
                .is_some_and(|j| j.row.state == JobState::Pending)
            {
                return Some(e.job);
            }
        }
    }

    /// Fill a worker's free slots from the queues it serves.
    pub fn fill_worker(&mut self, fx: &mut Effects, worker: &str) {
        loop {
            let Some(w) = self.workers.get(worker) else {
                return;
            };
            if w.draining || w.free() == 0 {
                return;
            }
            let keys: Vec<(String, String)> = w
                .channels
                .iter()
                .flat_map(|c| w.serves.iter().map(move |a| (c.clone(), a.clone())))
                .filter(|k| self.queues.get(k).is_some_and(|q| !q.is_empty()))
                .collect();
            let Some(job) = self.pop_best(&keys) else {
                return;
            };
            self.assign(fx, job, worker);
        }
    }

    /// Offer new pending jobs to the workers that can take them, least
    /// loaded first.
    pub fn dispatch_jobs(&mut self, fx: &mut Effects, channel: &str, arches: &[String]) {
        for arch in arches {
            loop {
                let best = self
                    .workers
                    .iter()
                    .filter(|(_, w)| !w.draining && w.free() > 0 && w.serves(channel, arch))
                    .max_by_key(|(_, w)| w.free())
                    .map(|(n, _)| n.clone());
                let Some(worker) = best else {
                    break;
                };
                let key = [(channel.to_string(), arch.clone())];
                let Some(job) = self.pop_best(&key) else {
                    break;
                };
                self.assign(fx, job, &worker);
            }
        }
    }

    /// A worker's session began. Adopts the jobs it reports (after a master
    /// restart or a reconnect) and tells it which to drop.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        fx: &mut Effects,
        name: &str,
        serial: u64,
        arches: Vec<String>,
        channels: Vec<String>,
        capacity: u32,
        draining: bool,
        reported: &[pb::RunningJob],
        tx: mpsc::UnboundedSender<pb::MasterMsg>,
    ) -> (u64, Vec<pb::RunningJob>) {
        self.next_conn += 1;
        let conn = self.next_conn;
        let mut running = HashSet::new();
        let mut drop = Vec::new();
        let lease_until = Instant::now() + self.lease;
        for r in reported {
            let id = r.job_id as i64;
            let ok = self.jobs.get(&id).is_some_and(|j| {
                j.row.attempt == r.attempt
                    && !j.row.state.is_final()
                    && (j.row.worker.as_deref() == Some(name) || j.row.state == JobState::Pending)
            });
            if ok {
                running.insert(id);
                self.leased.insert(id);
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.lease_until = lease_until;
                    if j.row.state != JobState::Running || j.row.worker.as_deref() != Some(name) {
                        j.row.state = JobState::Running;
                        j.row.worker = Some(name.to_string());
                        if j.row.started_at.is_none() {
                            j.row.started_at = Some(now_ms());
                        }
                        let row = j.row.clone();
                        self.save(fx, &row);
                        self.settle_build(fx, row.build);
                    }
                }
            } else {
                drop.push(*r);
            }
        }
        // Jobs we believe this worker has but it does not know: the Assign
        // was lost with the old connection. Put them back in the queue.
        let lost: Vec<i64> = self
            .jobs
            .iter()
            .filter(|(id, j)| {
                j.row.worker.as_deref() == Some(name)
                    && matches!(j.row.state, JobState::Assigned | JobState::Running)
                    && !running.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        // Before the new session is registered: any Cancel goes to the old
        // one, and the new session starts with its Welcome.
        for id in lost {
            self.requeue(fx, id, "the worker reconnected without it");
        }
        self.workers.insert(
            name.to_string(),
            WorkerLive {
                conn,
                serves: expand_arches(&arches),
                arches,
                channels,
                capacity,
                running,
                draining,
                serial,
                tx,
            },
        );
        (conn, drop)
    }

    /// The session ended. Running jobs keep their leases: the worker may come
    /// back and report them.
    pub fn disconnect(&mut self, name: &str, conn: u64) -> bool {
        if self.workers.get(name).is_some_and(|w| w.conn == conn) {
            self.workers.remove(name);
            true
        } else {
            false
        }
    }

    /// Cut a worker off (revocation): forget its session and re-queue its jobs.
    /// Each job it holds is re-queued and the worker is told to cancel it
    /// (while its session is still open), so it stops building at once.
    pub fn evict(&mut self, fx: &mut Effects, name: &str) {
        let running: Vec<i64> = self
            .workers
            .get(name)
            .map(|w| w.running.iter().copied().collect())
            .unwrap_or_default();
        for id in running {
            self.requeue(fx, id, "its worker was revoked");
        }
        self.workers.remove(name);
    }

    pub fn is_current(&self, name: &str, conn: u64) -> bool {
        self.workers.get(name).is_some_and(|w| w.conn == conn)
    }

    pub fn heartbeat(&mut self, name: &str, conn: u64) {
        let until = Instant::now() + self.lease;
        if let Some(w) = self.workers.get(name).filter(|w| w.conn == conn) {
            for id in &w.running {
                if let Some(j) = self.jobs.get_mut(id) {
                    j.lease_until = until;
                }
            }
        }
    }

    pub fn drain(&mut self, name: &str, conn: u64) {
        if let Some(w) = self.workers.get_mut(name).filter(|w| w.conn == conn) {
            w.draining = true;
        }
    }

    pub fn accepted(&mut self, fx: &mut Effects, name: &str, job: i64, attempt: u32) {
        if let Some(j) = self.jobs.get_mut(&job) {
            if j.row.attempt == attempt
                && j.row.worker.as_deref() == Some(name)
                && j.row.state == JobState::Assigned
            {
                j.row.state = JobState::Running;
                let row = j.row.clone();
                self.save(fx, &row);
            }
        }
    }

    /// Is this (job, attempt) the one `worker` currently holds?
    pub fn holds(&self, worker: &str, job: i64, attempt: u32) -> bool {
        self.jobs.get(&job).is_some_and(|j| {
            j.row.attempt == attempt
                && j.row.worker.as_deref() == Some(worker)
                && matches!(j.row.state, JobState::Assigned | JobState::Running)
        })
    }

    /// A worker reports a job done. `artifacts` were verified and filed by
    /// the caller. Returns whether the result was accepted.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &mut self,
        fx: &mut Effects,
        name: &str,
        job: i64,
        attempt: u32,
        success: bool,
        message: String,
        artifacts: Vec<ArtifactRow>,
    ) -> Result<(), String> {
        let newer_here = self
            .jobs
            .get(&job)
            .is_some_and(|j| j.row.attempt != attempt && j.row.worker.as_deref() == Some(name));
        if !newer_here {
            if let Some(w) = self.workers.get_mut(name) {
                w.running.remove(&job);
            }
        }
        if !self.holds(name, job, attempt) {
            return Err(match self.jobs.get(&job) {
                None => format!("job {job} is no longer active"),
                Some(j) if j.row.attempt != attempt => format!(
                    "stale result: job {job} is at attempt {}, this is attempt {attempt}",
                    j.row.attempt
                ),
                Some(_) => format!("job {job} is not held by worker {name}"),
            });
        }
        self.leased.remove(&job);
        let Some(j) = self.jobs.get_mut(&job) else {
            return Err(format!("job {job} is no longer active"));
        };
        j.row.state = if success {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        j.row.message = (!message.is_empty()).then_some(message);
        j.row.finished_at = Some(now_ms());
        let row = j.row.clone();
        let build = row.build;
        fx.events.push(Event::Job {
            build,
            job,
            arch: row.arch.clone(),
            state: row.state,
            worker: row.worker.clone(),
            attempt: row.attempt,
        });
        fx.commit(self.store.write(move |t| {
            for a in &artifacts {
                kiln_store::add_artifact(t, build, a)?;
            }
            kiln_store::save_job(t, &row)
        }));
        fx.ended_jobs.push((build, job));
        self.settle_build(fx, build);
        Ok(())
    }

    /// Put a job back in its queue with attempt + 1, or fail it when it has
    /// used up its attempts.
    fn requeue(&mut self, fx: &mut Effects, job: i64, why: &str) {
        let max = self.max_attempts;
        self.leased.remove(&job);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if let Some(w) = j
            .row
            .worker
            .as_deref()
            .and_then(|w| self.workers.get_mut(w))
        {
            w.running.remove(&job);
            let _ = w.tx.send(pb::MasterMsg {
                msg: Some(pb::master_msg::Msg::Cancel(pb::Cancel {
                    job_id: job as u64,
                    attempt: j.row.attempt,
                    reason: why.to_string(),
                })),
            });
        }
        let build = j.row.build;
        if j.row.attempt >= max {
            j.row.state = JobState::Failed;
            j.row.message = Some(format!(
                "given up after {} attempts; last: {why}",
                j.row.attempt
            ));
            j.row.finished_at = Some(now_ms());
            fx.ended_jobs.push((build, job));
        } else {
            j.row.attempt += 1;
            j.row.state = JobState::Pending;
            j.row.worker = None;
            j.row.message = Some(format!("attempt {} re-queued: {why}", j.row.attempt - 1));
            j.row.started_at = None;
        }
        let row = j.row.clone();
        self.save(fx, &row);
        if row.state == JobState::Pending {
            if let Some(b) = self.builds.get(&build).map(|b| b.row.clone()) {
                self.enqueue(&b, job, &row.arch);
            }
        }
        self.settle_build(fx, build);
    }

    /// When a running job's time is up on the master's clock: the worker's
    /// own timeout plus one lease period of grace (the worker normally ends
    /// it first and reports).
    fn timeout_at(&self, j: &ActiveJob, now: Instant, now_wall_ms: i64) -> Option<Instant> {
        if self.job_timeout_secs == 0 {
            return None;
        }
        let started = j.row.started_at?;
        let limit_ms = (self.job_timeout_secs as i64)
            .saturating_mul(1000)
            .saturating_add(self.lease.as_millis() as i64);
        let left_ms = started.saturating_add(limit_ms) - now_wall_ms;
        Some(now + Duration::from_millis(left_ms.max(0) as u64))
    }

    /// A job held past its timeout: the worker is told to stop and the job
    /// fails (a timeout is the build's fault, not the worker's: no retry).
    fn time_out(&mut self, fx: &mut Effects, job: i64) {
        self.leased.remove(&job);
        let secs = self.job_timeout_secs;
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        if let Some(w) = j
            .row
            .worker
            .as_deref()
            .and_then(|w| self.workers.get_mut(w))
        {
            w.running.remove(&job);
            fx.sends.push((
                w.tx.clone(),
                pb::MasterMsg {
                    msg: Some(pb::master_msg::Msg::Cancel(pb::Cancel {
                        job_id: job as u64,
                        attempt: j.row.attempt,
                        reason: "timed out".into(),
                    })),
                },
            ));
        }
        j.row.state = JobState::Failed;
        j.row.message = Some(format!(
            "timed out after {secs} s (ended by the master: the worker did not report in time)"
        ));
        j.row.finished_at = Some(now_ms());
        let row = j.row.clone();
        fx.ended_jobs.push((row.build, job));
        self.save(fx, &row);
        self.settle_build(fx, row.build);
        if let Some(w) = row.worker {
            self.fill_worker(fx, &w);
        }
    }

    /// Re-queue every job whose lease has lapsed and fail the ones past
    /// their timeout; returns the next deadline of either kind.
    pub fn expire_leases(&mut self, fx: &mut Effects) -> Option<Instant> {
        let now = Instant::now();
        let wall = now_ms();
        let overdue: Vec<i64> = self
            .leased
            .iter()
            .filter(|id| {
                self.jobs
                    .get(id)
                    .and_then(|j| self.timeout_at(j, now, wall))
                    .is_some_and(|t| t <= now)
            })
            .copied()
            .collect();
        for id in overdue {
            self.time_out(fx, id);
        }
        let lapsed: Vec<i64> = self
            .leased
            .iter()
            .filter(|id| self.jobs.get(id).is_none_or(|j| j.lease_until <= now))
            .copied()
            .collect();
        let mut touched = Vec::new();
        for id in lapsed {
            if let Some(j) = self.jobs.get(&id) {
                let b = j.row.build;
                touched.push(b);
            }
            self.requeue(fx, id, "lease lapsed (worker lost)");
        }
        for b in touched {
            if let Some(row) = self.builds.get(&b).map(|b| b.row.clone()) {
                let arches: Vec<String> = self
                    .builds
                    .get(&b)
                    .map(|x| {
                        x.jobs
                            .iter()
                            .filter_map(|j| self.jobs.get(j).map(|j| j.row.arch.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                self.dispatch_jobs(fx, &row.channel, &arches);
            }
        }
        self.leased
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .flat_map(|j| [Some(j.lease_until), self.timeout_at(j, now, wall)])
            .flatten()
            .min()
    }

    /// Cancel a build: pending jobs end at once, running ones are told to
    /// stop (their slot frees when the worker confirms).
    pub fn cancel(&mut self, fx: &mut Effects, build: i64) -> Result<(), String> {
        let Some(b) = self.builds.get_mut(&build) else {
            return Err(format!("build {build} is not active"));
        };
        b.row.state = BuildState::Canceled;
        let ids = b.jobs.clone();
        fx.events.push(Event::Build {
            build,
            state: BuildState::Canceled,
        });
        fx.commit(self.store.write(move |t| {
            kiln_store::set_build_state(t, build, BuildState::Canceled, Some("canceled"))
        }));
        for id in ids {
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            if j.row.state.is_final() {
                continue;
            }
            if let Some(w) = j.row.worker.as_deref().and_then(|w| self.workers.get(w)) {
                if matches!(j.row.state, JobState::Assigned | JobState::Running) {
                    fx.sends.push((
                        w.tx.clone(),
                        pb::MasterMsg {
                            msg: Some(pb::master_msg::Msg::Cancel(pb::Cancel {
                                job_id: id as u64,
                                attempt: j.row.attempt,
                                reason: "build canceled".into(),
                            })),
                        },
                    ));
                }
            }
            self.leased.remove(&id);
            j.row.state = JobState::Canceled;
            j.row.finished_at = Some(now_ms());
            j.row.message = Some("canceled".into());
            let row = j.row.clone();
            fx.ended_jobs.push((build, id));
            self.save(fx, &row);
        }
        self.settle_build(fx, build);
        Ok(())
    }

    /// A worker confirms a canceled or dropped job is gone: free its slot.
    pub fn release_slot(&mut self, name: &str, job: i64) {
        if let Some(w) = self.workers.get_mut(name) {
            w.running.remove(&job);
        }
    }

    /// Why a pending job has not started.
    pub fn waiting_reason(&self, job: i64) -> Option<String> {
        let j = self.jobs.get(&job)?;
        if j.row.state != JobState::Pending {
            return None;
        }
        let b = self.builds.get(&j.row.build)?;
        let (channel, arch) = (&b.row.channel, &j.row.arch);
        let serving: Vec<&WorkerLive> = self
            .workers
            .values()
            .filter(|w| w.serves(channel, arch))
            .collect();
        if serving.is_empty() {
            return Some(format!(
                "no connected worker serves channel `{channel}` for `{arch}`"
            ));
        }
        if serving.iter().all(|w| w.draining) {
            return Some(format!(
                "every worker serving channel `{channel}` for `{arch}` is draining"
            ));
        }
        let used: usize = serving.iter().map(|w| w.running.len()).sum();
        let cap: u32 = serving.iter().map(|w| w.capacity).sum();
        Some(format!(
            "all {} workers serving channel `{channel}` for `{arch}` are busy ({used}/{cap} slots used)",
            serving.len()
        ))
    }

    pub fn worker_views(&self) -> HashMap<String, WorkerView> {
        self.workers
            .iter()
            .map(|(n, w)| {
                let mut running: Vec<i64> = w.running.iter().copied().collect();
                running.sort_unstable();
                (
                    n.clone(),
                    WorkerView {
                        arches: w.arches.clone(),
                        channels: w.channels.clone(),
                        capacity: w.capacity,
                        running,
                        draining: w.draining,
                    },
                )
            })
            .collect()
    }

    pub fn worker_serial(&self, name: &str) -> Option<u64> {
        self.workers.get(name).map(|w| w.serial)
    }

    pub fn queued_jobs(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| j.row.state == JobState::Pending)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_build(arches: &[&str]) -> kiln_store::NewBuild {
        kiln_store::NewBuild {
            target: "default".into(),
            package: "p".into(),
            evr: "1-1".into(),
            srpm_name: "p-1-1.src.rpm".into(),
            srpm_sha256: "0".repeat(64),
            srpm_size: 1,
            channel: "default".into(),
            disttag: String::new(),
            priority: 0,
            scratch: true,
            ci: false,
            excluded: vec![],
            arches: arches.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// After a restart, a build with one failed job and one running job
    /// ends failed when the running one succeeds.
    #[tokio::test]
    async fn a_restored_build_keeps_its_failed_job() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(&dir.path().join("kiln.db"), kiln_store::Durability::Normal).unwrap();
        let (b, jobs) = store
            .write(|t| kiln_store::insert_build(t, &new_build(&["x86_64", "i686"])))
            .await
            .unwrap();
        let (mut failed, mut running) = (jobs[0].clone(), jobs[1].clone());
        failed.state = JobState::Failed;
        running.state = JobState::Running;
        running.worker = Some("w".into());
        let (f2, r2) = (failed.clone(), running.clone());
        store
            .write(move |t| {
                kiln_store::save_job(t, &f2)?;
                kiln_store::save_job(t, &r2)?;
                kiln_store::set_build_state(t, b.id, BuildState::Building, None)
            })
            .await
            .unwrap();
        let mut s = Sched::new(store.clone(), Duration::from_secs(60), 3, 60, 1 << 20);
        s.restore(store.read(kiln_store::active_builds).await.unwrap());
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut fx = Effects::default();
        let reported = [pb::RunningJob {
            job_id: running.id as u64,
            attempt: 1,
        }];
        s.connect(
            &mut fx,
            "w",
            1,
            vec!["x86_64".into()],
            vec!["default".into()],
            2,
            false,
            &reported,
            tx,
        );
        s.finish(&mut fx, "w", running.id, 1, true, String::new(), vec![])
            .unwrap();
        let (done, _, _) = fx.finish().await.unwrap();
        assert_eq!(done, vec![b.id]);
        let row = store
            .read(move |c| kiln_store::get_build(c, b.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, BuildState::Failed);
    }

    #[test]
    fn queue_order_is_priority_then_age() {
        let mut h = BinaryHeap::new();
        h.push(QEntry {
            priority: 0,
            job: 1,
        });
        h.push(QEntry {
            priority: 0,
            job: 2,
        });
        h.push(QEntry {
            priority: 100,
            job: 3,
        });
        assert_eq!(h.pop().map(|e| e.job), Some(3));
        assert_eq!(h.pop().map(|e| e.job), Some(1));
        assert_eq!(h.pop().map(|e| e.job), Some(2));
    }
}
