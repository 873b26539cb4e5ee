//! Signatures, delivery ids and the parsing of the forges' bodies, on
//! fixture bodies written after the vendors' documented layouts.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use kiln_core::sig::hmac_sha256_hex;

use super::*;

const SECRET: &[u8] = b"It's a Secret to Everybody";

const GITHUB_PUSH: &str = include_str!("fixtures/github_push.json");
const GITHUB_TAG_PUSH: &str = include_str!("fixtures/github_tag_push.json");
const GITHUB_DELETE: &str = include_str!("fixtures/github_delete.json");
const GITHUB_PING: &str = include_str!("fixtures/github_ping.json");
const GITLAB_PUSH: &str = include_str!("fixtures/gitlab_push.json");
const GITLAB_TAG_PUSH: &str = include_str!("fixtures/gitlab_tag_push.json");
const GITLAB_DELETE: &str = include_str!("fixtures/gitlab_delete.json");
const GITEA_PUSH: &str = include_str!("fixtures/gitea_push.json");
const GITEA_CREATE: &str = include_str!("fixtures/gitea_create.json");
const FORGEJO_TAG_PUSH: &str = include_str!("fixtures/forgejo_tag_push.json");

const ALL_FIXTURES: [&str; 10] = [
    GITHUB_PUSH,
    GITHUB_TAG_PUSH,
    GITHUB_DELETE,
    GITHUB_PING,
    GITLAB_PUSH,
    GITLAB_TAG_PUSH,
    GITLAB_DELETE,
    GITEA_PUSH,
    GITEA_CREATE,
    FORGEJO_TAG_PUSH,
];

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn github_event(event: &str) -> HeaderMap {
    headers(&[
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("Content-Type", "application/json"),
    ])
}

fn push(ev: Result<HookEvent, HookError>) -> Push {
    match ev {
        Ok(HookEvent::Push(p)) => p,
        other => panic!("not a push: {other:?}"),
    }
}

fn malformed(ev: Result<HookEvent, HookError>) -> String {
    match ev {
        Err(HookError::Malformed(m)) => m,
        other => panic!("not Malformed: {other:?}"),
    }
}

#[test]
fn forges_by_path() {
    assert_eq!(Forge::from_path("github"), Some(Forge::Github));
    assert_eq!(Forge::from_path("gitlab"), Some(Forge::Gitlab));
    assert_eq!(Forge::from_path("gitea"), Some(Forge::Gitea));
    assert_eq!(Forge::from_path("forgejo"), Some(Forge::Gitea));
    for bad in ["", "GitHub", "bitbucket", "github/", "gogs"] {
        assert_eq!(Forge::from_path(bad), None, "{bad}");
    }
    for f in [Forge::Github, Forge::Gitlab, Forge::Gitea] {
        assert_eq!(Forge::from_path(f.as_str()), Some(f));
    }
    assert_eq!(signature_header(Forge::Github), "X-Hub-Signature-256");
    assert_eq!(signature_header(Forge::Gitlab), "X-Gitlab-Token");
    assert_eq!(signature_header(Forge::Gitea), "X-Gitea-Signature");
}

// ---- signatures ----

#[test]
fn github_signature_verifies_over_the_raw_body() {
    let body = GITHUB_PUSH.as_bytes();
    let sig = hmac_sha256_hex(SECRET, body);
    let good = headers(&[("X-Hub-Signature-256", &format!("sha256={sig}"))]);
    assert_eq!(verify(Forge::Github, &good, body, SECRET), Ok(()));
    assert!(has_signature(Forge::Github, &good));

    let upper = headers(&[(
        "x-hub-signature-256",
        &format!("sha256={}", sig.to_uppercase()),
    )]);
    assert_eq!(verify(Forge::Github, &upper, body, SECRET), Ok(()));

    // A wrong secret, a tampered body, an empty secret.
    assert_eq!(
        verify(Forge::Github, &good, body, b"another secret"),
        Err(HookError::BadSignature)
    );
    let mut tampered = body.to_vec();
    tampered[100] ^= 1;
    assert_eq!(
        verify(Forge::Github, &good, &tampered, SECRET),
        Err(HookError::BadSignature)
    );
    let mut longer = body.to_vec();
    longer.push(b'\n');
    assert_eq!(
        verify(Forge::Github, &good, &longer, SECRET),
        Err(HookError::BadSignature)
    );
    let unsigned_key = headers(&[(
        "X-Hub-Signature-256",
        &format!("sha256={}", hmac_sha256_hex(b"", body)),
    )]);
    assert_eq!(
        verify(Forge::Github, &unsigned_key, body, b""),
        Err(HookError::BadSignature)
    );
}

#[test]
fn github_signature_header_missing_or_in_another_format() {
    let body = GITHUB_PUSH.as_bytes();
    let sig = hmac_sha256_hex(SECRET, body);
    // Nothing, or only the SHA-1 header.
    for h in [
        headers(&[]),
        headers(&[(
            "X-Hub-Signature",
            "sha1=0123456789abcdef0123456789abcdef01234567",
        )]),
        headers(&[("X-Gitea-Signature", &sig)]),
    ] {
        assert_eq!(
            verify(Forge::Github, &h, body, SECRET),
            Err(HookError::MissingSignature("X-Hub-Signature-256"))
        );
        assert!(!has_signature(Forge::Github, &h));
    }
    let e = verify(Forge::Github, &headers(&[]), body, SECRET).unwrap_err();
    assert!(e.to_string().contains("missing X-Hub-Signature-256"), "{e}");
    // A SHA-1 signature, no prefix, a truncated or non-hex one, twice.
    let sha1 = format!("sha1={}", &sig[..40]);
    let short = format!("sha256={}", &sig[..62]);
    let mixed = format!("sha256={sig}x");
    for v in [
        sha1.as_str(),
        "sha1=",
        sig.as_str(),
        short.as_str(),
        mixed.as_str(),
        "sha256=",
        "sha256=not hex at all",
        "",
    ] {
        let h = headers(&[("X-Hub-Signature-256", v)]);
        assert_eq!(
            verify(Forge::Github, &h, body, SECRET),
            Err(HookError::BadSignature),
            "{v}"
        );
    }
    let twice = headers(&[
        ("X-Hub-Signature-256", &format!("sha256={sig}")),
        ("X-Hub-Signature-256", &format!("sha256={sig}")),
    ]);
    assert_eq!(
        verify(Forge::Github, &twice, body, SECRET),
        Err(HookError::BadSignature)
    );
}

#[test]
fn gitlab_token_is_compared_with_the_secret() {
    let body = GITLAB_PUSH.as_bytes();
    let h = headers(&[("X-Gitlab-Token", "It's a Secret to Everybody")]);
    assert_eq!(verify(Forge::Gitlab, &h, body, SECRET), Ok(()));
    // The token is not a signature: any body goes with it.
    assert_eq!(verify(Forge::Gitlab, &h, b"{}", SECRET), Ok(()));
    assert_eq!(
        verify(Forge::Gitlab, &h, body, b"It's a Secret"),
        Err(HookError::BadSignature)
    );
    for wrong in [
        "It's a Secret",
        "It's a Secret to Everybody!",
        "it's a secret to everybody",
        "",
    ] {
        let h = headers(&[("X-Gitlab-Token", wrong)]);
        assert_eq!(
            verify(Forge::Gitlab, &h, body, SECRET),
            Err(HookError::BadSignature),
            "{wrong}"
        );
    }
    assert_eq!(
        verify(
            Forge::Gitlab,
            &headers(&[("X-Gitlab-Token", "")]),
            body,
            b""
        ),
        Err(HookError::BadSignature)
    );
    assert_eq!(
        verify(Forge::Gitlab, &headers(&[]), body, SECRET),
        Err(HookError::MissingSignature("X-Gitlab-Token"))
    );
    // Not a byte more than the token: a GitHub signature is no token.
    let gh = headers(&[(
        "X-Hub-Signature-256",
        &format!("sha256={}", hmac_sha256_hex(SECRET, body)),
    )]);
    assert_eq!(
        verify(Forge::Gitlab, &gh, body, SECRET),
        Err(HookError::MissingSignature("X-Gitlab-Token"))
    );
}

#[test]
fn gitea_and_forgejo_signatures_verify() {
    let body = GITEA_PUSH.as_bytes();
    let sig = hmac_sha256_hex(SECRET, body);
    let other = hmac_sha256_hex(b"another secret", body);
    for h in [
        headers(&[("X-Gitea-Signature", &sig)]),
        headers(&[("X-Forgejo-Signature", &sig)]),
        headers(&[("X-Gitea-Signature", &sig), ("X-Forgejo-Signature", &sig)]),
        headers(&[("X-Gitea-Signature", &sig.to_uppercase())]),
        headers(&[("X-Gitea-Signature", &sig), ("X-Gogs-Signature", &other)]),
    ] {
        assert_eq!(verify(Forge::Gitea, &h, body, SECRET), Ok(()), "{h:?}");
        assert!(has_signature(Forge::Gitea, &h));
    }
    for h in [
        headers(&[("X-Gitea-Signature", &other)]),
        headers(&[("X-Forgejo-Signature", &other)]),
        headers(&[("X-Gitea-Signature", &sig), ("X-Forgejo-Signature", &other)]),
        headers(&[("X-Gitea-Signature", &other), ("X-Forgejo-Signature", &sig)]),
        headers(&[("X-Gitea-Signature", &format!("sha256={sig}"))]),
        headers(&[("X-Gitea-Signature", "")]),
        headers(&[("X-Gitea-Signature", &sig), ("X-Gitea-Signature", &sig)]),
    ] {
        assert_eq!(
            verify(Forge::Gitea, &h, body, SECRET),
            Err(HookError::BadSignature),
            "{h:?}"
        );
    }
    let good = headers(&[("X-Gitea-Signature", &sig)]);
    assert_eq!(
        verify(Forge::Gitea, &good, &body[1..], SECRET),
        Err(HookError::BadSignature)
    );
    assert_eq!(
        verify(Forge::Gitea, &good, body, b""),
        Err(HookError::BadSignature)
    );
    for h in [
        headers(&[]),
        headers(&[("X-Gogs-Signature", &sig)]),
        headers(&[("X-Hub-Signature-256", &format!("sha256={sig}"))]),
    ] {
        assert_eq!(
            verify(Forge::Gitea, &h, body, SECRET),
            Err(HookError::MissingSignature("X-Gitea-Signature"))
        );
    }
}

#[test]
fn the_caller_finds_the_project_whose_secret_signed() {
    // What the webhook handler does: try each project's secret, parse
    // once, match the repository by key.
    let body = GITHUB_PUSH.as_bytes();
    let h = headers(&[
        ("X-GitHub-Event", "push"),
        (
            "X-Hub-Signature-256",
            &format!("sha256={}", hmac_sha256_hex(b"secret-b", body)),
        ),
    ]);
    let projects = [
        ("a", &b"secret-a"[..], "https://github.com/kiln-org/other"),
        ("none", &b""[..], "https://github.com/Kiln-Org/Hello-Rpm"),
        ("b", &b"secret-b"[..], "git@github.com:kiln-org/hello-rpm"),
    ];
    let signed: Vec<_> = projects
        .iter()
        .filter(|(_, s, _)| verify(Forge::Github, &h, body, s).is_ok())
        .collect();
    assert_eq!(signed.len(), 1);
    let (name, _, url) = signed[0];
    assert_eq!(*name, "b");
    let p = push(parse(Forge::Github, &h, body));
    let key = repo_key(url).unwrap();
    assert!(p
        .repo_urls
        .iter()
        .any(|u| repo_key(u).as_deref() == Some(&key)));
}

// ---- delivery ids and event names ----

#[test]
fn delivery_ids_by_forge() {
    let h = headers(&[
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ("Idempotency-Key", "0f4c3a2e-8d1b-4b6a-9e57-3c2d1e0f9a8b"),
        (
            "X-Gitlab-Event-UUID",
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
        ),
    ]);
    assert_eq!(
        delivery_id(Forge::Github, &h).as_deref(),
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
    );
    assert_eq!(
        delivery_id(Forge::Gitea, &h).as_deref(),
        Some("f6266f16-1bf3-46a5-9ea4-602e06ead473")
    );
    assert_eq!(
        delivery_id(Forge::Gitlab, &h).as_deref(),
        Some("0f4c3a2e-8d1b-4b6a-9e57-3c2d1e0f9a8b")
    );
    let h = headers(&[(
        "X-Gitlab-Event-UUID",
        "13792a34-cac6-4fda-95a8-c58e00a3954e",
    )]);
    assert_eq!(
        delivery_id(Forge::Gitlab, &h).as_deref(),
        Some("13792a34-cac6-4fda-95a8-c58e00a3954e")
    );
    assert_eq!(delivery_id(Forge::Github, &h), None);
    let h = headers(&[("X-Forgejo-Delivery", "d0c4a1e2-5b6f-4c3d-8e9f-0a1b2c3d4e5f")]);
    assert_eq!(
        delivery_id(Forge::Gitea, &h).as_deref(),
        Some("d0c4a1e2-5b6f-4c3d-8e9f-0a1b2c3d4e5f")
    );
    // Bounded and printable.
    let max = "a".repeat(200);
    let over = "a".repeat(201);
    assert_eq!(
        delivery_id(Forge::Github, &headers(&[("X-GitHub-Delivery", &max)])),
        Some(max.clone())
    );
    for bad in [over.as_str(), "", "two words", "tab\there"] {
        let h = headers(&[("X-GitHub-Delivery", bad)]);
        assert_eq!(delivery_id(Forge::Github, &h), None, "{bad:?}");
    }
    let mut h = HeaderMap::new();
    h.insert(
        "x-github-delivery",
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    );
    assert_eq!(delivery_id(Forge::Github, &h), None);
    let twice = headers(&[("X-GitHub-Delivery", "a"), ("X-GitHub-Delivery", "b")]);
    assert_eq!(delivery_id(Forge::Github, &twice), None);
}

#[test]
fn event_names_by_forge() {
    let h = headers(&[
        ("X-GitHub-Event", "push"),
        ("X-Gitlab-Event", "Tag Push Hook"),
        ("X-Gitea-Event", "push"),
    ]);
    assert_eq!(event_name(Forge::Github, &h).as_deref(), Some("push"));
    assert_eq!(
        event_name(Forge::Gitlab, &h).as_deref(),
        Some("Tag Push Hook")
    );
    assert_eq!(event_name(Forge::Gitea, &h).as_deref(), Some("push"));
    let h = headers(&[("X-Forgejo-Event", "push")]);
    assert_eq!(event_name(Forge::Gitea, &h).as_deref(), Some("push"));
    let h = headers(&[("X-Gogs-Event", "push")]);
    assert_eq!(event_name(Forge::Gitea, &h).as_deref(), Some("push"));
    assert_eq!(event_name(Forge::Github, &h), None);
    let long = "x".repeat(101);
    assert_eq!(
        event_name(Forge::Github, &headers(&[("X-GitHub-Event", &long)])),
        None
    );
}

// ---- GitHub bodies ----

#[test]
fn github_branch_push() {
    let p = push(parse(
        Forge::Github,
        &github_event("push"),
        GITHUB_PUSH.as_bytes(),
    ));
    assert_eq!(p.git_ref, "refs/heads/main");
    assert_eq!(p.branch(), Some("main"));
    assert_eq!(p.tag(), None);
    assert_eq!(p.after, "e83c5163316f89bfbde7d9ab23ca2e25604af290");
    assert!(!p.deleted);
    assert_eq!(p.sender.as_deref(), Some("octo-packager"));
    assert_eq!(
        p.repo_urls,
        [
            "https://github.com/Kiln-Org/Hello-Rpm.git",
            "git@github.com:Kiln-Org/Hello-Rpm.git",
            "https://github.com/Kiln-Org/Hello-Rpm",
            "git://github.com/Kiln-Org/Hello-Rpm.git",
        ]
    );
    // The free-form homepage is not the repository.
    assert!(!p.repo_urls.iter().any(|u| u.contains("kiln.example.org")));
    for u in &p.repo_urls {
        assert_eq!(
            repo_key(u).as_deref(),
            Some("github.com/kiln-org/hello-rpm"),
            "{u}"
        );
    }
}

#[test]
fn github_tag_push_takes_the_commit_of_an_annotated_tag() {
    let p = push(parse(
        Forge::Github,
        &github_event("push"),
        GITHUB_TAG_PUSH.as_bytes(),
    ));
    assert_eq!(p.git_ref, "refs/tags/v1.3.0");
    assert_eq!(p.tag(), Some("v1.3.0"));
    assert_eq!(p.branch(), None);
    // `after` is the tag object; head_commit the commit it points to.
    assert_eq!(p.after, "e83c5163316f89bfbde7d9ab23ca2e25604af290");
    assert!(!p.deleted);
    assert_eq!(p.sender.as_deref(), Some("octo-packager"));
    assert_eq!(p.repo_urls.len(), 4);
}

#[test]
fn github_branch_deletion() {
    let p = push(parse(
        Forge::Github,
        &github_event("push"),
        GITHUB_DELETE.as_bytes(),
    ));
    assert!(p.deleted);
    assert_eq!(p.branch(), Some("feature/man-page"));
    assert_eq!(p.after, "0".repeat(40));
    // `deleted: true` alone is enough, with or without `after`.
    for body in [
        r#"{"ref":"refs/heads/x","deleted":true}"#,
        r#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000"}"#,
        r#"{"ref":"refs/heads/x","deleted":true,"after":"e83c5163316f89bfbde7d9ab23ca2e25604af290"}"#,
    ] {
        let p = push(parse(Forge::Github, &github_event("push"), body.as_bytes()));
        assert!(p.deleted, "{body}");
    }
}

#[test]
fn github_ping_names_its_repository() {
    let ev = parse(Forge::Github, &github_event("ping"), GITHUB_PING.as_bytes()).unwrap();
    // In other events than push, `url` is the API's.
    let want = [
        "https://github.com/Kiln-Org/Hello-Rpm.git",
        "git@github.com:Kiln-Org/Hello-Rpm.git",
        "https://github.com/Kiln-Org/Hello-Rpm",
        "git://github.com/Kiln-Org/Hello-Rpm.git",
        "https://api.github.com/repos/Kiln-Org/Hello-Rpm",
    ];
    assert_eq!(
        ev,
        HookEvent::Ping {
            repo_urls: want.iter().map(|s| s.to_string()).collect()
        }
    );
    // An organization's hook: no repository.
    let ev = parse(
        Forge::Github,
        &github_event("ping"),
        br#"{"zen":"Keep it logically awesome.","hook_id":1,"hook":{"type":"Organization"}}"#,
    );
    assert_eq!(ev, Ok(HookEvent::Ping { repo_urls: vec![] }));
}

#[test]
fn github_other_events_are_named() {
    let ev = parse(
        Forge::Github,
        &github_event("issues"),
        br#"{"action":"opened","issue":{"number":1}}"#,
    );
    assert_eq!(
        ev,
        Ok(HookEvent::Other {
            event: "issues".into()
        })
    );
    // A push body sent as another event is not read as a push.
    let ev = parse(
        Forge::Github,
        &github_event("pull_request"),
        GITHUB_PUSH.as_bytes(),
    );
    assert_eq!(
        ev,
        Ok(HookEvent::Other {
            event: "pull_request".into()
        })
    );
}

// ---- GitLab bodies ----

fn gitlab_event(event: &str) -> HeaderMap {
    headers(&[
        ("X-Gitlab-Event", event),
        ("X-Gitlab-Token", "It's a Secret to Everybody"),
        ("Content-Type", "application/json"),
    ])
}

#[test]
fn gitlab_push_hook() {
    let p = push(parse(
        Forge::Gitlab,
        &gitlab_event("Push Hook"),
        GITLAB_PUSH.as_bytes(),
    ));
    assert_eq!(p.git_ref, "refs/heads/main");
    assert_eq!(p.branch(), Some("main"));
    assert_eq!(p.after, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert!(!p.deleted);
    assert_eq!(p.sender.as_deref(), Some("jmallach"));
    assert_eq!(
        p.repo_urls,
        [
            "https://gitlab.example.com/Packaging/Tools/hello-rpm.git",
            "git@gitlab.example.com:Packaging/Tools/hello-rpm.git",
            "https://gitlab.example.com/Packaging/Tools/hello-rpm",
        ]
    );
    for u in &p.repo_urls {
        assert_eq!(
            repo_key(u).as_deref(),
            Some("gitlab.example.com/packaging/tools/hello-rpm"),
            "{u}"
        );
    }
}

#[test]
fn gitlab_tag_push_hook_takes_checkout_sha() {
    let p = push(parse(
        Forge::Gitlab,
        &gitlab_event("Tag Push Hook"),
        GITLAB_TAG_PUSH.as_bytes(),
    ));
    assert_eq!(p.tag(), Some("v2.0.1"));
    assert_eq!(p.after, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert!(!p.deleted);
    assert_eq!(p.sender.as_deref(), Some("jmallach"));
    assert_eq!(p.repo_urls.len(), 3);
}

#[test]
fn gitlab_deletion_and_object_kind() {
    let p = push(parse(
        Forge::Gitlab,
        &gitlab_event("Push Hook"),
        GITLAB_DELETE.as_bytes(),
    ));
    assert!(p.deleted);
    assert_eq!(p.branch(), Some("wip/old-spec"));
    assert_eq!(p.after, "0".repeat(40));
    // The header and the body disagree.
    let m = malformed(parse(
        Forge::Gitlab,
        &gitlab_event("Push Hook"),
        GITLAB_TAG_PUSH.as_bytes(),
    ));
    assert!(m.contains("object_kind"), "{m}");
    let m = malformed(parse(
        Forge::Gitlab,
        &gitlab_event("Tag Push Hook"),
        GITLAB_PUSH.as_bytes(),
    ));
    assert!(m.contains("object_kind"), "{m}");
    // The user's display name when there is no username.
    let p = push(parse(
        Forge::Gitlab,
        &gitlab_event("Push Hook"),
        br#"{"object_kind":"push","ref":"refs/heads/main","after":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","user_name":"Jordi Mallach"}"#,
    ));
    assert_eq!(p.sender.as_deref(), Some("Jordi Mallach"));
    assert!(p.repo_urls.is_empty());
}

#[test]
fn gitlab_other_hooks_are_ignored() {
    for event in ["System Hook", "Merge Request Hook", "Pipeline Hook"] {
        assert_eq!(
            parse(Forge::Gitlab, &gitlab_event(event), GITLAB_PUSH.as_bytes()),
            Ok(HookEvent::Other {
                event: event.into()
            })
        );
    }
}

// ---- Gitea and Forgejo bodies ----

#[test]
fn gitea_push() {
    let h = headers(&[
        ("X-Gitea-Event", "push"),
        ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
    ]);
    let p = push(parse(Forge::Gitea, &h, GITEA_PUSH.as_bytes()));
    assert_eq!(p.branch(), Some("main"));
    assert_eq!(p.after, "bffeb74224043ba2feb48d137756c8a9331c449a");
    assert!(!p.deleted);
    assert_eq!(p.sender.as_deref(), Some("mkoeppe"));
    assert_eq!(
        p.repo_urls,
        [
            "https://codeberg.example.net/rpm-team/hello-rpm.git",
            "ssh://git@codeberg.example.net:2222/rpm-team/hello-rpm.git",
            "https://codeberg.example.net/rpm-team/hello-rpm",
        ]
    );
    for u in &p.repo_urls {
        assert_eq!(
            repo_key(u).as_deref(),
            Some("codeberg.example.net/rpm-team/hello-rpm"),
            "{u}"
        );
    }
}

#[test]
fn forgejo_tag_push_and_ignored_events() {
    let h = headers(&[
        ("X-Forgejo-Event", "push"),
        ("X-Forgejo-Delivery", "d0c4a1e2-5b6f-4c3d-8e9f-0a1b2c3d4e5f"),
    ]);
    let p = push(parse(Forge::Gitea, &h, FORGEJO_TAG_PUSH.as_bytes()));
    assert_eq!(p.tag(), Some("v0.9.4"));
    assert_eq!(p.after, "bffeb74224043ba2feb48d137756c8a9331c449a");
    assert!(!p.deleted);
    assert_eq!(p.sender.as_deref(), Some("mkoeppe"));
    assert_eq!(p.repo_urls.len(), 3);

    for event in ["create", "delete", "issues"] {
        let h = headers(&[("X-Gitea-Event", event)]);
        assert_eq!(
            parse(Forge::Gitea, &h, GITEA_CREATE.as_bytes()),
            Ok(HookEvent::Other {
                event: event.into()
            })
        );
    }
    // A branch deleted by a push.
    let h = headers(&[("X-Gitea-Event", "push")]);
    let p = push(parse(
        Forge::Gitea,
        &h,
        br#"{"ref":"refs/heads/old","before":"bffeb74224043ba2feb48d137756c8a9331c449a","after":"0000000000000000000000000000000000000000","pusher":{"username":"mkoeppe"}}"#,
    ));
    assert!(p.deleted);
    assert_eq!(p.sender.as_deref(), Some("mkoeppe"));
}

// ---- bad bodies ----

#[test]
fn form_encoded_bodies_are_refused_with_the_fix() {
    let m = malformed(parse(
        Forge::Github,
        &github_event("push"),
        b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D",
    ));
    assert!(m.contains("application/json"), "{m}");
    let h = headers(&[
        ("X-GitHub-Event", "push"),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ]);
    let m = malformed(parse(Forge::Github, &h, GITHUB_PUSH.as_bytes()));
    assert!(m.contains("content type must be application/json"), "{m}");
}

#[test]
fn a_missing_event_header_is_said() {
    let m = malformed(parse(Forge::Github, &headers(&[]), GITHUB_PUSH.as_bytes()));
    assert!(m.contains("X-GitHub-Event"), "{m}");
    let m = malformed(parse(Forge::Gitlab, &headers(&[]), GITLAB_PUSH.as_bytes()));
    assert!(m.contains("X-Gitlab-Event"), "{m}");
    let m = malformed(parse(Forge::Gitea, &headers(&[]), GITEA_PUSH.as_bytes()));
    assert!(m.contains("X-Gitea-Event"), "{m}");
}

/// The push events of the three forges, for the bad-body tests.
fn push_events() -> [(Forge, HeaderMap); 3] {
    [
        (Forge::Github, github_event("push")),
        (Forge::Gitlab, gitlab_event("Push Hook")),
        (Forge::Gitea, headers(&[("X-Gitea-Event", "push")])),
    ]
}

#[test]
fn malformed_bodies_say_what_is_wrong() {
    let deep_array = "[".repeat(1 << 20);
    let deep_ref = format!(r#"{{"ref":{}"#, "[".repeat(1 << 20));
    let deep_repo = format!(
        r#"{{"ref":"refs/heads/main","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290","repository":{}}}"#,
        "{\"a\":".repeat(1 << 18)
    );
    let cases: Vec<(&[u8], &str)> = vec![
        (b"", "empty body"),
        (b"  \n", "empty body"),
        (b"[]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"\"refs/heads/main\"", "not a JSON object"),
        (deep_array.as_bytes(), "not a JSON object"),
        (b"{}", "without `ref`"),
        (br#"{"ref":null}"#, "without `ref`"),
        (br#"{"ref":5}"#, "`ref` must be a string, not a number"),
        (
            br#"{"ref":["refs/heads/main"]}"#,
            "`ref` must be a string, not an array",
        ),
        (
            br#"{"ref":"main","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290"}"#,
            "not a full ref",
        ),
        (
            br#"{"ref":"refs/heads/../../x","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290"}"#,
            "git ref",
        ),
        (
            br#"{"ref":"refs/heads/a b","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290"}"#,
            "git ref",
        ),
        (br#"{"ref":"refs/heads/main"}"#, "without `after`"),
        (
            br#"{"ref":"refs/heads/main","after":"HEAD"}"#,
            "not a full commit id",
        ),
        (
            br#"{"ref":"refs/heads/main","after":"e83c516"}"#,
            "not a full commit id",
        ),
        (
            br#"{"ref":"refs/heads/main","after":17}"#,
            "`after` must be a string",
        ),
        (
            br#"{"ref":"refs/heads/main","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290""#,
            "EOF",
        ),
        (br#"{"ref":"refs/heads/main","#, "EOF"),
        (br#"{"ref":"refs/heads/main" "after":"x"}"#, "expected"),
        (b"{\"ref\":\"refs/heads/m\xffin\"}", "invalid unicode"),
        (deep_ref.as_bytes(), "recursion limit"),
        (deep_repo.as_bytes(), "recursion limit"),
    ];
    for (forge, h) in push_events() {
        for (body, want) in &cases {
            let m = malformed(parse(forge, &h, body));
            assert!(
                m.contains(want),
                "{forge}: {:?}: {m}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
        }
    }
    // GitHub's head_commit must be a commit id when given.
    let m = malformed(parse(
        Forge::Github,
        &github_event("push"),
        br#"{"ref":"refs/heads/main","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290","head_commit":{"id":"zz"}}"#,
    ));
    assert!(m.contains("head_commit.id"), "{m}");
    let m = malformed(parse(
        Forge::Github,
        &github_event("push"),
        br#"{"ref":"refs/heads/main","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290","deleted":"no"}"#,
    ));
    assert!(m.contains("`deleted` must be a boolean"), "{m}");
}

#[test]
fn fields_of_unexpected_types_are_dropped_not_fatal() {
    let body = br#"{
        "ref": "refs/heads/main",
        "after": "E83C5163316F89BFBDE7D9AB23CA2E25604AF290",
        "repository": {"clone_url": 5, "ssh_url": null, "html_url": "https://github.com/o/r", "git_url": "bad url with spaces"},
        "project": "not an object",
        "pusher": ["x"],
        "sender": {"login": "fallback"},
        "head_commit": "not an object",
        "commits": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
        "unknown": {"deeply": {"nested": [1, 2, {"x": null}]}}
    }"#;
    let p = push(parse(Forge::Github, &github_event("push"), body));
    assert_eq!(p.after, "e83c5163316f89bfbde7d9ab23ca2e25604af290");
    assert_eq!(p.repo_urls, ["https://github.com/o/r"]);
    assert_eq!(p.sender.as_deref(), Some("fallback"));
    let h = headers(&[("X-Gitea-Event", "push")]);
    let p = push(parse(Forge::Gitea, &h, body));
    assert_eq!(p.sender.as_deref(), Some("fallback"));
    let p = push(parse(Forge::Gitlab, &gitlab_event("Push Hook"), body));
    assert_eq!(p.sender, None);
    assert!(p.repo_urls.is_empty());
}

#[test]
fn deep_nesting_in_ignored_fields_does_not_crash() {
    let deep = format!(
        r#"{{"ref":"refs/heads/main","after":"e83c5163316f89bfbde7d9ab23ca2e25604af290","commits":{}"#,
        "[".repeat(1 << 20)
    );
    for (forge, h) in push_events() {
        // An error (unterminated, or too deep), never a crash.
        assert!(parse(forge, &h, deep.as_bytes()).is_err(), "{forge}");
    }
}

/// A small deterministic generator, for the mutation test.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

#[test]
fn truncated_and_mutated_fixtures_never_panic() {
    let events = [
        (Forge::Github, github_event("push")),
        (Forge::Github, github_event("ping")),
        (Forge::Gitlab, gitlab_event("Push Hook")),
        (Forge::Gitlab, gitlab_event("Tag Push Hook")),
        (Forge::Gitea, headers(&[("X-Gitea-Event", "push")])),
    ];
    let mut rng = Lcg(0x6b696c6e);
    for body in ALL_FIXTURES {
        let body = body.as_bytes();
        for (forge, h) in &events {
            // Every fixture parses (to something) under every push header.
            let _ = parse(*forge, h, body);
            // Truncations.
            for cut in (0..body.len() - 2).step_by(251) {
                assert!(parse(*forge, h, &body[..cut]).is_err());
            }
            // Byte flips.
            for _ in 0..40 {
                let mut b = body.to_vec();
                for _ in 0..1 + rng.next() % 4 {
                    let i = rng.next() % b.len();
                    b[i] = (rng.next() % 256) as u8;
                }
                let _ = parse(*forge, h, &b);
            }
        }
    }
}

#[test]
fn fixtures_are_json_objects_of_realistic_size() {
    for f in ALL_FIXTURES {
        let v: serde_json::Value = serde_json::from_str(f).unwrap();
        assert!(v.is_object());
        assert!(f.len() > 1500, "{}", f.len());
    }
}
