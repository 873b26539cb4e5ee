//! Batches (`kiln submit A B … --batch`, `--chain A : B`): the master
//! learns what each SRPM makes from a worker (its spec read in the
//! sandbox), orders the builds by BuildRequires, and holds a build
//! (`waiting`) until the builds it needs are published; a cycle is refused
//! at submit, a failed dependency fails its dependents with the reason.
//! Builds run in a buildroot, so a dependent really compiles against what
//! its dependency published.

use crate::buildroot::el9_farm;
use crate::common::*;
use serde_json::Value;

fn member<'a>(batch: &'a Value, package: &str) -> &'a Value {
    jarr(batch, "builds")
        .iter()
        .find(|b| jstr(b, "package") == package)
        .unwrap_or_else(|| panic!("no {package} in {batch}"))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[test]
fn a_batch_builds_what_is_needed_first_and_the_rest_once_it_is_published() {
    let (m, _w) = el9_farm("bt1");
    // The greeter compiles against libgreet's header, which only the
    // publication of the batch's own libgreet provides.
    let greeter_pkg = Pkg::c("kbt-greeter")
        .release("1%{?dist}")
        .build_requires("gcc")
        .build_requires("libgreet-devel >= 2")
        .build_script(
            "printf '#include <libgreet-devel.h>\\n#include <stdio.h>\\nint main(void) { puts(GREET_VERSION); return 0; }\\n' > v.c\n\
             gcc -o v v.c && ./v | grep -qx 2.0",
        );
    let greeter = greeter_pkg.build_srpm(&m.scratch);
    let lib = Pkg::noarch("kbt-libgreet")
        .version("2.0")
        .devel("libgreet-devel")
        .build_srpm(&m.scratch);
    let other = Pkg::noarch("kbt-other").build_srpm(&m.scratch);
    let out = m
        .cli(&[
            "submit",
            greeter.to_str().unwrap(),
            lib.to_str().unwrap(),
            other.to_str().unwrap(),
            "--batch",
            "--target",
            "el9",
            "--json",
        ])
        .assert_ok();
    let sub = out.json();
    let batch = ju64(&sub, "batch");
    let g = member(&sub, "kbt-greeter");
    let l = member(&sub, "kbt-libgreet");
    assert_eq!(jstr(g, "state"), "waiting", "{sub}");
    assert_eq!(ids(&g["waits_for"]), [ju64(l, "id")], "{sub}");
    let why = jstr(&only_job(g), "waiting");
    assert_eq!(
        why,
        format!(
            "waits for build {} (kbt-libgreet: libgreet-devel) to be published",
            ju64(l, "id")
        ),
        "{sub}"
    );
    assert!(ids(&l["waits_for"]).is_empty(), "{sub}");
    assert!(ids(&member(&sub, "kbt-other")["waits_for"]).is_empty());

    let shown = m.cli_json(&["batch", "show", &batch.to_string(), "--json"]);
    assert_eq!(ju64(&shown, "id"), batch);
    assert_eq!(
        ids(&member(&shown, "kbt-greeter")["waits_for"]),
        [ju64(l, "id")],
        "{shown}"
    );

    // The greeter waits for libgreet's publication, then builds against it.
    let gid = ju64(g, "id");
    let done = m.wait_build_succeeded(gid);
    let log = m.job_log(&done);
    assert!(
        log.lines()
            .any(|l| l.contains("libgreet-devel") && l.contains("kiln-el9")),
        "{log}"
    );
    // Its program runs.
    let rpm = check_artifacts_on_disk(&m, &done)
        .into_iter()
        .find(|a| jstr(a, "kind") == "rpm")
        .expect("an rpm");
    let path = incoming_dir(&m, gid, "x86_64").join(jstr(&rpm, "name"));
    let dest = m.scratch.join("extract-kbt-greeter");
    rpm_extract(&path, &dest);
    let out = run_timeout(
        std::process::Command::new(dest.join("usr/bin/kbt-greeter")),
        CLI_TIMEOUT,
        "kbt-greeter",
    )
    .assert_ok();
    assert_eq!(out.stdout.trim(), greeter_pkg.greeting());
    let lib_done = wait_published(&m, ju64(l, "id"), PUBLISH_TIMEOUT);
    assert_eq!(jstr(&lib_done, "state"), "succeeded");
    let text = m
        .cli(&["batch", "show", &batch.to_string()])
        .assert_ok()
        .stdout;
    assert!(
        text.contains("kbt-greeter") && text.contains("succeeded"),
        "{text}"
    );
}

#[test]
fn a_cycle_is_refused_at_submit_and_nothing_is_kept() {
    let (m, _w) = el9_farm("bt2");
    let a = Pkg::noarch("kbt-cyc-a")
        .devel("liba-devel")
        .build_requires("libb-devel")
        .build_srpm(&m.scratch);
    let b = Pkg::noarch("kbt-cyc-b")
        .devel("libb-devel")
        .build_requires("liba-devel")
        .build_srpm(&m.scratch);
    let before = m.builds().len();
    let out = m.cli(&[
        "submit",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--batch",
        "--target",
        "el9",
    ]);
    let line = out.assert_error_line(&["cycle"]);
    assert!(
        line.contains("kbt-cyc-a (needs libb-devel from kbt-cyc-b)")
            && line.contains("kbt-cyc-b (needs liba-devel from kbt-cyc-a)"),
        "{line}"
    );
    assert_eq!(
        m.builds().len(),
        before,
        "a build of the refused batch was kept"
    );
}

#[test]
fn a_failed_dependency_fails_its_dependents_and_a_chain_goes_group_by_group() {
    let (m, _w) = el9_farm("bt3");
    let broken = Pkg::noarch("kbt-broken")
        .devel("libbroken-devel")
        .build_script("echo this library does not build; exit 1")
        .build_srpm(&m.scratch);
    let user = Pkg::noarch("kbt-user")
        .build_requires("libbroken-devel")
        .build_srpm(&m.scratch);
    let sub = m
        .cli(&[
            "submit",
            broken.to_str().unwrap(),
            user.to_str().unwrap(),
            "--batch",
            "--target",
            "el9",
            "--json",
        ])
        .assert_ok()
        .json();
    let bid = ju64(member(&sub, "kbt-broken"), "id");
    let uid = ju64(member(&sub, "kbt-user"), "id");
    let u = m.wait_build_done(uid, BUILD_TIMEOUT);
    assert_eq!(jstr(&u, "state"), "failed", "{u}");
    let reason = jstr(&u, "reason");
    assert!(
        reason.contains(&format!(
            "dependency build {bid} (kbt-broken) was not published"
        )),
        "{reason}"
    );
    // It never ran.
    assert!(job_worker(&only_job(&u)).is_none(), "{u}");

    // A chain: the second group waits for the first to be published.
    let first = Pkg::noarch("kbt-first").build_srpm(&m.scratch);
    let second = Pkg::noarch("kbt-second").build_srpm(&m.scratch);
    let sub = m
        .cli(&[
            "submit",
            first.to_str().unwrap(),
            ":",
            second.to_str().unwrap(),
            "--chain",
            "--target",
            "el9",
            "--json",
        ])
        .assert_ok()
        .json();
    let f = member(&sub, "kbt-first");
    let s = member(&sub, "kbt-second");
    assert_eq!(ids(&s["waits_for"]), [ju64(f, "id")], "{sub}");
    let s_done = m.wait_build_succeeded(ju64(s, "id"));
    let f_done = wait_published(&m, ju64(f, "id"), PUBLISH_TIMEOUT);
    let started = only_job(&s_done)["started_at"].as_i64().unwrap();
    let first_ended = f_done["finished_at"].as_i64().unwrap();
    assert!(
        started >= first_ended,
        "the chain did not wait: {s_done} {f_done}"
    );
}

/// What a build makes is read inside the target's base root: a Provides
/// that only the root can produce (its marker file) orders the batch.
#[test]
fn what_a_build_makes_is_read_inside_the_target_root() {
    let (m, _w) = el9_farm("bt4");
    let maker = Pkg::noarch("kbt-where")
        .devel("kbt-where-dev")
        .provides("kbt-made-%(test -f /etc/kiln-buildroot && echo inroot || echo onhost)")
        .build_srpm(&m.scratch);
    let user = Pkg::noarch("kbt-where-user")
        .build_requires("kbt-made-inroot")
        .build_srpm(&m.scratch);
    let sub = m
        .cli(&[
            "submit",
            user.to_str().unwrap(),
            maker.to_str().unwrap(),
            "--batch",
            "--target",
            "el9",
            "--json",
        ])
        .assert_ok()
        .json();
    let maker_id = ju64(member(&sub, "kbt-where"), "id");
    assert_eq!(
        ids(&member(&sub, "kbt-where-user")["waits_for"]),
        [maker_id],
        "the spec was not read in the root: {sub}"
    );
    let done = m.wait_build_succeeded(ju64(member(&sub, "kbt-where-user"), "id"));
    assert_eq!(jstr(&done, "state"), "succeeded");
}
