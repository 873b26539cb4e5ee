//! Tokens with names and roles, and web sessions (issue 10).
//!
//! - `POST /api/v1/api-tokens` ([`ApiTokenRequest`] → [`ApiTokenCreated`],
//!   201): a named token with a role; the token is shown this once (the
//!   master keeps its sha256 only). Admin only.
//! - `GET /api/v1/api-tokens` (→ `Vec<`[`ApiTokenView`]`>`): every token,
//!   revoked ones included, never a token or its hash. Admin only.
//! - `POST /api/v1/api-tokens/NAME/revoke` (→ [`ApiTokenRevoked`]): the
//!   token is refused from then on and its web sessions end. Admin only.
//! - `GET /api/v1/whoami` (→ [`WhoAmI`]): who the request is signed in as.
//! - `POST /login` (form field `token`, or [`LoginRequest`] as JSON →
//!   [`SessionView`]): opens a web session (cookie `kiln_session`).
//! - `POST /logout`: ends it.
//!
//! The worker enrollment tokens (`POST /api/v1/tokens`, [`crate::TokenRequest`])
//! are another thing: one-time, for `kiln worker enroll`.

use serde::{Deserialize, Serialize};

/// What a token (and a session opened with it) may do. Ordered: each role
/// may do what the roles before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the web pages and the API (needed only with `web_public = false`).
    Reader,
    /// Submit builds and batches, build projects, cancel and rebuild its
    /// own builds.
    Submitter,
    /// Everything.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Reader, Role::Submitter, Role::Admin];

    /// The role as it is on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }

    /// This role may do what `need` may.
    pub fn allows(self, need: Role) -> bool {
        self >= need
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (admin, submitter or reader)"))
    }
}

/// `POST /api/v1/api-tokens`: a new named token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRequest {
    /// Its name (letters, digits, `._+-`; unique among the live tokens;
    /// `admin` is the master's admin token file's).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its owner's e-mail address (notifications with `to_submitter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The answer of `POST /api/v1/api-tokens` (201): the only time the token
/// is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiTokenCreated {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Unix time in ms.
    pub created_at: i64,
    /// The token (`Authorization: Bearer …`, `KILN_TOKEN`, or pasted into
    /// the web sign-in form).
    pub token: String,
}

/// One token in `GET /api/v1/api-tokens` (never the token or its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiTokenView {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Unix time in ms.
    pub created_at: i64,
    /// Unix time in ms, to the minute (`null`: never used).
    pub last_used_at: Option<i64>,
    /// Unix time in ms when it was revoked (`null`: live).
    pub revoked_at: Option<i64>,
    /// It is revoked.
    pub revoked: bool,
}

/// The answer of `POST /api/v1/api-tokens/NAME/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiTokenRevoked {
    /// The token's name.
    pub name: String,
    /// Always true.
    pub revoked: bool,
    /// How many of its web sessions were ended with it.
    pub sessions_ended: u64,
}

/// `POST /login` as JSON (a form posts the field `token` instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// A named token, or the master's admin token.
    pub token: String,
}

/// The answer of a JSON `POST /login` (a form is answered with a redirect);
/// the session itself is the `kiln_session` cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The session's CSRF token: every state-changing request made with the
    /// cookie carries it (form field `csrf` or header `X-CSRF-Token`).
    pub csrf: String,
    /// Unix time in ms when the session ends.
    pub expires_at: i64,
}

/// `GET /api/v1/whoami`: who the request is signed in as (401 when no one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The token's name (`admin` for the master's admin token file).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Signed in by a web session (the cookie), not by a bearer token.
    pub session: bool,
    /// The session's CSRF token (`null` for a bearer token).
    pub csrf: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_spelled_in_lowercase() {
        assert!(Role::Admin.allows(Role::Submitter));
        assert!(Role::Submitter.allows(Role::Reader));
        assert!(Role::Submitter.allows(Role::Submitter));
        assert!(!Role::Reader.allows(Role::Submitter));
        assert!(!Role::Submitter.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
        assert!(serde_json::from_str::<ApiTokenRequest>(r#"{"name":"a","role":"root"}"#).is_err());
    }

    #[test]
    fn token_answers_keep_their_bytes() {
        let v = ApiTokenView {
            name: "ci".into(),
            role: Role::Submitter,
            created_at: 1,
            last_used_at: None,
            revoked_at: Some(2),
            revoked: true,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"name":"ci","role":"submitter","created_at":1,"last_used_at":null,"revoked_at":2,"revoked":true}"#
        );
        let r: ApiTokenRequest = serde_json::from_str(r#"{"name":"ci","role":"reader"}"#).unwrap();
        assert_eq!(r.role, Role::Reader);
    }
}
