//! Leases and timeouts on the master's clock: jobs whose lease lapsed (a
//! lost worker) are re-queued, jobs held past the build timeout plus one
//! lease of grace are failed, and the next deadline of either kind is
//! returned for the lease timer.

use std::time::{Duration, Instant};

use kiln_core::state::JobState;

use super::{ActiveJob, Effects, Sched};

impl Sched {
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
}
