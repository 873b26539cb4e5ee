//! An idle master keeps answering: a master with a worker left idle for
//! several lease periods still answers, still builds, uses next to no CPU,
//! and stops on SIGTERM. (The first master spun on its own lease timer and
//! stopped answering after ~50 s.)

use crate::common::*;
use std::time::{Duration, Instant};

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let f = proc_stat(pid).expect("/proc/PID/stat");
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(t > 0);
    t as u64
}

#[test]
fn an_idle_master_answers_builds_sleeps_and_stops() {
    require_build_tools();
    // A 2 s lease: the soak below spans more than seven lease periods.
    let mut m = Master::start_with(MasterOpts::default().arg("--lease-secs", "2"));
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 2);
    let first = Pkg::noarch("soak-first").build_srpm(&m.scratch);
    m.submit_wait(&first, &[]);

    // Idle: answer every second, and count the CPU used meanwhile.
    let pid = m.pid();
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid);
    let soak = Duration::from_secs(16);
    let mut answers = 0;
    while t0.elapsed() < soak {
        let out = m.cli_timeout(&["workers"], Duration::from_secs(5));
        out.assert_ok();
        answers += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let used = (cpu_ticks(pid) - c0) as f64 / ticks_per_sec() as f64;
    let share = used / t0.elapsed().as_secs_f64();
    assert!(answers >= 10, "only {answers} answers in the soak");
    // The CLI calls above cost the master a little; an idle master spinning
    // on a timer used 50–100 % of a core.
    assert!(
        share < 0.05,
        "the idle master used {:.1} % of a core over {:?}",
        share * 100.0,
        t0.elapsed()
    );

    // It still builds after the idle time.
    let second = Pkg::noarch("soak-second").build_srpm(&m.scratch);
    m.submit_wait(&second, &[]);

    // And stops on SIGTERM, promptly and cleanly, with its WAL folded into
    // the database file.
    m.proc().signal(libc::SIGTERM);
    let st = m
        .proc()
        .wait_exit(Duration::from_secs(15))
        .expect("the master did not stop within 15 s of SIGTERM");
    assert!(st.success(), "master exit status after SIGTERM: {st:?}");
    let wal = m.data.join("kiln.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|x| x.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the WAL was not checkpointed at shutdown");
}
