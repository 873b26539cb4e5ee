//! The version gate at submit (rpm's EVR ordering against the newest
//! succeeded build of the package in the target) and scratch builds, which
//! never reach a repository.

use crate::common::*;
use serde_json::Value;
use std::time::Duration;

/// Submits without `--wait` and waits for the build to end.
fn submit_and_end(m: &Master, pkg: &Pkg, extra: &[&str]) -> Value {
    let srpm = pkg.build_srpm(&m.scratch);
    let mut args = vec!["--target", "g"];
    args.extend_from_slice(extra);
    let b = m.submit(&srpm, &args);
    m.wait_build_done(build_id(&b), BUILD_TIMEOUT)
}

fn assert_skipped(b: &Value, versions: &[&str]) {
    assert_eq!(
        jstr(b, "state"),
        "skipped",
        "the build should be skipped: {b}"
    );
    assert!(
        jobs_of(b).is_empty(),
        "a skipped build is not built at all (no jobs): {b}"
    );
    assert!(
        artifacts_of_kind(b, "rpm").is_empty(),
        "a skipped build has no packages: {b}"
    );
    let reason = jstr(b, "reason");
    for v in versions {
        assert!(
            reason.contains(v),
            "the reason should name {v}: {reason:?} in {b}"
        );
    }
    assert_eq!(
        publish_state(b),
        None,
        "a skipped build is not published: {b}"
    );
}

#[test]
fn older_is_skipped_equal_needs_ci_and_a_ci_rebuild_is_published() {
    let config = config_toml(&[], &[target_toml("g", &["x86_64"], &[])]);
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;

    let first = build_and_publish(m, &Pkg::noarch("kg-gate").version("1.1"), "g");
    let first_rpm = only_artifact(&first, "rpm");

    // Older than the newest succeeded build: skipped, both versions named.
    let older = submit_and_end(m, &Pkg::noarch("kg-gate").version("1.0"), &[]);
    assert_skipped(&older, &["1.0-1", "1.1-1"]);

    // Equal, release style: skipped.
    let again = Pkg::noarch("kg-gate").version("1.1").note("ci rebuild");
    let equal = submit_and_end(m, &again, &[]);
    assert_skipped(&equal, &["1.1-1"]);

    // Nothing of the skipped builds reached the repository.
    let ls = repo_ls(m, "g");
    let mine = entries_of(&ls, "kg-gate");
    assert!(mine.iter().all(|p| p.evr() == "1.1-1"), "{ls:?}");
    let bin: Vec<&Pub> = mine.iter().filter(|p| p.repo == "x86_64").collect();
    assert_eq!(bin.len(), 1, "{ls:?}");
    assert_eq!(
        sha256_file(&published_path(m, "g", bin[0])),
        jstr(&first_rpm, "sha256"),
        "the repository should still hold the first build's package"
    );
    assert!(
        files_named(&m.data.join("repos").join("g"), |n| n
            .starts_with("kg-gate-1.0-1."))
        .is_empty(),
        "a file of the skipped 1.0-1 is in the repository"
    );

    // Equal, CI style: rebuilt and published in place of the first build.
    let ci = submit_and_end(m, &again, &["--ci"]);
    assert_eq!(
        jstr(&ci, "state"),
        "succeeded",
        "an equal-version CI build must be built: {ci}"
    );
    assert!(!jobs_of(&ci).is_empty(), "{ci}");
    let ci = wait_published(m, build_id(&ci), PUBLISH_TIMEOUT);
    let ci_rpm = only_artifact(&ci, "rpm");
    assert_ne!(
        jstr(&ci_rpm, "sha256"),
        jstr(&first_rpm, "sha256"),
        "the CI rebuild made the very same package"
    );
    let ls = repo_ls(m, "g");
    let mine = entries_of(&ls, "kg-gate");
    let bin: Vec<&Pub> = mine.iter().filter(|p| p.repo == "x86_64").collect();
    assert_eq!(
        bin.len(),
        1,
        "kg-gate 1.1-1 exactly once in the x86_64 repo after the CI rebuild: {ls:?}"
    );
    assert_eq!(bin[0].evr(), "1.1-1");
    let path = published_path(m, "g", bin[0]);
    assert_eq!(
        sha256_file(&path),
        jstr(&ci_rpm, "sha256"),
        "the published kg-gate 1.1-1 should be the CI rebuild's package"
    );
    // The file the earlier metadata names was not overwritten: a client
    // holding that metadata still gets the package it names, until the
    // next generation retires it.
    let flat = repo_dir(m, "g", "x86_64").join(jstr(&first_rpm, "name"));
    assert_ne!(path, flat, "the CI rebuild was written over the live file");
    assert_eq!(
        sha256_file(&flat),
        jstr(&first_rpm, "sha256"),
        "the first build's file changed under the old metadata"
    );
    let scratch_root = m.scratch.join("ci-extract");
    rpm_extract(&path, &scratch_root);
    let text =
        std::fs::read_to_string(scratch_root.join(again.data_file().trim_start_matches('/')))
            .unwrap();
    assert_eq!(text.trim(), again.data_text());
    for repo in ["x86_64", "source"] {
        let pkgs = check_repo_consistent(&repo_dir(m, "g", repo));
        assert_eq!(
            primary_of(&pkgs, "kg-gate").len(),
            1,
            "kg-gate once in the {repo} metadata"
        );
    }
    assert_eq!(
        mine.iter().filter(|p| p.repo == "source").count(),
        1,
        "{ls:?}"
    );
}

#[test]
fn a_scratch_build_never_reaches_the_repository() {
    let config = config_toml(&[], &[target_toml("g", &["x86_64"], &[])]);
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;

    let scratch_pkg = Pkg::noarch("kg-scratch");
    let b = submit_and_end(m, &scratch_pkg, &["--scratch"]);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}");
    assert_eq!(
        artifacts_of_kind(&b, "rpm").len(),
        1,
        "a scratch build keeps its packages with the build: {b}"
    );
    assert_eq!(
        publish_state(&b),
        None,
        "scratch: `publish` must be null: {b}"
    );
    let scratch_id = build_id(&b);

    // A regular build afterwards is published: the repository builder has
    // run since the scratch build ended.
    build_and_publish(m, &Pkg::noarch("kg-regular"), "g");
    m.cli(&["repo", "regen", "g"]).assert_ok();
    std::thread::sleep(Duration::from_secs(2));

    let b = m.build(scratch_id);
    assert_eq!(
        publish_state(&b),
        None,
        "scratch: `publish` must stay null: {b}"
    );
    let ls = repo_ls(m, "g");
    assert!(
        entries_of(&ls, "kg-scratch").is_empty(),
        "the scratch build is listed by `repo ls`: {ls:?}"
    );
    assert_eq!(
        entries_of(&ls, "kg-regular").len(),
        2,
        "binary + source: {ls:?}"
    );
    let leaked = files_named(&m.data.join("repos"), |n| n.starts_with("kg-scratch"));
    assert!(
        leaked.is_empty(),
        "files of the scratch build are in the repositories: {leaked:?}"
    );
    for repo in ["x86_64", "source"] {
        let pkgs = check_repo_consistent(&repo_dir(m, "g", repo));
        assert!(
            primary_of(&pkgs, "kg-scratch").is_empty(),
            "{repo}: {pkgs:?}"
        );
        assert_eq!(primary_of(&pkgs, "kg-regular").len(), 1, "{repo}: {pkgs:?}");
    }
    // Its artifacts stay with the build.
    let rpm = only_artifact(&b, "rpm");
    let path = incoming_dir(m, scratch_id, "noarch").join(jstr(&rpm, "name"));
    assert!(
        path.is_file(),
        "the scratch build's package should stay in {}",
        path.display()
    );
}
