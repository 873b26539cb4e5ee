//! The master's own safety: its files and modes, what it refuses to start
//! on, what it cleans, backups that restore, auth before any body is read,
//! `/repos` without symlinks, the target and arches a submit may name, and a
//! revoked worker told to stop.

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `kiln master` on `data` that is expected to refuse to start.
fn master_refuses(data: &Path, home: &Path) -> Out {
    let mut cmd = Command::new(kiln());
    cmd.arg("master")
        .arg("--data")
        .arg(data)
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--worker-listen",
            "127.0.0.1:0",
        ])
        .env("HOME", home);
    let out = run_timeout(cmd, Duration::from_secs(30), "kiln master (refusing)");
    assert!(
        !out.success(),
        "the master started: {out:?}",
        out = out.stdout
    );
    out
}

#[test]
fn files_are_private_a_lost_database_is_refused_and_leftovers_go() {
    require_build_tools();
    let mut m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let srpm = Pkg::noarch("safe-one").build_srpm(&m.scratch);
    m.submit_wait(&srpm, &[]);

    assert_eq!(file_mode(&m.data), 0o700, "data directory mode");
    assert_eq!(file_mode(&m.data.join("kiln.db")), 0o600, "database mode");

    // Leftovers of a killed master: a partial file in tmp/, staged uploads
    // of an attempt that is over. They go at the next start.
    std::fs::write(m.data.join("tmp/upload-0123-456"), b"partial").unwrap();
    std::fs::write(m.data.join("uploads/999-1-x.rpm"), b"staged").unwrap();
    std::fs::write(m.data.join("uploads/999-1-y.log.part"), b"half").unwrap();
    m.restart();
    assert!(dir_names(&m.data.join("tmp")).is_empty(), "tmp/ kept files");
    assert!(
        dir_names(&m.data.join("uploads")).is_empty(),
        "uploads/ kept files"
    );

    // A clean stop folds the WAL into the database: the file alone is a
    // complete database.
    m.proc().signal(libc::SIGTERM);
    m.proc()
        .wait_exit(Duration::from_secs(15))
        .expect("the master stops on SIGTERM");
    let copy = m.dir.path().join("db-only");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(m.data.join("kiln.db"), copy.join("kiln.db")).unwrap();
    let builds = runtime().block_on(async {
        let st =
            kiln_store::Store::open(&copy.join("kiln.db"), kiln_store::Durability::Normal).unwrap();
        st.read(|c| kiln_store::list_builds(c, 10)).await.unwrap()
    });
    assert_eq!(builds.len(), 1, "the database file alone: {builds:?}");

    // The database is lost (deleted with its WAL) while the files remain:
    // the master refuses to start on an empty database, and says why.
    for f in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        let _ = std::fs::remove_file(m.data.join(f));
    }
    let out = master_refuses(&m.data, &m.home);
    assert!(
        out.stderr.contains("was lost or replaced") && out.stderr.contains("kiln backup"),
        "{}",
        out.stderr
    );
    // Still refused the second time, and the refusal created nothing: no
    // database, no WAL.
    let out = master_refuses(&m.data, &m.home);
    assert!(
        out.stderr.contains("was lost or replaced"),
        "{}",
        out.stderr
    );
    for f in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
        assert!(
            !m.data.join(f).exists(),
            "{f} was created by a refused start"
        );
    }
    // The database file comes back (the copy taken after the clean stop):
    // the master starts and has the build.
    std::fs::copy(copy.join("kiln.db"), m.data.join("kiln.db")).unwrap();
    m.restart();
    assert_eq!(m.builds().len(), 1);
}

#[test]
fn a_backup_restores_builds_and_repositories() {
    require_build_tools();
    let mut m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 1);
    let pkg = Pkg::noarch("safe-backup");
    let srpm = pkg.build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &[]);
    let id = build_id(&b);
    let rpm = artifacts_of_kind(&b, "rpm")
        .first()
        .map(|a| jstr(a, "name"))
        .expect("an rpm artifact");
    let repo_url = format!(
        "{}/repos/default/{}/{rpm}",
        m.api_url,
        kiln_core::names::host_arch()
    );
    wait_published(&m, id, PUBLISH_TIMEOUT);

    // A backup while the master runs.
    let dest = m.dir.path().join("backup");
    let backup = || {
        let mut c = Command::new(kiln());
        c.arg("backup").arg("--data").arg(&m.data).arg(&dest);
        run_timeout(c, Duration::from_secs(60), "kiln backup")
    };
    let out = backup().assert_ok();
    assert!(out.stdout.contains("files"), "{}", out.stdout);
    // Refused over an existing backup.
    backup().assert_error_line(&["not empty"]);

    // Disaster: the master dies and its data directory is gone.
    m.kill();
    std::fs::rename(&m.data, m.dir.path().join("data.lost")).unwrap();
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(&dest).arg(&m.data);
    run_timeout(cp, Duration::from_secs(60), "cp -a backup data").assert_ok();

    // Restored: the build, its state and its published package.
    m.restart();
    let b = m.build(id);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    assert_eq!(jstr(&b, "publish"), "published", "{b}");
    assert_eq!(curl(&[&repo_url], &m.scratch).status, 200, "{repo_url}");
    // And the farm goes on building.
    let next = Pkg::noarch("safe-after-restore").build_srpm(&m.scratch);
    m.submit_wait(&next, &[]);
}

#[test]
fn writes_check_the_token_before_the_body_and_repos_serve_only_files() {
    let m = Master::start();
    let url = format!("{}/api/v1/builds", m.api_url);
    let call = |args: &[&str]| {
        let r = curl(args, &m.scratch);
        (r.status, r.text())
    };
    // A body of the wrong type and shape, without a token: 401, and the
    // answer names no field.
    let (code, body) = call(&[
        "-X",
        "POST",
        "-H",
        "content-type: text/plain",
        "--data",
        "nonsense",
        &url,
    ]);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("srpm_sha256"), "{body}");
    let (code, body) = call(&[
        "-X",
        "POST",
        "-H",
        "authorization: Bearer wrong",
        "-H",
        "content-type: application/json",
        "--data",
        "{}",
        &url,
    ]);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("srpm_sha256"), "{body}");
    let (code, body) = call(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        "{}",
        &format!("{}/api/v1/tokens", m.api_url),
    ]);
    assert_eq!(code, 401, "{body}");

    // /repos: a regular file is served; a symlink (to a file or to a
    // directory) planted in the tree is not, nor is a directory.
    let repo = m.data.join("repos/default");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("plain.txt"), b"plain").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.join("passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", repo.join("etc")).unwrap();
    let get = |p: &str| call(&[&format!("{}/repos/default/{p}", m.api_url)]);
    assert_eq!(get("plain.txt"), (200, "plain".to_string()));
    for p in ["passwd", "etc/passwd", "etc/hostname", "", "%2e%2e/kiln.db"] {
        let (code, body) = get(p);
        assert_eq!(code, 404, "/repos/default/{p}: {body}");
        assert!(!body.contains("root:"), "{body}");
    }
}

#[test]
fn a_submit_without_a_target_goes_to_the_only_one_and_unknown_arches_are_refused() {
    require_build_tools();
    let m = Master::start_with(
        MasterOpts::default()
            .config("[[target]]\nname = \"t1\"\narches = [\"x86_64\", \"noarch\"]\n"),
    );
    let srpm = Pkg::c("safe-target").build_srpm(&m.scratch);
    // The CLI uploads the SRPM; the submit names no target.
    let b = m.submit(&srpm, &["--arch", "x86_64"]);
    assert_eq!(jstr(&b, "target"), "t1", "{b}");
    // An arch the target does not list waits forever: refused at once.
    let out = m.cli(&["submit", srpm.to_str().unwrap(), "--arch", "aarch64"]);
    out.assert_error_line(&["does not build aarch64"]);
}

#[test]
fn a_revoked_worker_is_told_to_stop_its_build() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w-revoked", "x86_64,noarch", "default", 1);
    // 73 seconds: a duration no other test uses, to find its process.
    let srpm = Pkg::noarch("safe-revoked").sleep(73).build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    m.wait_job_running(id);
    wait_until(
        "the build's `sleep 73` to start",
        Duration::from_secs(30),
        || (!pids_with_argv(&["sleep", "73"]).is_empty()).then_some(()),
    );
    m.cli(&["worker", "revoke", "w-revoked"]).assert_ok();
    wait_until(
        "the revoked worker's build to be killed",
        Duration::from_secs(20),
        || pids_with_argv(&["sleep", "73"]).is_empty().then_some(()),
    );
    let b = m.build(id);
    let j = only_job(&b);
    assert_ne!(jstr(&j, "state"), "running", "{b}");
}

#[test]
fn a_build_may_return_only_packages_of_its_own_source() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w-hijack", "x86_64,noarch", "default", 1);
    // %build makes a package of another name (with its own source rpm
    // name) right into the build's RPMS/: an attempt to publish a package
    // this build does not own.
    let build =
        "printf 'Name: safe-victim\\nVersion: 9.9\\nRelease: 1\\nSummary: x\\nLicense: MIT\\n\
                 BuildArch: noarch\\n%%%%description\\nx\\n%%%%files\\n' > victim.spec\n\
                 rpmbuild -bb --nodeps --define \"_topdir %{_topdir}\" --define \"_tmppath %{_tmppath}\" victim.spec\n\
                 ls %{_topdir}/RPMS/noarch/";
    let srpm = Pkg::noarch("safe-hijack")
        .build_script(build)
        .build_srpm(&m.scratch);
    let id = build_id(&m.submit(&srpm, &[]));
    let b = m.wait_build_done(id, Duration::from_secs(120));
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    let msg = jstr(&only_job(&b), "message");
    assert!(
        msg.contains("safe-victim") && msg.contains("not from this build's package safe-hijack"),
        "{msg}"
    );
    let ls = m.cli(&["repo", "ls", "default"]).assert_ok();
    assert!(!ls.stdout.contains("safe-victim"), "{}", ls.stdout);
}

#[test]
fn a_second_master_on_the_same_data_is_refused() {
    let m = Master::start();
    let out = master_refuses(&m.data, &m.home);
    assert!(
        out.stderr.contains("another kiln master is running"),
        "{}",
        out.stderr
    );
    // The first one is untouched and answers.
    assert!(m.builds().is_empty());
}

#[test]
fn idle_and_slow_api_connections_are_closed_and_bounded() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let m = Master::start_with(
        MasterOpts::default()
            .arg("--api-header-timeout-secs", "2")
            .arg("--api-max-connections", "3"),
    );
    let addr = format!("127.0.0.1:{}", m.api_port);
    // Closed by the master: read returns 0 (or a reset) within `limit`.
    let closed_within = |s: &mut TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 512];
        loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    let t0 = std::time::Instant::now();
    // One that says nothing, one that sends half its headers.
    let mut idle = TcpStream::connect(&addr).unwrap();
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut third = TcpStream::connect(&addr).unwrap();
    // A fourth is past the cap: closed at once.
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = TcpStream::connect(&addr).unwrap();
    let t4 = std::time::Instant::now();
    closed_within(&mut fourth, Duration::from_secs(10));
    assert!(t4.elapsed() < Duration::from_secs(1), "{:?}", t4.elapsed());
    for s in [&mut idle, &mut half, &mut third] {
        closed_within(s, Duration::from_secs(15));
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // The master serves again.
    assert!(m.builds().is_empty());
}
