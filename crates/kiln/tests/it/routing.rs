//! The scheduler: a job goes only to a worker with its channel, its arch and
//! a free slot; higher priority first, then oldest. Every test runs a master
//! with two workers (see `Farm`): `a` = x86_64+noarch on `default` with 2
//! slots, `b` = noarch on `heavy` with 1 slot.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[test]
fn jobs_go_to_the_worker_with_their_channel_and_arch() {
    let f = Farm::start();
    let m = &f.m;

    let heavy = Pkg::noarch("rt-heavy").build_srpm(&m.scratch);
    let light = Pkg::noarch("rt-light").build_srpm(&m.scratch);
    let c = Pkg::c("rt-c").build_srpm(&m.scratch);

    let bh = m.submit(&heavy, &["--channel", "heavy"]);
    let bl = m.submit(&light, &[]);
    let bc = m.submit(&c, &["--arch", "x86_64"]);

    let bh = m.wait_build_succeeded(build_id(&bh));
    let bl = m.wait_build_succeeded(build_id(&bl));
    let bc = m.wait_build_succeeded(build_id(&bc));

    // channel `heavy`: only b serves it.
    let j = only_job(&bh);
    assert_eq!(jstr(&j, "arch"), "noarch");
    assert_eq!(job_worker(&j).as_deref(), Some("b"), "{bh}");
    // channel `default`, noarch: only a serves it.
    assert_eq!(job_worker(&only_job(&bl)).as_deref(), Some("a"), "{bl}");
    // x86_64: only a builds it.
    let j = only_job(&bc);
    assert_eq!(jstr(&j, "arch"), "x86_64");
    assert_eq!(job_worker(&j).as_deref(), Some("a"), "{bc}");
    check_artifacts_on_disk(m, &bc);
}

#[test]
fn a_job_nobody_can_take_waits_and_says_why() {
    let f = Farm::start();
    let m = &f.m;
    let c = Pkg::c("rt-wait").build_srpm(&m.scratch);

    // No worker builds aarch64.
    let b = m.submit(&c, &["--arch", "aarch64"]);
    let id = build_id(&b);
    let b = m.wait_build(id, "a `waiting` reason", Duration::from_secs(20), |b| {
        jobs_of(b)
            .iter()
            .any(|j| j.get("waiting").and_then(Value::as_str).is_some())
    });
    let j = only_job(&b);
    assert_eq!(jstr(&j, "arch"), "aarch64");
    assert_eq!(jstr(&j, "state"), "pending", "{b}");
    assert!(job_worker(&j).is_none(), "{b}");
    assert_eq!(jstr(&b, "state"), "queued", "{b}");
    let why = jstr(&j, "waiting");
    assert!(
        why.contains("aarch64"),
        "`waiting` should name aarch64: {why:?}"
    );

    // No worker builds x86_64 on channel `heavy` (b is noarch only).
    let b2 = m.submit(&c, &["--arch", "x86_64", "--channel", "heavy"]);
    let id2 = build_id(&b2);
    let b2 = m.wait_build(id2, "a `waiting` reason", Duration::from_secs(20), |b| {
        jobs_of(b)
            .iter()
            .any(|j| j.get("waiting").and_then(Value::as_str).is_some())
    });
    let j2 = only_job(&b2);
    assert_eq!(jstr(&j2, "state"), "pending", "{b2}");
    let why2 = jstr(&j2, "waiting");
    assert!(
        why2.contains("heavy"),
        "`waiting` should name the channel heavy: {why2:?}"
    );

    // And they really are not taken.
    std::thread::sleep(Duration::from_secs(2));
    for id in [id, id2] {
        let b = m.build(id);
        let j = only_job(&b);
        assert_eq!(jstr(&j, "state"), "pending", "{b}");
        assert!(job_worker(&j).is_none(), "{b}");
    }
}

#[test]
fn worker_capacity_is_never_exceeded() {
    let f = Farm::start();
    let m = &f.m;
    let mut ids = Vec::new();
    for i in 0..5 {
        let s = Pkg::noarch(&format!("rt-cap-d{i}"))
            .sleep(2)
            .build_srpm(&m.scratch);
        ids.push((build_id(&m.submit(&s, &[])), "a"));
    }
    for i in 0..3 {
        let s = Pkg::noarch(&format!("rt-cap-h{i}"))
            .sleep(2)
            .build_srpm(&m.scratch);
        ids.push((build_id(&m.submit(&s, &["--channel", "heavy"])), "b"));
    }

    // While they run, the master never reports more running than capacity.
    let deadline = Instant::now() + BUILD_TIMEOUT;
    loop {
        for w in m.workers() {
            let cap = ju64(&w, "capacity");
            let running = running_count(&w);
            assert!(running <= cap, "worker over capacity: {w}");
        }
        let done = ids
            .iter()
            .all(|(id, _)| is_terminal_build_state(&jstr(&m.build(*id), "state")));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "builds did not end in time");
        std::thread::sleep(Duration::from_millis(300));
    }

    // From the recorded start and end of each job: at no instant did a
    // worker run more jobs than its capacity.
    let mut per_worker: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (id, expected_worker) in &ids {
        let b = m.build(*id);
        assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
        let j = only_job(&b);
        let w = job_worker(&j).expect("a finished job names its worker");
        assert_eq!(&w, expected_worker, "routed to the wrong worker: {b}");
        per_worker
            .entry(w)
            .or_default()
            .push((ji64(&j, "started_at"), ji64(&j, "finished_at")));
    }
    let a = max_overlap(&per_worker["a"]);
    let b = max_overlap(&per_worker["b"]);
    assert!(
        a <= 2,
        "worker a (capacity 2) ran {a} jobs at once: {per_worker:?}"
    );
    assert!(
        b <= 1,
        "worker b (capacity 1) ran {b} jobs at once: {per_worker:?}"
    );
    // a's two slots were both used: five 2-second builds were queued at once.
    assert_eq!(a, 2, "worker a never used its 2 slots: {per_worker:?}");
}

#[test]
fn now_jumps_the_queue_then_oldest_first() {
    let f = Farm::start();
    let m = &f.m;

    let x = Pkg::noarch("rt-prio-x").build_srpm(&m.scratch);
    let y = Pkg::noarch("rt-prio-y").build_srpm(&m.scratch);
    let z = Pkg::noarch("rt-prio-z").build_srpm(&m.scratch);

    // Hold b's only slot.
    let hold = Pkg::noarch("rt-prio-hold").sleep(6).build_srpm(&m.scratch);
    let s = build_id(&m.submit(&hold, &["--channel", "heavy"]));
    let running = m.wait_job_running(s);
    assert_eq!(job_worker(&running).as_deref(), Some("b"));

    let bx = m.submit(&x, &["--channel", "heavy"]);
    let by = m.submit(&y, &["--channel", "heavy"]);
    let bz = m.submit(&z, &["--channel", "heavy", "--now"]);
    assert!(
        ji64(&bz, "priority") > ji64(&bx, "priority"),
        "--now must raise the priority: {bz} vs {bx}"
    );
    assert_eq!(ji64(&bx, "priority"), ji64(&by, "priority"));
    // They were all submitted while the slot was held.
    assert_eq!(
        jstr(&only_job(&m.build(s)), "state"),
        "running",
        "the holding build ended too early for this test"
    );

    let hold = m.wait_build_succeeded(s);
    let start = |b: &Value| {
        let b = m.wait_build_succeeded(build_id(b));
        let j = only_job(&b);
        assert_eq!(job_worker(&j).as_deref(), Some("b"), "{b}");
        ji64(&j, "started_at")
    };
    let (tx, ty, tz) = (start(&bx), start(&by), start(&bz));
    let hold_end = ji64(&only_job(&hold), "finished_at");
    assert!(hold_end <= tz, "z started before the slot was free");
    assert!(tz < tx, "z (--now) should start before x: z={tz} x={tx}");
    assert!(tz < ty, "z (--now) should start before y: z={tz} y={ty}");
    assert!(tx < ty, "x (older) should start before y: x={tx} y={ty}");
}
