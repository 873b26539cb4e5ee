//! Things going wrong: a worker killed mid-build, the master killed and
//! restarted under load, a revoked worker, a certificate from another CA.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn worker_killed_mid_build_job_finishes_on_the_other() {
    require_build_tools();
    let m = Master::start_with(MasterOpts::default().arg("--lease-secs", "3"));
    let mut w1 = m.start_worker("w1", "noarch", "default", 1);
    let mut w2 = m.start_worker("w2", "noarch", "default", 1);

    let srpm = Pkg::noarch("fl-killed").sleep(5).build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    let job = m.wait_job_running(id);
    assert_eq!(ju64(&job, "attempt"), 1, "{job}");
    let victim = job_worker(&job).expect("a running job names its worker");
    let survivor = match victim.as_str() {
        "w1" => {
            w1.kill();
            "w2"
        }
        "w2" => {
            w2.kill();
            "w1"
        }
        other => panic!("unknown worker {other}"),
    };

    let b = m.wait_build_done(id, BUILD_TIMEOUT);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    let j = only_job(&b);
    assert_eq!(jstr(&j, "state"), "succeeded", "{b}");
    assert_eq!(job_worker(&j).as_deref(), Some(survivor), "{b}");
    assert_eq!(
        ju64(&j, "attempt"),
        2,
        "the job should be on its 2nd attempt: {b}"
    );
    let arts = check_artifacts_on_disk(&m, &b);
    assert_eq!(artifacts_of_kind(&b, "rpm").len(), 1, "{arts:?}");
    // One job, not one per attempt.
    assert_eq!(m.jobs().len(), 1);
}

#[test]
fn master_killed_and_restarted_mid_load_loses_and_doubles_nothing() {
    require_build_tools();
    let mut m = Master::start();
    let w1 = m.start_worker("w1", "noarch", "default", 2);
    let w2 = m.start_worker("w2", "noarch", "default", 2);

    let mut ids = Vec::new();
    for i in 0..6 {
        let s = Pkg::noarch(&format!("fl-restart-{i}"))
            .sleep(3)
            .build_srpm(&m.scratch);
        ids.push(build_id(&m.submit(&s, &[])));
    }
    // Some jobs are running (4 slots for 6 builds).
    wait_until("a running job", Duration::from_secs(60), || {
        m.jobs()
            .iter()
            .any(|j| j.get("state").and_then(Value::as_str) == Some("running"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));

    m.kill();
    // Workers keep building while the master is gone.
    std::thread::sleep(Duration::from_secs(2));
    m.restart();
    w1.wait_connected(2);
    w2.wait_connected(2);

    // Every accepted build is still there and ends succeeded.
    let listed: BTreeSet<u64> = m.builds().iter().map(build_id).collect();
    assert_eq!(
        listed,
        ids.iter().copied().collect::<BTreeSet<u64>>(),
        "the builds after the restart are not the ones accepted before"
    );
    for &id in &ids {
        let b = m.wait_build_done(id, BUILD_TIMEOUT);
        assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
        let j = only_job(&b);
        assert_eq!(jstr(&j, "state"), "succeeded", "{b}");
        // Each artifact once, each present and intact.
        check_artifacts_on_disk(&m, &b);
        assert_eq!(artifacts_of_kind(&b, "rpm").len(), 1, "{b}");
        assert_eq!(artifacts_of_kind(&b, "srpm").len(), 1, "{b}");
        let dir = incoming_dir(&m, id, "noarch");
        let names = dir_names(&dir);
        let binaries = names.iter().filter(|n| n.ends_with(".noarch.rpm")).count();
        assert_eq!(binaries, 1, "binary rpms in {}: {names:?}", dir.display());
    }
    // Nothing doubled: one job per build.
    let jobs = m.jobs();
    assert_eq!(jobs.len(), ids.len(), "{jobs:?}");
    let job_builds: BTreeSet<u64> = jobs.iter().map(|j| ju64(j, "build")).collect();
    assert_eq!(job_builds.len(), ids.len(), "{jobs:?}");
    assert_eq!(m.builds().len(), ids.len());
}

#[test]
fn a_revoked_worker_is_cut_off_for_good() {
    require_build_tools();
    let m = Master::start();
    let mut r = m.start_worker("r1", "x86_64,noarch", "default", 1);

    // It works before.
    let before = Pkg::noarch("fl-rev-before").build_srpm(&m.scratch);
    let b = m.submit_wait(&before, &[]);
    assert_eq!(job_worker(&only_job(&b)).as_deref(), Some("r1"));

    m.cli(&["worker", "revoke", "r1"]).assert_ok();
    wait_until(
        "r1 to be disconnected",
        Duration::from_secs(15),
        || match m.worker_info("r1") {
            None => Some(()),
            Some(w) => (w.get("connected") == Some(&Value::Bool(false))).then_some(()),
        },
    );

    // A build for its channel and arch is not run by it: only r1 serves
    // them, so it waits.
    let after = Pkg::noarch("fl-rev-after").build_srpm(&m.scratch);
    let id = build_id(&m.submit(&after, &[]));
    std::thread::sleep(Duration::from_secs(4));
    let b = m.build(id);
    assert_eq!(jstr(&b, "state"), "queued", "{b}");
    let j = only_job(&b);
    assert_eq!(jstr(&j, "state"), "pending", "{b}");
    assert!(job_worker(&j).is_none(), "{b}");
    assert_eq!(
        r.connected_count(),
        1,
        "the revoked worker got a new session"
    );

    // For good: the same worker started again does not get in.
    r.restart();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        r.connected_count(),
        0,
        "a revoked worker connected again:\n{}",
        r.diagnostics()
    );
    let b = m.build(id);
    assert!(job_worker(&only_job(&b)).is_none(), "{b}");
    if let Some(w) = m.worker_info("r1") {
        assert_eq!(w.get("connected"), Some(&Value::Bool(false)), "{w}");
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    require_build_tools();
    let m1 = Master::start();
    let m2 = Master::start();

    // Enrolled with m2 (its key signed by m2's CA), pointed at m1.
    let enrolled = m2.enroll("stranger");
    let mut w = enrolled.spawn(WorkerOpts::new("noarch", "default", 1).master(&m1.worker_url));

    let keywords = [
        "certificate",
        "handshake",
        "tls",
        "unknownca",
        "unknown ca",
        "unknown_ca",
        "bad cert",
        "badcert",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = w.stderr_text().to_lowercase();
        if keywords.iter().any(|k| err.contains(k)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker printed no certificate/handshake error:\n{}",
            w.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give it time to retry: it never gets a session.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        w.connected_count(),
        0,
        "a worker with another CA's certificate connected:\n{}",
        w.diagnostics()
    );
    if let Some(info) = m1.worker_info("stranger") {
        assert_eq!(info.get("connected"), Some(&Value::Bool(false)), "{info}");
    }

    // The same worker pointed at its own master gets in: what failed was the CA.
    w.opts.master = None;
    w.restart();
    w.wait_connected(1);
    wait_until(
        "m2 to list stranger as connected",
        Duration::from_secs(10),
        || {
            m2.worker_info("stranger")
                .filter(|i| i.get("connected") == Some(&Value::Bool(true)))
        },
    );
}
