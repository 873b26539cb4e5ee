//! Images built by the farm (issue 12): an `[[image]]` recipe of the
//! master's configuration, whose target has packages the test built and
//! published, built by `kiln image build NAME --wait --json` on a real
//! worker (dnf --installroot from the target's published repository and the
//! test's base repository served over HTTP): one build, one job of kind
//! image per arch, the formats, `manifest.json`, `SHA256SUMS` and the logs
//! reported as artifacts and filed under `images/<name>/<build>/<arch>/`;
//! never published. A recipe with `boot` boots on the worker under qemu.
//! A recipe whose `test` fails gives a failed build whose
//! job log ends with the test's output; a bad recipe stops the master.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::hostbase::{self, HttpServer};
use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The longest an image build may take here.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

fn base_repo() -> HttpServer {
    for t in ["dnf", "bwrap", "zstd", "tar", "mkfs.ext4", "createrepo_c"] {
        require_tool(t);
    }
    let hb =
        hostbase::build_host_base_repo(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostbase"));
    hostbase::serve_dir(&hb.repo)
}

fn image_toml(name: &str, base: &str, packages: &[&str], test: &[&str]) -> String {
    let q = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[[image]]\nname = {name:?}\ntarget = \"t\"\nrepos = [{base:?}]\narches = [\"x86_64\"]\n\
         packages = [{}]\nformats = [\"tar.zst\", \"ext4\"]\nsize = \"64M\"\n\
         files = {{ \"/etc/motd\" = \"Built by Kiln\\n\" }}\ntest = [{}]\n",
        q(packages),
        q(test)
    )
}

fn image_build(m: &Master, name: &str) -> Value {
    let out = run_timeout(
        m.cli_cmd(&["image", "build", name, "--wait", "--json"]),
        BUILD_TIMEOUT,
        "kiln image build --wait --json",
    );
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("kiln image build printed no build JSON ({e}): {out:?}"));
    v
}

fn names_of(b: &Value) -> BTreeSet<String> {
    jarr(b, "artifacts")
        .iter()
        .map(|a| jstr(a, "name"))
        .collect()
}

#[test]
fn an_image_is_built_by_the_farm_from_the_targets_published_packages() {
    let base = base_repo();
    let pkg = Pkg::noarch("imgpkg").version("2.0");
    let mut config = config_toml(&[], &[target_toml("t", &["x86_64"], &[])]);
    config += &image_toml(
        "farm-img",
        &base.url,
        &["kiln-hostbase", "imgpkg"],
        &[
            "rpm -q imgpkg",
            &format!("grep -q 'imgpkg 2.0-1' {}", pkg.data_file()),
            "grep -q 'Built by Kiln' /etc/motd",
        ],
    );
    config += &image_toml(
        "farm-bad",
        &base.url,
        &["kiln-hostbase", "imgpkg"],
        &[
            "true",
            "echo KILN-IMAGE-TEST-OUTPUT; echo it broke >&2; exit 3",
        ],
    );
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;

    // The recipes are listed before anything is built.
    let ls = m.cli_json(&["image", "ls", "--json"]);
    let listed: Vec<String> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| jstr(i, "name"))
        .collect();
    assert_eq!(listed, vec!["farm-img", "farm-bad"], "{ls}");
    assert_eq!(
        ls[0]["formats"],
        serde_json::json!(["tar.zst", "ext4"]),
        "{ls}"
    );
    assert_eq!(ls[0]["builds"], serde_json::json!([]), "{ls}");

    // A package of the target, published: the image installs it from the
    // target's own repository.
    let pb = build_and_publish(m, &pkg, "t");
    assert_eq!(publish_error(&pb), None, "{pb}");

    let b = image_build(m, "farm-img");
    let id = build_id(&b);
    let log = || m.job_log(&b);
    assert_eq!(
        jstr(&b, "state"),
        "succeeded",
        "{b}\n---- log ----\n{}",
        log()
    );
    assert_eq!(jstr(&b, "package"), "farm-img", "{b}");
    assert_eq!(jstr(&b, "image"), "farm-img", "marked an image build: {b}");
    let version = jstr(&b, "evr");
    assert!(
        version.starts_with("farm-img-") && version.ends_with(".1"),
        "the first image version of the day is .1: {version}"
    );
    assert_eq!(jstr(&b, "target"), "t");
    assert!(
        b["publish"].is_null(),
        "an image build is never published: {b}"
    );
    let jobs = jobs_of(&b);
    assert_eq!(jobs.len(), 1, "{b}");
    assert_eq!(jstr(&jobs[0], "arch"), "x86_64");
    let names = names_of(&b);
    for n in [
        "farm-img.tar.zst",
        "farm-img.ext4",
        "manifest.json",
        "SHA256SUMS",
        "image.log",
        "build.log",
    ] {
        assert!(
            names.contains(n),
            "{n} is not among the artifacts {names:?}: {b}"
        );
    }
    let images = artifacts_of_kind(&b, "image");
    let formats: BTreeSet<String> = images.iter().map(|a| jstr(a, "name")).collect();
    assert_eq!(
        formats,
        ["farm-img.ext4", "farm-img.tar.zst"]
            .map(String::from)
            .into_iter()
            .collect(),
        "{b}"
    );
    assert!(
        names.iter().all(|n| !n.ends_with(".rpm")),
        "an image build returns no package: {names:?}"
    );

    // Every file is on disk under images/<name>/<build>/<arch>/ with the
    // sha256 and size of its artifact.
    let dir = m
        .data
        .join("images")
        .join("farm-img")
        .join(id.to_string())
        .join("x86_64");
    for a in jarr(&b, "artifacts") {
        let p = dir.join(jstr(a, "name"));
        assert!(p.is_file(), "{} is not filed: {a}", p.display());
        let (sha, size) = kiln_core::fsutil::sha256_file(&p).unwrap();
        assert_eq!(sha, jstr(a, "sha256"), "{}", p.display());
        assert_eq!(size, ju64(a, "size"), "{}", p.display());
    }
    assert!(
        !incoming_dir(m, id, "x86_64").exists(),
        "an image build's files go to images/, not incoming/"
    );
    // SHA256SUMS names the formats with their sha256.
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    for a in &images {
        let line = format!("{}  {}", jstr(a, "sha256"), jstr(a, "name"));
        assert!(
            sums.lines().any(|l| l == line),
            "{line:?} not in SHA256SUMS:\n{sums}"
        );
    }
    // The manifest lists the package from the target's repository.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest.to_string().contains("imgpkg-2.0-1"),
        "the manifest does not list imgpkg-2.0-1: {manifest}"
    );
    // The tarball holds the package's file and the recipe's.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("zstd -dc -- \"$1\" | tar -tf -")
        .arg("sh")
        .arg(dir.join("farm-img.tar.zst"));
    let listing = run_timeout(cmd, Duration::from_secs(60), "zstd -dc | tar -tf").assert_ok();
    let data = pkg.data_file();
    assert!(
        listing
            .stdout
            .lines()
            .any(|l| l.trim_start_matches("./") == data.trim_start_matches('/')),
        "{data} is not in the tarball"
    );

    // `kiln build show --json` lists the same artifacts; `kiln image show`
    // gives the recipe and the directory.
    let shown = m.build(id);
    assert_eq!(names_of(&shown), names, "{shown}");
    let img = m.cli_json(&["image", "show", &id.to_string(), "--json"]);
    assert_eq!(jstr(&img, "image"), "farm-img", "{img}");
    assert_eq!(jstr(&img, "version"), version, "{img}");
    assert_eq!(jstr(&img, "dir"), format!("images/farm-img/{id}/"), "{img}");
    assert_eq!(
        img["recipe"]["packages"],
        serde_json::json!(["kiln-hostbase", "imgpkg"])
    );
    assert_eq!(build_id(&img["build"]), id, "{img}");
    let text = m
        .cli(&["image", "show", &id.to_string()])
        .assert_ok()
        .stdout;
    assert!(text.contains("farm-img.ext4"), "{text}");

    // A second build of the day is .2.
    let b2 = image_build(m, "farm-img");
    assert_eq!(jstr(&b2, "state"), "succeeded", "{b2}");
    let v2 = jstr(&b2, "evr");
    assert_eq!(v2, format!("{}.2", version.trim_end_matches(".1")), "{b2}");
    let ls = m.cli_json(&["image", "ls", "--json"]);
    let last = &jarr(&ls[0], "builds")[0];
    assert_eq!(ju64(last, "build"), build_id(&b2), "{ls}");
    assert_eq!(jstr(last, "version"), v2, "{ls}");
    let table = m.cli(&["image", "ls"]).assert_ok().stdout;
    assert!(table.contains("farm-img") && table.contains(&v2), "{table}");

    // A failing test fails the build; the files are kept; the job's log
    // ends with the test's output.
    let bad = image_build(m, "farm-bad");
    assert_eq!(jstr(&bad, "state"), "failed", "{bad}");
    let bad_id = build_id(&bad);
    let job_log = m.job_log(&bad);
    let tail: Vec<&str> = job_log.lines().rev().take(15).collect();
    assert!(
        tail.iter().any(|l| l.contains("KILN-IMAGE-TEST-OUTPUT")),
        "the test's output is not at the end of the job log:\n{job_log}"
    );
    assert!(
        tail.iter().any(|l| l.contains("it broke")),
        "the test's stderr is not at the end of the job log:\n{job_log}"
    );
    let kept = m
        .data
        .join("images")
        .join("farm-bad")
        .join(bad_id.to_string())
        .join("x86_64");
    assert!(
        kept.join("image.log").is_file(),
        "the failed image's files are not kept: {:?}",
        files_under(&m.data.join("images"))
    );
    assert!(bad["publish"].is_null(), "{bad}");
}

/// The boot test through the farm: a recipe with `boot`, built by a
/// worker. The image's kernel boots its cpio initramfs under qemu (TCG),
/// the marker comes, the job's log says so and carries the kernel's
/// console, the manifest records the result, and no qemu is left.
#[test]
fn an_image_with_a_boot_test_boots_on_the_worker() {
    require_tool("qemu-system-x86_64");
    let r = crate::images::repos();
    let mut config = config_toml(&[], &[target_toml("t", &["x86_64"], &[])]);
    config += &format!(
        "\n[[image]]\nname = \"farm-boot\"\ntarget = \"t\"\nrepos = [{:?}, {:?}]\n\
         arches = [\"x86_64\"]\npackages = [\"kiln-img-kernel\", \"kiln-img-init\"]\n\
         formats = [\"cpio\"]\n\
         boot = {{ kernel = \"/boot/vmlinuz\", expect = \"{}\", timeout = \"180s\" }}\n",
        r.base.url,
        r.fixtures.url,
        crate::images::BOOT_MARKER
    );
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;
    let b = image_build(m, "farm-boot");
    let log = m.job_log(&b);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}\n---- log ----\n{log}");
    assert!(log.contains("boot test passed"), "{log}");
    assert!(
        log.contains("Linux version"),
        "the kernel's console is not in the job's log: {log}"
    );
    let dir = m
        .data
        .join("images")
        .join("farm-boot")
        .join(build_id(&b).to_string())
        .join("x86_64");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["boot"]["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("Passed")),
        "{manifest}"
    );
    // qemu ran with the image's own cpio (its command line is in the
    // log), and none is left.
    assert!(
        log.lines()
            .any(|l| l.contains("boot test (") && l.contains("farm-boot.cpio")),
        "{log}"
    );
    let left = pids_where(|argv| {
        argv.first().is_some_and(|a| a.contains("qemu-system"))
            && argv.iter().any(|a| a.contains("farm-boot.cpio"))
    });
    assert!(left.is_empty(), "qemu left behind: {left:?}");
}

#[test]
fn a_bad_recipe_stops_the_master_with_what_is_wrong() {
    let cases = [
        (
            "[[image]]\nname = \"img\"\ntarget = \"nope\"\npackages = [\"bash\"]\nformats = [\"ext4\"]\n",
            "[[image]] \"img\": target \"nope\" is not declared",
        ),
        (
            "[[image]]\nname = \"img\"\ntarget = \"t\"\narches = [\"aarch64\"]\npackages = [\"bash\"]\nformats = [\"ext4\"]\n",
            "arch \"aarch64\" is not one of target t's arches",
        ),
        (
            "[[image]]\nname = \"img\"\ntarget = \"t\"\npackages = [\"bash\"]\nformats = [\"ext4\"]\nsize = \"lots\"\n",
            "[[image]] \"img\": size: \"lots\" is not a size",
        ),
    ];
    for (recipe, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("master.toml");
        let text = format!("{}\n{recipe}", target_toml("t", &["x86_64"], &[]));
        std::fs::write(&cfg, text).unwrap();
        let mut cmd = Command::new(kiln());
        cmd.args(["master", "--config"])
            .arg(&cfg)
            .arg("--data")
            .arg(dir.path().join("data"))
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--worker-listen",
                "127.0.0.1:0",
            ]);
        let out = run_timeout(cmd, Duration::from_secs(60), "kiln master");
        assert!(!out.success(), "the master started with {recipe:?}");
        assert!(
            out.stderr.contains(want),
            "the master's error does not say {want:?}: {}",
            out.stderr
        );
    }
}

/// `rebuild_on_publish = true`: publishing a package the recipe installs
/// starts an image build by itself (submitter `rebuild_on_publish`), once;
/// a recipe without it is not built.
#[test]
fn publishing_a_package_an_image_installs_rebuilds_the_image() {
    let base = base_repo();
    let pkg = Pkg::noarch("rbpkg").version("1.0");
    let mut config = config_toml(&[], &[target_toml("t", &["x86_64"], &[])]);
    config += &image_toml(
        "rb-img",
        &base.url,
        &["kiln-hostbase", "rbpkg"],
        &["rpm -q rbpkg"],
    );
    config += "rebuild_on_publish = true\n";
    config += &image_toml("rb-off", &base.url, &["kiln-hostbase", "rbpkg"], &["true"]);
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;

    let pb = build_and_publish(m, &pkg, "t");
    assert_eq!(publish_error(&pb), None, "{pb}");

    let builds_of = |name: &str| -> Vec<Value> {
        let ls = m.cli_json(&["image", "ls", "--json"]);
        let img = ls
            .as_array()
            .unwrap()
            .iter()
            .find(|i| jstr(i, "name") == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {ls}"))
            .clone();
        jarr(&img, "builds").to_vec()
    };
    let started = wait_until(
        "an image build started by the publication",
        BUILD_TIMEOUT,
        || builds_of("rb-img").first().map(|b| ju64(b, "build")),
    );
    let b = m.wait_build_done(started, BUILD_TIMEOUT);
    assert_eq!(
        jstr(&b, "state"),
        "succeeded",
        "{b}\n---- log ----\n{}",
        m.job_log(&b)
    );
    assert_eq!(jstr(&b, "submitter"), "rebuild_on_publish", "{b}");
    assert_eq!(builds_of("rb-img").len(), 1, "one publication, one image");
    assert!(builds_of("rb-off").is_empty(), "rb-off does not rebuild");
}

/// `kiln image add RECIPE.toml` (admin) stores a recipe in the database,
/// checked like the configuration's; `kiln image ls` says where each
/// comes from; the added one builds on the farm; `kiln image rm` removes
/// it. A name of the configuration, a bad recipe and a reader are refused.
#[test]
fn an_image_added_by_the_cli_is_listed_built_and_removed() {
    let base = base_repo();
    let mut config = config_toml(&[], &[target_toml("t", &["x86_64"], &[])]);
    config += &image_toml("cfg-img", &base.url, &["kiln-hostbase"], &["true"]);
    let f = RepoFarm::start(&config, Ctl::new());
    let m = &f.m;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };

    let good = write(
        "db.toml",
        &image_toml(
            "db-img",
            &base.url,
            &["kiln-hostbase"],
            &["rpm -q kiln-hostbase"],
        ),
    );
    let reader = m
        .cli(&["token", "create", "--name", "r", "--role", "reader"])
        .assert_ok()
        .stdout
        .trim()
        .to_string();
    let out = m.cli_token(&reader, &["image", "add", &good]);
    assert!(!out.success(), "a reader added an image: {out:?}");
    let added = m.cli_json(&["image", "add", &good, "--json"]);
    assert_eq!(jstr(&added, "name"), "db-img", "{added}");
    assert_eq!(added["arches"], serde_json::json!(["x86_64"]), "{added}");

    let ls = m.cli_json(&["image", "ls", "--json"]);
    let origins: Vec<(String, String)> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (jstr(i, "name"), jstr(i, "origin")))
        .collect();
    assert_eq!(
        origins,
        vec![
            ("cfg-img".to_string(), "config".to_string()),
            ("db-img".to_string(), "database".to_string())
        ],
        "{ls}"
    );
    let table = m.cli(&["image", "ls"]).assert_ok().stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("db-img") && l.contains("database")),
        "{table}"
    );

    // Refused: twice, a configuration's name, a recipe the configuration
    // would refuse (same words).
    let out = m.cli(&["image", "add", &good]);
    assert!(
        !out.success() && out.stderr.contains("already stored"),
        "{out:?}"
    );
    let clash = write(
        "clash.toml",
        &image_toml("cfg-img", &base.url, &["kiln-hostbase"], &["true"]),
    );
    let out = m.cli(&["image", "add", &clash]);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("image \"cfg-img\" is declared in the master's configuration"),
        "{out:?}"
    );
    let bad = write(
        "bad.toml",
        "name = \"bad-img\"\ntarget = \"nope\"\npackages = [\"bash\"]\nformats = [\"ext4\"]\n",
    );
    let out = m.cli(&["image", "add", &bad]);
    assert!(
        !out.success() && out.stderr.contains("target \"nope\" is not declared"),
        "{out:?}"
    );

    // The added recipe builds like a configured one.
    let b = image_build(m, "db-img");
    assert_eq!(
        jstr(&b, "state"),
        "succeeded",
        "{b}\n---- log ----\n{}",
        m.job_log(&b)
    );
    assert_eq!(jstr(&b, "image"), "db-img", "{b}");

    // Removed (its builds stay); a configuration's cannot be.
    let out = m.cli_token(&reader, &["image", "rm", "db-img"]);
    assert!(!out.success(), "a reader removed an image: {out:?}");
    m.cli(&["image", "rm", "db-img"]).assert_ok();
    let ls = m.cli_json(&["image", "ls", "--json"]);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    let out = m.cli(&["image", "rm", "cfg-img"]);
    assert!(
        !out.success() && out.stderr.contains("configuration"),
        "{out:?}"
    );
    let out = m.cli(&["image", "rm", "db-img"]);
    assert!(
        !out.success() && out.stderr.contains("no stored image"),
        "{out:?}"
    );
    assert_eq!(jstr(&m.build(build_id(&b)), "state"), "succeeded");
}
