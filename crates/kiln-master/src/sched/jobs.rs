//! Builds and their jobs through their life: a submitted build (its insert,
//! then the dispatch of its jobs), builds restored at start or forgotten when
//! their insert failed, a worker's result, a job taken back and re-queued (or
//! failed when out of attempts), cancel; every job change is recorded by
//! `save`, and `settle_build` derives a build's state from its jobs and drops
//! it from memory once final.
//!
//! A build may wait for other builds (of its batch) to be published: it is
//! `waiting`, its jobs are pending but in no queue, until the publication of
//! the last one it waits for (`dependency_published`) queues them. A build
//! waited for that fails, is canceled or is a succeeded scratch build (never
//! published) fails the builds waiting for it at once, and theirs in turn
//! (`dependency_failed`).

use std::collections::BTreeSet;

use kiln_core::state::{build_state_from_jobs, BuildState, JobState, PublishState};
use kiln_proto as pb;
use kiln_store::{BuildRow, JobRow};

use super::{ActiveBuild, ActiveJob, Effects, Event, JobResult, Refused, Sched, Write};

/// The message telling a worker to stop a job.
fn cancel_msg(job: i64, attempt: u32, reason: &str) -> pb::master_msg::Msg {
    pb::master_msg::Msg::Cancel(pb::Cancel {
        job_id: job as u64,
        attempt,
        reason: reason.to_string(),
    })
}

impl Sched {
    /// A new build: its insert is decided first and the assignment of its
    /// jobs right behind it, so both usually share one group commit (and no
    /// Assign is sent unless both are durable). A build that waits for
    /// others (`waits_for`) is stored `waiting` and none of its jobs is
    /// assigned.
    pub fn submit(&mut self, fx: &mut Effects, mut build: BuildRow, jobs: Vec<JobRow>) {
        if !build.waits_for.is_empty() {
            build.state = BuildState::Waiting;
        }
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

    /// Track a newly committed build and queue its pending jobs; a
    /// `waiting` build's jobs are kept but not queued, until the builds it
    /// waits for are published.
    pub fn add_build(&mut self, mut b: BuildRow, jobs: Vec<JobRow>) {
        let ids = jobs.iter().map(|j| j.id).collect();
        // Only a build still `waiting` waits: one already queued (or
        // further) when it was stored was released before a restart.
        let deps: BTreeSet<i64> = if b.state == BuildState::Waiting {
            b.waits_for.iter().copied().filter(|&d| d != b.id).collect()
        } else {
            BTreeSet::new()
        };
        if b.state == BuildState::Waiting && deps.is_empty() {
            b.state = BuildState::Queued;
        }
        let waiting = !deps.is_empty();
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
                if !waiting {
                    self.enqueue(&b, j.id, &j.arch);
                }
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
        if self.waited_by.contains_key(&b.id) {
            self.waited_package.insert(b.id, b.package.clone());
        }
        if waiting {
            for &d in &deps {
                self.waited_by.entry(d).or_default().insert(b.id);
                if let Some(dep) = self.builds.get(&d) {
                    self.waited_package.insert(d, dep.row.package.clone());
                }
            }
            self.waiting.insert(b.id, deps);
        }
        self.builds.insert(b.id, ActiveBuild { row: b, jobs: ids });
    }

    /// Load active builds from the database after a start. Running jobs get
    /// a fresh lease, so their workers have time to reconnect and report.
    pub fn restore(&mut self, active: Vec<(BuildRow, Vec<JobRow>)>) {
        for (b, jobs) in active {
            self.add_build(b, jobs);
        }
    }

    /// A build whose insert failed: drop it and its jobs from memory (its
    /// dispatch writes failed with it, so nothing was sent).
    pub fn forget_build(&mut self, fx: &mut Effects, build: i64) {
        let Some(b) = self.builds.remove(&build) else {
            return;
        };
        self.unwait(build);
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

    pub(super) fn save(&self, fx: &mut Effects, row: &JobRow) {
        self.save_event(fx, row);
        fx.writes.push(Write::SaveJob(row.clone()));
    }

    /// Recompute a build's state from its jobs, persist a change, and drop
    /// the build from memory once it is final.
    pub(super) fn settle_build(&mut self, fx: &mut Effects, build: i64) {
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
        // A build from git whose srpm job made the SRPM goes on: its jobs
        // are added once that SRPM is read (`expand`).
        if new == BuildState::Succeeded && b.row.awaits_srpm() {
            new = BuildState::Building;
        }
        if b.row.state == BuildState::Canceled {
            new = BuildState::Canceled;
        }
        if new == BuildState::Queued && self.waiting.contains_key(&build) {
            new = BuildState::Waiting;
        }
        let changed = new != b.row.state;
        let scratch = b.row.scratch;
        // An image build is never published to the repositories.
        let image = b.row.image.is_some();
        // A failed build says which job failed and why.
        let reason = (changed && new == BuildState::Failed)
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
        if changed {
            fx.events.push(Event::Build { build, state: new });
            fx.writes.push(Write::SetBuildState {
                build,
                state: new,
                reason: reason.clone(),
                publish: new.publication(scratch || image),
            });
        }
        if new.is_final() {
            if let Some(b) = self.builds.get(&build) {
                self.metrics
                    .build_duration
                    .observe((self.clock.wall_ms() - b.row.created_at) as f64 / 1000.0);
            }
            if let Some(b) = self.builds.remove(&build) {
                for id in b.jobs {
                    if self.jobs.get(&id).is_some_and(|j| j.row.state.is_final()) {
                        self.jobs.remove(&id);
                    }
                }
            }
            fx.done_builds.push(build);
            self.unwait(build);
            // The builds waiting for one that will never be published fail
            // with it. (A succeeded build's publication releases them.)
            let why = match new {
                BuildState::Failed => Some(reason.unwrap_or_else(|| "it failed".into())),
                BuildState::Canceled => Some("canceled".to_string()),
                BuildState::Succeeded if scratch => {
                    Some("a scratch build is never published".to_string())
                }
                _ => None,
            };
            if let Some(why) = why {
                self.dependency_failed(fx, build, &why);
            }
        } else if let Some(b) = self.builds.get_mut(&build) {
            b.row.state = new;
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
            made,
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
        if let Some(s) = j.row.started_at {
            self.metrics
                .job_duration
                .observe((self.clock.wall_ms() - s) as f64 / 1000.0);
        }
        let row = j.row.clone();
        let build = row.build;
        self.save_event(fx, &row);
        let srpm_made = success
            && self
                .builds
                .get(&build)
                .is_some_and(|b| b.row.awaits_srpm() && row.arch == super::SRC_ARCH);
        if let (Some(m), Some(b)) = (made, self.builds.get_mut(&build)) {
            if let Some(src) = b
                .row
                .source
                .as_mut()
                .filter(|_| row.arch == super::SRC_ARCH)
            {
                src.upstream_commit = Some(m.upstream_commit);
                src.packaging_commit = m.packaging_commit;
                src.version = (!m.version.is_empty()).then_some(m.version);
                src.release = m.release;
                fx.writes.push(Write::SetSource {
                    build,
                    source: src.clone(),
                });
            }
        }
        fx.writes.push(Write::FinishJob {
            build,
            artifacts,
            job: row,
        });
        fx.ended_jobs.push((build, job));
        self.settle_build(fx, build);
        if srpm_made {
            fx.srpms_made.push(build);
        }
        Ok(())
    }

    /// Take a held job back from its worker: its lease and slot end, and the
    /// worker (if connected) is told to stop it.
    pub(super) fn take_back(&mut self, fx: &mut Effects, job: i64, why: &str) {
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
    pub(super) fn requeue(&mut self, fx: &mut Effects, job: i64, why: &str) {
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

    /// Cancel a build: pending jobs end at once, running ones are told to
    /// stop (their slot frees when the worker confirms).
    pub fn cancel(&mut self, fx: &mut Effects, build: i64) -> Result<(), Refused> {
        self.cancel_with(fx, build, "canceled")
    }

    /// Cancel a build, saying why (the build's reason and its jobs').
    pub fn cancel_with(&mut self, fx: &mut Effects, build: i64, why: &str) -> Result<(), Refused> {
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
            reason: Some(why.to_string()),
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
            j.row.message = Some(why.to_string());
            let row = j.row.clone();
            fx.ended_jobs.push((build, id));
            self.save(fx, &row);
        }
        self.settle_build(fx, build);
        Ok(())
    }

    /// What follows from the SRPM a build's srpm job made (read and gated
    /// by the caller, `crate::project::expand`): its jobs are added and
    /// dispatched, or it ends skipped or failed. A build no longer active,
    /// canceled, or already expanded is left as it is.
    pub fn expand(&mut self, fx: &mut Effects, build: i64, e: super::Expansion) {
        use super::Expansion;
        let Some(b) = self.builds.get(&build) else {
            return;
        };
        if !b.row.awaits_srpm() || b.row.state == BuildState::Canceled {
            return;
        }
        let (srpm, reason) = match &e {
            Expansion::Build { srpm, .. } => (Some(srpm.clone()), None),
            Expansion::Skip { srpm, reason } => (Some(srpm.clone()), Some(reason.clone())),
            Expansion::Fail { reason } => (None, Some(reason.clone())),
        };
        let (excluded, arches) = match e {
            Expansion::Build {
                excluded, arches, ..
            } => (excluded, arches),
            _ => (Vec::new(), Vec::new()),
        };
        let ids = self.allocate_jobs(arches.len());
        let now = self.clock.wall_ms();
        let Some(b) = self.builds.get_mut(&build) else {
            return;
        };
        if let Some(s) = &srpm {
            b.row.package = s.package.clone();
            b.row.evr = s.evr.clone();
            b.row.srpm_name = s.name.clone();
            b.row.srpm_sha256 = s.sha256.clone();
            b.row.srpm_size = s.size;
            b.row.excluded_arches = excluded;
        }
        let jobs: Vec<JobRow> = arches
            .iter()
            .zip(&ids)
            .map(|(arch, &id)| JobRow::pending(id, build, arch, now))
            .collect();
        if srpm.is_some() {
            fx.writes.push(Write::Expand {
                build: b.row.clone(),
                jobs: jobs.clone(),
            });
        }
        if let Some(reason) = reason {
            let state = if srpm.is_some() {
                BuildState::Skipped
            } else {
                BuildState::Failed
            };
            fx.events.push(Event::Build { build, state });
            fx.writes.push(Write::SetBuildState {
                build,
                state,
                reason: Some(reason),
                publish: None,
            });
            if let Some(b) = self.builds.remove(&build) {
                for id in b.jobs {
                    self.jobs.remove(&id);
                }
            }
            fx.done_builds.push(build);
            return;
        }
        let row = b.row.clone();
        b.jobs.extend(&ids);
        for j in jobs {
            let (id, arch) = (j.id, j.arch.clone());
            self.save_event(fx, &j);
            self.jobs.insert(
                id,
                ActiveJob {
                    row: j,
                    lease_until: self.clock.now() + self.lease,
                },
            );
            self.enqueue(&row, id, &arch);
        }
        self.dispatch_jobs(fx, &row.channel, &arches);
        self.settle_build(fx, build);
    }

    /// Announce a job's row as it is now (its write is made elsewhere).
    fn save_event(&self, fx: &mut Effects, row: &JobRow) {
        fx.events.push(Event::Job {
            build: row.build,
            job: row.id,
            arch: row.arch.clone(),
            state: row.state,
            worker: row.worker.clone(),
            attempt: row.attempt,
        });
    }

    /// A build no longer waits (released, ended or forgotten): drop it from
    /// the lists of the builds it waited for. What it still waited for.
    fn unwait(&mut self, build: i64) -> Option<BTreeSet<i64>> {
        let deps = self.waiting.remove(&build)?;
        for d in &deps {
            self.waits_what.remove(&(build, *d));
            if let Some(w) = self.waited_by.get_mut(d) {
                w.remove(&build);
                if w.is_empty() {
                    self.waited_by.remove(d);
                    self.waited_package.remove(d);
                }
            }
        }
        Some(deps)
    }

    /// Build `dep` is published: the builds waiting for it wait for it no
    /// more, and those that wait for nothing else are queued and their
    /// jobs dispatched.
    pub fn dependency_published(&mut self, fx: &mut Effects, dep: i64) {
        let Some(waiters) = self.waited_by.remove(&dep) else {
            return;
        };
        self.waited_package.remove(&dep);
        for w in waiters {
            self.waits_what.remove(&(w, dep));
            let ready = self.waiting.get_mut(&w).is_some_and(|rest| {
                rest.remove(&dep);
                rest.is_empty()
            });
            if ready {
                self.waiting.remove(&w);
                self.release(fx, w);
            }
        }
    }

    /// A waiting build waits for nothing more: `queued`, its jobs queued and
    /// offered to workers like a new build's.
    fn release(&mut self, fx: &mut Effects, build: i64) {
        let Some(b) = self.builds.get_mut(&build) else {
            return;
        };
        b.row.state = BuildState::Queued;
        let (row, ids) = (b.row.clone(), b.jobs.clone());
        fx.events.push(Event::Build {
            build,
            state: BuildState::Queued,
        });
        fx.writes.push(Write::SetBuildState {
            build,
            state: BuildState::Queued,
            reason: None,
            publish: None,
        });
        let mut arches = Vec::new();
        for id in ids {
            let Some(arch) = self
                .jobs
                .get(&id)
                .filter(|j| j.row.state == JobState::Pending)
                .map(|j| j.row.arch.clone())
            else {
                continue;
            };
            self.enqueue(&row, id, &arch);
            if !arches.contains(&arch) {
                arches.push(arch);
            }
        }
        self.dispatch_jobs(fx, &row.channel, &arches);
    }

    /// Build `dep` will never be published (`why`): every build waiting for
    /// it fails at once (its jobs and itself, with the reason), and so,
    /// in turn, do the builds waiting for those.
    pub fn dependency_failed(&mut self, fx: &mut Effects, dep: i64, why: &str) {
        let mut todo = vec![(dep, why.to_string())];
        while let Some((dep, why)) = todo.pop() {
            let Some(waiters) = self.waited_by.remove(&dep) else {
                continue;
            };
            let name = self
                .waited_package
                .remove(&dep)
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            let job_message = format!("dependency build {dep} failed: {why}");
            for w in waiters {
                if self.unwait(w).is_none() {
                    continue;
                }
                let reason = format!("dependency build {dep}{name} was not published: {why}");
                self.fail_waiting(fx, w, &job_message, &reason);
                todo.push((w, reason));
            }
        }
    }

    /// End a waiting build as failed: its jobs fail with `job_message`, the
    /// build with `reason`; it is dropped from memory.
    fn fail_waiting(&mut self, fx: &mut Effects, build: i64, job_message: &str, reason: &str) {
        let Some(b) = self.builds.remove(&build) else {
            return;
        };
        let now = self.clock.wall_ms();
        for id in b.jobs {
            // A waiting build's jobs are pending; should one be held
            // anyway, its worker is told to stop.
            let held = self
                .jobs
                .get(&id)
                .is_some_and(|j| matches!(j.row.state, JobState::Assigned | JobState::Running));
            if held {
                self.take_back(fx, id, job_message);
            }
            let Some(mut j) = self.jobs.remove(&id) else {
                continue;
            };
            if j.row.state.is_final() {
                continue;
            }
            j.row.state = JobState::Failed;
            j.row.message = Some(job_message.to_string());
            j.row.finished_at = Some(now);
            fx.ended_jobs.push((build, id));
            self.save(fx, &j.row);
        }
        fx.events.push(Event::Build {
            build,
            state: BuildState::Failed,
        });
        fx.writes.push(Write::SetBuildState {
            build,
            state: BuildState::Failed,
            reason: Some(reason.to_string()),
            publish: None,
        });
        fx.done_builds.push(build);
    }

    /// What the database records of `dep`, a build that waiting builds wait
    /// for and that this scheduler does not track (see
    /// [`Sched::waited_for_untracked`]): its state and publication, or None
    /// if it has no row. Published releases them; failed, canceled,
    /// skipped, a succeeded scratch build (never published) or no build at
    /// all fails them; a publication pending (or failed, which the
    /// repository builder retries) leaves them waiting.
    pub fn dependency_recorded(
        &mut self,
        fx: &mut Effects,
        dep: i64,
        recorded: Option<(BuildState, Option<PublishState>)>,
    ) {
        if self.builds.contains_key(&dep) {
            // Tracked: its own end decides.
            return;
        }
        let why = match recorded {
            None => "there is no such build",
            Some((BuildState::Succeeded, Some(PublishState::Published))) => {
                return self.dependency_published(fx, dep);
            }
            Some((BuildState::Succeeded, None)) => "a scratch build is never published",
            Some((BuildState::Failed, _)) => "it failed",
            Some((BuildState::Canceled, _)) => "it was canceled",
            Some((BuildState::Skipped, _)) => "it was skipped",
            Some(_) => return,
        };
        self.dependency_failed(fx, dep, why);
    }
}
