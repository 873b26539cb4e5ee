//! Builds from git (issue 9): projects, srpm jobs on a worker (real git,
//! real `rpmbuild -bs` in the sandbox), snapshot and release versions with
//! the version gate, webhooks with real signatures, coalescing, and bad
//! input.

use crate::common::*;
use serde_json::Value;

/// A noarch spec whose tarball comes from upstream (`hello.txt`) and whose
/// second source from the packaging repository.
fn spec(name: &str, version: &str) -> String {
    format!(
        "Name: {name}\nVersion: {version}\nRelease: 1%{{?dist}}\nSummary: built from git\n\
         License: MIT\nBuildArch: noarch\nSource0: https://example.org/%{{name}}-%{{version}}.tar.gz\n\
         Source1: kiln-note.txt\n\n%description\nBuilt from git by Kiln.\n\n\
         %prep\n%setup -q\n\n%build\n\n%install\nmkdir -p %{{buildroot}}/usr/share/{name}\n\
         cp hello.txt %{{buildroot}}/usr/share/{name}/\ncp %{{SOURCE1}} %{{buildroot}}/usr/share/{name}/\n\n\
         %files\n/usr/share/{name}\n"
    )
}

fn src_job(b: &Value) -> Value {
    jobs_of(b)
        .into_iter()
        .find(|j| jstr(j, "arch") == "src")
        .unwrap_or_else(|| panic!("no srpm job (arch src) in {b}"))
}

fn src_log(m: &Master, b: &Value) -> String {
    let job = ju64(&src_job(b), "id").to_string();
    m.cli(&["logs", &job]).assert_ok().stdout
}

fn source(b: &Value) -> &Value {
    b.get("source")
        .filter(|s| s.is_object())
        .unwrap_or_else(|| panic!("no source in {b}"))
}

fn project_build(m: &Master, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["project", "build", name, "--wait", "--json"];
    args.extend_from_slice(extra);
    let out = m.cli_timeout(&args, CLI_WAIT_TIMEOUT);
    out.json()
}

#[test]
fn a_ci_build_from_upstream_and_packaging_then_again_from_the_mirror() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 2);
    let repos = m.scratch.join("repos");
    let mut up = GitRepo::init(&repos.join("upstream"));
    up.commit(&[("hello.txt", "hello 1\n")], "first");
    up.tag("v1.0");
    up.commit(&[("hello.txt", "hello 2\n")], "second");
    let head = up.commit(&[("hello.txt", "hello 3\n")], "third");
    let mut pk = GitRepo::init(&repos.join("packaging"));
    let pk_head = pk.commit(
        &[
            ("kg-hello.spec", &spec("kg-hello", "1.0")),
            ("kiln-note.txt", "from packaging\n"),
        ],
        "spec",
    );
    m.cli(&[
        "project",
        "add",
        "kg-hello",
        "--target",
        "default",
        "--upstream",
        &format!("{}#main", up.url()),
        "--packaging",
        &format!("{}#main", pk.url()),
    ])
    .assert_ok();
    let shown = m.cli_json(&["project", "show", "kg-hello", "--json"]);
    assert_eq!(jstr(&shown, "upstream_ref"), "main", "{shown}");
    assert_eq!(shown["has_secret"], Value::Bool(false), "{shown}");

    let b = project_build(&m, "kg-hello", &[]);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}\n{}", src_log(&m, &b));
    let s = source(&b);
    assert_eq!(jstr(s, "upstream_commit"), head, "{b}");
    assert_eq!(jstr(s, "packaging_commit"), pk_head, "{b}");
    assert_eq!(jstr(s, "ref"), "main", "{b}");
    assert_eq!(jstr(s, "trigger"), "cli", "{b}");
    assert_eq!(jstr(s, "mode"), "ci", "{b}");
    // The snapshot: the spec's version, the committer date of upstream's
    // commit, 2 commits since v1.0, its short id.
    let version = format!("1.0^20260101.030000.2.g{}", &head[..7]);
    assert_eq!(jstr(&b, "evr"), format!("{version}-1"), "{b}");
    assert_eq!(jstr(s, "version"), version, "{b}");
    let rpm = only_artifact(&b, "rpm");
    assert_eq!(
        jstr(&rpm, "nevra"),
        format!("kg-hello-0:{version}-1.noarch"),
        "{b}"
    );
    let made: Vec<Value> = artifacts_of_kind(&b, "srpm")
        .into_iter()
        .filter(|a| jstr(a, "arch") == "src")
        .collect();
    assert_eq!(made.len(), 1, "the srpm job made one SRPM: {b}");
    assert_eq!(jstr(&made[0], "sha256"), jstr(&b, "srpm_sha256"), "{b}");
    // It sorts after the release and before the next one.
    let vercmp = |a: &str, b: &str| m.cli(&["vercmp", a, b]).status.code();
    assert_eq!(vercmp("1.0-1", &format!("{version}-1")), Some(12));
    assert_eq!(vercmp(&format!("{version}-1"), "1.0.1-1"), Some(12));
    let first_log = src_log(&m, &b);
    assert!(
        first_log.contains("mirror created"),
        "the first build clones: {first_log}"
    );

    // The same commits again: the same version, built (CI: >=), and the
    // mirrors are only updated.
    let again = project_build(&m, "kg-hello", &[]);
    assert_eq!(jstr(&again, "state"), "succeeded", "{again}");
    assert_eq!(jstr(&again, "evr"), jstr(&b, "evr"), "{again}");
    let log = src_log(&m, &again);
    assert!(
        log.contains("mirror updated") && !log.contains("mirror created"),
        "a second build of the project must not clone again: {log}"
    );

    // A new upstream commit sorts after every earlier snapshot.
    let newer = up.commit(&[("hello.txt", "hello 4\n")], "fourth");
    let third = project_build(&m, "kg-hello", &[]);
    assert_eq!(jstr(&third, "state"), "succeeded", "{third}");
    assert_eq!(jstr(source(&third), "upstream_commit"), newer);
    assert_eq!(vercmp(&jstr(&b, "evr"), &jstr(&third, "evr")), Some(12));
    // `kiln build show` says where it came from.
    let text = m
        .cli(&["build", "show", &build_id(&third).to_string()])
        .assert_ok()
        .stdout;
    assert!(text.contains(&newer[..12]), "{text}");
}

#[test]
fn a_release_from_a_tag_over_git_daemon_then_the_same_tag_is_skipped() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let base = m.scratch.join("served");
    // Packit style: the spec in upstream.
    let mut up = GitRepo::init(&base.join("kg-rel"));
    up.commit(
        &[
            ("kg-rel.spec", &spec("kg-rel", "1.2")),
            ("hello.txt", "release\n"),
            ("kiln-note.txt", "in upstream\n"),
        ],
        "1.2",
    );
    up.tag("v1.2");
    up.commit(&[("hello.txt", "later\n")], "after the tag");
    up.tag("nightly");
    up.tag("v1.3");
    let daemon = GitDaemon::start(&base, &m.scratch);
    m.cli(&[
        "project",
        "add",
        "kg-rel",
        "--target",
        "default",
        "--upstream",
        &daemon.url("kg-rel"),
        "--spec",
        "kg-rel.spec",
        "--mode",
        "release",
    ])
    .assert_ok();

    let b = project_build(&m, "kg-rel", &["--ref", "v1.2"]);
    assert_eq!(jstr(&b, "state"), "succeeded", "{b}\n{}", src_log(&m, &b));
    assert_eq!(jstr(&b, "evr"), "1.2-1", "{b}");
    assert_eq!(jstr(source(&b), "mode"), "release");
    assert!(source(&b)["packaging_commit"].is_null(), "{b}");

    // The same tag again: not greater, skipped, both versions named.
    let again = project_build(&m, "kg-rel", &["--ref", "v1.2"]);
    assert_eq!(jstr(&again, "state"), "skipped", "{again}");
    assert!(jstr(&again, "reason").contains("1.2-1"), "{again}");
    assert_eq!(
        jobs_of(&again).len(),
        1,
        "only the srpm job ran for a skipped build: {again}"
    );

    // A tag that is not a version, and a tag the spec disagrees with:
    // failed, the first line of why in the build.
    let bad = project_build(&m, "kg-rel", &["--ref", "nightly"]);
    assert_eq!(jstr(&bad, "state"), "failed", "{bad}");
    assert!(jstr(&bad, "reason").contains("not a version"), "{bad}");
    let mismatch = project_build(&m, "kg-rel", &["--ref", "v1.3"]);
    assert_eq!(jstr(&mismatch, "state"), "failed", "{mismatch}");
    let why = jstr(&mismatch, "reason");
    assert!(why.contains("1.3") && why.contains("1.2"), "{mismatch}");
    // Unless the project says the tag wins.
    m.cli(&["project", "edit", "kg-rel", "--tag-wins", "true"])
        .assert_ok();
    let wins = project_build(&m, "kg-rel", &["--ref", "v1.3"]);
    assert_eq!(jstr(&wins, "state"), "succeeded", "{wins}");
    assert_eq!(jstr(&wins, "evr"), "1.3-1", "{wins}");
}

#[test]
fn bad_projects_are_refused_and_a_repository_without_a_spec_fails_clearly() {
    require_build_tools();
    let m = Master::start();
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let mut up = GitRepo::init(&m.scratch.join("nospec"));
    up.commit(&[("hello.txt", "no spec here\n")], "only code");
    let url = up.url();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--upstream".into(), "ftp://example.org/x.git".into()],
            "is not an https://",
        ),
        (
            vec!["--upstream".into(), format!("{url}#--upload-pack=touch")],
            "git would read it as an option",
        ),
        (vec!["--upstream".into(), format!("{url}#a..b")], "`..`"),
        (
            vec![
                "--upstream".into(),
                url.clone(),
                "--spec".into(),
                "../x.spec".into(),
            ],
            "`..`",
        ),
        (
            vec![
                "--upstream".into(),
                url.clone(),
                "--target".into(),
                "nope".into(),
            ],
            "not configured",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["project", "add", "kg-bad", "--target", "default"];
        args.extend(extra.iter().map(String::as_str));
        let out = m.cli(&args);
        assert!(!out.success(), "accepted: {args:?}");
        assert!(
            out.stderr.contains(want),
            "{args:?}: want {want:?} in {}",
            out.stderr
        );
    }
    // The API checks too, whatever the client.
    let body = format!(
        r#"{{"name":"kg-bad","targets":["default"],"upstream":"{url}","upstream_ref":"--upload-pack=x"}}"#
    );
    let r = curl(
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {}", m.token),
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &format!("{}/api/v1/projects", m.api_url),
        ],
        &m.scratch,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("option"), "{}", r.text());
    let listed = m.cli_json(&["project", "ls", "--json"]);
    assert_eq!(listed, Value::Array(vec![]), "nothing stored");

    // A repository without a spec: the build fails, saying so, and nothing
    // is queued after its srpm job.
    m.cli(&[
        "project",
        "add",
        "kg-nospec",
        "--target",
        "default",
        "--upstream",
        &url,
    ])
    .assert_ok();
    let b = project_build(&m, "kg-nospec", &[]);
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    assert!(jstr(&b, "reason").contains("spec"), "{b}");
    assert_eq!(jobs_of(&b).len(), 1, "{b}");
    let text = m
        .cli(&["build", "show", &build_id(&b).to_string()])
        .assert_ok()
        .stdout;
    assert!(text.contains("spec"), "{text}");

    // A repository that is not there: failed, the fetch named.
    let gone = format!("file://{}", m.scratch.join("no-such-repo").display());
    m.cli(&[
        "project",
        "add",
        "kg-gone",
        "--target",
        "default",
        "--upstream",
        &gone,
    ])
    .assert_ok();
    let b = project_build(&m, "kg-gone", &[]);
    assert_eq!(jstr(&b, "state"), "failed", "{b}");
    assert!(jstr(&b, "reason").contains("fetch"), "{b}");
    assert!(
        src_log(&m, &b).contains("no-such-repo"),
        "the log says what failed"
    );
}

/// A GitHub push event's body (the documented field layout, trimmed).
fn github_push(repo_url: &str, git_ref: &str, before: &str, after: &str) -> String {
    serde_json::json!({
        "ref": git_ref,
        "before": before,
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "base_ref": null,
        "compare": "https://github.com/kiln-test/kg-hook/compare/a...b",
        "commits": [{
            "id": after,
            "tree_id": "0000000000000000000000000000000000000001",
            "distinct": true,
            "message": "a change",
            "timestamp": "2026-01-01T02:00:00Z",
            "author": {"name": "Kiln Test", "email": "test@kiln.invalid", "username": "kiln-test"},
            "committer": {"name": "Kiln Test", "email": "test@kiln.invalid", "username": "kiln-test"},
            "added": [], "removed": [], "modified": ["hello.txt"]
        }],
        "head_commit": {"id": after, "message": "a change", "timestamp": "2026-01-01T02:00:00Z"},
        "repository": {
            "id": 1, "name": "kg-hook", "full_name": "kiln-test/kg-hook", "private": false,
            "html_url": repo_url, "clone_url": repo_url, "git_url": repo_url, "ssh_url": repo_url,
            "default_branch": "main"
        },
        "pusher": {"name": "kiln-pusher", "email": "test@kiln.invalid"},
        "sender": {"login": "kiln-pusher", "id": 7, "type": "User"}
    })
    .to_string()
}

/// POST a webhook; returns (status, body).
fn post_hook(m: &Master, forge: &str, headers: &[String], body: &str) -> (u16, Value) {
    let file = m.scratch.join(format!("hook-{}", unique()));
    std::fs::write(&file, body).unwrap();
    let url = format!("{}/hooks/{forge}", m.api_url);
    let data = format!("@{}", file.display());
    let mut args: Vec<&str> = vec!["-X", "POST", "-H", "Content-Type: application/json"];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    args.extend(["--data-binary", &data, &url]);
    let r = curl(&args, &m.scratch);
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

fn github_headers(event: &str, delivery: &str, secret: &str, body: &str) -> Vec<String> {
    vec![
        format!("X-GitHub-Event: {event}"),
        format!("X-GitHub-Delivery: {delivery}"),
        format!(
            "X-Hub-Signature-256: sha256={}",
            kiln_core::sig::hmac_sha256_hex(secret.as_bytes(), body.as_bytes())
        ),
    ]
}

#[test]
fn webhooks_are_verified_deduplicated_matched_and_coalesced() {
    require_build_tools();
    let m = Master::start();
    let mut up = GitRepo::init(&m.scratch.join("kg-hook"));
    let first = up.commit(
        &[
            ("kg-hook.spec", &spec("kg-hook", "2.0")),
            ("hello.txt", "one\n"),
            ("kiln-note.txt", "note\n"),
        ],
        "one",
    );
    let secret = "s3cret-for-kg-hook";
    let secret_file = m.scratch.join("hook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    m.cli(&[
        "project",
        "add",
        "kg-hook",
        "--target",
        "default",
        "--upstream",
        &format!("{}#main", up.url()),
        "--secret-file",
        secret_file.to_str().unwrap(),
    ])
    .assert_ok();
    let hooks = m.cli(&["project", "hooks", "kg-hook"]).assert_ok().stdout;
    assert!(
        hooks.contains(&format!("{}/hooks/github", m.api_url)) && hooks.contains(secret),
        "{hooks}"
    );
    let zero = "0".repeat(40);
    let count = || m.builds().len();

    // A ping: 200, nothing queued.
    let ping = serde_json::json!({"zen": "Keep it logically awesome.", "hook_id": 1,
        "repository": {"clone_url": up.url(), "html_url": up.url()}})
    .to_string();
    let (st, v) = post_hook(
        &m,
        "github",
        &github_headers("ping", "d-ping", secret, &ping),
        &ping,
    );
    assert_eq!(st, 200, "{v}");
    assert!(jstr(&v, "message").contains("kg-hook"), "{v}");

    // A bad signature: 401, nothing queued. No signature: 401 naming the
    // header.
    let body = github_push(&up.url(), "refs/heads/main", &zero, &first);
    let (st, v) = post_hook(
        &m,
        "github",
        &github_headers("push", "d-1", "wrong-secret", &body),
        &body,
    );
    assert_eq!(st, 401, "{v}");
    let (st, v) = post_hook(&m, "github", &["X-GitHub-Event: push".into()], &body);
    assert_eq!(st, 401, "{v}");
    assert!(v.to_string().contains("X-Hub-Signature-256"), "{v}");
    assert_eq!(count(), 0);

    // A body over hook_max_bytes: 413 before anything is read into it.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(3 << 20));
    let (st, _) = post_hook(
        &m,
        "github",
        &github_headers("push", "d-big", secret, &big),
        &big,
    );
    assert_eq!(st, 413);

    // A branch the project does not watch: 202 with the reason.
    let other = github_push(&up.url(), "refs/heads/feature", &zero, &first);
    let (st, v) = post_hook(
        &m,
        "github",
        &github_headers("push", "d-f", secret, &other),
        &other,
    );
    assert_eq!(st, 202, "{v}");
    assert!(jstr(&v, "message").contains("not watched"), "{v}");
    assert_eq!(count(), 0);

    // With no worker yet, three pushes in a burst: the queued builds are
    // replaced by the newest.
    let second = up.commit(&[("hello.txt", "two\n")], "two");
    let third = up.commit(&[("hello.txt", "three\n")], "three");
    let mut ids = Vec::new();
    for (i, c) in [&first, &second, &third].iter().enumerate() {
        let body = github_push(&up.url(), "refs/heads/main", &zero, c);
        let (st, v) = post_hook(
            &m,
            "github",
            &github_headers("push", &format!("d-push-{i}"), secret, &body),
            &body,
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(jstr(&v, "status"), "queued", "{v}");
        ids.push(jarr(&v, "builds")[0].as_u64().unwrap());
    }
    for old in &ids[..2] {
        let b = m.build(*old);
        assert_eq!(jstr(&b, "state"), "canceled", "{b}");
        assert!(jstr(&b, "reason").contains("superseded by build"), "{b}");
    }
    // A redelivery starts nothing new.
    let body = github_push(&up.url(), "refs/heads/main", &zero, &third);
    let (st, v) = post_hook(
        &m,
        "github",
        &github_headers("push", "d-push-2", secret, &body),
        &body,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(jstr(&v, "status"), "duplicate", "{v}");
    assert_eq!(count(), 3);

    // GitLab's token and Gitea's signature are checked the same way.
    let gl = serde_json::json!({"object_kind": "push", "ref": "refs/heads/feature", "before": zero,
        "after": first, "checkout_sha": first, "user_username": "kiln-pusher",
        "project": {"git_http_url": up.url(), "web_url": up.url()},
        "repository": {"url": up.url(), "git_http_url": up.url()}, "commits": []})
    .to_string();
    let (st, _) = post_hook(
        &m,
        "gitlab",
        &[
            "X-Gitlab-Event: Push Hook".into(),
            "X-Gitlab-Token: nope".into(),
        ],
        &gl,
    );
    assert_eq!(st, 401);
    let (st, v) = post_hook(
        &m,
        "gitlab",
        &[
            "X-Gitlab-Event: Push Hook".into(),
            format!("X-Gitlab-Token: {secret}"),
        ],
        &gl,
    );
    assert_eq!(st, 202, "{v}");
    let gt = serde_json::json!({"ref": "refs/heads/feature", "before": zero, "after": first,
        "repository": {"clone_url": up.url(), "html_url": up.url()},
        "pusher": {"login": "kiln-pusher"}, "commits": []})
    .to_string();
    let sig = kiln_core::sig::hmac_sha256_hex(secret.as_bytes(), gt.as_bytes());
    let (st, v) = post_hook(
        &m,
        "forgejo",
        &[
            "X-Forgejo-Event: push".into(),
            format!("X-Forgejo-Signature: {sig}"),
        ],
        &gt,
    );
    assert_eq!(st, 202, "{v}");
    assert_eq!(count(), 3);

    // A worker arrives: the newest push is built, with its commit and
    // its delivery recorded.
    let _w = m.start_worker("a", "x86_64,noarch", "default", 1);
    let b = m.wait_build_succeeded(ids[2]);
    let s = source(&b);
    assert_eq!(jstr(s, "upstream_commit"), third, "{b}");
    assert_eq!(jstr(s, "trigger"), "webhook", "{b}");
    assert!(jstr(s, "delivery").contains("d-push-2"), "{b}");
    assert_eq!(jstr(s, "sender"), "kiln-pusher", "{b}");
}

#[test]
fn projects_from_the_config_file_are_stored_with_their_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("p.secret");
    std::fs::write(&secret, "from-a-file-1234\n").unwrap();
    let config = format!(
        "[[target]]\nname = \"el9\"\narches = [\"x86_64\"]\n\n\
         [[project]]\nname = \"kg-conf\"\ntargets = [\"el9\"]\n\
         upstream = \"https://git.example.org/kg-conf.git\"\nupstream_ref = \"main\"\n\
         mode = \"release\"\nsecret_file = \"{}\"\n",
        secret.display()
    );
    let m = Master::start_with(MasterOpts::default().config(&config));
    let p = m.cli_json(&["project", "show", "kg-conf", "--json"]);
    assert_eq!(jstr(&p, "mode"), "release", "{p}");
    assert_eq!(p["has_secret"], Value::Bool(true), "{p}");
    assert!(
        !p.to_string().contains("from-a-file"),
        "the secret is never shown: {p}"
    );
    let hooks = m.cli_json(&["project", "hooks", "kg-conf", "--json"]);
    assert_eq!(jstr(&hooks, "secret"), "from-a-file-1234", "{hooks}");

    // A mistake in a [[project]] table stops the master with its name.
    let bad = config.replace("mode = \"release\"", "mode = \"nightly\"");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = std::process::Command::new(kiln())
        .args(["master", "--print-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nightly"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
