//! Gitea's and Forgejo's `push` event (a tag comes as a push of
//! `refs/tags/…`; `create` and `delete` are ignored).

use serde::Deserialize;
use serde_json::Value;

use super::payload::{self, lenient, Commit, Repo, User};
use super::{HookError, HookEvent, Push};

const WHAT: &str = "Gitea push event";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Body {
    #[serde(rename = "ref")]
    git_ref: Option<Value>,
    after: Option<Value>,
    #[serde(deserialize_with = "lenient")]
    head_commit: Option<Commit>,
    #[serde(deserialize_with = "lenient")]
    repository: Option<Repo>,
    #[serde(deserialize_with = "lenient")]
    pusher: Option<User>,
    #[serde(deserialize_with = "lenient")]
    sender: Option<User>,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<HookEvent, HookError> {
    if !event.eq_ignore_ascii_case("push") {
        return Ok(HookEvent::Other {
            event: event.to_string(),
        });
    }
    let b: Body = payload::from_body(WHAT, body)?;
    let git_ref = payload::full_ref(WHAT, b.git_ref)?;
    let Some(after) = payload::text(WHAT, "after", b.after)? else {
        return Err(HookError::Malformed(format!("{WHAT} without `after`")));
    };
    let after = payload::commit_id(WHAT, "after", &after)?;
    let deleted = payload::is_zero(&after);
    // For a tag, head_commit is the commit it points to (an annotated
    // tag's `after` may be the tag object).
    let after = match b.head_commit.as_ref().and_then(|c| c.id.as_deref()) {
        Some(id) if !deleted && git_ref.starts_with("refs/tags/") => {
            payload::commit_id(WHAT, "head_commit.id", id)?
        }
        _ => after,
    };
    let r = b.repository.unwrap_or_default();
    let (p, s) = (b.pusher.unwrap_or_default(), b.sender.unwrap_or_default());
    Ok(HookEvent::Push(Push {
        repo_urls: payload::urls([&r.clone_url, &r.ssh_url, &r.html_url]),
        git_ref,
        after,
        deleted,
        sender: payload::sender([&p.login, &p.username, &s.login, &s.username]),
    }))
}
