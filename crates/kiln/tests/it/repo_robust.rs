//! The repository builder under stress: builds that land together are
//! published by few createrepo_c runs, none dropped; a master SIGKILLed in
//! the middle of a publication ends, after a restart, with the build
//! published exactly once and the repository whole; a package corrupted in
//! `incoming/` is refused with an error naming it, and nothing of its build
//! is published.
//!
//! The master runs createrepo_c through a wrapper script (see `Wrapper`)
//! that logs every call and, once armed, holds the first call until the
//! test opens a gate: that is how the tests know a publication is under way
//! and make builds land while it is.

use crate::common::*;
use serde_json::Value;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

/// A farm whose master uses the wrapper, with target `r` (x86_64).
fn farm_with_wrapper() -> (RepoFarm, Wrapper) {
    let ctl = Ctl::new();
    let wrapper = Wrapper::create(&ctl);
    let config = config_toml(
        &[wrapper.config_line()],
        &[target_toml("r", &["x86_64"], &[])],
    );
    (RepoFarm::start(&config, ctl), wrapper)
}

#[test]
fn a_burst_of_builds_is_published_by_few_createrepo_runs() {
    const N: usize = 12;
    let (f, wrapper) = farm_with_wrapper();
    let m = &f.m;
    let pkgs: Vec<Pkg> = (1..=N)
        .map(|i| Pkg::noarch(&format!("kb-burst{i:02}")))
        .collect();
    let srpms: Vec<_> = pkgs.iter().map(|p| p.build_srpm(&m.scratch)).collect();

    // Hold the first publication so the others land while it runs.
    let before = wrapper.arm();
    let ids: Vec<u64> = srpms
        .iter()
        .map(|s| build_id(&m.submit(s, &["--target", "r"])))
        .collect();
    for &id in &ids {
        m.wait_build_succeeded(id);
    }
    wrapper.wait_started(m, Duration::from_secs(30));
    wrapper.open_gate();
    for &id in &ids {
        let b = wait_published(m, id, Duration::from_secs(120));
        assert_eq!(publish_error(&b), None, "{b}");
    }

    let runs = wrapper.calls().len() - before;
    println!(
        "{N} builds landing together were published with {runs} createrepo_c runs: {:?}",
        &wrapper.calls()[before..]
    );
    eprintln!("createrepo_c runs for {N} builds: {runs}");
    assert!(runs >= 1);
    assert!(
        runs < N,
        "{N} builds landing together took {runs} createrepo_c runs: they were not coalesced"
    );

    // None dropped, none twice, and the repositories are whole.
    let ls = repo_ls(m, "r");
    for p in &pkgs {
        let e = entries_of(&ls, &p.name);
        assert_eq!(
            e.iter().filter(|e| e.repo == "x86_64").count(),
            1,
            "{} once in the x86_64 repo: {ls:?}",
            p.name
        );
        assert_eq!(
            e.iter().filter(|e| e.repo == "source").count(),
            1,
            "{} once in the source repo: {ls:?}",
            p.name
        );
    }
    for repo in ["x86_64", "source"] {
        let md = check_repo_consistent(&repo_dir(m, "r", repo));
        for p in &pkgs {
            assert_eq!(
                primary_of(&md, &p.name).len(),
                1,
                "{} once in the {repo} metadata",
                p.name
            );
        }
    }
}

#[test]
fn a_master_killed_mid_publication_publishes_exactly_once_after_restart() {
    require_tool("dnf");
    let (mut f, wrapper) = farm_with_wrapper();
    let pkg = Pkg::noarch("kk-crash");
    let srpm = pkg.build_srpm(&f.m.scratch);

    wrapper.arm();
    let id = build_id(&f.m.submit(&srpm, &["--target", "r"]));
    wrapper.wait_started(&f.m, BUILD_TIMEOUT + Duration::from_secs(30));
    let b = f.m.build(id);
    assert_eq!(
        jstr(&b, "state"),
        "succeeded",
        "createrepo_c was called for this target before its only build ended: {b}"
    );
    assert_ne!(
        publish_state(&b).as_deref(),
        Some("published"),
        "published while createrepo_c is held: {b}"
    );
    println!("held createrepo_c run: {:?}", wrapper.calls().last());

    // SIGKILL the master while createrepo_c runs for this build.
    f.m.kill();
    // Its createrepo_c runs live on as orphans; let them finish first.
    let pids: Vec<i32> = wrapper
        .calls()
        .iter()
        .map(|(p, _)| *p)
        .filter(|&p| is_createrepo(p))
        .collect();
    wrapper.open_gate();
    wait_pids_gone(&pids, Duration::from_secs(60));

    f.m.restart();
    let m = &f.m;
    let b = wait_published(m, id, Duration::from_secs(120));
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    assert_eq!(publish_error(&b), None, "{b}");

    let ls = repo_ls(m, "r");
    let mine = entries_of(&ls, "kk-crash");
    assert_eq!(
        mine.iter().filter(|p| p.repo == "x86_64").count(),
        1,
        "kk-crash exactly once in the x86_64 repo after the restart: {ls:?}"
    );
    assert_eq!(
        mine.iter().filter(|p| p.repo == "source").count(),
        1,
        "kk-crash exactly once in the source repo after the restart: {ls:?}"
    );
    for repo in ["x86_64", "source"] {
        let md = check_repo_consistent(&repo_dir(m, "r", repo));
        assert_eq!(
            primary_of(&md, "kk-crash").len(),
            1,
            "kk-crash once in the {repo} metadata"
        );
    }
    for p in &mine {
        let path = published_path(m, "r", p);
        assert_eq!(
            rpm_query(&path, "%{NAME}-%{VERSION}-%{RELEASE}"),
            "kk-crash-1.0-1"
        );
    }

    let rf = repo_file(m, "r");
    let run = dnf_install(&m.scratch, "r", &rf, &["kk-crash"]);
    run.assert_ok();
    assert_eq!(
        rpm_q_root(&run.root, &["kk-crash"]).as_deref(),
        Some("kk-crash-1.0-1.noarch")
    );
}

/// XORs `n` bytes in the middle of a file with 0xFF, in place.
fn corrupt_middle(path: &std::path::Path, n: usize) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} to corrupt it: {e}", path.display()));
    let len = f.metadata().unwrap().len() as usize;
    assert!(len > 2 * n, "{} is too small ({len} bytes)", path.display());
    let at = (len / 2 - n / 2) as u64;
    let mut buf = vec![0u8; n];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut buf).unwrap();
    for b in &mut buf {
        *b ^= 0xFF;
    }
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&buf).unwrap();
    f.sync_all().unwrap();
}

/// Waits until `publish` is "failed"; panics if it becomes "published".
fn wait_publish_failed(m: &Master, id: u64, timeout: Duration) -> Value {
    m.wait_build(id, "publish = failed", timeout, |b| {
        let st = publish_state(b);
        assert_ne!(
            st.as_deref(),
            Some("published"),
            "a build with a corrupt package was published: {b}"
        );
        st.as_deref() == Some("failed")
    })
}

#[test]
fn a_corrupt_package_in_incoming_is_refused_and_nothing_of_it_published() {
    let (f, wrapper) = farm_with_wrapper();
    let m = &f.m;
    let first = Pkg::noarch("kc-first");
    let bad = Pkg::noarch("kc-bad");
    let first_srpm = first.build_srpm(&m.scratch);
    let bad_srpm = bad.build_srpm(&m.scratch);

    // The first build's publication is held...
    wrapper.arm();
    let first_id = build_id(&m.submit(&first_srpm, &["--target", "r"]));
    wrapper.wait_started(m, BUILD_TIMEOUT + Duration::from_secs(30));

    // ...while the second one finishes, and its package is damaged in
    // incoming/ before the repository builder takes it.
    let bad_id = build_id(&m.submit(&bad_srpm, &["--target", "r"]));
    let bad_b = m.wait_build_succeeded(bad_id);
    let rpm = only_artifact(&bad_b, "rpm");
    let rpm_name = jstr(&rpm, "name");
    let path = incoming_dir(m, bad_id, "noarch").join(&rpm_name);
    assert!(
        path.is_file(),
        "{} left incoming/ while the publication before it was still held; the test \
         cannot damage it (incoming/{bad_id}/noarch has {:?})",
        path.display(),
        files_under(&incoming_dir(m, bad_id, "noarch"))
    );
    let b = m.build(first_id);
    assert_ne!(publish_state(&b).as_deref(), Some("published"), "{b}");
    corrupt_middle(&path, 512);
    assert_ne!(sha256_file(&path), jstr(&rpm, "sha256"));
    wrapper.open_gate();

    // The first build is not held back by the bad one.
    wait_published(m, first_id, Duration::from_secs(120));
    // The bad one fails to publish, with an error that names the file.
    let b = wait_publish_failed(m, bad_id, Duration::from_secs(120));
    assert_eq!(
        jstr(&b, "state"),
        "succeeded",
        "the build itself succeeded: {b}"
    );
    let err = publish_error(&b).unwrap_or_else(|| panic!("no `publish_error`: {b}"));
    assert!(
        err.contains(&rpm_name),
        "`publish_error` should name the corrupt file {rpm_name}: {err:?}"
    );
    println!("publish_error of the corrupt build: {err}");

    // Nothing of it is in the repository, now or a little later (a failed
    // publication is retried, and fails again).
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let ls = repo_ls(m, "r");
        assert!(
            entries_of(&ls, "kc-bad").is_empty(),
            "the build with the corrupt package is (partly) published: {ls:?}"
        );
        assert_eq!(
            entries_of(&ls, "kc-first").len(),
            2,
            "kc-first binary + source: {ls:?}"
        );
        let leaked = files_named(&m.data.join("repos").join("r"), |n| n.starts_with("kc-bad"));
        assert!(
            leaked.is_empty(),
            "files of the corrupt build are in the repository: {leaked:?}"
        );
        for repo in ["x86_64", "source"] {
            let md = check_repo_consistent(&repo_dir(m, "r", repo));
            assert!(primary_of(&md, "kc-bad").is_empty(), "{repo}: {md:?}");
            assert_eq!(primary_of(&md, "kc-first").len(), 1, "{repo}: {md:?}");
        }
        let b = m.build(bad_id);
        assert_ne!(publish_state(&b).as_deref(), Some("published"), "{b}");
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
