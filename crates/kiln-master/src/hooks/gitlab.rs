//! GitLab's `Push Hook` and `Tag Push Hook` events.

use serde::Deserialize;
use serde_json::Value;

use super::payload::{self, lenient, lenient_str, Repo};
use super::{HookError, HookEvent, Push};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Body {
    object_kind: Option<Value>,
    #[serde(rename = "ref")]
    git_ref: Option<Value>,
    after: Option<Value>,
    checkout_sha: Option<Value>,
    #[serde(deserialize_with = "lenient_str")]
    user_username: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    user_name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    project: Option<Repo>,
    #[serde(deserialize_with = "lenient")]
    repository: Option<Repo>,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<HookEvent, HookError> {
    let (what, kind) = if event.eq_ignore_ascii_case("Push Hook") {
        ("GitLab push event", "push")
    } else if event.eq_ignore_ascii_case("Tag Push Hook") {
        ("GitLab tag push event", "tag_push")
    } else {
        // System hooks (instance-wide, not a project's) and the rest.
        return Ok(HookEvent::Other {
            event: event.to_string(),
        });
    };
    let b: Body = payload::from_body(what, body)?;
    if let Some(k) = payload::text(what, "object_kind", b.object_kind)? {
        if k != kind {
            return Err(HookError::Malformed(format!(
                "{what}: `object_kind` is {}, not {kind:?}",
                kiln_core::names::shown(&k)
            )));
        }
    }
    let git_ref = payload::full_ref(what, b.git_ref)?;
    let after = payload::text(what, "after", b.after)?;
    let checkout = payload::text(what, "checkout_sha", b.checkout_sha)?;
    let Some(after) = after else {
        return Err(HookError::Malformed(format!("{what} without `after`")));
    };
    let after = payload::commit_id(what, "after", &after)?;
    let deleted = payload::is_zero(&after);
    // checkout_sha is the commit (an annotated tag's `after` is the tag
    // object); null for a deletion.
    let after = match checkout {
        Some(c) if !deleted => payload::commit_id(what, "checkout_sha", &c)?,
        _ => after,
    };
    let (p, r) = (
        b.project.unwrap_or_default(),
        b.repository.unwrap_or_default(),
    );
    Ok(HookEvent::Push(Push {
        repo_urls: payload::urls([
            &p.git_http_url,
            &p.git_ssh_url,
            &p.web_url,
            &p.http_url,
            &p.ssh_url,
            &p.url,
            &p.homepage,
            &r.git_http_url,
            &r.git_ssh_url,
            &r.url,
            &r.homepage,
        ]),
        git_ref,
        after,
        deleted,
        sender: payload::sender([&b.user_username, &b.user_name]),
    }))
}
