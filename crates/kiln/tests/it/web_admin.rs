//! What signed-in users do from the web pages (issue 10): an admin issues
//! a worker's enrollment token from `/workers` and the command it shows
//! enrolls a real worker, which the admin then revokes from the same page;
//! a reader may do neither; `/builds` filters by submitter; a project's
//! "Build now" starts a build recorded as started from the web; `/notify`
//! shows the sinks to signed-in users and an admin tests one from it.

use crate::common::*;
use serde_json::Value;

/// Signs in with `token` by the form: the `cookie:` header and the
/// session's CSRF token.
fn sign_in(m: &Master, token: &str) -> (String, String) {
    let r = curl(
        &[
            "-X",
            "POST",
            "--data-urlencode",
            &format!("token={token}"),
            &format!("{}/login", m.api_url),
        ],
        &m.scratch,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let set = r
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("kiln_session="))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no session cookie: {:?}", r.headers));
    let cookie = format!("cookie: {}", set.split(';').next().unwrap().trim());
    let me = curl(
        &[&format!("{}/api/v1/whoami", m.api_url), "-H", &cookie],
        &m.scratch,
    );
    let me: Value = serde_json::from_slice(&me.body).unwrap();
    (cookie, jstr(&me, "csrf"))
}

/// A form post with the session.
fn post_form(m: &Master, cookie: &str, path: &str, fields: &[(&str, &str)]) -> Http {
    let mut args: Vec<String> = vec!["-X".into(), "POST".into(), "-H".into(), cookie.into()];
    for (k, v) in fields {
        args.push("--data-urlencode".into());
        args.push(format!("{k}={v}"));
    }
    args.push(format!("{}{path}", m.api_url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args, &m.scratch)
}

fn page(m: &Master, path: &str, cookie: &str) -> String {
    let r = curl(&[&format!("{}{path}", m.api_url), "-H", cookie], &m.scratch);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.text()
}

fn create(m: &Master, name: &str, role: &str) -> String {
    m.cli(&["token", "create", "--name", name, "--role", role])
        .assert_ok()
        .stdout
        .trim()
        .to_string()
}

#[test]
fn an_admin_enrolls_and_revokes_a_worker_from_the_workers_page() {
    require_build_tools();
    let m = Master::start();
    let (admin, csrf) = sign_in(&m, &m.token);
    let reader = create(&m, "rita", "reader");
    let (rcookie, rcsrf) = sign_in(&m, &reader);

    // The reader sees no form, and a post of theirs is refused.
    assert!(!page(&m, "/workers", &rcookie).contains("/workers/enroll"));
    let r = post_form(
        &m,
        &rcookie,
        "/workers/enroll",
        &[("csrf", &rcsrf), ("name", "w9")],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("not an admin"), "{}", r.text());
    // The admin without the CSRF token, or with a bad name: refused.
    let r = post_form(&m, &admin, "/workers/enroll", &[("name", "w9")]);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = post_form(
        &m,
        &admin,
        "/workers/enroll",
        &[("csrf", &csrf), ("name", "../w9")],
    );
    assert_eq!(r.status, 400, "{}", r.text());

    // The admin issues a token: the page shows the command to paste, once.
    assert!(page(&m, "/workers", &admin).contains("action=\"/workers/enroll\""));
    let r = post_form(
        &m,
        &admin,
        "/workers/enroll",
        &[("csrf", &csrf), ("name", "w9")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let html = r.text();
    let start = html.find("kiln worker enroll ").expect("the command");
    let command = &html[start..];
    let command = &command[..command.find('<').unwrap()];
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(
        words[..4],
        ["kiln", "worker", "enroll", "--master"],
        "{command}"
    );
    assert_eq!(
        words[4], m.worker_url,
        "the worker listener, by the name the browser used"
    );
    assert_eq!(words[5], "--token");
    let token = words[6];
    assert_eq!(words[7..], ["--dir", "/var/lib/kiln-worker"], "{command}");

    // The command, run as shown (with a temp dir), enrolls a worker that
    // connects.
    let tmp = tempfile::tempdir().unwrap();
    let wdir = tmp.path().join("worker");
    let mut cmd = m.cli_cmd(&["worker", "enroll", "--master", words[4], "--token", token]);
    cmd.arg("--dir").arg(&wdir);
    run_timeout(cmd, CLI_TIMEOUT, "kiln worker enroll").assert_ok();
    let mut w = Enrolled::new("w9", wdir, m.home.clone(), tmp)
        .spawn(WorkerOpts::new("noarch", "default", 1));
    w.wait_connected(1);
    // The token worked once.
    let again = tempfile::tempdir().unwrap();
    let mut cmd = m.cli_cmd(&["worker", "enroll", "--master", words[4], "--token", token]);
    cmd.arg("--dir").arg(again.path().join("w"));
    let out = run_timeout(cmd, CLI_TIMEOUT, "kiln worker enroll");
    assert!(!out.success(), "a token enrolls once: {out:?}");

    // Revoked from the page: the worker is cut off and shown revoked.
    let workers = page(&m, "/workers", &admin);
    assert!(
        workers.contains("action=\"/workers/w9/revoke\""),
        "{workers}"
    );
    assert!(!page(&m, "/workers", &rcookie).contains("/revoke"));
    let r = post_form(&m, &rcookie, "/workers/w9/revoke", &[("csrf", &rcsrf)]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(m.worker_info("w9").unwrap()["revoked"], Value::Bool(false));
    let r = post_form(&m, &admin, "/workers/w9/revoke", &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("/workers"));
    assert_eq!(m.worker_info("w9").unwrap()["revoked"], Value::Bool(true));
    assert!(
        w.wait_exit(std::time::Duration::from_secs(30)).is_some()
            || m.worker_info("w9").unwrap()["connected"] == Value::Bool(false),
        "a revoked worker is disconnected: {}",
        w.diagnostics()
    );
    let row = page(&m, "/workers", &admin);
    let row = &row[row.find("data-worker=\"w9\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains("revoked") && !row.contains("/revoke\""),
        "{row}"
    );
}

#[test]
fn builds_filter_by_submitter_and_a_project_builds_now_from_the_web() {
    require_build_tools();
    let m = Master::start();
    let alice = create(&m, "alice", "submitter");
    let bob = create(&m, "bob", "submitter");
    let reader = create(&m, "rita", "reader");
    // No worker: the builds stay queued.
    let a = build_id(
        &m.cli_token(
            &alice,
            &[
                "submit",
                Pkg::noarch("wa-alice")
                    .build_srpm(&m.scratch)
                    .to_str()
                    .unwrap(),
                "--json",
            ],
        )
        .assert_ok()
        .json(),
    );
    let b = build_id(
        &m.cli_token(
            &bob,
            &[
                "submit",
                Pkg::noarch("wa-bob")
                    .build_srpm(&m.scratch)
                    .to_str()
                    .unwrap(),
                "--json",
            ],
        )
        .assert_ok()
        .json(),
    );
    let anyone = "x-none: 1";
    let list = page(&m, "/builds?submitter=alice", anyone);
    assert!(list.contains(&format!("href=\"/builds/{a}\"")), "{list}");
    assert!(!list.contains(&format!("href=\"/builds/{b}\"")), "{list}");
    assert!(list.contains("href=\"/builds?submitter=alice\""), "{list}");
    let all = page(&m, "/builds", anyone);
    assert!(all.contains(&format!("href=\"/builds/{b}\"")) && all.contains(">bob</a>"));
    let r = curl(
        &[&format!("{}/builds?submitter=..%2Fx", m.api_url)],
        &m.scratch,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let list = page(&m, "/builds?submitter=carol&source=upload", anyone);
    assert!(list.contains("No build matches."), "{list}");

    // A project, and "Build now" from its page.
    let mut up = GitRepo::init(&m.scratch.join("repos").join("upstream"));
    let head = up.commit(&[("hello.txt", "hello\n")], "first");
    m.cli(&[
        "project",
        "add",
        "wa-proj",
        "--target",
        "default",
        "--upstream",
        &format!("{}#main", up.url()),
    ])
    .assert_ok();
    let listing = page(&m, "/projects", anyone);
    assert!(listing.contains("href=\"/projects/wa-proj\""), "{listing}");
    let (rcookie, rcsrf) = sign_in(&m, &reader);
    assert!(!page(&m, "/projects/wa-proj", &rcookie).contains("Build now"));
    let r = post_form(&m, &rcookie, "/projects/wa-proj/build", &[("csrf", &rcsrf)]);
    assert_eq!(r.status, 403, "{}", r.text());
    let (acookie, acsrf) = sign_in(&m, &alice);
    let shown = page(&m, "/projects/wa-proj", &acookie);
    assert!(shown.contains("Build now"), "{shown}");
    let r = post_form(&m, &acookie, "/projects/wa-proj/build", &[("ref", "main")]);
    assert_eq!(r.status, 403, "no CSRF token: {}", r.text());
    let r = post_form(
        &m,
        &acookie,
        "/projects/wa-proj/build",
        &[("csrf", &acsrf), ("ref", "main"), ("mode", "bogus")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post_form(
        &m,
        &acookie,
        "/projects/wa-proj/build",
        &[("csrf", &acsrf), ("ref", "main"), ("mode", "ci")],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let to = r.header("location").unwrap();
    let id: u64 = to.strip_prefix("/builds/").unwrap().parse().unwrap();
    let built = m.build(id);
    assert_eq!(jstr(&built, "submitter"), "alice", "{built}");
    let s = &built["source"];
    assert_eq!(jstr(s, "trigger"), "web", "{built}");
    assert_eq!(jstr(s, "project"), "wa-proj", "{built}");
    assert_eq!(jstr(s, "mode"), "ci", "{built}");
    let _ = head;
    let shown = page(&m, "/projects/wa-proj", anyone);
    assert!(shown.contains(&format!("href=\"/builds/{id}\"")), "{shown}");
}

#[test]
fn the_notify_page_shows_the_sinks_and_an_admin_tests_one() {
    let port = closed_port();
    let m = Master::start_with(MasterOpts::default().config(&format!(
        "[[notify]]\nname = \"down-hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secret = \"s3cret\"\nevents = [\"build.failed\"]\ntimeout_secs = 2\n"
    )));
    // Not signed in: refused (a sink's errors may name its servers).
    let r = curl(&[&format!("{}/notify", m.api_url)], &m.scratch);
    assert_eq!(r.status, 403, "{}", r.text());
    let reader = create(&m, "rita", "reader");
    let (rcookie, rcsrf) = sign_in(&m, &reader);
    let html = page(&m, "/notify", &rcookie);
    let row = &html[html
        .find("data-sink=\"down-hook\"")
        .expect("the sink's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(
        row.contains("webhook") && row.contains("build.failed"),
        "{row}"
    );
    assert!(!row.contains("/test\""), "no button for a reader: {row}");
    let r = post_form(&m, &rcookie, "/notify/down-hook/test", &[("csrf", &rcsrf)]);
    assert_eq!(r.status, 403, "{}", r.text());
    // The admin sends a test: the sink is down, and the page says so.
    let (admin, csrf) = sign_in(&m, &m.token);
    assert!(page(&m, "/notify", &admin).contains("action=\"/notify/down-hook/test\""));
    let r = post_form(&m, &admin, "/notify/down-hook/test", &[("csrf", &csrf)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(
        t.contains("failed") && t.contains("Test of down-hook"),
        "{t}"
    );
    let r = post_form(&m, &admin, "/notify/nope/test", &[("csrf", &csrf)]);
    assert_eq!(r.status, 404, "{}", r.text());
}
