//! Webhooks from forges (GitHub, GitLab, Gitea/Forgejo): signature checks
//! over the raw body, and the push and tag events they carry.
//!
//! Pure: no I/O, no `Core`. The caller verifies the raw body against each
//! project's secret (`verify`) before anything is parsed, then `parse`s it
//! once and matches the projects by `repo_key` and ref.

mod gitea;
mod github;
mod gitlab;
mod payload;
mod url;

#[cfg(test)]
mod tests;

use axum::http::HeaderMap;
use kiln_core::sig::{secret_eq, verify_hmac_sha256_hex};

pub use url::repo_key;

/// The forge a webhook comes from: the last segment of its path
/// (`/hooks/github`, `/hooks/gitlab`, `/hooks/gitea`, `/hooks/forgejo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forge {
    Github,
    Gitlab,
    /// Gitea, and Forgejo (which sends the same, plus `X-Forgejo-*`
    /// headers).
    Gitea,
}

impl Forge {
    /// The forge of a hook path's segment: `github`, `gitlab`, `gitea` or
    /// `forgejo` (exactly, lower case).
    pub fn from_path(segment: &str) -> Option<Forge> {
        match segment {
            "github" => Some(Forge::Github),
            "gitlab" => Some(Forge::Gitlab),
            "gitea" | "forgejo" => Some(Forge::Gitea),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitlab => "gitlab",
            Forge::Gitea => "gitea",
        }
    }

    /// The forge's name as people write it, for messages.
    fn display(self) -> &'static str {
        match self {
            Forge::Github => "GitHub",
            Forge::Gitlab => "GitLab",
            Forge::Gitea => "Gitea",
        }
    }
}

impl std::fmt::Display for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The forge's signature (or token) header is absent: 401.
    #[error("missing {0} header (set the webhook's secret)")]
    MissingSignature(&'static str),
    /// The signature (or token) does not match the body under the secret,
    /// is not in the forge's format, or the secret is empty: 401.
    #[error("bad signature: it does not match the body under the project's secret")]
    BadSignature,
    /// The body (or its event header) cannot be read: 400. The message says
    /// what exactly.
    #[error("malformed webhook: {0}")]
    Malformed(String),
}

/// What a verified webhook says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// GitHub's `ping` (sent when a hook is made); the repository it is
    /// about when the body says (an organization's hook names none).
    /// GitLab's and Gitea's test deliveries are ordinary pushes: they come
    /// as `Push`.
    Ping { repo_urls: Vec<String> },
    /// A push of a branch or a tag.
    Push(Push),
    /// Anything else (issues, pull requests, Gitea's `create`/`delete`,
    /// GitLab's system hooks): ignored, with its event name.
    Other { event: String },
}

/// A push of a branch or a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Every URL form of the repository the body names (clone, ssh, web,
    /// git:// …), as given, without duplicates; compare them with
    /// `repo_key`.
    pub repo_urls: Vec<String>,
    /// The full ref: `refs/heads/main` or `refs/tags/v1.2` (checked by
    /// git's rules, `kiln_core::git::check_ref`).
    pub git_ref: String,
    /// The new commit, full id in lower-case hex (40, or 64 for a SHA-256
    /// repository): the commit the ref now points to when the body says
    /// (GitLab's `checkout_sha`, GitHub's `head_commit.id`, Gitea's
    /// `head_commit.id` for a tag), else `after`, which for an annotated
    /// tag may be the tag object: the fetch should peel it (`^{commit}`).
    /// All zeros for a deletion.
    pub after: String,
    /// The ref was deleted (`after` all zeros, or `deleted: true`): nothing
    /// to build.
    pub deleted: bool,
    /// Who pushed (GitHub `pusher.name`, GitLab `user_username`, Gitea
    /// `pusher.login`/`pusher.username`; else the sender's login).
    pub sender: Option<String>,
}

impl Push {
    /// The branch pushed (`main` of `refs/heads/main`).
    pub fn branch(&self) -> Option<&str> {
        self.git_ref
            .strip_prefix("refs/heads/")
            .filter(|b| !b.is_empty())
    }

    /// The tag pushed (`v1.2` of `refs/tags/v1.2`).
    pub fn tag(&self) -> Option<&str> {
        self.git_ref
            .strip_prefix("refs/tags/")
            .filter(|t| !t.is_empty())
    }
}

/// The longest delivery id taken.
const MAX_DELIVERY: usize = 200;
/// The longest event name taken.
const MAX_EVENT: usize = 100;

/// The value of a header that appears exactly once, as text.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// A header's value when it is a plausible id: printable ASCII without
/// spaces, 1 to `max` bytes.
fn printable(headers: &HeaderMap, name: &str, max: usize, spaces: bool) -> Option<String> {
    let v = single(headers, name)?.trim();
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_graphic() || (spaces && b == b' '));
    ok.then(|| v.to_string())
}

/// The delivery id: GitHub `X-GitHub-Delivery`; Gitea `X-Gitea-Delivery`,
/// Forgejo `X-Forgejo-Delivery`; GitLab `Idempotency-Key`, else
/// `X-Gitlab-Event-UUID`. Printable, at most 200 bytes; else None.
pub fn delivery_id(forge: Forge, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match forge {
        Forge::Github => &["x-github-delivery"],
        Forge::Gitlab => &["idempotency-key", "x-gitlab-event-uuid"],
        Forge::Gitea => &["x-gitea-delivery", "x-forgejo-delivery", "x-gogs-delivery"],
    };
    names
        .iter()
        .find_map(|n| printable(headers, n, MAX_DELIVERY, false))
}

/// The event header's names, the main one first.
fn event_headers(forge: Forge) -> &'static [&'static str] {
    match forge {
        Forge::Github => &["x-github-event"],
        Forge::Gitlab => &["x-gitlab-event"],
        Forge::Gitea => &["x-gitea-event", "x-forgejo-event", "x-gogs-event"],
    }
}

/// The main event header's name, for messages.
fn event_header(forge: Forge) -> &'static str {
    match forge {
        Forge::Github => "X-GitHub-Event",
        Forge::Gitlab => "X-Gitlab-Event",
        Forge::Gitea => "X-Gitea-Event",
    }
}

/// The event name: `X-GitHub-Event`, `X-Gitlab-Event` (`Push Hook`, …),
/// `X-Gitea-Event`/`X-Forgejo-Event`/`X-Gogs-Event`. Printable, at most
/// 100 bytes; else None.
pub fn event_name(forge: Forge, headers: &HeaderMap) -> Option<String> {
    event_headers(forge)
        .iter()
        .find_map(|n| printable(headers, n, MAX_EVENT, true))
}

/// The forge's signature (or token) header, as its documentation writes
/// it: `X-Hub-Signature-256`, `X-Gitlab-Token`, `X-Gitea-Signature`.
pub fn signature_header(forge: Forge) -> &'static str {
    match forge {
        Forge::Github => "X-Hub-Signature-256",
        Forge::Gitlab => "X-Gitlab-Token",
        Forge::Gitea => "X-Gitea-Signature",
    }
}

/// The headers that may carry the signature, in the order they are tried.
fn signature_headers(forge: Forge) -> &'static [&'static str] {
    match forge {
        Forge::Github => &["x-hub-signature-256"],
        Forge::Gitlab => &["x-gitlab-token"],
        Forge::Gitea => &["x-gitea-signature", "x-forgejo-signature"],
    }
}

/// Whether the request carries the forge's signature (or token) header at
/// all (Forgejo's `X-Forgejo-Signature` counts for Gitea).
pub fn has_signature(forge: Forge, headers: &HeaderMap) -> bool {
    signature_headers(forge)
        .iter()
        .any(|n| headers.contains_key(*n))
}

/// Verify a request over its RAW body with one project's secret, before
/// anything is parsed:
/// - GitHub: `X-Hub-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the
///   body (the SHA-1 `X-Hub-Signature` is not taken);
/// - GitLab: `X-Gitlab-Token: <secret>`, compared in constant time;
/// - Gitea/Forgejo: `X-Gitea-Signature: <hex>` and/or
///   `X-Forgejo-Signature: <hex>`, the HMAC-SHA256 of the body (each one
///   present must match).
///
/// Hex may be upper or lower case. An empty secret verifies nothing. A
/// header given twice is refused.
pub fn verify(
    forge: Forge,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), HookError> {
    if !has_signature(forge, headers) {
        return Err(HookError::MissingSignature(signature_header(forge)));
    }
    if secret.is_empty() {
        return Err(HookError::BadSignature);
    }
    let mut checked = false;
    for name in signature_headers(forge) {
        let mut values = headers.get_all(*name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(HookError::BadSignature);
        }
        let good = match forge {
            Forge::Gitlab => secret_eq(value.as_bytes(), secret),
            Forge::Github => value
                .to_str()
                .ok()
                .and_then(|v| strip_prefix_ci(v.trim(), "sha256="))
                .is_some_and(|hex| verify_hmac_sha256_hex(secret, body, hex)),
            Forge::Gitea => value
                .to_str()
                .is_ok_and(|hex| verify_hmac_sha256_hex(secret, body, hex)),
        };
        if !good {
            return Err(HookError::BadSignature);
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(HookError::MissingSignature(signature_header(forge)))
    }
}

/// `s` without `prefix`, compared without regard to ASCII case.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parse a verified body.
/// - GitHub (`X-GitHub-Event`): `push` (branches and tags), `ping`;
/// - GitLab (`X-Gitlab-Event`): `Push Hook` and `Tag Push Hook` (checked
///   against `object_kind` `push`/`tag_push`); `System Hook` is ignored;
/// - Gitea/Forgejo (`X-Gitea-Event`/`X-Forgejo-Event`): `push` (a tag comes
///   as a push of `refs/tags/…`); `create`, `delete` and the rest are
///   ignored.
///
/// Everything else is `Other`. Only `application/json` bodies are read: a
/// form-encoded one (`payload=…`) is refused with how to fix the hook.
pub fn parse(forge: Forge, headers: &HeaderMap, body: &[u8]) -> Result<HookEvent, HookError> {
    let Some(event) = event_name(forge, headers) else {
        return Err(HookError::Malformed(format!(
            "missing or unreadable {} header",
            event_header(forge)
        )));
    };
    payload::check_json(forge, headers, body)?;
    match forge {
        Forge::Github => github::parse(&event, body),
        Forge::Gitlab => gitlab::parse(&event, body),
        Forge::Gitea => gitea::parse(&event, body),
    }
}
