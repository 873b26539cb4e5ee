//! `kiln cancel` on a queued build and on a running one.

use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn cancel_a_queued_build() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);

    // Nobody builds aarch64: the build stays queued.
    let c = Pkg::c("cn-queued").build_srpm(&m.scratch);
    let id = build_id(&m.submit(&c, &["--arch", "aarch64"]));
    let b = m.build(id);
    assert_eq!(jstr(&b, "state"), "queued", "{b}");

    m.cancel(id).assert_ok();
    let b = m.wait_build(id, "state canceled", Duration::from_secs(15), |b| {
        jstr(b, "state") == "canceled"
    });
    for j in jobs_of(&b) {
        assert_eq!(jstr(&j, "state"), "canceled", "{b}");
        assert!(job_worker(&j).is_none(), "{b}");
    }
    assert!(
        jarr(&b, "artifacts").is_empty(),
        "a canceled queued build has no artifacts: {b}"
    );

    // The farm goes on: the next build runs.
    let n = Pkg::noarch("cn-after-queued").build_srpm(&m.scratch);
    m.submit_wait(&n, &[]);
    // And the canceled one stays canceled.
    assert_eq!(jstr(&m.build(id), "state"), "canceled");
}

#[test]
fn cancel_a_running_build_kills_it_and_frees_the_slot() {
    require_build_tools();
    let m = Master::start();
    // One slot only: the next build can run only once it is given back.
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);

    // 67 seconds: a duration no other test uses, to find its process.
    let pkg = Pkg::noarch("cn-running").sleep(67);
    let srpm = pkg.build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    let job = m.wait_job_running(id);
    let job_id = ju64(&job, "id");
    assert_eq!(job_worker(&job).as_deref(), Some("w1"));
    wait_until(
        "the build's `sleep 67` to start",
        Duration::from_secs(30),
        || (!pids_with_argv(&["sleep", "67"]).is_empty()).then_some(()),
    );

    let t0 = Instant::now();
    m.cancel(id).assert_ok();
    let b = m.wait_build(id, "state canceled", Duration::from_secs(30), |b| {
        jstr(b, "state") == "canceled"
    });
    let j = only_job(&b);
    assert_eq!(jstr(&j, "state"), "canceled", "{b}");

    // The whole process tree of the build was killed.
    wait_until(
        "the canceled build's `sleep 67` to be killed",
        Duration::from_secs(15),
        || pids_with_argv(&["sleep", "67"]).is_empty().then_some(()),
    );

    // The log has what ran before the cancel, and not what would follow.
    let logs = m.cli(&["logs", &job_id.to_string()]).assert_ok();
    assert!(
        logs.stdout.contains(&pkg.begin_marker()),
        "log of the canceled job: {}",
        logs.stdout
    );
    assert!(
        !logs.stdout.contains(&pkg.end_marker()),
        "the canceled build ran to its end: {}",
        logs.stdout
    );

    // The worker's only slot is free again: a next build succeeds, long
    // before the canceled one's sleep would have ended.
    let n = Pkg::noarch("cn-after-running").build_srpm(&m.scratch);
    let nb = m.submit_wait(&n, &[]);
    assert_eq!(job_worker(&only_job(&nb)).as_deref(), Some("w1"));
    assert!(
        t0.elapsed() < Duration::from_secs(50),
        "the slot was not freed by the cancel (took {:?})",
        t0.elapsed()
    );
    wait_until(
        "w1 to report no running job",
        Duration::from_secs(10),
        || {
            let w = m.worker_info("w1").expect("w1 in kiln workers");
            (running_count(&w) == 0).then_some(())
        },
    );
    assert_eq!(jstr(&m.build(id), "state"), "canceled");
}
