//! Releases (issue 12): succeeded image builds of a signing target promoted
//! with `kiln release promote BUILD --release NAME`; the files, `SHA256SUMS`
//! and `SHA256SUMS.asc` fetched over HTTP from `/releases/NAME/stable/latest/`
//! pass `sha256sum -c` and `gpg --verify`; a second promotion switches
//! `latest`, a rollback brings it back, a package build and a failed image
//! build are refused, `kiln release ls --json` shows the history; links
//! other than `latest` and `.tmp-` directories are not served; a master
//! SIGKILLed right after a promotion was sent, and one restarted over a
//! half-made promotion (a `.tmp-` directory, a version directory without a
//! row, `latest` pointing at it), come back with `latest` at a recorded
//! version. The image recipe pattern is copied from `image_builds.rs`
//! (`base_repo` and the recipe text: a few lines).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::hostbase::{self, HttpServer};
use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

fn base_repo() -> HttpServer {
    for t in [
        "dnf",
        "bwrap",
        "zstd",
        "tar",
        "mkfs.ext4",
        "createrepo_c",
        "gpg",
        "sha256sum",
    ] {
        require_tool(t);
    }
    let hb =
        hostbase::build_host_base_repo(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostbase"));
    hostbase::serve_dir(&hb.repo)
}

fn image_toml(name: &str, base: &str, test: &str) -> String {
    format!(
        "\n[[image]]\nname = {name:?}\ntarget = \"t\"\nrepos = [{base:?}]\narches = [\"x86_64\"]\n\
         packages = [\"kiln-hostbase\", \"relpkg\"]\nformats = [\"tar.zst\", \"ext4\"]\nsize = \"64M\"\n\
         test = [{test:?}]\n"
    )
}

fn image_build(m: &Master, name: &str) -> Value {
    let out = run_timeout(
        m.cli_cmd(&["image", "build", name, "--wait", "--json"]),
        BUILD_TIMEOUT,
        "kiln image build --wait --json",
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("kiln image build printed no build JSON ({e}): {out:?}"))
}

fn latest_link(m: &Master) -> String {
    std::fs::read_link(m.data.join("releases/edge/stable/latest"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Fetch SHA256SUMS, its signature and every file it names from
/// `/releases/edge/stable/latest/` into a new directory; check them with
/// sha256sum and gpg (the target's public key, fetched too, in a new home).
fn fetch_and_verify(m: &Master, fpr: &str) -> String {
    let dir = m.scratch.join(format!("fetched-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = format!("{}/releases/edge/stable/latest", m.api_url);
    let sums = http_get_ok(&format!("{base}/SHA256SUMS"), &m.scratch);
    std::fs::write(dir.join("SHA256SUMS"), &sums).unwrap();
    let asc = http_get_ok(&format!("{base}/SHA256SUMS.asc"), &m.scratch);
    std::fs::write(dir.join("SHA256SUMS.asc"), &asc).unwrap();
    let sums = String::from_utf8(sums).unwrap();
    let names: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert!(names.contains(&"manifest.json"), "{sums}");
    assert!(names.iter().any(|n| n.ends_with(".ext4")), "{sums}");
    assert!(names.iter().any(|n| n.ends_with(".tar.zst")), "{sums}");
    for n in &names {
        let body = http_get_ok(&format!("{base}/{n}"), &m.scratch);
        std::fs::write(dir.join(n), body).unwrap();
    }
    let mut c = Command::new("sha256sum");
    c.arg("-c").arg("SHA256SUMS").current_dir(&dir);
    run_timeout(c, Duration::from_secs(60), "sha256sum -c SHA256SUMS").assert_ok();
    let key = http_get_ok(
        &format!("{}/repos/t/RPM-GPG-KEY-kiln-t", m.api_url),
        &m.scratch,
    );
    std::fs::write(dir.join("key.asc"), key).unwrap();
    let home = gpg_home(&m.scratch);
    gpg(&home, &["--import", dir.join("key.asc").to_str().unwrap()]).assert_ok();
    let v = gpg(
        &home,
        &[
            "--status-fd",
            "1",
            "--verify",
            dir.join("SHA256SUMS.asc").to_str().unwrap(),
            dir.join("SHA256SUMS").to_str().unwrap(),
        ],
    )
    .assert_ok();
    assert!(
        v.stdout.contains(&format!("VALIDSIG {fpr}")),
        "not signed by the target's key {fpr}: {v:?}"
    );
    kill_gpg_agents_under(&home);
    sums
}

fn promote(m: &Master, build: u64) -> Value {
    m.cli_json(&[
        "release",
        "promote",
        &build.to_string(),
        "--release",
        "edge",
        "--json",
    ])
}

#[test]
fn image_builds_are_promoted_to_signed_releases() {
    let base = base_repo();
    let ctl = Ctl::new();
    let key = GpgKey::generate(ctl.path());
    let mut config = config_toml(
        &[],
        &[target_toml(
            "t",
            &["x86_64"],
            &[toml_path("sign_key", &key.secret_file)],
        )],
    );
    config += &image_toml("edge-img", &base.url, "rpm -q relpkg");
    config += &image_toml("edge-bad", &base.url, "exit 4");
    let mut f = RepoFarm::start(&config, ctl);

    let pkg = Pkg::noarch("relpkg");
    let pb = build_and_publish(&f.m, &pkg, "t");
    let b1 = image_build(&f.m, "edge-img");
    assert_eq!(jstr(&b1, "state"), "succeeded", "{b1}");
    let b2 = image_build(&f.m, "edge-img");
    assert_eq!(jstr(&b2, "state"), "succeeded", "{b2}");
    let bad = image_build(&f.m, "edge-bad");
    assert_eq!(jstr(&bad, "state"), "failed", "{bad}");
    let (id1, id2) = (build_id(&b1), build_id(&b2));
    let (v1, v2) = (jstr(&b1, "evr"), jstr(&b2, "evr"));
    let m = &f.m;

    // What cannot be promoted, with what is wrong.
    for (id, want) in [
        (build_id(&pb), "is not an image build"),
        (build_id(&bad), "is failed, not succeeded"),
        (987654, "no build 987654"),
    ] {
        let out = m.cli(&["release", "promote", &id.to_string(), "--release", "edge"]);
        assert!(!out.success(), "build {id} was promoted: {out:?}");
        assert!(out.stderr.contains(want), "{want:?} not said: {out:?}");
    }
    let out = m.cli(&["release", "promote", &id1.to_string(), "--release", "../x"]);
    assert!(!out.success(), "{out:?}");
    assert!(
        !m.data.join("releases/edge").exists(),
        "a refused promotion left files"
    );

    // The first promotion: signed, linked (no copy), served.
    let p1 = promote(m, id1);
    assert_eq!(p1["changed"], Value::Bool(true), "{p1}");
    assert_eq!(jstr(&p1, "version"), v1, "{p1}");
    assert_eq!(jstr(&p1, "signed_by"), key.fpr, "{p1}");
    assert_eq!(latest_link(m), v1);
    let img = m
        .data
        .join(format!("images/edge-img/{id1}/x86_64/edge-img.ext4"));
    let rel = m
        .data
        .join(format!("releases/edge/stable/{v1}/edge-img.ext4"));
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&img).unwrap().ino(),
            std::fs::metadata(&rel).unwrap().ino(),
            "the release's image is not a hard link of the build's"
        );
    }
    let sums1 = fetch_and_verify(m, &key.fpr);
    let images = artifacts_of_kind(&b1, "image");
    for a in &images {
        let line = format!("{}  {}", jstr(a, "sha256"), jstr(a, "name"));
        assert!(sums1.lines().any(|l| l == line), "{line} not in\n{sums1}");
    }
    // Range and conditional requests, through the `latest` link.
    let url = format!("{}/releases/edge/stable/latest/manifest.json", m.api_url);
    let r = http_get(&url, &["Range: bytes=0-0"], &m.scratch);
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, b"{");
    let etag = http_get(&url, &[], &m.scratch)
        .header("last-modified")
        .unwrap();
    let r = http_get(&url, &[&format!("If-Modified-Since: {etag}")], &m.scratch);
    assert_eq!(r.status, 304);

    // The same build again: nothing changes.
    let again = promote(m, id1);
    assert_eq!(again["changed"], Value::Bool(false), "{again}");
    assert!(jstr(&again, "message").contains("already"), "{again}");

    // A second build: `latest` switches.
    let p2 = promote(m, id2);
    assert_eq!(jstr(&p2, "previous"), v1, "{p2}");
    assert_eq!(latest_link(m), v2);
    let sums2 = fetch_and_verify(m, &key.fpr);
    let images2 = artifacts_of_kind(&b2, "image");
    let want = format!(
        "{}  {}",
        jstr(&images2[0], "sha256"),
        jstr(&images2[0], "name")
    );
    assert!(sums2.lines().any(|l| l == want), "{want} not in\n{sums2}");

    // Rollback: back to the first.
    let rb = m.cli_json(&[
        "release",
        "rollback",
        "edge",
        "--channel",
        "stable",
        "--json",
    ]);
    assert_eq!(jstr(&rb, "version"), v1, "{rb}");
    assert_eq!(latest_link(m), v1);
    assert_eq!(fetch_and_verify(m, &key.fpr), sums1);

    // The history.
    let ls = m.cli_json(&["release", "ls", "edge", "--json"]);
    let hist = jarr(&ls, "history");
    let seen: Vec<(String, u64)> = hist
        .iter()
        .map(|h| (jstr(h, "action"), ju64(h, "build")))
        .collect();
    assert_eq!(
        seen,
        [
            ("rollback".to_string(), id1),
            ("promote".to_string(), id2),
            ("promote".to_string(), id1)
        ],
        "{ls}"
    );
    assert!(hist.iter().all(|h| h["who"].is_string()), "{ls}");
    assert_eq!(hist[0]["current"], Value::Bool(true), "{ls}");
    let ch = &jarr(&ls, "channels")[0];
    assert_eq!(jstr(ch, "name"), "stable");
    assert_eq!(jstr(ch, "latest"), v1, "{ls}");
    assert_eq!(jarr(ch, "versions").len(), 2, "{ls}");
    let text = m.cli(&["release", "ls", "edge"]).assert_ok().stdout;
    assert!(text.contains(&v2) && text.contains("rollback"), "{text}");

    // Only the `latest` link is followed; no other link, no `.tmp-` dir.
    let chan = m.data.join("releases/edge/stable");
    std::os::unix::fs::symlink("/etc", chan.join("evil")).unwrap();
    std::os::unix::fs::symlink(format!("../stable/{v1}"), chan.join("sneaky")).unwrap();
    std::fs::create_dir_all(chan.join(".tmp-x")).unwrap();
    std::fs::write(chan.join(".tmp-x/f"), "x").unwrap();
    for p in ["evil/passwd", "sneaky/SHA256SUMS", ".tmp-x/f"] {
        let r = http_get(
            &format!("{}/releases/edge/stable/{p}", m.api_url),
            &[],
            &m.scratch,
        );
        assert_eq!(r.status, 404, "{p} was served");
    }
    std::fs::remove_file(chan.join("evil")).unwrap();
    std::fs::remove_file(chan.join("sneaky")).unwrap();

    // A master SIGKILLed right after a promotion was sent: at restart
    // `latest` is a version the database records as current.
    let mut child =
        f.m.cli_cmd(&["release", "promote", &id2.to_string(), "--release", "edge"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    f.m.kill();
    let _ = child.wait();
    // And a half-made promotion left behind: a version directory without
    // a row, `latest` pointing at it, a `.tmp-` directory.
    let chan = f.m.data.join("releases/edge/stable");
    std::fs::create_dir_all(chan.join("edge-img-19990101.1")).unwrap();
    std::fs::write(chan.join("edge-img-19990101.1/SHA256SUMS"), "").unwrap();
    std::os::unix::fs::symlink("edge-img-19990101.1", chan.join(".latest-x")).unwrap();
    std::fs::rename(chan.join(".latest-x"), chan.join("latest")).unwrap();
    f.m.restart();
    let m = &f.m;
    let ls = m.cli_json(&["release", "ls", "edge", "--json"]);
    let cur = jstr(&jarr(&ls, "channels")[0], "latest");
    assert!(cur == v1 || cur == v2, "{ls}");
    assert_eq!(
        latest_link(m),
        cur,
        "latest is not the recorded version: {ls}"
    );
    assert!(
        !chan.join("edge-img-19990101.1").exists(),
        "the unrecorded version is kept"
    );
    assert!(!chan.join(".tmp-x").exists(), "the .tmp- directory is kept");
    fetch_and_verify(m, &key.fpr);
}
