//! GitHub's `push` (branches and tags) and `ping` events.

use serde::Deserialize;
use serde_json::Value;

use super::payload::{self, lenient, Commit, Repo, User};
use super::{HookError, HookEvent, Push};

const WHAT: &str = "GitHub push event";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Body {
    #[serde(rename = "ref")]
    git_ref: Option<Value>,
    after: Option<Value>,
    deleted: Option<Value>,
    #[serde(deserialize_with = "lenient")]
    head_commit: Option<Commit>,
    #[serde(deserialize_with = "lenient")]
    repository: Option<Repo>,
    #[serde(deserialize_with = "lenient")]
    pusher: Option<User>,
    #[serde(deserialize_with = "lenient")]
    sender: Option<User>,
}

/// The URLs of a GitHub repository object (`url` is the web URL in a push
/// event, the API's in others: harmless, it matches nothing else).
fn repo_urls(repo: &Option<Repo>) -> Vec<String> {
    match repo {
        Some(r) => payload::urls([&r.clone_url, &r.ssh_url, &r.html_url, &r.git_url, &r.url]),
        None => Vec::new(),
    }
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<HookEvent, HookError> {
    if event.eq_ignore_ascii_case("ping") {
        let b: Body = payload::from_body("GitHub ping event", body)?;
        return Ok(HookEvent::Ping {
            repo_urls: repo_urls(&b.repository),
        });
    }
    if !event.eq_ignore_ascii_case("push") {
        return Ok(HookEvent::Other {
            event: event.to_string(),
        });
    }
    let b: Body = payload::from_body(WHAT, body)?;
    let git_ref = payload::full_ref(WHAT, b.git_ref)?;
    let deleted_flag = match b.deleted {
        None | Some(Value::Null) => false,
        Some(Value::Bool(d)) => d,
        Some(_) => {
            return Err(HookError::Malformed(format!(
                "{WHAT}: `deleted` must be a boolean"
            )))
        }
    };
    let after = payload::text(WHAT, "after", b.after)?;
    let (after, deleted) = match after {
        Some(a) => {
            let a = payload::commit_id(WHAT, "after", &a)?;
            let deleted = deleted_flag || payload::is_zero(&a);
            (a, deleted)
        }
        None if deleted_flag => ("0".repeat(40), true),
        None => return Err(HookError::Malformed(format!("{WHAT} without `after`"))),
    };
    // head_commit is the commit `after` is or points to (an annotated
    // tag's `after` is the tag object).
    let after = match b.head_commit.as_ref().and_then(|c| c.id.as_deref()) {
        Some(id) if !deleted => payload::commit_id(WHAT, "head_commit.id", id)?,
        _ => after,
    };
    let (p, s) = (b.pusher.unwrap_or_default(), b.sender.unwrap_or_default());
    Ok(HookEvent::Push(Push {
        repo_urls: repo_urls(&b.repository),
        git_ref,
        after,
        deleted,
        sender: payload::sender([&p.name, &p.login, &s.login]),
    }))
}
