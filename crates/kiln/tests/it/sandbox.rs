//! The build sandbox, attacked from inside a `%build`: the secrets of the
//! worker and the master stay out of reach, links the build plants are
//! never followed by the worker, and nothing the build starts outlives it
//! (after success, cancel, timeout, or the worker's death). And the
//! worker's side of a master that cannot take the results: a full disk is
//! retried on the same session, a refusal fails the job instead of leaving
//! it running for ever. The sandbox is on by default (no bwrap: builds
//! refused), and a build without it says so. The worker's stops: a drain
//! with the master down keeps its results for the next start, a second
//! signal stops at once, a revoked worker stops; what a stopped worker left
//! is removed at start. A package the worker refuses fails the build, and
//! its log says so.

use crate::common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// The `%build` shell function every probe goes through: it runs a
/// command, says whether it succeeded, and shows the start of its output.
const PROBE_FN: &str = r#"probe() {
  name=$1; shift
  if "$@" > /tmp/kiln-probe.out 2>&1; then echo "PROBE $name: SUCCEEDED"; else echo "PROBE $name: failed"; fi
  head -c 200 /tmp/kiln-probe.out; echo
}"#;

/// The lines of a PEM file long enough to identify it (its base64 body).
fn pem_body(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

#[test]
fn a_build_can_reach_no_secret_and_nothing_of_the_host() {
    require_build_tools();
    for t in ["mount", "unshare", "bash", "setsid"] {
        require_tool(t);
    }
    let m = Master::start();
    let mut w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let wpid = w.proc().pid();
    let mpid = m.pid();

    let key_path = w.dir.join("worker.key");
    let key = fs::read_to_string(&key_path).unwrap();
    let token_path = m.data.join("admin.token");
    let token = fs::read_to_string(&token_path).unwrap().trim().to_string();
    let ca_key_path = m.data.join("ca").join("ca.key");
    let ca_key = fs::read_to_string(&ca_key_path).unwrap();
    assert!(!token.is_empty() && !pem_body(&key).is_empty() && !pem_body(&ca_key).is_empty());

    // Files the build tries to write on the host.
    let planted_worker = w.dir.join("planted-by-the-build");
    let planted_tmp = std::env::temp_dir().join(format!("kiln-planted-{}", unique()));
    let planted_via_proc = std::env::temp_dir().join(format!("kiln-planted-proc-{}", unique()));
    let planted_usr = Path::new("/usr").join(format!("kiln-planted-{}", unique()));

    let (key, token_p, ca) = (
        key_path.display(),
        token_path.display(),
        ca_key_path.display(),
    );
    let probes: Vec<(&str, String)> = vec![
        ("key-by-path", format!("cat {key}")),
        (
            "key-via-proc-root",
            format!("sh -c 'cat /proc/*/root{key}'"),
        ),
        ("key-via-worker-root", format!("cat /proc/{wpid}/root{key}")),
        ("token-by-path", format!("cat {token_p}")),
        (
            "token-via-proc-root",
            format!("sh -c 'cat /proc/*/root{token_p}'"),
        ),
        (
            "token-via-master-root",
            format!("cat /proc/{mpid}/root{token_p}"),
        ),
        ("ca-key-by-path", format!("cat {ca}")),
        (
            "ca-key-via-proc-root",
            format!("sh -c 'cat /proc/*/root{ca}'"),
        ),
        ("worker-environ", format!("cat /proc/{wpid}/environ")),
        ("remount-root", "mount -o remount,rw /".to_string()),
        ("remount-usr", "mount -o remount,rw /usr".to_string()),
        ("write-usr", format!("touch {}", planted_usr.display())),
        (
            "write-worker-dir",
            format!("sh -c 'echo pwned > {}'", planted_worker.display()),
        ),
        (
            "write-via-proc-root",
            format!(
                "sh -c 'echo pwned > /proc/{wpid}/root{}'",
                planted_via_proc.display()
            ),
        ),
        ("kill-worker", format!("kill -9 {wpid}")),
        ("kill-master", format!("kill -9 {mpid}")),
        ("new-user-namespace", "unshare -U -r true".to_string()),
        (
            "network-to-master",
            format!(
                "bash -c 'echo hello > /dev/tcp/127.0.0.1/{}'",
                m.worker_port
            ),
        ),
    ];
    let mut build = format!("set +e\n{PROBE_FN}\n");
    for (name, cmd) in &probes {
        build += &format!("probe {name} {cmd}\n");
    }
    // /tmp is the sandbox's own: writing there works, and nothing reaches
    // the host's /tmp.
    build += &format!(
        "echo pwned > {} && echo 'wrote the sandbox /tmp'\n",
        planted_tmp.display()
    );
    build += "echo \"UID $(id -u)\"\necho \"PROCS $(ls /proc | grep -c '^[0-9]')\"\nexit 0\n";
    let srpm = Pkg::noarch("sbx-probe")
        .build_script(&build)
        .build_srpm(&m.scratch);

    let b = m.submit_wait(&srpm, &[]);
    let log = m.job_log(&b);
    for (name, _) in &probes {
        assert!(
            log.contains(&format!("PROBE {name}: failed")),
            "probe {name} did not fail:\n{log}"
        );
        assert!(
            !log.contains(&format!("PROBE {name}: SUCCEEDED")),
            "probe {name} succeeded:\n{log}"
        );
    }
    // Not a line of any secret appears in the log.
    assert!(!log.contains(&token), "the admin token leaked:\n{log}");
    for (what, text) in [
        ("worker key", fs::read_to_string(&key_path).unwrap()),
        ("CA key", ca_key.clone()),
    ] {
        for line in pem_body(&text) {
            assert!(!log.contains(&line), "the {what} leaked:\n{log}");
        }
    }
    // An unprivileged user, and only the build's own few processes.
    let field = |tag: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(tag))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{tag}` line in the log:\n{log}"))
    };
    assert_ne!(field("UID "), 0, "the build ran as root:\n{log}");
    let procs = field("PROCS ");
    assert!(procs <= 10, "the build sees {procs} processes:\n{log}");
    assert!(log.contains("wrote the sandbox /tmp"), "{log}");

    // Nothing was written on the host.
    for p in [
        &planted_worker,
        &planted_tmp,
        &planted_via_proc,
        &planted_usr,
    ] {
        let there = p.exists();
        let _ = fs::remove_file(p);
        assert!(!there, "the build wrote {} on the host", p.display());
    }

    // What the worker keeps is its own: 0700 directories, 0600 secrets.
    let work = w.dir.parent().unwrap().join("work-1");
    for d in [
        w.dir.clone(),
        work.clone(),
        work.join("cache"),
        work.join("jobs"),
    ] {
        assert_eq!(file_mode(&d), 0o700, "{}", d.display());
    }
    for f in ["worker.key", "worker.crt"] {
        assert_eq!(file_mode(&w.dir.join(f)), 0o600, "{f}");
    }

    // The worker and the master still run and build.
    assert!(w.proc().try_status().is_none(), "the worker died");
    assert!(m
        .worker_info("w1")
        .is_some_and(|i| i["connected"] == Value::Bool(true)));
    let next = Pkg::noarch("sbx-after-probe").build_srpm(&m.scratch);
    m.submit_wait(&next, &[]);
}

#[test]
fn links_the_build_plants_are_never_followed() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);

    // Host files the links point at: a text file, a real package, and a
    // directory holding a package.
    let canary = m.scratch.join("canary.txt");
    fs::write(&canary, "CANARY-UNTOUCHED\n").unwrap();
    let canary_rpm = Pkg::noarch("sbx-canary").build_srpm(&m.scratch);
    let canary_rpm_sha = sha256_file(&canary_rpm);
    let canary_dir = m.scratch.join("canary-dir");
    fs::create_dir_all(&canary_dir).unwrap();
    let in_dir = canary_dir.join("indir-1.0-1.noarch.rpm");
    fs::copy(&canary_rpm, &in_dir).unwrap();

    let c = canary.display();
    let build = format!(
        "set +e\n\
         for d in . .. ../.. ../../.. %{{_topdir}} %{{_topdir}}/..; do\n\
         ln -sf {c} $d/build.log; ln -sf {c} $d/listing.json\n\
         done\n\
         mkdir -p %{{_topdir}}/RPMS/noarch\n\
         ln -sf {rpm} %{{_topdir}}/RPMS/noarch/planted-1.0-1.noarch.rpm\n\
         ln -sfn {dir} %{{_topdir}}/RPMS/linked\n\
         mkfifo %{{_topdir}}/RPMS/noarch/fifo-1.0-1.noarch.rpm\n\
         echo KILN-LINKS-PLANTED\n\
         yes 'a line to make the log too big to stay in memory' | head -n 3000\n\
         exit 0\n",
        rpm = canary_rpm.display(),
        dir = canary_dir.display(),
    );
    let srpm = Pkg::noarch("sbx-links")
        .build_script(&build)
        .build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &[]);
    let log = m.job_log(&b);
    assert!(log.contains("KILN-LINKS-PLANTED"), "{log}");

    // The host files are untouched.
    assert_eq!(fs::read_to_string(&canary).unwrap(), "CANARY-UNTOUCHED\n");
    assert!(fs::symlink_metadata(&canary).unwrap().is_file());
    assert_eq!(sha256_file(&canary_rpm), canary_rpm_sha);
    assert_eq!(sha256_file(&in_dir), canary_rpm_sha);

    // Only the package the build made was taken, and the log is the real one.
    let names: Vec<String> = jarr(&b, "artifacts")
        .iter()
        .map(|a| jstr(a, "name"))
        .collect();
    let rpms = artifacts_of_kind(&b, "rpm");
    assert_eq!(rpms.len(), 1, "{names:?}");
    assert_eq!(jstr(&rpms[0], "name"), "sbx-links-1.0-1.noarch.rpm");
    for n in &names {
        assert!(
            !n.contains("planted") && !n.contains("indir") && !n.contains("fifo"),
            "{n} was uploaded: {names:?}"
        );
    }
    check_artifacts_on_disk(&m, &b);
    let incoming = incoming_dir(&m, build_id(&b), "noarch");
    let logs = artifacts_of_kind(&b, "log");
    assert_eq!(logs.len(), 1, "{names:?}");
    let filed_log = fs::read(incoming.join(jstr(&logs[0], "name"))).unwrap();
    let filed_log = String::from_utf8_lossy(&filed_log);
    assert!(
        filed_log.contains("KILN-LINKS-PLANTED"),
        "the filed log is not the build's"
    );
    assert!(!filed_log.contains("CANARY"), "the filed log is the canary");
    // What was passed over is said in the log.
    for n in [
        "planted-1.0-1.noarch.rpm",
        "linked",
        "fifo-1.0-1.noarch.rpm",
    ] {
        assert!(
            log.lines()
                .any(|l| l.starts_with("kiln: not taking") && l.contains(n)),
            "the log does not say {n} was passed over:\n{}",
            tail_lines(&log, 30)
        );
    }
}

// ---------------------------------------------------------------------------
// Nothing outlives the build
// ---------------------------------------------------------------------------

/// A `%build` that leaves a process that escaped into its own session and
/// one that holds the build's output, both with a marker in their argv,
/// then (with `foreground`) sleeps with a third marker.
fn leaving_build(escaped: &str, held: &str, foreground: Option<&str>) -> String {
    let mut s = format!("setsid sleep {escaped} &\nsleep {held} &\necho KILN-LEFT-BEHIND\n");
    if let Some(f) = foreground {
        s += &format!("sleep {f}\n");
    }
    s
}

fn wait_started(markers: &[&[&str]]) {
    for a in markers {
        wait_until(&format!("{a:?} to start"), Duration::from_secs(60), || {
            (!pids_with_argv(a).is_empty()).then_some(())
        });
    }
}

fn wait_all_gone(markers: &[&[&str]], what: &str) {
    wait_until(
        &format!("every process the build left to be gone {what}"),
        Duration::from_secs(15),
        || (!any_running(markers)).then_some(()),
    );
}

#[test]
fn after_a_successful_build_nothing_it_started_is_left() {
    require_build_tools();
    require_tool("setsid");
    // The worker's timeout (60 s) would end a build that waits for its
    // output to close; this one must end as soon as rpmbuild does.
    let m = Master::start_with(MasterOpts::default().arg("--job-timeout-secs", "60"));
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let (escaped, held) = (["sleep", "3001001"], ["sleep", "3001002"]);
    let srpm = Pkg::noarch("sbx-left-ok")
        .build_script(&leaving_build(escaped[1], held[1], None))
        .build_srpm(&m.scratch);
    let t0 = Instant::now();
    let b = m.submit_wait(&srpm, &[]);
    assert!(
        t0.elapsed() < Duration::from_secs(40),
        "the build took {:?}: it waited for what it left behind",
        t0.elapsed()
    );
    assert!(m.job_log(&b).contains("KILN-LEFT-BEHIND"));
    wait_all_gone(&[&escaped, &held], "after success");
}

#[test]
fn a_canceled_build_leaves_nothing() {
    require_build_tools();
    require_tool("setsid");
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let (escaped, held, fg) = (
        ["sleep", "3001011"],
        ["sleep", "3001012"],
        ["sleep", "3001013"],
    );
    let srpm = Pkg::noarch("sbx-left-cancel")
        .build_script(&leaving_build(escaped[1], held[1], Some(fg[1])))
        .build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    wait_started(&[&escaped, &held, &fg]);
    m.cancel(id).assert_ok();
    m.wait_build(id, "state canceled", Duration::from_secs(30), |b| {
        jstr(b, "state") == "canceled"
    });
    wait_all_gone(&[&escaped, &held, &fg], "after a cancel");
}

#[test]
fn a_build_past_its_timeout_leaves_nothing() {
    require_build_tools();
    require_tool("setsid");
    let m = Master::start_with(MasterOpts::default().arg("--job-timeout-secs", "8"));
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let (escaped, held, fg) = (
        ["sleep", "3001021"],
        ["sleep", "3001022"],
        ["sleep", "3001023"],
    );
    let srpm = Pkg::noarch("sbx-left-timeout")
        .build_script(&leaving_build(escaped[1], held[1], Some(fg[1])))
        .build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    wait_started(&[&escaped, &held, &fg]);
    let b = m.wait_build_done(id, Duration::from_secs(60));
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let msg = jstr(&only_job(&b), "message");
    assert!(msg.contains("timed out"), "{msg}");
    wait_all_gone(&[&escaped, &held, &fg], "after the timeout");
}

#[test]
fn when_the_worker_is_killed_its_build_dies_with_it() {
    require_build_tools();
    require_tool("setsid");
    let m = Master::start();
    let mut w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let (escaped, held, fg) = (
        ["sleep", "3001031"],
        ["sleep", "3001032"],
        ["sleep", "3001033"],
    );
    let srpm = Pkg::noarch("sbx-left-kill")
        .build_script(&leaving_build(escaped[1], held[1], Some(fg[1])))
        .build_srpm(&m.scratch);
    m.submit(&srpm, &[]);
    wait_started(&[&escaped, &held, &fg]);
    // SIGKILL: the worker gets no chance to clean up.
    w.kill();
    wait_all_gone(&[&escaped, &held, &fg], "after the worker was killed");
}

// ---------------------------------------------------------------------------
// Results the master cannot take
// ---------------------------------------------------------------------------

#[test]
fn an_upload_refused_for_a_full_disk_is_retried_on_the_same_session() {
    require_build_tools();
    // The master's data directory on a 24 MiB tmpfs (mounted by the test,
    // which needs root; see `Tmpfs`): the first master is stopped and a
    // fresh one starts on the tmpfs, mounted over its data directory.
    let mut m = Master::start();
    m.kill();
    let disk = Tmpfs::mount(&m.data, 24 << 20);
    m.restart();
    let w = m.start_worker("w1", "x86_64,noarch", "default", 1);

    let srpm = Pkg::noarch("sbx-full-disk")
        .big_payload(32 << 20)
        .build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    wait_until(
        "the worker to say an upload failed for want of space",
        BUILD_TIMEOUT,
        || {
            let err = w.stderr_text();
            (err.contains("upload failed") && err.contains("no space left on device")).then_some(())
        },
    );
    let b = m.build(id);
    assert_eq!(jstr(&only_job(&b), "state"), "running", "{b}");
    // Space comes back: the next try goes through, without a reconnect.
    disk.resize(128 << 20);
    let b = m.wait_build_succeeded(id);
    check_artifacts_on_disk(&m, &b);
    assert_eq!(
        w.connected_count(),
        1,
        "the upload waited for a new session:\n{}",
        w.diagnostics()
    );
}

#[test]
fn an_upload_refused_for_good_fails_the_job_instead_of_hanging() {
    require_build_tools();
    let m = Master::start_with(MasterOpts::default().arg("--max-artifact", "150000"));
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let srpm = Pkg::noarch("sbx-too-big")
        .big_payload(300_000)
        .build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    let b = m.wait_build_done(id, Duration::from_secs(90));
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let msg = jstr(&only_job(&b), "message");
    assert!(
        msg.contains("uploading the results failed") && msg.contains("exceeds the limit"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------
// Without a sandbox: refused by default, said loudly when chosen
// ---------------------------------------------------------------------------

/// The last line of a log that is not empty.
fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[test]
fn the_sandbox_is_on_by_default_and_a_worker_without_bwrap_refuses_builds() {
    require_build_tools();
    let m = Master::start();
    // The default, as the worker reads its settings.
    let mut cmd = std::process::Command::new(kiln());
    cmd.args(["worker", "--print-config"])
        .env("HOME", &m.home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("KILN_SANDBOX")
        .env_remove("KILN_WORKER_SANDBOX");
    let out = run_timeout(cmd, CLI_TIMEOUT, "kiln worker --print-config").assert_ok();
    assert!(
        out.stdout.lines().any(|l| l.trim() == r#"sandbox = "on""#),
        "{}",
        out.stdout
    );

    // A host without bubblewrap: the worker says at start that it will
    // build nothing, and every build fails saying why, without running.
    let path = path_without(&m.scratch, &["bwrap"]);
    let w = m.enroll("nobwrap").spawn_with(
        WorkerOpts::new("x86_64,noarch", "default", 1),
        &[],
        &[("PATH", path.to_str().unwrap())],
    );
    w.wait_connected(1);
    let err = w.stderr_text();
    assert!(
        err.contains("every build on this worker will fail")
            && err.contains("bwrap is not installed"),
        "{err}"
    );
    let pkg = Pkg::noarch("sbx-no-bwrap");
    let srpm = pkg.build_srpm(&m.scratch);
    let b = m.wait_build_done(build_id(&m.submit(&srpm, &[])), BUILD_TIMEOUT);
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let msg = jstr(&only_job(&b), "message");
    assert!(
        msg.contains("sandbox is on but bwrap is not installed"),
        "{msg}"
    );
    let log = m.job_log(&b);
    assert!(!log.contains(&pkg.begin_marker()), "the build ran:\n{log}");
    assert!(
        last_line(&log).starts_with("kiln: build failed: sandbox is on but bwrap"),
        "{log}"
    );
}

#[test]
fn a_build_without_the_sandbox_says_so_at_worker_start_and_in_its_log() {
    require_build_tools();
    let m = Master::start();
    let no_bwrap = path_without(&m.scratch, &["bwrap"]);
    // Chosen explicitly: off, or auto on a host without bubblewrap.
    let off = m.enroll("off").spawn_with(
        WorkerOpts::new("x86_64,noarch", "off", 1),
        &["--sandbox", "off"],
        &[],
    );
    let auto = m.enroll("auto").spawn_with(
        WorkerOpts::new("x86_64,noarch", "auto", 1),
        &["--sandbox", "auto"],
        &[("PATH", no_bwrap.to_str().unwrap())],
    );
    // And the default, with bubblewrap: nothing to say.
    let sandboxed = m.start_worker("sandboxed", "x86_64,noarch", "default", 1);
    for (w, why) in [(&off, "sandbox = off"), (&auto, "bwrap is not installed")] {
        w.wait_connected(1);
        let err = w.stderr_text();
        assert!(
            err.contains("WARNING: builds on this worker are NOT sandboxed") && err.contains(why),
            "worker {}:\n{err}",
            w.name
        );
    }
    assert!(
        !sandboxed.stderr_text().contains("NOT sandboxed"),
        "{}",
        sandboxed.stderr_text()
    );
    for (channel, why) in [
        ("off", Some("sandbox = off")),
        ("auto", Some("bwrap is not installed")),
        ("default", None),
    ] {
        let pkg = Pkg::noarch(&format!("sbx-unsandboxed-{channel}"));
        let srpm = pkg.build_srpm(&m.scratch);
        let b = m.submit_wait(&srpm, &["--channel", channel]);
        let log = m.job_log(&b);
        assert!(log.contains(&pkg.end_marker()), "{log}");
        assert_eq!(last_line(&log), "kiln: build succeeded", "{log}");
        let warned = log
            .lines()
            .find(|l| l.starts_with("kiln: WARNING: this build is NOT sandboxed"));
        match why {
            Some(why) => {
                let line =
                    warned.unwrap_or_else(|| panic!("channel {channel}: no warning:\n{log}"));
                assert!(line.contains(why), "{line}");
                // Said before the build runs.
                assert!(
                    log.find("NOT sandboxed") < log.find(&pkg.begin_marker()),
                    "{log}"
                );
            }
            None => assert!(warned.is_none(), "a sandboxed build warned:\n{log}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Stopping: undelivered results, a second signal, a revoked worker, what a
// stopped worker left behind
// ---------------------------------------------------------------------------

#[test]
fn sigterm_with_the_master_down_keeps_the_result_for_the_next_start() {
    require_build_tools();
    let mut m = Master::start();
    let mut w =
        m.enroll("keeper")
            .spawn_with(WorkerOpts::new("x86_64,noarch", "default", 1), &[], &[]);
    w.wait_connected(1);
    let work = w.work_dir();
    let pkg = Pkg::noarch("sbx-kept").sleep(4);
    let srpm = pkg.build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    let job = ju64(&m.wait_job_running(id), "id");
    // The master goes away while the job builds: its result cannot be
    // delivered, and is kept on disk as soon as it is made.
    m.kill();
    let kept = work
        .join("jobs")
        .join(format!("{job}-1"))
        .join("result.json");
    wait_until("the worker to keep the result", BUILD_TIMEOUT, || {
        (w.stderr_text().contains("result kept in") && kept.is_file()).then_some(())
    });

    // SIGTERM: no master to drain to; the worker stops within its grace
    // (10 s), saying what it leaves undelivered.
    w.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let st = w.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!(
            "the worker did not stop after SIGTERM with the master down:\n{}",
            w.diagnostics()
        )
    });
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "it took {:?}",
        t0.elapsed()
    );
    assert_eq!(st.code(), Some(0), "{}", w.diagnostics());
    let err = w.stderr_text();
    assert!(
        err.contains("not acknowledged")
            && err.contains(&format!("job {job} attempt 1 (succeeded)")),
        "{err}"
    );
    assert!(kept.is_file(), "the kept result is gone");

    // The master and the worker start again: the result is reported, and
    // the build succeeds with what the first run built.
    m.restart();
    w.relaunch_in(&work, &[], &[]);
    w.wait_connected(1);
    let b = m.wait_build_succeeded(id);
    assert_eq!(job_worker(&only_job(&b)).as_deref(), Some("keeper"));
    assert_eq!(ju64(&only_job(&b), "attempt"), 1, "{b}");
    check_artifacts_on_disk(&m, &b);
    assert!(m.job_log(&b).contains(&pkg.end_marker()));
    wait_until(
        "the reported job's directory to be removed",
        Duration::from_secs(15),
        || (!kept.parent().unwrap().exists()).then_some(()),
    );
}

#[test]
fn a_second_sigterm_stops_the_worker_at_once() {
    require_build_tools();
    let m = Master::start();
    let mut w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let marker = ["sleep", "3001041"];
    let srpm = Pkg::noarch("sbx-twice")
        .build_script(&format!("sleep {}\n", marker[1]))
        .build_srpm(&m.scratch);
    m.submit(&srpm, &[]);
    wait_started(&[&marker]);

    // The first one drains: the build goes on.
    w.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        w.proc().try_status().is_none(),
        "the worker stopped before its build was over:\n{}",
        w.diagnostics()
    );
    assert!(any_running(&[&marker]));

    // The second one stops it, build and all.
    w.signal(libc::SIGTERM);
    let t0 = Instant::now();
    w.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "the worker did not stop on a second SIGTERM:\n{}",
            w.diagnostics()
        )
    });
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "it took {:?}",
        t0.elapsed()
    );
    wait_all_gone(&[&marker], "after a second SIGTERM");
    let err = w.stderr_text();
    assert!(err.contains("build(s) abandoned"), "{err}");
}

#[test]
fn a_revoked_worker_stops_instead_of_retrying() {
    require_build_tools();
    let m = Master::start();
    let mut w = m.start_worker("r1", "x86_64,noarch", "default", 1);
    m.cli(&["worker", "revoke", "r1"]).assert_ok();
    // The master ends the session within a heartbeat period (20 s here).
    let st = w
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the revoked worker is still running:\n{}", w.diagnostics()));
    assert!(!st.success(), "a revoked worker exits non-zero: {st:?}");
    let err = w.stderr_text();
    assert!(err.contains("this worker was revoked; stopping"), "{err}");

    // Started again, it stops at once: the master refuses its certificate
    // at the handshake.
    w.restart();
    let st = w
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the revoked worker is still running:\n{}", w.diagnostics()));
    assert!(!st.success(), "{st:?}");
    assert!(
        w.stderr_text()
            .contains("this worker was revoked; stopping"),
        "{}",
        w.diagnostics()
    );
    assert_eq!(w.connected_count(), 0);
}

#[test]
fn job_directories_left_by_a_stopped_worker_are_removed_at_start() {
    require_build_tools();
    let m = Master::start();
    let enrolled = m.enroll("w1");
    let jobs = enrolled.first_work_dir().join("jobs");
    // A build killed with the worker (with a directory it made
    // unreadable), and a result file that cannot be read back.
    let killed = jobs.join("7-1");
    fs::create_dir_all(killed.join("build/topdir/BUILD/locked")).unwrap();
    fs::write(killed.join("build/topdir/BUILD/locked/file"), "x").unwrap();
    fs::write(killed.join("build.log"), "half a log").unwrap();
    let mode = |p: &Path, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap()
    };
    mode(&killed.join("build/topdir/BUILD/locked"), 0o000);
    mode(&killed.join("build/topdir/BUILD"), 0o500);
    let broken = jobs.join("8-2");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("result.json"), "{ not json").unwrap();
    // A directory a stop caught on its way out.
    let going = jobs.join(".gone-9-1");
    fs::create_dir_all(going.join("root/upper/usr")).unwrap();

    let w = enrolled.spawn_with(WorkerOpts::new("x86_64,noarch", "default", 1), &[], &[]);
    w.wait_connected(1);
    assert!(!killed.exists(), "{} is left", killed.display());
    assert!(!broken.exists(), "{} is left", broken.display());
    assert!(!going.exists(), "{} is left", going.display());
    let err = w.stderr_text();
    assert!(err.contains("removed 2 job directories"), "{err}");
    assert!(err.contains("kept result is unusable"), "{err}");
    // And it builds.
    let srpm = Pkg::noarch("sbx-after-stale").build_srpm(&m.scratch);
    m.submit_wait(&srpm, &[]);
}

// ---------------------------------------------------------------------------
// A package the worker refuses
// ---------------------------------------------------------------------------

#[test]
fn a_package_the_worker_refuses_fails_the_build_and_the_log_says_so() {
    require_build_tools();
    let m = Master::start();
    let w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let bad = "zz-garbage-1.0-1.noarch.rpm";
    let build = format!(
        "mkdir -p %{{_topdir}}/RPMS/noarch\n\
         head -c 4096 /dev/urandom > %{{_topdir}}/RPMS/noarch/{bad}\n\
         echo KILN-GARBAGE-PLANTED\n"
    );
    let srpm = Pkg::noarch("sbx-garbage")
        .build_script(&build)
        .build_srpm(&m.scratch);
    let b = m.wait_build_done(build_id(&m.submit(&srpm, &[])), BUILD_TIMEOUT);
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let msg = jstr(&only_job(&b), "message");
    let host = w.dir.parent().unwrap().to_string_lossy().into_owned();
    assert!(msg.contains("refused") && msg.contains(bad), "{msg}");
    assert!(!msg.contains(&host) && !msg.contains("/jobs/"), "{msg}");

    let log = m.job_log(&b);
    assert!(log.contains("KILN-GARBAGE-PLANTED"), "{log}");
    assert!(!log.contains("kiln: build succeeded"), "{log}");
    let last = last_line(&log);
    assert!(
        last.starts_with("kiln: build failed: ") && last.contains(bad),
        "{log}"
    );
    assert!(!last.contains(&host) && !last.contains("/jobs/"), "{last}");

    // The log is the job's artifact, and no package is.
    assert!(artifacts_of_kind(&b, "rpm").is_empty(), "{b}");
    let logs = artifacts_of_kind(&b, "log");
    assert_eq!(logs.len(), 1, "{b}");
    let filed = incoming_dir(&m, build_id(&b), "noarch").join(jstr(&logs[0], "name"));
    let filed = fs::read_to_string(&filed).unwrap();
    assert_eq!(last_line(&filed), last, "{filed}");
}
