//! The worker's SIGTERM drain, `kiln logs --follow`, `kiln workers --json`,
//! and the CLI's errors, exits and output: a closed stdout, a skipped
//! submit, `submit --wait --timeout`.

use crate::common::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_the_worker() {
    require_build_tools();
    let m = Master::start();
    let mut w = m.start_worker("dr", "x86_64,noarch", "default", 1);

    let s = Pkg::noarch("cm-drain-running")
        .sleep(5)
        .build_srpm(&m.scratch);
    let t = Pkg::noarch("cm-drain-later").build_srpm(&m.scratch);
    let sid = build_id(&m.submit(&s, &[]));
    let job = m.wait_job_running(sid);
    assert_eq!(job_worker(&job).as_deref(), Some("dr"));

    w.signal(libc::SIGTERM);
    // Submitted after the SIGTERM: a draining worker takes nothing new.
    let tid = build_id(&m.submit(&t, &[]));

    let status = w.wait_exit(BUILD_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "the worker did not exit after SIGTERM:\n{}",
            w.diagnostics()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "a drained worker exits 0:\n{}",
        w.diagnostics()
    );

    // The running build finished and was uploaded before the exit.
    let b = m.wait_build_done(sid, Duration::from_secs(15));
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    assert_eq!(job_worker(&only_job(&b)).as_deref(), Some("dr"));
    check_artifacts_on_disk(&m, &b);

    // The later one was not taken.
    let b = m.build(tid);
    assert_eq!(jstr(&b, "state"), "queued", "{b}");
    let j = only_job(&b);
    assert_eq!(jstr(&j, "state"), "pending", "{b}");
    assert!(job_worker(&j).is_none(), "{b}");

    wait_until(
        "dr to be listed as disconnected",
        Duration::from_secs(15),
        || match m.worker_info("dr") {
            None => Some(()),
            Some(i) => (i.get("connected") == Some(&Value::Bool(false))).then_some(()),
        },
    );
}

#[test]
fn logs_follow_prints_live_and_ends_with_the_job() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("lf", "x86_64,noarch", "default", 1);

    let pkg = Pkg::noarch("cm-follow").sleep(6);
    let srpm = pkg.build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    let job = m.wait_job_running(id);
    let job_id = ju64(&job, "id").to_string();

    let mut follow = Proc::spawn(
        m.cli_cmd(&["logs", &job_id, "--follow"]),
        &m.scratch.join("follow.stderr"),
        "kiln logs --follow",
    );
    let begin = pkg.begin_marker();
    let end = pkg.end_marker();
    let got_begin = follow.wait_line(|l| l.contains(&begin), 1, Duration::from_secs(60));
    assert!(
        got_begin.is_some(),
        "`kiln logs --follow` did not print the running build's output:\n{}",
        follow.diagnostics()
    );
    let t_begin = Instant::now();
    let b = m.build(id);
    assert_eq!(
        jstr(&only_job(&b), "state"),
        "running",
        "the first output of `kiln logs --follow` came only after the job ended: not live: {b}"
    );
    // Still following while the build sleeps.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        follow.try_status().is_none(),
        "`kiln logs --follow` ended while the job was running:\n{}",
        follow.diagnostics()
    );

    let status = follow.wait_exit(BUILD_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "`kiln logs --follow` did not end:\n{}",
            follow.diagnostics()
        )
    });
    let t_exit = Instant::now();
    assert!(
        status.success(),
        "`kiln logs --follow` failed:\n{}",
        follow.diagnostics()
    );
    assert!(
        t_exit - t_begin >= Duration::from_secs(2),
        "the first lines came only {:?} before the end: not live",
        t_exit - t_begin
    );
    let wait = follow.wait_line(|l| l.contains(&end), 1, Duration::from_secs(5));
    assert!(
        wait.is_some(),
        "`kiln logs --follow` ended without the end of the build:\n{}",
        follow.diagnostics()
    );

    // It ended because the job did.
    let b = m.wait_build(id, "the job to end", Duration::from_secs(10), |b| {
        is_terminal_job_state(&jstr(&only_job(b), "state"))
    });
    assert_eq!(jstr(&only_job(&b), "state"), "succeeded", "{b}");

    // Without --follow, the whole log.
    let all = m.cli(&["logs", &job_id]).assert_ok();
    assert!(all.stdout.contains(&begin) && all.stdout.contains(&end));
}

#[test]
fn workers_json_shape() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("shape", "x86_64,noarch", "default", 2);

    let ws = m.workers();
    assert_eq!(ws.len(), 1, "{ws:?}");
    let w = &ws[0];
    assert_eq!(jstr(w, "name"), "shape");
    let arches: Vec<&str> = jarr(w, "arches").iter().filter_map(Value::as_str).collect();
    assert!(
        arches.contains(&"x86_64") && arches.contains(&"noarch"),
        "{w}"
    );
    let channels: Vec<&str> = jarr(w, "channels")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(channels, ["default"], "{w}");
    assert_eq!(ju64(w, "capacity"), 2, "{w}");
    assert_eq!(running_count(w), 0, "{w}");
    assert_eq!(w.get("connected"), Some(&Value::Bool(true)), "{w}");
    assert!(
        w.get("last_seen").is_some_and(|v| !v.is_null()),
        "last_seen: {w}"
    );

    // A running job shows.
    let s = Pkg::noarch("cm-shape").sleep(3).build_srpm(&m.scratch);
    let id = build_id(&m.submit(&s, &[]));
    m.wait_job_running(id);
    let w = m.worker_info("shape").unwrap();
    assert_eq!(running_count(&w), 1, "{w}");
    m.wait_build_succeeded(id);
    wait_until("no running job on shape", Duration::from_secs(10), || {
        (running_count(&m.worker_info("shape").unwrap()) == 0).then_some(())
    });

    // The human listing works too.
    let human = m.cli(&["workers"]).assert_ok();
    assert!(human.stdout.contains("shape"), "{}", human.stdout);
}

#[test]
fn a_wrong_token_is_refused_with_one_error_line() {
    let m = Master::start();
    let srpm = Pkg::noarch("cm-token").build_srpm(&m.scratch);
    let cas_before = files_under(&m.data.join("cas"));
    let auth = [
        "token",
        "auth",
        "401",
        "403",
        "denied",
        "forbidden",
        "permission",
    ];

    let out = m.cli_token(
        "not-the-admin-token",
        &["submit", srpm.to_str().unwrap(), "--json"],
    );
    out.assert_error_line(&auth);
    let out = m.cli_token("not-the-admin-token", &["token", "create", "--worker", "x"]);
    out.assert_error_line(&auth);
    assert!(out.stdout.trim().is_empty(), "no token printed: {out:?}");

    assert!(m.builds().is_empty(), "a refused submit stored a build");
    assert_eq!(files_under(&m.data.join("cas")), cas_before);

    // With the right token the same submit is accepted.
    m.submit(&srpm, &[]);
    assert_eq!(m.builds().len(), 1);
}

#[test]
fn an_unreachable_master_is_one_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let port = closed_port();
    let mut cmd = Command::new(kiln());
    cmd.args(["builds", "--json"])
        .env("KILN_URL", format!("http://127.0.0.1:{port}"))
        .env("KILN_TOKEN", "whatever")
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME");
    let out = run_timeout(cmd, CLI_TIMEOUT, "kiln builds (nobody listening)");
    out.assert_error_line(&["connect", "refused", "127.0.0.1", "reach", "unavailable"]);
}

/// A runaway log is cut at the cap, with a marker, both in the stored log and
/// in the build.log artifact; the build goes on and succeeds.
#[test]
fn a_log_past_the_cap_is_cut_and_the_build_goes_on() {
    require_build_tools();
    let m = Master::start_with(MasterOpts::default().arg("--log-cap", "1500"));
    let _w = m.start_worker("capw", "noarch", "default", 1);
    let srpm = Pkg::noarch(&format!("kt-cap{}", unique())).build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &[]);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    let log = m.job_log(&b);
    assert!(log.contains("[kiln: log cut here"), "{log}");
    assert!(log.len() < 1500 + 200, "stored log is {} bytes", log.len());
    let art = artifacts_of_kind(&b, "log");
    let size = ju64(&art[0], "size");
    assert!(size < 1500 + 200, "build.log artifact is {size} bytes");
}

/// `--api-tls`: the API speaks HTTPS with a certificate from the master's
/// CA; the CLI trusts it through `KILN_CA`, refuses it without, and plain
/// HTTP to that port gets one clear error line.
#[test]
fn the_api_over_tls_is_trusted_through_the_masters_ca() {
    let m = Master::start_with(MasterOpts::default().flag("--api-tls"));
    assert!(m.api_url.starts_with("https://"), "{}", m.api_url);
    // The harness points KILN_CA at the master's ca/ca.crt for https.
    let out = m.cli(&["token", "create", "--worker", "tlsw"]).assert_ok();
    assert!(out.stdout.trim().starts_with("kiln1."), "{out:?}");
    let out = m.cli(&["builds", "--json"]).assert_ok();
    assert_eq!(out.stdout.trim(), "[]");

    // Not trusting the master's CA: refused, and said so.
    let mut cmd = m.cli_cmd(&["builds", "--json"]);
    cmd.env_remove("KILN_CA");
    run_timeout(cmd, CLI_TIMEOUT, "kiln builds over TLS without the CA").assert_error_line(&[
        "certificate",
        "unknown issuer",
        "unknownissuer",
    ]);

    // Plain HTTP to the TLS port.
    let mut cmd = m.cli_cmd(&["builds", "--json"]);
    cmd.env("KILN_URL", m.api_url.replace("https://", "http://"));
    run_timeout(cmd, CLI_TIMEOUT, "kiln builds over plain HTTP to TLS")
        .assert_error_line(&["cannot reach"]);

    // Workers enroll and build as before (the worker port is unchanged).
    let _w = m.start_worker("tlsw2", "noarch", "default", 1);
    require_build_tools();
    let srpm = Pkg::noarch(&format!("kt-tls{}", unique())).build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &[]);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
}

/// Runs `cmd` with stdout a pipe nobody reads any more (its read end is
/// closed before the command starts, as `head` does once it has its line),
/// stderr captured; returns the exit status and stderr.
fn run_into_closed_pipe(mut cmd: Command, what: &str) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // Drop our copy of the write end with `cmd`.
    drop(cmd);
    let mut err = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, t.join().unwrap())
}

/// `kiln builds | head -1` and the like: the reader goes away, the command
/// ends quietly (status 141, as a process killed by SIGPIPE) and prints
/// nothing, least of all a panic.
#[test]
fn a_closed_stdout_is_a_quiet_exit() {
    require_tool("rpmbuild");
    let m = Master::start();
    let srpm = Pkg::noarch("cm-pipe").build_srpm(&m.scratch);
    let mut id = 0;
    for _ in 0..3 {
        id = build_id(&m.submit(&srpm, &["--scratch"]));
    }
    let id = id.to_string();
    let cases: [&[&str]; 6] = [
        &["builds"],
        &["builds", "--json"],
        &["jobs"],
        &["build", "show", &id],
        &["workers"],
        &["vercmp", "1.0-1", "1.0-2"],
    ];
    for args in cases {
        let what = format!("kiln {}", args.join(" "));
        let (status, stderr) = run_into_closed_pipe(m.cli_cmd(args), &what);
        assert!(
            !stderr.contains("panicked"),
            "{what} panicked on a closed stdout: {stderr}"
        );
        assert!(
            stderr.trim().is_empty(),
            "{what} said something on a closed stdout: {stderr}"
        );
        assert_eq!(status.code(), Some(141), "{what}: {status:?}");
    }
    // The same commands with a reader still print (nothing broke them).
    let out = m.cli(&["builds"]).assert_ok();
    assert_eq!(out.stdout.lines().count(), 4, "{out:?}");
}

/// A submit the version gate skips says so (not "accepted … for  ()") and
/// exits non-zero, as `--wait` does.
#[test]
fn a_skipped_submit_says_why_and_fails() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("sk", "x86_64,noarch", "default", 1);
    let srpm = Pkg::noarch(&format!("cm-skip{}", unique())).build_srpm(&m.scratch);
    m.submit_wait(&srpm, &[]);

    let out = m.cli(&["submit", srpm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = out.stderr.trim();
    assert!(
        line.starts_with("build ") && line.contains(" skipped: ") && !line.contains("accepted"),
        "{out:?}"
    );
    assert!(line.contains("equals the newest build"), "{out:?}");
    let id: u64 = out
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?}"));
    assert_eq!(jstr(&m.build(id), "state"), "skipped");

    // --wait too (it was already final).
    let out = m.cli(&["submit", srpm.to_str().unwrap(), "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains(" skipped: "), "{out:?}");
    assert!(out.stdout.contains("skipped"), "{out:?}");
}

/// `submit --wait --timeout`: with no worker the build never starts; the
/// CLI gives up after the limit, says so, and exits 124.
#[test]
fn submit_wait_gives_up_after_its_timeout() {
    require_tool("rpmbuild");
    let m = Master::start();
    let srpm = Pkg::noarch("cm-timeout").build_srpm(&m.scratch);
    let s = srpm.to_str().unwrap();

    let t0 = Instant::now();
    let out = m.cli(&["submit", s, "--wait", "--timeout", "2s"]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "took {took:?}"
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("build "), "{out:?}");
    assert!(
        last.ends_with(" still queued after 2s; not waiting any longer"),
        "{out:?}"
    );
    assert!(out.stdout.trim().is_empty(), "{out:?}");

    // --json: the build as it is now, on stdout.
    let out = m.cli(&["submit", s, "--wait", "--timeout", "1", "--json"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert_eq!(jstr(&out.json(), "state"), "queued", "{out:?}");
    assert!(out.stderr.contains("still queued after 1s"), "{out:?}");

    // A limit without --wait, or that is no duration, is refused.
    for args in [
        vec!["submit", s, "--timeout", "5s"],
        vec!["submit", s, "--wait", "--timeout", "5d"],
        vec!["submit", s, "--wait", "--timeout", "0"],
    ] {
        let out = m.cli(&args);
        assert!(!out.success(), "{args:?} was accepted: {out:?}");
    }
    let help = m.cli(&["submit", "--help"]).assert_ok();
    assert!(
        help.stdout.contains("--timeout") && help.stdout.contains("124"),
        "{help:?}"
    );
}
