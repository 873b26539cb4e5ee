//! The main path: an SRPM goes in, RPMs, the log and the listing come out,
//! filed under `DATA/incoming/<build>/<arch>/` with the sizes and sha256
//! the build reports.

use crate::common::*;
use serde_json::Value;
use std::fs;

#[test]
fn noarch_srpm_gives_one_noarch_job_and_verified_artifacts() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 2);

    let pkg = Pkg::noarch("kt-noarch");
    let srpm = pkg.build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &[]);
    let id = build_id(&b);

    assert_eq!(jstr(&b, "target"), "default", "{b}");
    assert_eq!(jstr(&b, "package"), "kt-noarch", "{b}");
    assert!(jstr(&b, "evr").contains("1.0-1"), "evr: {b}");

    // BuildArch: noarch gives exactly one noarch job, although the default
    // target's arches are [x86_64].
    let job = only_job(&b);
    assert_eq!(jstr(&job, "arch"), "noarch", "{b}");
    assert_eq!(jstr(&job, "state"), "succeeded", "{b}");
    assert_eq!(job_worker(&job).as_deref(), Some("w1"), "{b}");
    assert_eq!(ju64(&job, "attempt"), 1, "{b}");
    let (started, finished) = (ji64(&job, "started_at"), ji64(&job, "finished_at"));
    assert!(started > 0 && started <= finished, "times: {job}");

    // Every artifact is on disk with the reported size and sha256.
    check_artifacts_on_disk(&m, &b);
    for kind in ["rpm", "srpm", "log", "listing"] {
        assert!(
            !artifacts_of_kind(&b, kind).is_empty(),
            "no artifact of kind {kind}: {b}"
        );
    }
    let dir = incoming_dir(&m, id, "noarch");

    // The binary package is a real RPM with the file it should install.
    let rpms = artifacts_of_kind(&b, "rpm");
    assert_eq!(rpms.len(), 1, "exactly one binary rpm: {b}");
    let rpm_name = jstr(&rpms[0], "name");
    assert_eq!(rpm_name, "kt-noarch-1.0-1.noarch.rpm");
    let nevra = jstr(&rpms[0], "nevra");
    assert!(
        nevra.starts_with("kt-noarch-") && nevra.contains("1.0-1") && nevra.ends_with("noarch"),
        "nevra: {nevra}"
    );
    let rpm_path = dir.join(&rpm_name);
    assert_eq!(
        rpm_query(&rpm_path, "%{NAME} %{VERSION}-%{RELEASE} %{ARCH}"),
        "kt-noarch 1.0-1 noarch"
    );
    assert!(
        rpm_files(&rpm_path).contains(&pkg.data_file()),
        "{} does not contain {}",
        rpm_name,
        pkg.data_file()
    );

    // The source package handed back is the one submitted.
    let srpms = artifacts_of_kind(&b, "srpm");
    assert_eq!(srpms.len(), 1, "{b}");
    assert_eq!(jstr(&srpms[0], "sha256"), sha256_file(&srpm));

    // The log is rpmbuild's output: served by `kiln logs`, and filed as an
    // artifact (checked as text unless it is filed compressed).
    let job_id = ju64(&job, "id").to_string();
    let served = m.cli(&["logs", &job_id]).assert_ok().stdout;
    assert!(
        served.contains(&pkg.begin_marker()) && served.contains(&pkg.end_marker()),
        "`kiln logs {job_id}` lacks the %build output:\n{served}"
    );
    let log = &artifacts_of_kind(&b, "log")[0];
    let log_name = jstr(log, "name");
    if !(log_name.ends_with(".zst") || log_name.ends_with(".gz") || log_name.ends_with(".xz")) {
        let log_text =
            String::from_utf8_lossy(&fs::read(dir.join(&log_name)).unwrap()).into_owned();
        assert!(
            log_text.contains(&pkg.begin_marker()) && log_text.contains(&pkg.end_marker()),
            "the filed build log {log_name} lacks the %build output:\n{log_text}"
        );
    }

    // The listing names the packages with their sha256.
    let listing = &artifacts_of_kind(&b, "listing")[0];
    let listing_text = fs::read_to_string(dir.join(jstr(listing, "name"))).unwrap();
    let listing_json: Value = serde_json::from_str(&listing_text)
        .unwrap_or_else(|e| panic!("the listing is not JSON ({e}): {listing_text}"));
    let flat = listing_json.to_string();
    assert!(
        flat.contains(&rpm_name) && flat.contains(&jstr(&rpms[0], "sha256")),
        "the listing does not name {rpm_name} with its sha256: {listing_text}"
    );

    // `build show` and `builds` agree with what `submit --wait` printed.
    let shown = m.build(id);
    assert_eq!(jstr(&shown, "state"), "succeeded");
    assert_eq!(jarr(&shown, "artifacts").len(), jarr(&b, "artifacts").len());
    let all = m.builds();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(build_id(&all[0]), id);
}

#[test]
fn c_package_is_compiled_for_x86_64_and_its_log_is_served() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 2);

    let pkg = Pkg::c("kt-hello");
    let srpm = pkg.build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &["--arch", "x86_64"]);
    let id = build_id(&b);
    let job = only_job(&b);
    assert_eq!(jstr(&job, "arch"), "x86_64", "{b}");
    assert_eq!(jstr(&job, "state"), "succeeded", "{b}");
    assert_eq!(job_worker(&job).as_deref(), Some("w1"));
    check_artifacts_on_disk(&m, &b);

    let rpms = artifacts_of_kind(&b, "rpm");
    assert_eq!(rpms.len(), 1, "{b}");
    assert_eq!(jstr(&rpms[0], "arch"), "x86_64", "{b}");
    let rpm_path = incoming_dir(&m, id, "x86_64").join(jstr(&rpms[0], "name"));
    assert_eq!(rpm_query(&rpm_path, "%{NAME} %{ARCH}"), "kt-hello x86_64");
    assert!(rpm_files(&rpm_path).contains(&"/usr/bin/kt-hello".to_string()));

    // The program in the package was really compiled, and runs.
    let root = m.scratch.join("unpacked");
    rpm_extract(&rpm_path, &root);
    let mut prog = std::process::Command::new(root.join("usr/bin/kt-hello"));
    prog.env_clear();
    let out = run_timeout(prog, CLI_TIMEOUT, "kt-hello").assert_ok();
    assert_eq!(out.stdout.trim(), pkg.greeting());

    // `kiln logs JOB` prints rpmbuild's output.
    let job_id = ju64(&job, "id").to_string();
    let logs = m.cli(&["logs", &job_id]).assert_ok();
    for needle in [
        pkg.begin_marker().as_str(),
        pkg.end_marker().as_str(),
        "gcc -O2 -o kt-hello hello.c",
        "Wrote:",
    ] {
        assert!(
            logs.stdout.contains(needle),
            "`kiln logs {job_id}` lacks {needle:?}:\n{}",
            logs.stdout
        );
    }
}

#[test]
fn second_upload_of_the_same_srpm_sends_nothing() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 2);

    let srpm = Pkg::noarch("kt-dedup").build_srpm(&m.scratch);
    let size = fs::metadata(&srpm).unwrap().len();
    let first = m.submit_wait(&srpm, &[]);
    let sent1 = ju64(
        first.get("upload").expect("upload in submit --json"),
        "sent",
    );
    assert!(
        sent1 > 0,
        "the first upload must send the file ({size} bytes): {first}"
    );

    // Same content under another file name: content-addressed, so no bytes.
    // (A CI-style build: the version gate lets an equal version through.)
    let copy = m.scratch.join("copy-of-the-same.src.rpm");
    fs::copy(&srpm, &copy).unwrap();
    let second = m.submit_wait(&copy, &["--ci"]);
    assert_ne!(build_id(&first), build_id(&second));
    let sent2 = ju64(
        second.get("upload").expect("upload in submit --json"),
        "sent",
    );
    assert_eq!(sent2, 0, "the second upload sent content: {second}");
    check_artifacts_on_disk(&m, &second);

    // The worker fetched the SRPM for the first job and took it from its
    // cache for the second.
    let (log1, log2) = (m.job_log(&first), m.job_log(&second));
    assert!(log1.contains("kiln: fetched input"), "{log1}");
    assert!(log2.contains("is cached, nothing to download"), "{log2}");
    assert!(!log2.contains("kiln: fetched input"), "{log2}");

    // The store holds the SRPM once, under its sha256.
    let sha = sha256_file(&srpm);
    let cas = m.data.join("cas");
    let stored: Vec<_> = files_under(&cas)
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()) == Some(sha.as_str()))
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "expected DATA/cas/{sha} once, found {stored:?} in {:?}",
        files_under(&cas)
    );
    assert_eq!(sha256_file(&cas.join(&stored[0])), sha);
}

#[test]
fn exclusive_arch_rules_out_an_arch_and_says_so() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 2);

    let srpm = Pkg::c("kt-excl")
        .exclusive_arch("x86_64")
        .build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &["--arch", "x86_64,aarch64"]);

    let job = only_job(&b);
    assert_eq!(jstr(&job, "arch"), "x86_64", "{b}");
    let excluded = jarr(&b, "excluded_arches");
    let aarch64 = excluded
        .iter()
        .find(|e| e.get("arch").and_then(Value::as_str) == Some("aarch64"))
        .unwrap_or_else(|| panic!("aarch64 is not reported in excluded_arches: {b}"));
    assert!(
        !jstr(aarch64, "reason").trim().is_empty(),
        "an excluded arch needs a reason: {b}"
    );
    assert!(
        !excluded
            .iter()
            .any(|e| e.get("arch").and_then(Value::as_str) == Some("x86_64")),
        "x86_64 must not be excluded: {b}"
    );
    check_artifacts_on_disk(&m, &b);
}

#[test]
fn target_disttag_goes_into_the_release() {
    require_build_tools();
    let config = r#"
[[target]]
name = "kt"
disttag = ".kt1"
arches = ["x86_64"]
channel = "default"
"#;
    let m = Master::start_with(MasterOpts::default().config(config));
    let _w = m.start_worker("w1", "x86_64,noarch", "default", 2);

    let srpm = Pkg::noarch("kt-dist")
        .release("1%{?dist}")
        .build_srpm(&m.scratch);
    let b = m.submit_wait(&srpm, &["--target", "kt"]);
    assert_eq!(jstr(&b, "target"), "kt", "{b}");
    let rpms = artifacts_of_kind(&b, "rpm");
    assert_eq!(rpms.len(), 1, "{b}");
    let path = incoming_dir(&m, build_id(&b), "noarch").join(jstr(&rpms[0], "name"));
    let release = rpm_query(&path, "%{RELEASE}");
    assert!(
        release.starts_with('1') && release.contains("kt1"),
        "the release of the built package should carry the disttag: {release:?}"
    );
    check_artifacts_on_disk(&m, &b);
}
