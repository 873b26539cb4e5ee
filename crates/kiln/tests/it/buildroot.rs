//! Buildroots (`[target.buildroot]`): the worker makes a base root with
//! `dnf --installroot` from the target's repositories once, gives each job
//! an overlay over it, installs the SRPM's BuildRequires there (from the
//! base repositories and the target's own published one, read fresh), and
//! runs `rpmbuild` inside it in bubblewrap. The base repository is made
//! from this machine's own files (`common::hostbase`) and served over HTTP
//! by the test, as a mirror would be.

use crate::common::hostbase::{self, HostBase, HttpServer, MARKER_FILE};
use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

use hostbase::ROOT_PACKAGES as BASE;

struct Base {
    server: HttpServer,
}

/// The test base repository, made once per test run (and cached across
/// runs in cargo's target directory), served for the whole run.
fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let hb = hostbase::build_host_base_repo(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostbase"),
        );
        describe(&hb);
        let server = hostbase::serve_dir(&hb.repo);
        Base { server }
    })
}

/// What the test base is, in the test's output.
fn describe(hb: &HostBase) {
    eprintln!(
        "test base repository {} ({}): {} in {} files; stand-ins for tools this host lacks: {}; \
         dnf HOME {}",
        hb.repo.display(),
        if hb.cached { "cached" } else { "made now" },
        hb.packages.join(", "),
        hb.rpms.len(),
        hb.missing_on_host.join(", "),
        hb.dnf_home.display()
    );
}

fn el9(url: &str, packages: &[&str]) -> String {
    let pk: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    target_toml(
        "el9",
        &["x86_64"],
        &[
            "disttag = \".el9\"".into(),
            "[target.buildroot]".into(),
            format!("repos = [{url:?}]"),
            format!("packages = [{}]", pk.join(", ")),
            "releasever = \"9\"".into(),
            "gpgcheck = false".into(),
        ],
    )
}

/// A master with target `el9` (a buildroot from the test base) and one
/// worker `name` with 2 slots.
pub fn el9_farm(name: &str) -> (Master, Worker) {
    require_repo_tools();
    let b = base();
    let m = Master::start_with(
        MasterOpts::default().config(&config_toml(&[], &[el9(&b.server.url, BASE)])),
    );
    let w = m.start_worker(name, "x86_64,noarch", "default", 2);
    (m, w)
}

fn roots(m: &Master, w: &Worker) -> Vec<Value> {
    let work = w.work_dir();
    let out = m
        .cli(&[
            "worker",
            "roots",
            "--work",
            work.to_str().unwrap(),
            "--json",
        ])
        .assert_ok();
    match out.json() {
        Value::Array(a) => a,
        o => panic!("`kiln worker roots --json` is not an array: {o}"),
    }
}

fn log_artifact<'a>(b: &'a Value, name: &str) -> Option<&'a Value> {
    jarr(b, "artifacts")
        .iter()
        .find(|a| jstr(a, "name") == name && jstr(a, "kind") == "log")
}

#[test]
fn builds_run_inside_a_base_root_made_once_per_configuration() {
    require_repo_tools();
    let b = base();
    let mut m = Master::start_with(
        MasterOpts::default().config(&config_toml(&[], &[el9(&b.server.url, BASE)])),
    );
    let w = m.start_worker("br", "x86_64,noarch", "default", 2);
    let port = b
        .server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let worker_dir = w.work_dir().parent().unwrap().to_path_buf();

    // A noarch build that checks where it runs: in the root (its marker
    // file), without the network (the repository server on this host's
    // loopback is out of reach), unable to write the root, and unable to
    // see the worker's files.
    let checks = format!(
        "test -f {MARKER_FILE}\n\
         if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo REACHED-THE-NETWORK; exit 1; fi\n\
         if touch /usr/kiln-wrote-here 2>/dev/null; then echo WROTE-THE-ROOT; exit 1; fi\n\
         if ls {} >/dev/null 2>&1; then echo SAW-THE-WORKER; exit 1; fi\n",
        worker_dir.display()
    );
    let noarch = Pkg::noarch("kbr-noarch").build_script(&checks);
    let first = m.submit_wait(&noarch.build_srpm(&m.scratch), &["--target", "el9"]);
    assert_eq!(
        jstr(&first, "state"),
        "succeeded",
        "{first}\n{}",
        m.job_log(&first)
    );
    let log1 = m.job_log(&first);
    assert!(log1.contains("kiln: making the base root"), "{log1}");
    assert!(log1.contains("(in the buildroot)"), "{log1}");
    let root_log = log_artifact(&first, "root.log").expect("a root.log artifact");
    assert!(ju64(root_log, "size") > 0, "{first}");

    // A C package with BuildRequires, compiled by the root's gcc: the
    // base root is reused, gcc and make are installed for this job only.
    let c = Pkg::c("kbr-hello")
        .release("1%{?dist}")
        .build_requires("gcc")
        .build_requires("make")
        .build_script(&format!("test -f {MARKER_FILE}"));
    let built = m.submit_wait(&c.build_srpm(&m.scratch), &["--target", "el9"]);
    assert_eq!(
        jstr(&built, "state"),
        "succeeded",
        "{built}\n{}",
        m.job_log(&built)
    );
    let log2 = m.job_log(&built);
    assert!(
        !log2.contains("making the base root"),
        "the base was made again: {log2}"
    );
    assert!(log2.contains("reused"), "{log2}");
    assert!(
        log2.contains("installing the BuildRequires: gcc, make"),
        "{log2}"
    );
    let rpm = check_artifacts_on_disk(&m, &built)
        .into_iter()
        .find(|a| jstr(a, "kind") == "rpm")
        .expect("an rpm");
    let path = incoming_dir(&m, build_id(&built), "x86_64").join(jstr(&rpm, "name"));
    assert_eq!(
        rpm_query(&path, "%{BUILDHOST}"),
        "kiln-build",
        "built elsewhere"
    );
    assert!(jstr(&rpm, "name").contains(".el9."), "{rpm}");
    // The program it made runs here.
    let dest = m.scratch.join("extract-kbr-hello");
    rpm_extract(&path, &dest);
    let out = run_timeout(
        std::process::Command::new(dest.join("usr/bin/kbr-hello")),
        CLI_TIMEOUT,
        "kbr-hello",
    )
    .assert_ok();
    assert_eq!(out.stdout.trim(), c.greeting());

    // One base root, used by both jobs, untouched by them.
    let r = roots(&m, &w);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(ju64(&r[0], "uses") >= 2, "{r:?}");
    let base_dir = w
        .work_dir()
        .join("roots")
        .join(jstr(&r[0], "id"))
        .join("root");
    assert!(base_dir.join("etc/kiln-buildroot").is_file());
    assert!(!base_dir.join("usr/kiln-wrote-here").exists());
    assert!(
        !base_dir.join("usr/bin/gcc").exists(),
        "gcc went into the base"
    );

    // A configuration change makes a new base beside the old one.
    let mut more = BASE.to_vec();
    more.push("which");
    m.rewrite_config(&config_toml(&[], &[el9(&b.server.url, &more)]));
    m.restart();
    w.wait_connected(1);
    let again = m.submit_wait(
        &Pkg::noarch("kbr-noarch")
            .release("2")
            .build_srpm(&m.scratch),
        &["--target", "el9"],
    );
    assert_eq!(jstr(&again, "state"), "succeeded", "{again}");
    assert!(m.job_log(&again).contains("kiln: making the base root"));
    let r = roots(&m, &w);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        jarr(&r[0], "packages").iter().any(|p| p == "which"),
        "{r:?}"
    );
}

#[test]
fn an_unresolvable_build_requires_fails_at_once_then_builds_once_published() {
    require_repo_tools();
    let b = base();
    let m = Master::start_with(
        MasterOpts::default().config(&config_toml(&[], &[el9(&b.server.url, BASE)])),
    );
    let _w = m.start_worker("br2", "x86_64,noarch", "default", 1);
    let greeter = |release: &str| {
        Pkg::noarch("kbr-greeter")
            .release(release)
            .build_requires("libgreet-devel >= 2")
            .build_script("grep -q 'GREET_VERSION \"2' /usr/include/libgreet-devel.h")
            .build_srpm(&m.scratch)
    };

    // Nothing provides it yet: failed, with why, without a build.
    let failed = m.submit(&greeter("1"), &["--target", "el9"]);
    let failed = m.wait_build_done(build_id(&failed), BUILD_TIMEOUT);
    assert_eq!(jstr(&failed, "state"), "failed", "{failed}");
    let reason = jstr(&failed, "reason");
    assert!(
        reason.contains(
            "unresolvable BuildRequires: libgreet-devel >= 2 (not in: el9-base, el9 (kiln))"
        ),
        "{reason}"
    );
    let j = only_job(&failed);
    assert_eq!(ju64(&j, "attempt"), 1, "not retried: {failed}");
    assert!(log_artifact(&failed, "root.log").is_some(), "{failed}");
    assert!(
        !m.job_log(&failed).contains("rpmbuild --rebuild"),
        "it was built"
    );

    // The target publishes a build that makes libgreet-devel 2: the next
    // build finds it (Kiln's own repository is read fresh by every job).
    let lib = Pkg::noarch("kbr-libgreet")
        .version("2.0")
        .devel("libgreet-devel");
    let lib = build_and_publish(&m, &lib, "el9");
    assert_eq!(jstr(&lib, "state"), "succeeded");
    let ok = m.submit_wait(&greeter("2"), &["--target", "el9"]);
    assert_eq!(jstr(&ok, "state"), "succeeded", "{ok}\n{}", m.job_log(&ok));
    // dnf's transaction names the repository it took the package from.
    let log = m.job_log(&ok);
    assert!(
        log.lines()
            .any(|l| l.contains("libgreet-devel") && l.contains("kiln-el9")),
        "libgreet-devel did not come from Kiln's repository: {log}"
    );
}

#[test]
fn two_jobs_at_once_share_one_base_init() {
    require_repo_tools();
    let b = base();
    let m = Master::start_with(
        MasterOpts::default().config(&config_toml(&[], &[el9(&b.server.url, BASE)])),
    );
    let w = m.start_worker("br3", "x86_64,noarch", "default", 2);
    // Both jobs say they build in the buildroot; `kiln build show` says
    // nothing of the host.
    let ids: Vec<u64> = ["kbr-twin-a", "kbr-twin-b"]
        .iter()
        .map(|n| build_id(&m.submit(&Pkg::noarch(n).build_srpm(&m.scratch), &["--target", "el9"])))
        .collect();
    let logs: Vec<String> = ids
        .iter()
        .map(|id| {
            let b = m.wait_build_succeeded(*id);
            m.job_log(&b)
        })
        .collect();
    let made = logs
        .iter()
        .filter(|l| l.contains("kiln: making the base root"))
        .count();
    assert_eq!(made, 1, "the base was made {made} times: {logs:#?}");
    assert_eq!(roots(&m, &w).len(), 1);
    let shown = m
        .cli(&["build", "show", &ids[0].to_string()])
        .assert_ok()
        .stdout;
    assert!(!shown.contains("not in a buildroot"), "{shown}");
    assert_eq!(m.build(ids[0])["buildroot"], true);
}

#[test]
fn a_target_without_a_buildroot_says_its_builds_ran_on_the_host() {
    require_repo_tools();
    let b = base();
    let m = Master::start_with(MasterOpts::default().config(&config_toml(
        &[],
        &[
            el9(&b.server.url, BASE),
            target_toml("plain", &["x86_64"], &[]),
        ],
    )));
    let _w = m.start_worker("br4", "x86_64,noarch", "default", 1);
    let built = m.submit_wait(
        &Pkg::noarch("kbr-plain").build_srpm(&m.scratch),
        &["--target", "plain"],
    );
    assert_eq!(built["buildroot"], false, "{built}");
    assert!(log_artifact(&built, "root.log").is_none(), "{built}");
    let shown = m
        .cli(&["build", "show", &build_id(&built).to_string()])
        .assert_ok()
        .stdout;
    assert!(
        shown.contains("built on the worker's host, not in a buildroot"),
        "{shown}"
    );
    let targets: Value = serde_json::from_slice(&http_get_ok(
        &format!("{}/api/v1/targets", m.api_url),
        &m.scratch,
    ))
    .unwrap();
    let el9 = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "el9")
        .unwrap();
    assert_eq!(el9["buildroot"]["releasever"], "9", "{targets}");
    assert!(targets
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "plain" && t["buildroot"].is_null()));
}
