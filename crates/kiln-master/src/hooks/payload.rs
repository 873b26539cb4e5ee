//! What the three forges' bodies share: the JSON checks, lenient fields
//! (a field of an unexpected type is dropped, never a panic), and the
//! checks of the ref, commit id, sender and URLs taken from a body.

use axum::http::HeaderMap;
use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use super::{Forge, HookError};

/// The longest repository URL taken from a body (as `kiln_core::git`).
const MAX_URL: usize = 2048;
/// The longest sender name taken.
const MAX_SENDER: usize = 200;

fn malformed(msg: impl Into<String>) -> HookError {
    HookError::Malformed(msg.into())
}

/// The body must be JSON (an object): refuse a form-encoded one with what
/// to change in the forge's settings.
pub(super) fn check_json(forge: Forge, headers: &HeaderMap, body: &[u8]) -> Result<(), HookError> {
    let form_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if form_type || body.starts_with(b"payload=") {
        return Err(malformed(format!(
            "content type must be application/json: this body is form-encoded \
             (payload=…); set the {} webhook's content type to application/json",
            forge.display()
        )));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(malformed("empty body (a JSON object was expected)")),
        Some(b'{') => Ok(()),
        Some(_) => Err(malformed("the body is not a JSON object")),
    }
}

/// Parse a body into `T`, a JSON syntax or type error said precisely.
/// serde_json's recursion limit (128) refuses deep nesting.
pub(super) fn from_body<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, HookError> {
    serde_json::from_slice(body).map_err(|e| malformed(format!("{what} body: {e}")))
}

/// An object field (`repository`, `pusher`, …) that is dropped (None)
/// when it is not an object of the expected shape, instead of failing the
/// whole body. (An array is not taken for a struct's fields in order.)
pub(super) fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    Ok(match Value::deserialize(d)? {
        v @ Value::Object(_) => serde_json::from_value(v).ok(),
        _ => None,
    })
}

/// A URL or name field kept only when it is a string.
pub(super) fn lenient_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// The JSON type of a value, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string field of the body: None when absent or null; an error naming
/// the field when it is of another type.
pub(super) fn text(what: &str, field: &str, v: Option<Value>) -> Result<Option<String>, HookError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(malformed(format!(
            "{what}: `{field}` must be a string, not {}",
            kind(&other)
        ))),
    }
}

/// The pushed ref: present, a string, a full ref (`refs/…`) by git's rules.
pub(super) fn full_ref(what: &str, v: Option<Value>) -> Result<String, HookError> {
    let Some(r) = text(what, "ref", v)? else {
        return Err(malformed(format!("{what} without `ref`")));
    };
    kiln_core::git::check_ref(&r).map_err(|e| malformed(format!("{what}: {e}")))?;
    if !r.starts_with("refs/") {
        return Err(malformed(format!(
            "{what}: `ref` {} is not a full ref (refs/heads/… or refs/tags/…)",
            kiln_core::names::shown(&r)
        )));
    }
    Ok(r)
}

/// A commit id field: full hex (40 or 64), returned in lower case.
pub(super) fn commit_id(what: &str, field: &str, id: &str) -> Result<String, HookError> {
    let lower = id.to_ascii_lowercase();
    if kiln_core::git::is_commit_id(&lower) {
        Ok(lower)
    } else {
        Err(malformed(format!(
            "{what}: `{field}` {} is not a full commit id (40 or 64 hex digits)",
            kiln_core::names::shown(id)
        )))
    }
}

/// Whether a commit id is all zeros (a deleted ref).
pub(super) fn is_zero(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b == b'0')
}

/// A sender's name when it is plausible: 1 to 200 bytes, no control
/// characters.
pub(super) fn sender<'a>(
    candidates: impl IntoIterator<Item = &'a Option<String>>,
) -> Option<String> {
    candidates.into_iter().flatten().find_map(|s| {
        let s = s.trim();
        let ok = !s.is_empty() && s.len() <= MAX_SENDER && !s.chars().any(char::is_control);
        ok.then(|| s.to_string())
    })
}

/// The URLs given, in order, without duplicates, empty ones, overlong ones
/// or ones with spaces or control characters.
pub(super) fn urls<'a>(candidates: impl IntoIterator<Item = &'a Option<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in candidates.into_iter().flatten() {
        let ok = !u.is_empty()
            && u.len() <= MAX_URL
            && !u.chars().any(|c| c.is_control() || c.is_whitespace());
        if ok && !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

/// A user (`pusher`, `sender`): the names forges give one.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct User {
    #[serde(deserialize_with = "lenient_str")]
    pub name: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub login: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub username: Option<String>,
}

/// A commit object (`head_commit`): only its id.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Commit {
    #[serde(deserialize_with = "lenient_str")]
    pub id: Option<String>,
}

/// A repository (or GitLab project) object: every URL field any of the
/// forges gives one. Each forge takes the ones that name the repository
/// itself (GitHub's `homepage` is a free-form website, not taken).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Repo {
    #[serde(deserialize_with = "lenient_str")]
    pub clone_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub ssh_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub html_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub git_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub git_http_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub git_ssh_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub http_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub web_url: Option<String>,
    #[serde(deserialize_with = "lenient_str")]
    pub homepage: Option<String>,
}
