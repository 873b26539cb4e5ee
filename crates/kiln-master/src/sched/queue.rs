//! The queues and dispatch: a pending job goes into the priority queue of its
//! (channel, arch, host build); the best job among a worker's queues is
//! popped (stale entries skipped) and assigned (memory, the job's write, the
//! Assign message); a worker's free slots are filled, new jobs are offered to
//! the least loaded workers first, and a pending job can say why it waits
//! (for the publication of other builds, or for a worker).

use kiln_core::state::JobState;
use kiln_proto as pb;
use kiln_store::BuildRow;

use super::{Effects, QEntry, QKey, Sched, WorkerLive, SRC_ARCH};

/// What an srpm job fetches and how (the build's source as requested).
fn git_source(s: &kiln_core::git::BuildSource) -> pb::GitSource {
    pb::GitSource {
        project: s.project.clone(),
        mode: s.mode.as_str().to_string(),
        upstream_url: s.upstream.clone(),
        upstream_ref: s.git_ref.clone(),
        upstream_commit: s.upstream_commit.clone().unwrap_or_default(),
        packaging_url: s.packaging.clone().unwrap_or_default(),
        packaging_ref: s.packaging_ref.clone().unwrap_or_default(),
        spec: s.spec.clone().unwrap_or_default(),
        submodules: s.submodules,
        tag_wins: s.tag_wins,
    }
}

impl Sched {
    pub(super) fn enqueue(&mut self, b: &BuildRow, job: i64, arch: &str) {
        let host = self.host_build(&b.target);
        self.queues
            .entry((b.channel.clone(), arch.to_string(), host))
            .or_default()
            .push(QEntry {
                priority: b.priority,
                job,
            });
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
        self.metrics
            .queue_wait
            .observe((self.clock.wall_ms() - j.row.created_at) as f64 / 1000.0);
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
            source: (j.row.arch == SRC_ARCH)
                .then(|| b.row.source.as_ref().map(git_source))
                .flatten(),
            image: Sched::image_job(&self.image_bases, &b.row),
        });
        fx.send(worker, &w.tx, msg);
        let row = j.row.clone();
        let build = row.build;
        self.save(fx, &row);
        self.settle_build(fx, build);
    }

    /// Pop the best pending job among the given queues, skipping stale
    /// entries (canceled or already re-queued jobs).
    fn pop_best(&mut self, keys: &[QKey]) -> Option<i64> {
        loop {
            let mut best: Option<(&QKey, &QEntry)> = None;
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
            let keys: Vec<QKey> = w
                .channels
                .iter()
                .flat_map(|c| w.serves.iter().flat_map(move |a| w.keys(c, a)))
                .filter(|k| self.queues.get(k).is_some_and(|q| !q.is_empty()))
                .collect();
            let Some(job) = self.pop_best(&keys) else {
                return;
            };
            self.assign(fx, job, worker);
        }
    }

    /// The worker with the most free slots serving (channel, arch), the
    /// first by name among equals (only those taking host builds when
    /// `host_only`), and whether it takes host builds.
    fn least_loaded(&self, channel: &str, arch: &str, host_only: bool) -> Option<(String, bool)> {
        self.workers
            .iter()
            .filter(|(_, w)| {
                !w.draining
                    && w.free() > 0
                    && w.serves(channel, arch)
                    && (w.host_builds || !host_only)
            })
            .max_by(|a, b| a.1.free().cmp(&b.1.free()).then_with(|| b.0.cmp(a.0)))
            .map(|(n, w)| (n.clone(), w.host_builds))
    }

    /// Offer new pending jobs to the workers that can take them, least
    /// loaded first.
    pub fn dispatch_jobs(&mut self, fx: &mut Effects, channel: &str, arches: &[String]) {
        for arch in arches {
            // The least loaded worker takes the best job it takes; when it
            // refuses host builds and only those are left, the least loaded
            // worker that takes them does.
            while let Some((worker, host)) = self.least_loaded(channel, arch, false) {
                if let Some(job) = self.pop_best(&self.workers[&worker].keys(channel, arch)) {
                    self.assign(fx, job, &worker);
                    continue;
                }
                if host {
                    break;
                }
                let Some((worker, _)) = self.least_loaded(channel, arch, true) else {
                    break;
                };
                let Some(job) = self.pop_best(&[(channel.to_string(), arch.clone(), true)]) else {
                    break;
                };
                self.assign(fx, job, &worker);
            }
        }
    }

    /// Why a pending job has not started.
    pub fn waiting_reason(&self, job: i64) -> Option<String> {
        let j = self.jobs.get(&job)?;
        if j.row.state != JobState::Pending {
            return None;
        }
        if let Some(deps) = self.waiting.get(&j.row.build) {
            let named: Vec<String> = deps
                .iter()
                .map(|d| {
                    let what = self.waits_what.get(&(j.row.build, *d));
                    match (self.waited_package.get(d), what) {
                        (Some(p), Some(w)) => format!("{d} ({p}: {w})"),
                        (Some(p), None) => format!("{d} ({p})"),
                        (None, _) => d.to_string(),
                    }
                })
                .collect();
            let s = if named.len() == 1 { "" } else { "s" };
            return Some(format!(
                "waits for build{s} {} to be published",
                named.join(", ")
            ));
        }
        let b = self.builds.get(&j.row.build)?;
        let (channel, arch) = (&b.row.channel, &j.row.arch);
        let host = self.host_build(&b.row.target);
        let any = self.workers.values().any(|w| w.serves(channel, arch));
        let serving: Vec<&WorkerLive> = self
            .workers
            .values()
            .filter(|w| w.serves(channel, arch) && (w.host_builds || !host))
            .collect();
        if serving.is_empty() && any {
            return Some(format!(
                "no connected worker serving channel `{channel}` for `{arch}` takes builds on its \
                 own system (target `{}` has no buildroot)",
                b.row.target
            ));
        }
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
}
