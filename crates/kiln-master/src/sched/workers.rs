//! Workers' sessions: a connect adopts the jobs the worker reports and
//! re-queues the ones it lost, a disconnect keeps their leases, an eviction
//! (revocation) takes its jobs back; heartbeats renew leases, drain stops new
//! work, an accepted Assign marks the job running, a confirmed cancel frees
//! its slot; and the workers as the API shows them.

use std::collections::{HashMap, HashSet};

use kiln_core::names::compatible_arches;
use kiln_core::state::JobState;
use kiln_proto as pb;
use tokio::sync::mpsc;

use super::{Effects, Hello, Sched, WorkerLive, WorkerView};

/// Expand declared arches with the ones each can also build, and `src`
/// (every worker makes SRPMs from git).
fn expand_arches(arches: &[String]) -> HashSet<String> {
    let mut s: HashSet<String> = arches.iter().cloned().collect();
    s.insert(SRC_ARCH.to_string());
    for a in arches {
        s.extend(compatible_arches(a).iter().map(|x| x.to_string()));
    }
    s
}

use super::SRC_ARCH;

impl Sched {
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
                host_builds: hello.host_builds,
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

    /// Whether `name` has a session now.
    pub fn worker_connected(&self, name: &str) -> bool {
        self.workers.contains_key(name)
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

    /// A worker confirms a canceled or dropped job is gone: free its slot.
    pub fn release_slot(&mut self, name: &str, job: i64) {
        if let Some(w) = self.workers.get_mut(name) {
            w.running.remove(&job);
        }
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

    /// The worker to put a query to (what an SRPM makes) for `(channel,
    /// arch)`: a connected, non-draining one serving them, the one with
    /// the most free slots first (then by name). Its name, session and
    /// sender. A query takes no slot.
    pub fn query_target(
        &self,
        channel: &str,
        arch: &str,
    ) -> Option<(String, u64, mpsc::UnboundedSender<pb::MasterMsg>)> {
        self.workers
            .iter()
            .filter(|(_, w)| !w.draining && w.serves(channel, arch) && !w.tx.is_closed())
            .max_by(|(an, a), (bn, b)| a.free().cmp(&b.free()).then_with(|| bn.cmp(an)))
            .map(|(n, w)| (n.clone(), w.conn, w.tx.clone()))
    }
}
