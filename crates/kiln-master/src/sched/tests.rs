//! The scheduler's rules, specified by fast unit tests: no database, no
//! process, no waiting (time comes from a clock the test moves).

use super::*;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use kiln_core::state::PublishState;
use pb::master_msg::Msg;

/// A clock that moves only when the test says so.
struct TestClock {
    base: Instant,
    base_wall: i64,
    offset_ms: AtomicU64,
}

impl TestClock {
    fn advance(&self, d: Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as u64, AtomicOrdering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.offset_ms.load(AtomicOrdering::SeqCst))
    }
    fn wall_ms(&self) -> i64 {
        self.base_wall + self.offset_ms.load(AtomicOrdering::SeqCst) as i64
    }
}

const LEASE: Duration = Duration::from_secs(60);

pub(super) struct T {
    pub(super) s: Sched,
    clock: Arc<TestClock>,
    /// Each connected worker's session, as the worker would read it.
    inbox: HashMap<String, mpsc::UnboundedReceiver<pb::MasterMsg>>,
    /// The target of the next submits.
    target: String,
    /// Whether the next workers to connect take host builds.
    host_builds: bool,
}

impl T {
    pub(super) fn new() -> T {
        T::with(3, 0)
    }

    fn with(max_attempts: u32, job_timeout_secs: u64) -> T {
        let clock = Arc::new(TestClock {
            base: Instant::now(),
            base_wall: 1_000_000,
            offset_ms: AtomicU64::new(0),
        });
        let s = Sched::new(
            SchedConfig {
                lease: LEASE,
                max_attempts,
                job_timeout_secs,
                log_cap: 1 << 20,
                buildroots: Default::default(),
            },
            clock.clone(),
        );
        T {
            s,
            clock,
            inbox: HashMap::new(),
            target: "t".into(),
            host_builds: true,
        }
    }

    /// Submit a build; returns its job ids (in arch order).
    fn submit(
        &mut self,
        fx: &mut Effects,
        channel: &str,
        arches: &[&str],
        priority: i64,
    ) -> Vec<i64> {
        self.submit_build(fx, channel, arches, priority, false)
    }

    fn submit_build(
        &mut self,
        fx: &mut Effects,
        channel: &str,
        arches: &[&str],
        priority: i64,
        scratch: bool,
    ) -> Vec<i64> {
        let mut nb = self.new_build(channel, arches, priority);
        nb.scratch = scratch;
        self.submit_nb(fx, nb).1
    }

    /// A build of `package` (one x86_64 job, channel default) that waits
    /// for `waits_for`: its id and its job.
    fn submit_after(
        &mut self,
        fx: &mut Effects,
        package: &str,
        waits_for: &[i64],
        scratch: bool,
    ) -> (i64, i64) {
        let mut nb = self.new_build("default", &["x86_64"], 0);
        nb.package = package.into();
        nb.waits_for = waits_for.to_vec();
        nb.scratch = scratch;
        let (id, jobs) = self.submit_nb(fx, nb);
        (id, jobs[0])
    }

    pub(super) fn submit_nb(
        &mut self,
        fx: &mut Effects,
        nb: kiln_store::NewBuild,
    ) -> (i64, Vec<i64>) {
        let (id, job_ids) = self.s.allocate_ids(nb.arches.len());
        let (b, jobs) = kiln_store::new_rows(&nb, id, &job_ids);
        self.s.submit(fx, b, jobs);
        (id, job_ids)
    }

    pub(super) fn new_build(
        &self,
        channel: &str,
        arches: &[&str],
        priority: i64,
    ) -> kiln_store::NewBuild {
        kiln_store::NewBuild {
            target: self.target.clone(),
            package: "p".into(),
            evr: "1-1".into(),
            srpm_name: "p-1-1.src.rpm".into(),
            srpm_sha256: "0".repeat(64),
            srpm_size: 1,
            channel: channel.into(),
            disttag: String::new(),
            priority,
            scratch: false,
            ci: false,
            excluded: vec![],
            arches: arches.iter().map(|a| a.to_string()).collect(),
            batch: None,
            waits_for: vec![],
            source: None,
            submitter: None,
        }
    }

    pub(super) fn connect(
        &mut self,
        fx: &mut Effects,
        name: &str,
        arches: &[&str],
        channels: &[&str],
        capacity: u32,
        reported: &[pb::RunningJob],
    ) -> (u64, Vec<pb::RunningJob>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inbox.insert(name.to_string(), rx);
        let hello = Hello {
            name: name.into(),
            serial: 1,
            arches: arches.iter().map(|a| a.to_string()).collect(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            capacity,
            draining: false,
            host_builds: self.host_builds,
        };
        let r = self.s.connect(fx, hello, reported, tx);
        self.s.fill_worker(fx, name);
        r
    }

    pub(super) fn state(&self, job: i64) -> JobState {
        self.s.job_current(job).expect("an active job").4
    }

    fn worker_of(&self, job: i64) -> Option<String> {
        self.s.job_current(job).and_then(|j| j.2)
    }

    pub(super) fn attempt(&self, job: i64) -> u32 {
        self.s.job_current(job).expect("an active job").1
    }

    fn ok(&mut self, fx: &mut Effects, worker: &str, job: i64) -> Result<(), Refused> {
        let attempt = self.attempt(job);
        self.result(fx, worker, job, attempt, true)
    }

    fn result(
        &mut self,
        fx: &mut Effects,
        worker: &str,
        job: i64,
        attempt: u32,
        success: bool,
    ) -> Result<(), Refused> {
        let r = self.s.finish(
            fx,
            worker,
            JobResult {
                job,
                attempt,
                success,
                message: String::new(),
                artifacts: vec![],
                made: None,
            },
        );
        self.s.fill_worker(fx, worker);
        r
    }
}

/// The (worker, job) of every Assign, in decision order.
pub(super) fn assigns(fx: &Effects) -> Vec<(String, i64)> {
    fx.sends
        .iter()
        .filter_map(|o| match &o.msg.msg {
            Some(Msg::Assign(a)) => Some((o.worker.clone(), a.job_id as i64)),
            _ => None,
        })
        .collect()
}

/// The (worker, job, reason) of every Cancel.
fn cancels(fx: &Effects) -> Vec<(String, i64, String)> {
    fx.sends
        .iter()
        .filter_map(|o| match &o.msg.msg {
            Some(Msg::Cancel(c)) => Some((o.worker.clone(), c.job_id as i64, c.reason.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn fx() -> Effects {
    Effects::default()
}

#[test]
fn jobs_go_to_workers_of_their_channel_and_arch() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "x86", &["x86_64"], &["a"], 4, &[]);
    t.connect(&mut f, "arm", &["aarch64"], &["a"], 4, &[]);
    t.connect(&mut f, "other", &["x86_64", "aarch64"], &["b"], 4, &[]);
    let mut f = fx();
    let jobs = t.submit(&mut f, "a", &["x86_64", "aarch64", "s390x"], 0);
    let mut got = assigns(&f);
    got.sort();
    assert_eq!(
        got,
        vec![("arm".to_string(), jobs[1]), ("x86".to_string(), jobs[0])]
    );
    // Nobody serves s390x on channel a: it waits, and says why.
    assert_eq!(t.state(jobs[2]), JobState::Pending);
    let why = t.s.waiting_reason(jobs[2]).unwrap();
    assert!(
        why.contains("no connected worker serves channel `a` for `s390x`"),
        "{why}"
    );
    // The write of the build comes before the writes of its assignments.
    assert!(matches!(f.writes.first(), Some(Write::InsertBuild { .. })));
}

#[test]
fn a_worker_builds_the_arches_its_own_can_build() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "x86", &["x86_64"], &["default"], 4, &[]);
    let jobs = t.submit(&mut f, "default", &["i686", "noarch"], 0);
    let got: Vec<i64> = assigns(&f).into_iter().map(|(_, j)| j).collect();
    assert_eq!(got, jobs);
    // But an aarch64 worker does not take x86_64.
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "arm", &["aarch64"], &["default"], 4, &[]);
    t.submit(&mut f, "default", &["x86_64"], 0);
    assert!(assigns(&f).is_empty());
}

#[test]
fn capacity_is_never_exceeded_and_a_freed_slot_is_filled() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 2, &[]);
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.extend(t.submit(&mut f, "default", &["x86_64"], 0));
    }
    assert_eq!(assigns(&f).len(), 2);
    assert_eq!(t.s.worker_views()["w"].running.len(), 2);
    let mut f = fx();
    t.ok(&mut f, "w", jobs[0]).unwrap();
    assert_eq!(assigns(&f), vec![("w".to_string(), jobs[2])]);
    assert_eq!(t.s.worker_views()["w"].running.len(), 2);
    let why = t.s.waiting_reason(jobs[3]).unwrap();
    assert!(why.contains("busy (2/2 slots used)"), "{why}");
}

#[test]
fn priority_first_then_age_and_now_jumps_the_queue() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    let busy = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    let a = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    let b = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    // `--now` is priority 100.
    let now = t.submit(&mut f, "default", &["x86_64"], 100)[0];
    let mut order = Vec::new();
    let mut cur = busy;
    for _ in 0..3 {
        let mut f = fx();
        t.ok(&mut f, "w", cur).unwrap();
        let got = assigns(&f);
        assert_eq!(got.len(), 1);
        cur = got[0].1;
        order.push(cur);
    }
    assert_eq!(order, vec![now, a, b]);
}

#[test]
fn a_lapsed_lease_requeues_with_the_next_attempt_and_the_late_result_is_refused() {
    let mut t = T::new();
    let mut f = fx();
    let (conn, _) = t.connect(&mut f, "w1", &["x86_64"], &["default"], 1, &[]);
    let job = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    assert_eq!(t.worker_of(job).as_deref(), Some("w1"));
    // The worker's session drops and it does not come back. The job keeps
    // its lease meanwhile (the worker may return and report it).
    assert!(t.s.disconnect("w1", conn));
    t.clock.advance(LEASE - Duration::from_secs(1));
    let mut f = fx();
    let next = t.s.expire_leases(&mut f);
    assert!(f.sends.is_empty());
    assert_eq!(next, Some(t.clock.now() + Duration::from_secs(1)));
    // After it: back in the queue at attempt 2.
    t.clock.advance(Duration::from_secs(2));
    let mut f = fx();
    t.s.expire_leases(&mut f);
    assert_eq!(t.state(job), JobState::Pending);
    assert_eq!(t.attempt(job), 2);
    assert!(f
        .writes
        .iter()
        .any(|w| matches!(w, Write::SaveJob(r) if r.id == job && r.attempt == 2)));
    // w1's late result (attempt 1) counts for nothing.
    let mut f = fx();
    let err = t.result(&mut f, "w1", job, 1, true).unwrap_err();
    assert_eq!(
        err,
        Refused::Stale {
            job,
            current: 2,
            given: 1
        }
    );
    assert!(err.to_string().starts_with("stale result"), "{err}");
    assert_eq!(t.state(job), JobState::Pending);
    // Another worker takes attempt 2.
    let mut f = fx();
    t.connect(&mut f, "w2", &["x86_64"], &["default"], 1, &[]);
    assert_eq!(assigns(&f), vec![("w2".to_string(), job)]);
}

#[test]
fn heartbeats_keep_a_lease_and_attempts_run_out() {
    let mut t = T::with(2, 0);
    let mut f = fx();
    let (conn, _) = t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    let job = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    for _ in 0..5 {
        t.clock.advance(LEASE / 2);
        t.s.heartbeat("w", conn);
        let mut f = fx();
        t.s.expire_leases(&mut f);
        assert!(f.sends.is_empty());
    }
    assert_eq!(t.state(job), JobState::Assigned);
    // Two lapses with max_attempts = 2: failed for good.
    for _ in 0..2 {
        t.clock.advance(LEASE * 2);
        let mut f = fx();
        t.s.expire_leases(&mut f);
    }
    assert!(t.s.job_current(job).is_none(), "the build ended");
}

#[test]
fn the_master_fails_a_job_held_past_its_timeout() {
    let mut t = T::with(3, 600);
    let mut f = fx();
    let (conn, _) = t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    let job = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    // The worker keeps heartbeating past the timeout (600 s) and the grace
    // of one lease.
    let mut f = fx();
    let mut ended = false;
    for _ in 0..((600 + 60) / 30 + 2) {
        t.clock.advance(Duration::from_secs(30));
        t.s.heartbeat("w", conn);
        f = fx();
        t.s.expire_leases(&mut f);
        if t.s.job_current(job).is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the job was not ended by the master");
    assert_eq!(cancels(&f), vec![("w".into(), job, "timed out".into())]);
    let saved = f.writes.iter().find_map(|w| match w {
        Write::SaveJob(r) if r.id == job => Some(r.clone()),
        _ => None,
    });
    let row = saved.expect("the job's row is written");
    assert_eq!(row.state, JobState::Failed);
    assert!(row.message.unwrap().contains("timed out after 600 s"));
    // The failed build says which job failed and why.
    let reason = f.writes.iter().find_map(|w| match w {
        Write::SetBuildState {
            state: BuildState::Failed,
            reason,
            ..
        } => reason.clone(),
        _ => None,
    });
    let reason = reason.expect("the failed build has a reason");
    assert!(
        reason.starts_with(&format!("job {job} (x86_64) failed: "))
            && reason.contains("timed out after 600 s"),
        "{reason}"
    );
}

#[test]
fn cancel_ends_queued_jobs_at_once_and_tells_the_worker_of_running_ones() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    let jobs = t.submit(&mut f, "default", &["x86_64", "aarch64"], 0);
    let build = t.s.job_current(jobs[0]).unwrap().0;
    let mut f = fx();
    t.s.cancel(&mut f, build).unwrap();
    assert_eq!(
        cancels(&f),
        vec![("w".into(), jobs[0], "build canceled".into())]
    );
    assert!(f.writes.contains(&Write::SetBuildState {
        build,
        state: BuildState::Canceled,
        reason: Some("canceled".into()),
        publish: None,
    }));
    assert_eq!(f.done_builds, vec![build]);
    assert!(t.s.cancel(&mut fx(), build).is_err(), "not active any more");
}

#[test]
fn a_succeeded_build_is_queued_for_publication_unless_scratch() {
    for scratch in [false, true] {
        let mut t = T::new();
        let mut f = fx();
        t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
        let job = t.submit_build(&mut f, "default", &["x86_64"], 0, scratch)[0];
        let mut f = fx();
        t.ok(&mut f, "w", job).unwrap();
        let publish = f.writes.iter().find_map(|w| match w {
            Write::SetBuildState {
                state: BuildState::Succeeded,
                publish,
                ..
            } => Some(*publish),
            _ => None,
        });
        let want = (!scratch).then_some(PublishState::Pending);
        assert_eq!(publish, Some(want), "scratch = {scratch}");
    }
}

/// An image build (issue 12): its Assign carries the recipe, its version
/// and the target's repositories; it succeeds without being queued for
/// publication.
#[test]
fn an_image_build_is_assigned_with_its_recipe_and_never_published() {
    let mut t = T::new();
    let mut base = pb::ImageJob {
        repos: vec!["http://m/repos/t/$basearch/".into()],
        ..Default::default()
    };
    t.s.set_image_bases(HashMap::from([("t".to_string(), base.clone())]));
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    let mut nb = t.new_build("default", &["x86_64"], 0);
    (nb.package, nb.evr) = ("img".into(), "img-20260101.1".into());
    let (id, job_ids) = t.s.allocate_ids(1);
    let (mut b, jobs) = kiln_store::new_rows(&nb, id, &job_ids);
    b.image = Some("{\"name\":\"img\"}".into());
    let mut f = fx();
    t.s.submit(&mut f, b, jobs);
    let image = f.sends.iter().find_map(|o| match &o.msg.msg {
        Some(Msg::Assign(a)) => a.image.clone(),
        _ => None,
    });
    (base.recipe_json, base.version) = ("{\"name\":\"img\"}".into(), "img-20260101.1".into());
    assert_eq!(image, Some(base));
    assert_eq!(t.s.image_of(id).as_deref(), Some("img"));
    let mut f = fx();
    t.ok(&mut f, "w", job_ids[0]).unwrap();
    let publish = f.writes.iter().find_map(|w| match w {
        Write::SetBuildState {
            state: BuildState::Succeeded,
            publish,
            ..
        } => Some(*publish),
        _ => None,
    });
    assert_eq!(publish, Some(None), "an image build is never published");
}

/// The rows a submit wrote (as the database would hold them).
fn inserted(f: &Effects) -> (BuildRow, Vec<JobRow>) {
    f.writes
        .iter()
        .find_map(|w| match w {
            Write::InsertBuild { build, jobs } => Some((build.clone(), jobs.clone())),
            _ => None,
        })
        .expect("a build insert")
}

#[test]
fn after_a_restart_a_worker_keeps_what_it_reports_and_loses_what_it_does_not() {
    let mut t = T::new();
    let mut f = fx();
    let jobs = t.submit(&mut f, "default", &["x86_64", "x86_64"], 0);
    let (mut b, mut rows) = inserted(&f);
    // As the database holds them when the master restarts: both running
    // on w.
    b.state = BuildState::Building;
    for r in &mut rows {
        r.state = JobState::Running;
        r.worker = Some("w".into());
    }
    let mut t = T::new();
    t.s.restore(vec![(b, rows)]);
    // The worker comes back reporting the first job only, and one the
    // master never heard of.
    let reported = [
        pb::RunningJob {
            job_id: jobs[0] as u64,
            attempt: 1,
        },
        pb::RunningJob {
            job_id: 9999,
            attempt: 1,
        },
    ];
    let mut f = fx();
    let (_, drop) = t.connect(&mut f, "w", &["x86_64"], &["default"], 2, &reported);
    assert_eq!(drop.len(), 1);
    assert_eq!(drop[0].job_id, 9999);
    assert_eq!(t.state(jobs[0]), JobState::Running);
    // The second was lost with the old session: re-queued, and given to the
    // worker again (it has a free slot) at attempt 2.
    assert_eq!(t.attempt(jobs[1]), 2);
    assert_eq!(assigns(&f), vec![("w".to_string(), jobs[1])]);
}

#[test]
fn a_restored_build_keeps_its_failed_job() {
    let mut t = T::new();
    let mut f = fx();
    let jobs = t.submit(&mut f, "default", &["x86_64", "i686"], 0);
    let (mut b, mut rows) = inserted(&f);
    b.state = BuildState::Building;
    rows[0].state = JobState::Failed;
    rows[1].state = JobState::Running;
    rows[1].worker = Some("w".into());
    let mut t = T::new();
    t.s.restore(vec![(b.clone(), rows)]);
    let reported = [pb::RunningJob {
        job_id: jobs[1] as u64,
        attempt: 1,
    }];
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 2, &reported);
    let mut f = fx();
    t.ok(&mut f, "w", jobs[1]).unwrap();
    assert_eq!(f.done_builds, vec![b.id]);
    assert!(f.writes.contains(&Write::SetBuildState {
        build: b.id,
        state: BuildState::Failed,
        reason: Some(format!("job {} (x86_64) failed: no reason given", jobs[0])),
        publish: None,
    }));
}

#[test]
fn a_draining_worker_gets_no_new_job() {
    let mut t = T::new();
    let mut f = fx();
    let (conn, _) = t.connect(&mut f, "w", &["x86_64"], &["default"], 2, &[]);
    t.s.drain("w", conn);
    let job = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    assert!(assigns(&f).is_empty());
    let why = t.s.waiting_reason(job).unwrap();
    assert!(why.contains("draining"), "{why}");
}

#[test]
fn a_revoked_worker_is_told_to_cancel_and_its_jobs_go_back() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 1, &[]);
    let job = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    let mut f = fx();
    t.s.evict(&mut f, "w");
    assert_eq!(
        cancels(&f),
        vec![("w".into(), job, "its worker was revoked".into())]
    );
    assert_eq!(t.state(job), JobState::Pending);
    assert!(!t.s.worker_views().contains_key("w"));
    // The message reaches the session it was addressed to.
    let rx = t.inbox.get_mut("w").unwrap();
    for o in f.sends {
        o.tx.send(o.msg).unwrap();
    }
    assert!(matches!(
        rx.try_recv().map(|m| m.msg),
        Ok(Some(Msg::Cancel(_)))
    ));
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

#[test]
fn a_worker_without_host_builds_takes_only_buildroot_jobs() {
    let mut t = T::new();
    t.s.set_buildroots([("el9".to_string(), pb::Buildroot::default())].into());
    let mut f = fx();
    t.host_builds = false;
    t.connect(&mut f, "picky", &["x86_64"], &["default"], 2, &[]);
    // A host build (target `t`, no buildroot) and a buildroot build.
    let mut f = fx();
    let host = t.submit(&mut f, "default", &["x86_64"], 5)[0];
    t.target = "el9".into();
    let rooted = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    assert_eq!(assigns(&f), vec![("picky".to_string(), rooted)]);
    let Some(Msg::Assign(a)) = &f.sends[0].msg.msg else {
        panic!("not an Assign")
    };
    assert!(a.buildroot.is_some(), "a buildroot job says so");
    assert_eq!(t.state(host), JobState::Pending);
    let why = t.s.waiting_reason(host).unwrap();
    assert!(why.contains("takes builds on its own system"), "{why}");
    // A worker that takes them gets the host build, higher priority or not.
    t.host_builds = true;
    let mut f = fx();
    t.connect(&mut f, "any", &["x86_64"], &["default"], 1, &[]);
    assert_eq!(assigns(&f), vec![("any".to_string(), host)]);
    let Some(Msg::Assign(a)) = &f.sends[0].msg.msg else {
        panic!("not an Assign")
    };
    assert!(a.buildroot.is_none(), "a host job has no buildroot");
}

// ---- builds that wait for others to be published ----

/// The last state written for a build, with its reason.
fn build_write(f: &Effects, build: i64) -> Option<(BuildState, Option<String>)> {
    f.writes.iter().rev().find_map(|w| match w {
        Write::SetBuildState {
            build: b,
            state,
            reason,
            ..
        } if *b == build => Some((*state, reason.clone())),
        _ => None,
    })
}

/// The last row written for a job.
fn job_write(f: &Effects, job: i64) -> Option<JobRow> {
    f.writes.iter().rev().find_map(|w| match w {
        Write::SaveJob(r) if r.id == job => Some(r.clone()),
        _ => None,
    })
}

/// Every build a submit wrote (as the database would hold them).
fn inserted_all(f: &Effects) -> Vec<(BuildRow, Vec<JobRow>)> {
    f.writes
        .iter()
        .filter_map(|w| match w {
            Write::InsertBuild { build, jobs } => Some((build.clone(), jobs.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_waiting_build_is_assigned_only_once_what_it_waits_for_is_published() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 4, &[]);
    let mut f = fx();
    let (a, a_job) = t.submit_after(&mut f, "a", &[], false);
    let (b, b_job) = t.submit_after(&mut f, "b", &[a], false);
    let (c, c_job) = t.submit_after(&mut f, "c", &[a, b], false);
    // Only the build that waits for nothing goes to the worker; the others
    // are stored `waiting`, their jobs pending.
    assert_eq!(assigns(&f), vec![("w".to_string(), a_job)]);
    let rows = inserted_all(&f);
    assert_eq!(rows[1].0.state, BuildState::Waiting);
    assert_eq!(rows[2].0.waits_for, vec![a, b]);
    assert_eq!(t.state(b_job), JobState::Pending);
    assert_eq!(
        t.s.waiting_reason(b_job).unwrap(),
        format!("waits for build {a} (a) to be published")
    );
    assert_eq!(
        t.s.waiting_reason(c_job).unwrap(),
        format!("waits for builds {a} (a), {b} (b) to be published")
    );
    // `a` succeeds: that is not enough, it must be published.
    let mut f = fx();
    t.ok(&mut f, "w", a_job).unwrap();
    assert!(assigns(&f).is_empty());
    assert!(build_write(&f, b).is_none());
    assert_eq!(
        t.s.waiting_reason(b_job).unwrap(),
        format!("waits for build {a} (a) to be published"),
        "a build no longer tracked is still named"
    );
    // Published: `b` is queued and dispatched, `c` still waits for `b`.
    let mut f = fx();
    t.s.dependency_published(&mut f, a);
    // Queued (then building, once its job is assigned).
    assert!(f.writes.contains(&Write::SetBuildState {
        build: b,
        state: BuildState::Queued,
        reason: None,
        publish: None
    }));
    assert_eq!(build_write(&f, b), Some((BuildState::Building, None)));
    assert!(f.events.contains(&Event::Build {
        build: b,
        state: BuildState::Queued
    }));
    assert_eq!(assigns(&f), vec![("w".to_string(), b_job)]);
    assert_eq!(t.s.waits_for(c), vec![b]);
    assert_eq!(
        t.s.waiting_reason(c_job).unwrap(),
        format!("waits for build {b} (b) to be published")
    );
    // Announced twice: nothing more happens.
    let mut f = fx();
    t.s.dependency_published(&mut f, a);
    assert!(f.is_empty());
    // `b` succeeds, then is published: `c` goes.
    let mut f = fx();
    t.ok(&mut f, "w", b_job).unwrap();
    assert!(assigns(&f).is_empty());
    let mut f = fx();
    t.s.dependency_published(&mut f, b);
    assert_eq!(assigns(&f), vec![("w".to_string(), c_job)]);
    assert!(t.s.waits_for(c).is_empty());
    assert!(t.s.waited_for_untracked().is_empty());
}

#[test]
fn a_failed_dependency_fails_its_dependents_down_the_chain() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 4, &[]);
    let mut f = fx();
    let (a, a_job) = t.submit_after(&mut f, "a", &[], false);
    let (b, b_job) = t.submit_after(&mut f, "b", &[a], false);
    let (c, c_job) = t.submit_after(&mut f, "c", &[b], false);
    let (d, _) = t.submit_after(&mut f, "d", &[], false);
    let mut f = fx();
    let attempt = t.attempt(a_job);
    t.result(&mut f, "w", a_job, attempt, false).unwrap();
    let a_why = format!("job {a_job} (x86_64) failed: no reason given");
    assert_eq!(
        build_write(&f, a),
        Some((BuildState::Failed, Some(a_why.clone())))
    );
    // `b` fails at once, with why; its job too.
    let b_reason = format!("dependency build {a} (a) was not published: {a_why}");
    assert_eq!(
        build_write(&f, b),
        Some((BuildState::Failed, Some(b_reason.clone())))
    );
    let row = job_write(&f, b_job).expect("b's job is saved");
    assert_eq!(row.state, JobState::Failed);
    assert_eq!(
        row.message.as_deref(),
        Some(format!("dependency build {a} failed: {a_why}").as_str())
    );
    // And `c`, which waited for `b`.
    let c_reason = format!("dependency build {b} (b) was not published: {b_reason}");
    assert_eq!(
        build_write(&f, c),
        Some((BuildState::Failed, Some(c_reason)))
    );
    assert_eq!(
        job_write(&f, c_job).unwrap().message,
        Some(format!("dependency build {b} failed: {b_reason}"))
    );
    // All three ended (jobs and builds); nothing was assigned; the build
    // that waited for nothing is untouched.
    for build in [a, b, c] {
        assert!(f.done_builds.contains(&build), "{build}");
        assert!(!t.s.is_active_build(build), "{build}");
    }
    assert!(f.ended_jobs.contains(&(b, b_job)) && f.ended_jobs.contains(&(c, c_job)));
    assert!(t.s.job_current(c_job).is_none());
    assert!(build_write(&f, d).is_none() && t.s.is_active_build(d));
    assert!(assigns(&f).is_empty());
    assert!(t.s.waited_for_untracked().is_empty());
}

#[test]
fn a_canceled_waiting_build_ends_and_fails_what_waits_for_it() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 4, &[]);
    let mut f = fx();
    let (a, a_job) = t.submit_after(&mut f, "a", &[], false);
    let (b, b_job) = t.submit_after(&mut f, "b", &[a], false);
    let (c, c_job) = t.submit_after(&mut f, "c", &[b], false);
    let mut f = fx();
    t.s.cancel(&mut f, b).unwrap();
    assert_eq!(
        build_write(&f, b),
        Some((BuildState::Canceled, Some("canceled".into())))
    );
    assert_eq!(job_write(&f, b_job).unwrap().state, JobState::Canceled);
    assert!(cancels(&f).is_empty(), "no worker held its job");
    assert_eq!(
        build_write(&f, c),
        Some((
            BuildState::Failed,
            Some(format!(
                "dependency build {b} (b) was not published: canceled"
            ))
        ))
    );
    assert_eq!(job_write(&f, c_job).unwrap().state, JobState::Failed);
    assert!(f.done_builds.contains(&b) && f.done_builds.contains(&c));
    // The build it waited for goes on; its publication releases nothing.
    assert_eq!(t.state(a_job), JobState::Assigned);
    let mut f = fx();
    t.ok(&mut f, "w", a_job).unwrap();
    let mut f = fx();
    t.s.dependency_published(&mut f, a);
    assert!(f.is_empty());
    // Canceling the build waited for fails the waiting one.
    let mut f = fx();
    let (x, _) = t.submit_after(&mut f, "x", &[], false);
    let (y, _) = t.submit_after(&mut f, "y", &[x], false);
    let mut f = fx();
    t.s.cancel(&mut f, x).unwrap();
    assert_eq!(
        build_write(&f, y),
        Some((
            BuildState::Failed,
            Some(format!(
                "dependency build {x} (x) was not published: canceled"
            ))
        ))
    );
}

#[test]
fn a_scratch_build_is_never_published_so_what_waits_for_it_fails() {
    let mut t = T::new();
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 4, &[]);
    let mut f = fx();
    let (a, a_job) = t.submit_after(&mut f, "a", &[], true);
    let (b, b_job) = t.submit_after(&mut f, "b", &[a], false);
    let mut f = fx();
    t.ok(&mut f, "w", a_job).unwrap();
    assert_eq!(build_write(&f, a), Some((BuildState::Succeeded, None)));
    assert_eq!(
        build_write(&f, b),
        Some((
            BuildState::Failed,
            Some(format!(
                "dependency build {a} (a) was not published: a scratch build is never published"
            ))
        ))
    );
    assert_eq!(
        job_write(&f, b_job).unwrap().message,
        Some(format!(
            "dependency build {a} failed: a scratch build is never published"
        ))
    );
    assert!(assigns(&f).is_empty());
}

#[test]
fn a_restored_waiting_build_waits_and_what_ended_meanwhile_is_read_back() {
    // The rows as the database holds them: `a` queued, `b` waiting for it,
    // `c` waiting for `b`, `d` released before the restart (queued, with
    // what it waited for still recorded).
    let mut t = T::new();
    let mut f = fx();
    let (a, a_job) = t.submit_after(&mut f, "a", &[], false);
    let (b, b_job) = t.submit_after(&mut f, "b", &[a], false);
    let (c, c_job) = t.submit_after(&mut f, "c", &[b], false);
    let (_, d_job) = t.submit_after(&mut f, "d", &[a], false);
    let mut rows = inserted_all(&f);
    rows[3].0.state = BuildState::Queued;

    // All of them active: the waiting ones wait, the others are queued.
    let mut t = T::new();
    t.s.restore(rows.clone());
    assert!(t.s.waited_for_untracked().is_empty());
    let mut f = fx();
    t.connect(&mut f, "w", &["x86_64"], &["default"], 4, &[]);
    let mut got: Vec<i64> = assigns(&f).into_iter().map(|(_, j)| j).collect();
    got.sort_unstable();
    assert_eq!(got, vec![a_job, d_job]);
    assert_eq!(
        t.s.waiting_reason(b_job).unwrap(),
        format!("waits for build {a} (a) to be published")
    );
    let mut f = fx();
    t.ok(&mut f, "w", a_job).unwrap();
    let mut f = fx();
    t.s.dependency_published(&mut f, a);
    assert_eq!(assigns(&f), vec![("w".to_string(), b_job)]);

    // `a` ended while the master was down: only `b` and `c` are restored,
    // and `a` is read back from the database.
    let restore = || {
        let mut t = T::new();
        t.s.restore(vec![rows[1].clone(), rows[2].clone()]);
        let mut f = fx();
        t.connect(&mut f, "w", &["x86_64"], &["default"], 4, &[]);
        assert!(assigns(&f).is_empty());
        assert_eq!(t.s.waited_for_untracked(), vec![a]);
        t
    };
    let mut t = restore();
    assert_eq!(
        t.s.waiting_reason(b_job).unwrap(),
        format!("waits for build {a} to be published"),
        "its package is not known here"
    );
    // Its publication still pending (or failed, to be retried): it waits.
    let mut f = fx();
    t.s.dependency_recorded(
        &mut f,
        a,
        Some((BuildState::Succeeded, Some(PublishState::Pending))),
    );
    t.s.dependency_recorded(
        &mut f,
        a,
        Some((BuildState::Succeeded, Some(PublishState::Failed))),
    );
    assert!(f.is_empty());
    let mut f = fx();
    t.s.dependency_recorded(
        &mut f,
        a,
        Some((BuildState::Succeeded, Some(PublishState::Published))),
    );
    // Queued (then building, once its job is assigned).
    assert!(f.writes.contains(&Write::SetBuildState {
        build: b,
        state: BuildState::Queued,
        reason: None,
        publish: None
    }));
    assert_eq!(build_write(&f, b), Some((BuildState::Building, None)));
    assert_eq!(assigns(&f), vec![("w".to_string(), b_job)]);
    assert_eq!(t.state(c_job), JobState::Pending);

    for (recorded, why) in [
        (Some((BuildState::Failed, None)), "it failed"),
        (Some((BuildState::Canceled, None)), "it was canceled"),
        (
            Some((BuildState::Succeeded, None)),
            "a scratch build is never published",
        ),
        (None, "there is no such build"),
    ] {
        let mut t = restore();
        let mut f = fx();
        t.s.dependency_recorded(&mut f, a, recorded);
        let b_reason = format!("dependency build {a} was not published: {why}");
        assert_eq!(
            build_write(&f, b),
            Some((BuildState::Failed, Some(b_reason.clone())))
        );
        assert_eq!(
            build_write(&f, c),
            Some((
                BuildState::Failed,
                Some(format!(
                    "dependency build {b} (b) was not published: {b_reason}"
                ))
            ))
        );
        assert!(assigns(&f).is_empty());
        assert!(t.s.waited_for_untracked().is_empty());
    }
}

#[test]
fn jobs_restored_before_the_buildroots_are_known_go_to_their_queues() {
    // At start the builds are restored before the targets' buildroots are
    // set (they need the API's address).
    let mut t = T::new();
    t.target = "el9".into();
    let mut f = fx();
    let job = t.submit(&mut f, "default", &["x86_64"], 0)[0];
    let (b, rows) = inserted(&f);
    let mut t = T::new();
    t.s.restore(vec![(b, rows)]);
    t.s.set_buildroots([("el9".to_string(), pb::Buildroot::default())].into());
    // A worker that builds only in buildroots gets it.
    t.host_builds = false;
    let mut f = fx();
    t.connect(&mut f, "picky", &["x86_64"], &["default"], 1, &[]);
    assert_eq!(assigns(&f), vec![("picky".to_string(), job)]);
}
