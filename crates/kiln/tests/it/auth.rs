//! Who may do what (issue 10): named tokens with roles, the builds'
//! submitters, web sessions with their CSRF token, a master that is not
//! public, and the security headers. No worker: builds stay queued, which
//! is all a cancel needs.

use crate::common::*;
use serde_json::Value;
use std::time::Duration;

/// `kiln token create --name N --role R` as the admin: the token, checked
/// to be printed alone.
fn create(m: &Master, name: &str, role: &str) -> String {
    let out = m
        .cli(&["token", "create", "--name", name, "--role", role])
        .assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone: {out:?}");
    let t = lines[0];
    assert!(
        t.starts_with("kiln_")
            && t.len() == 5 + 64
            && t[5..].chars().all(|c| c.is_ascii_hexdigit()),
        "{t:?}"
    );
    assert!(out.stderr.trim().is_empty(), "{out:?}");
    t.to_string()
}

/// A request with `curl`: method, URL, extra headers, body.
fn call(m: &Master, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> Http {
    let url = format!("{}{path}", m.api_url);
    let mut args: Vec<&str> = vec!["-X", method];
    for h in headers {
        args.extend(["-H", h]);
    }
    if let Some(b) = body {
        args.extend(["--data-raw", b]);
    }
    args.push(&url);
    curl(&args, &m.scratch)
}

fn json_of(r: &Http) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.text()))
}

fn bearer(t: &str) -> String {
    format!("authorization: Bearer {t}")
}

/// The session cookie a sign-in set (`kiln_session=…`), and its attributes.
fn session_cookie(r: &Http) -> (String, String) {
    let set = r
        .headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with("kiln_session="))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no session cookie set: {:?}", r.headers));
    let pair = set.split(';').next().unwrap().trim().to_string();
    (pair, set)
}

#[test]
fn roles_decide_who_may_submit_and_cancel_and_builds_name_their_submitter() {
    require_build_tools();
    let m = Master::start();
    let alice = create(&m, "alice", "submitter");
    let bob = create(&m, "bob", "submitter");
    let rita = create(&m, "rita", "reader");

    // The worker form stays as it was, and the two forms do not mix.
    let w = m.cli(&["token", "create", "--worker", "w9"]).assert_ok();
    assert!(w.stdout.trim().starts_with("kiln1."), "{w:?}");
    assert!(!m
        .cli(&["token", "create", "--worker", "w9", "--name", "x", "--role", "reader"])
        .success());
    assert!(!m.cli(&["token", "create", "--name", "x"]).success());
    assert!(!m
        .cli(&["token", "create", "--name", "x", "--role", "root"])
        .success());
    // A live name twice, the admin file's name, a bad name: refused.
    m.cli(&["token", "create", "--name", "alice", "--role", "reader"])
        .assert_error_line(&["exists"]);
    m.cli(&["token", "create", "--name", "admin", "--role", "reader"])
        .assert_error_line(&["admin"]);
    m.cli(&["token", "create", "--name", "a/b", "--role", "reader"])
        .assert_error_line(&["token"]);
    // Only an admin makes, lists and revokes tokens.
    m.cli_token(
        &alice,
        &["token", "create", "--name", "eve", "--role", "admin"],
    )
    .assert_error_line(&["admin token"]);
    m.cli_token(&alice, &["token", "ls"])
        .assert_error_line(&["admin token"]);

    let pa = Pkg::noarch("au-alice").build_srpm(&m.scratch);
    let pb = Pkg::noarch("au-bob").build_srpm(&m.scratch);
    let pr = Pkg::noarch("au-rita").build_srpm(&m.scratch);

    // A reader reads but does not submit: 403, nothing uploaded or stored.
    let cas_before = files_under(&m.data.join("cas"));
    let line = m
        .cli_token(&rita, &["submit", pr.to_str().unwrap(), "--json"])
        .assert_error_line(&["forbidden", "submitter"]);
    assert!(line.contains("rita") && line.contains("reader"), "{line}");
    assert_eq!(files_under(&m.data.join("cas")), cas_before);
    let r = call(
        &m,
        "POST",
        "/api/v1/builds",
        &[&bearer(&rita), "content-type: application/json"],
        Some("{}"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(jstr(&json_of(&r), "code"), "forbidden");
    assert!(m.builds().is_empty());
    let listed = m.cli_token(&rita, &["builds", "--json"]).assert_ok().json();
    assert_eq!(listed, Value::Array(vec![]));

    // Submitters submit; each build names its submitter.
    let a = m
        .cli_token(&alice, &["submit", pa.to_str().unwrap(), "--json"])
        .assert_ok()
        .json();
    let b = m
        .cli_token(&bob, &["submit", pb.to_str().unwrap(), "--json"])
        .assert_ok()
        .json();
    let (ida, idb) = (build_id(&a), build_id(&b));
    assert_eq!(jstr(&m.build(ida), "submitter"), "alice");
    assert_eq!(jstr(&m.build(idb), "submitter"), "bob");
    let human = m.cli(&["build", "show", &ida.to_string()]).assert_ok();
    assert!(
        human.stdout.contains("submitted by alice"),
        "{}",
        human.stdout
    );
    // A build by the admin token file is the admin's.
    let pc = Pkg::noarch("au-admin").build_srpm(&m.scratch);
    assert_eq!(jstr(&m.submit(&pc, &[]), "submitter"), "admin");
    // Nobody names another submitter: the request has no such field.
    let sha = sha256_file(&pa);
    let body = format!(
        r#"{{"srpm_sha256":"{sha}","srpm_name":"au-alice-1.0-1.src.rpm","ci":true,"submitter":"bob"}}"#
    );
    let r = call(
        &m,
        "POST",
        "/api/v1/builds",
        &[&bearer(&alice), "content-type: application/json"],
        Some(&body),
    );
    assert!(
        r.status == 400 || r.status == 422,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(r.text().contains("submitter"), "{}", r.text());
    assert_eq!(m.builds().len(), 3);

    // A reader cancels nothing; a submitter cancels its own builds only.
    m.cli_token(&rita, &["cancel", &ida.to_string()])
        .assert_error_line(&["forbidden", "submitter"]);
    let line = m
        .cli_token(&alice, &["cancel", &idb.to_string()])
        .assert_error_line(&["submitted by"]);
    assert!(
        line.contains("bob") && line.contains("own builds"),
        "{line}"
    );
    assert_eq!(jstr(&m.build(idb), "state"), "queued");
    m.cli_token(&alice, &["cancel", &ida.to_string()])
        .assert_ok();
    m.wait_build(ida, "canceled", Duration::from_secs(15), |b| {
        jstr(b, "state") == "canceled"
    });
    // The admin cancels anyone's.
    m.cancel(idb).assert_ok();

    // The list: names, roles, use; never a token or a hash.
    let ls = m.cli(&["token", "ls", "--json"]).assert_ok();
    for secret in [&alice, &bob, &rita] {
        assert!(!ls.stdout.contains(secret.as_str()), "{}", ls.stdout);
        assert!(
            !ls.stdout.contains(&sha256_hex(secret.as_bytes())),
            "{}",
            ls.stdout
        );
    }
    let list = ls.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let find = |n: &str| list.iter().find(|t| jstr(t, "name") == n).unwrap().clone();
    assert_eq!(jstr(&find("rita"), "role"), "reader");
    assert_eq!(jstr(&find("alice"), "role"), "submitter");
    assert!(find("alice")["last_used_at"].is_i64(), "{list:?}");
    for t in list {
        let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| !k.contains("hash") && *k != "token"),
            "{t}"
        );
    }
    let human = m.cli(&["token", "ls"]).assert_ok().stdout;
    assert!(
        human.contains("rita") && human.contains("reader"),
        "{human}"
    );

    // Revoked: refused at once, reads included (401), and listed so.
    let out = m.cli(&["token", "revoke", "bob"]).assert_ok();
    assert!(out.stdout.contains("bob"), "{out:?}");
    m.cli_token(&bob, &["builds", "--json"])
        .assert_error_line(&["revoked"]);
    let r = call(&m, "GET", "/api/v1/builds", &[&bearer(&bob)], None);
    assert_eq!(r.status, 401, "{}", r.text());
    m.cli_token(&bob, &["submit", pb.to_str().unwrap(), "--json"])
        .assert_error_line(&["revoked"]);
    let bob_now = m.cli_json(&["token", "ls", "--json"]);
    let bob_now = bob_now
        .as_array()
        .unwrap()
        .iter()
        .find(|t| jstr(t, "name") == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob_now["revoked"], Value::Bool(true), "{bob_now}");
    m.cli(&["token", "revoke", "bob"])
        .assert_error_line(&["no live token"]);
    // The name can be given again, to a new token.
    let bob2 = create(&m, "bob", "reader");
    assert_ne!(bob2, bob);
    m.cli_token(&bob2, &["builds", "--json"]).assert_ok();
}

#[test]
fn web_sessions_need_their_csrf_token_and_end_at_sign_out() {
    require_build_tools();
    let m = Master::start();
    let alice = create(&m, "alice", "submitter");
    let srpm = Pkg::noarch("au-web").build_srpm(&m.scratch);
    let id = build_id(
        &m.cli_token(&alice, &["submit", srpm.to_str().unwrap(), "--json"])
            .assert_ok()
            .json(),
    );

    // Signing in with a form: a redirect, and the cookie.
    let r = curl(
        &[
            "-X",
            "POST",
            "--data-urlencode",
            &format!("token={alice}"),
            "--data-urlencode",
            "next=/builds/1",
            &format!("{}/login", m.api_url),
        ],
        &m.scratch,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("/builds/1"));
    let (cookie, set) = session_cookie(&r);
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(&alice), "{set}");
    let cookie_h = format!("cookie: {cookie}");

    // A wrong token: no cookie (a form goes back to the sign-in page).
    let r = curl(
        &[
            "-X",
            "POST",
            "--data-urlencode",
            "token=kiln_nope",
            &format!("{}/login", m.api_url),
        ],
        &m.scratch,
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location").as_deref(), Some("/signin?failed=1"));
    assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
    let r = call(
        &m,
        "POST",
        "/login",
        &["content-type: application/json"],
        Some(r#"{"token":"kiln_nope"}"#),
    );
    assert_eq!(r.status, 401, "{}", r.text());

    // Who the cookie is, and its CSRF token.
    let me = call(&m, "GET", "/api/v1/whoami", &[&cookie_h], None);
    assert_eq!(me.status, 200, "{}", me.text());
    let me = json_of(&me);
    assert_eq!(
        (jstr(&me, "name"), jstr(&me, "role")),
        ("alice".to_string(), "submitter".to_string())
    );
    assert_eq!(me["session"], Value::Bool(true));
    let csrf = jstr(&me, "csrf");
    assert_eq!(csrf.len(), 64, "{me}");

    // A state-changing request with the cookie and without the CSRF token:
    // refused, and nothing changes. A wrong one: refused too.
    let cancel = format!("/api/v1/builds/{id}/cancel");
    let r = call(&m, "POST", &cancel, &[&cookie_h], None);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("CSRF"), "{}", r.text());
    let r = call(&m, "POST", &cancel, &[&cookie_h, "x-csrf-token: 00"], None);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = call(
        &m,
        "POST",
        &cancel,
        &[&cookie_h, "content-type: application/x-www-form-urlencoded"],
        Some("csrf=00"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(jstr(&m.build(id), "state"), "queued");
    // With it (in a form field): done.
    let r = call(
        &m,
        "POST",
        &cancel,
        &[&cookie_h, "content-type: application/x-www-form-urlencoded"],
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    m.wait_build(id, "canceled", Duration::from_secs(15), |b| {
        jstr(b, "state") == "canceled"
    });
    // A session is its token's role: a submitter's session does not revoke.
    let r = call(
        &m,
        "POST",
        "/api/v1/api-tokens/alice/revoke",
        &[&cookie_h, &format!("x-csrf-token: {csrf}")],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // A bearer token needs no CSRF token; a bad bearer token beside a good
    // cookie is refused.
    let r = call(
        &m,
        "GET",
        "/api/v1/whoami",
        &[&cookie_h, &bearer("kiln_nope")],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // Nothing changes state by GET.
    let r = call(&m, "GET", &cancel, &[&cookie_h], None);
    assert_eq!(r.status, 405, "{}", r.text());
    let r = call(&m, "GET", "/logout", &[&cookie_h], None);
    assert_eq!(r.status, 405, "{}", r.text());

    // Signing out needs the CSRF token too, then ends the session.
    let r = call(&m, "POST", "/logout", &[&cookie_h], None);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = call(
        &m,
        "POST",
        "/logout",
        &[&cookie_h, "content-type: application/x-www-form-urlencoded"],
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.starts_with("kiln_session=;") && c.contains("Max-Age=0")),
        "{:?}",
        r.headers
    );
    let r = call(&m, "GET", "/api/v1/whoami", &[&cookie_h], None);
    assert_eq!(r.status, 401, "{}", r.text());
    // The stale cookie still reads the public pages.
    assert_eq!(
        call(&m, "GET", "/api/v1/builds", &[&cookie_h], None).status,
        200
    );

    // Revoking the token ends its sessions; JSON sign-in answers the CSRF
    // token itself.
    let r = call(
        &m,
        "POST",
        "/login",
        &["content-type: application/json"],
        Some(&format!(r#"{{"token":"{alice}"}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let s = json_of(&r);
    assert_eq!(jstr(&s, "name"), "alice");
    assert_eq!(jstr(&s, "csrf").len(), 64);
    let (cookie2, _) = session_cookie(&r);
    let cookie2_h = format!("cookie: {cookie2}");
    assert_eq!(
        call(&m, "GET", "/api/v1/whoami", &[&cookie2_h], None).status,
        200
    );
    let out = m.cli(&["token", "revoke", "alice"]).assert_ok();
    assert!(out.stdout.contains("1 web sessions ended"), "{out:?}");
    let r = call(&m, "GET", "/api/v1/whoami", &[&cookie2_h], None);
    assert_eq!(r.status, 401, "{}", r.text());
    // A sign-in from another site is refused.
    let r = call(
        &m,
        "POST",
        "/login",
        &[
            "content-type: application/json",
            "origin: https://evil.example",
        ],
        Some(&format!(r#"{{"token":"{}"}}"#, m.token)),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // The admin token file signs in as the admin.
    let r = call(
        &m,
        "POST",
        "/login",
        &["content-type: application/json"],
        Some(&format!(r#"{{"token":"{}"}}"#, m.token)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jstr(&json_of(&r), "role"), "admin");
}

#[test]
fn a_master_that_is_not_public_refuses_anonymous_reads() {
    let m = Master::start_with(MasterOpts::default().arg("--web-public", "false"));
    let rita = create(&m, "rita", "reader");
    let r = call(&m, "GET", "/api/v1/builds", &[], None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(jstr(&json_of(&r), "code"), "unauthorized");
    assert!(r.text().contains("web_public"), "{}", r.text());
    let r = call(&m, "GET", "/api/v1/builds", &[&bearer(&rita)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    // The CLI with the admin token file reads as before.
    assert_eq!(m.builds().len(), 0);
    // A browser is sent to the sign-in page.
    let r = call(
        &m,
        "GET",
        "/builds?state=failed",
        &["accept: text/html"],
        None,
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/signin?next=%2Fbuilds%3Fstate%3Dfailed")
    );
    // What must stay reachable does.
    assert_eq!(call(&m, "GET", "/healthz", &[], None).status, 200);
    assert_eq!(call(&m, "GET", "/ca.crt", &[], None).status, 200);
    // The sign-in page and its assets, for a browser to sign in with.
    let r = call(
        &m,
        "GET",
        "/signin?next=%2Fbuilds",
        &["accept: text/html"],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("name=\"next\" value=\"/builds\""),
        "{}",
        r.text()
    );
    let r = call(
        &m,
        "POST",
        "/login",
        &["content-type: application/json"],
        Some(&format!(r#"{{"token":"{rita}"}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (cookie, _) = session_cookie(&r);
    let r = call(
        &m,
        "GET",
        "/api/v1/builds",
        &[&format!("cookie: {cookie}")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn every_answer_carries_the_security_headers() {
    let m = Master::start();
    for (path, status) in [
        ("/healthz", 200),
        ("/api/v1/builds", 200),
        ("/api/v1/builds/999", 404),
        ("/no/such/page", 404),
    ] {
        let r = call(&m, "GET", path, &[], None);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        let csp = r.header("content-security-policy").unwrap_or_default();
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(r.header("referrer-policy").as_deref(), Some("same-origin"));
    }
    // A refused write too.
    let r = call(&m, "POST", "/api/v1/builds", &[], Some("{}"));
    assert_eq!(r.status, 401);
    assert!(r.header("content-security-policy").is_some());
}
