//! The in-memory scheduler: queues of pending jobs per (channel, arch),
//! connected workers and their slots, leases. The database is the durable
//! record; this is rebuilt from it at start.
//!
//! Every mutation here queues its database write while the lock is held, so
//! writes commit in the order the changes were made; messages to workers are
//! sent only after those writes are durable (see [`Effects`]).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_core::names::compatible_arches;
use kiln_core::state::{build_state_from_jobs, BuildState, JobState};
use kiln_proto as pb;
use kiln_store::{ArtifactRow, BuildRow, JobRow};
use tokio::sync::mpsc;

mod clock;
pub(crate) mod effects;
#[cfg(test)]
mod tests;

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
}

/// A job's result as a worker reports it (artifacts verified and filed).
#[derive(Debug, Clone)]
pub struct JobResult {
    pub job: i64,
    pub attempt: u32,
    pub success: bool,
    pub message: String,
    pub artifacts: Vec<ArtifactRow>,
}

pub struct Sched {
    clock: Arc<dyn Clock>,
    lease: Duration,
    max_attempts: u32,
    job_timeout_secs: u64,
    log_cap: u64,
    buildroots: HashMap<String, pb::Buildroot>,
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

/// The message telling a worker to stop a job.
fn cancel_msg(job: i64, attempt: u32, reason: &str) -> pb::master_msg::Msg {
    pb::master_msg::Msg::Cancel(pb::Cancel {
        job_id: job as u64,
        attempt,
        reason: reason.to_string(),
    })
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
    pub fn new(cfg: SchedConfig, clock: Arc<dyn Clock>) -> Sched {
        Sched {
            clock,
            lease: cfg.lease,
            max_attempts: cfg.max_attempts,
            job_timeout_secs: cfg.job_timeout_secs,
            log_cap: cfg.log_cap,
            buildroots: cfg.buildroots,
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

    /// A new build: its insert is decided first and the assignment of its
    /// jobs right behind it, so both usually share one group commit (and no
    /// Assign is sent unless both are durable).
    pub fn submit(&mut self, fx: &mut Effects, build: BuildRow, jobs: Vec<JobRow>) {
        let (channel, arches) = (
            build.channel.clone(),
            jobs.iter().map(|j| j.arch.clone()).collect::<Vec<_>>(),
        );
        fx.writes.push(Write::InsertBuild {
            build: build.clone(),
            jobs: jobs.clone(),
        });
        self.add_build(build, jobs);
        self.dispatch_jobs(fx, &channel, &arches);
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
                        lease_until: self.clock.now(),
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
                    lease_until: self.clock.now() + self.lease,
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

    /// The package an active build builds.
    pub fn package_of(&self, build: i64) -> Option<String> {
        self.builds.get(&build).map(|b| b.row.package.clone())
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
        fx.writes.push(Write::SaveJob(row.clone()));
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
            // A failed build says which job failed and why.
            let reason = (new == BuildState::Failed)
                .then(|| {
                    b.jobs
                        .iter()
                        .filter_map(|id| self.jobs.get(id))
                        .find(|j| j.row.state == JobState::Failed)
                        .map(|j| {
                            format!(
                                "job {} ({}) failed: {}",
                                j.row.id,
                                j.row.arch,
                                j.row.message.as_deref().unwrap_or("no reason given")
                            )
                        })
                })
                .flatten();
            fx.events.push(Event::Build { build, state: new });
            fx.writes.push(Write::SetBuildState {
                build,
                state: new,
                reason,
                publish: new.publication(b.row.scratch),
            });
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

    /// What the jobs of targets with a buildroot build in (sent in their
    /// Assign).
    pub fn set_buildroots(&mut self, b: HashMap<String, pb::Buildroot>) {
        self.buildroots = b;
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
        j.row.started_at = Some(self.clock.wall_ms());
        j.row.finished_at = None;
        j.lease_until = self.clock.now() + self.lease;
        w.running.insert(job);
        self.leased.insert(job);
        let msg = pb::master_msg::Msg::Assign(pb::Assign {
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
            buildroot: self.buildroots.get(&b.row.target).cloned(),
        });
        fx.send(worker, &w.tx, msg);
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
    pub fn connect(
        &mut self,
        fx: &mut Effects,
        hello: Hello,
        reported: &[pb::RunningJob],
        tx: mpsc::UnboundedSender<pb::MasterMsg>,
    ) -> (u64, Vec<pb::RunningJob>) {
        let name = hello.name.as_str();
        self.next_conn += 1;
        let conn = self.next_conn;
        let mut running = HashSet::new();
        let mut drop = Vec::new();
        let lease_until = self.clock.now() + self.lease;
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
                            j.row.started_at = Some(self.clock.wall_ms());
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
            hello.name.clone(),
            WorkerLive {
                conn,
                serves: expand_arches(&hello.arches),
                arches: hello.arches,
                channels: hello.channels,
                capacity: hello.capacity,
                running,
                draining: hello.draining,
                serial: hello.serial,
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
        let until = self.clock.now() + self.lease;
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
    pub fn finish(&mut self, fx: &mut Effects, name: &str, r: JobResult) -> Result<(), Refused> {
        let JobResult {
            job,
            attempt,
            success,
            message,
            artifacts,
        } = r;
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
                None => Refused::JobGone(job),
                Some(j) if j.row.attempt != attempt => Refused::Stale {
                    job,
                    current: j.row.attempt,
                    given: attempt,
                },
                Some(_) => Refused::NotHeld {
                    job,
                    worker: name.to_string(),
                },
            });
        }
        self.leased.remove(&job);
        let Some(j) = self.jobs.get_mut(&job) else {
            return Err(Refused::JobGone(job));
        };
        j.row.state = if success {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        j.row.message = (!message.is_empty()).then_some(message);
        j.row.finished_at = Some(self.clock.wall_ms());
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
        fx.writes.push(Write::FinishJob {
            build,
            artifacts,
            job: row,
        });
        fx.ended_jobs.push((build, job));
        self.settle_build(fx, build);
        Ok(())
    }

    /// Take a held job back from its worker: its lease and slot end, and the
    /// worker (if connected) is told to stop it.
    fn take_back(&mut self, fx: &mut Effects, job: i64, why: &str) {
        self.leased.remove(&job);
        let Some(j) = self.jobs.get(&job) else {
            return;
        };
        let Some(name) = j.row.worker.clone() else {
            return;
        };
        if let Some(w) = self.workers.get_mut(&name) {
            w.running.remove(&job);
            fx.send(&name, &w.tx, cancel_msg(job, j.row.attempt, why));
        }
    }

    /// Put a job back in its queue with attempt + 1, or fail it when it has
    /// used up its attempts.
    fn requeue(&mut self, fx: &mut Effects, job: i64, why: &str) {
        let max = self.max_attempts;
        self.take_back(fx, job, why);
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let build = j.row.build;
        if j.row.attempt >= max {
            j.row.state = JobState::Failed;
            j.row.message = Some(format!(
                "given up after {} attempts; last: {why}",
                j.row.attempt
            ));
            j.row.finished_at = Some(self.clock.wall_ms());
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
        let secs = self.job_timeout_secs;
        self.take_back(fx, job, "timed out");
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.row.state = JobState::Failed;
        j.row.message = Some(format!(
            "timed out after {secs} s (ended by the master: the worker did not report in time)"
        ));
        j.row.finished_at = Some(self.clock.wall_ms());
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
        let now = self.clock.now();
        let wall = self.clock.wall_ms();
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
    pub fn cancel(&mut self, fx: &mut Effects, build: i64) -> Result<(), Refused> {
        let Some(b) = self.builds.get_mut(&build) else {
            return Err(Refused::BuildNotActive(build));
        };
        b.row.state = BuildState::Canceled;
        let ids = b.jobs.clone();
        fx.events.push(Event::Build {
            build,
            state: BuildState::Canceled,
        });
        fx.writes.push(Write::SetBuildState {
            build,
            state: BuildState::Canceled,
            reason: Some("canceled".into()),
            publish: None,
        });
        for id in ids {
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            if j.row.state.is_final() {
                continue;
            }
            if let Some((name, w)) = j
                .row
                .worker
                .as_deref()
                .and_then(|n| self.workers.get(n).map(|w| (n, w)))
            {
                if matches!(j.row.state, JobState::Assigned | JobState::Running) {
                    fx.send(name, &w.tx, cancel_msg(id, j.row.attempt, "build canceled"));
                }
            }
            self.leased.remove(&id);
            j.row.state = JobState::Canceled;
            j.row.finished_at = Some(self.clock.wall_ms());
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
