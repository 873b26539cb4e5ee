//! Who a request is, and what it may do: named API tokens with roles, the
//! master's admin token file (an admin named `admin`), and web sessions.
//!
//! This is the module the web UI uses:
//! - the extractors [`MaybePrincipal`], [`Reader`], [`Submitter`] and
//!   [`Admin`] (at least that role; 401 with no credential, 403 with a
//!   weaker role), checked before the body is read;
//! - [`caller`] (who the request being served is, as the gate found it;
//!   synchronous), [`current`] (who the headers say, read from the
//!   database), [`check_csrf`], [`Principal::need`]
//!   and [`Principal::may_act_on`] (a submitter acts on its own builds only);
//! - [`form_fields`] to read an `application/x-www-form-urlencoded` body.
//!
//! A request carries `Authorization: Bearer TOKEN` or the session cookie
//! [`COOKIE`]; a bearer token wins. The router's gate (`api/auth.rs`)
//! authenticates every request once, before any handler, and refuses a
//! state-changing request signed in by the cookie that does not carry the
//! session's CSRF token (header [`CSRF_HEADER`] or form field
//! [`CSRF_FIELD`]); the extractors then read what it found.
//!
//! `POST /login` (form field `token`, or JSON `kiln_api::auth::LoginRequest`)
//! opens a session: a random 32-byte id in the cookie (HttpOnly,
//! SameSite=Strict, Path=/, Secure with `api_tls`), its sha256 in the
//! database with the token's name and role, a CSRF secret and its expiry
//! ([`SESSION_TTL_MS`]). `POST /logout` ends it; revoking the token ends
//! all of its sessions.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_api::auth::{LoginRequest, SessionView, WhoAmI};
use kiln_api::{EmptyBody, ErrorCode};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use kiln_api::auth::Role;

use super::error::{ApiError, ApiResult};
use super::S;
use crate::Core;

/// The session cookie's name.
pub const COOKIE: &str = "kiln_session";
/// The header that carries a session's CSRF token (lower case, as `http`
/// spells header names).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field that carries it.
pub const CSRF_FIELD: &str = "csrf";
/// How long a web session lasts: 7 days.
pub const SESSION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// The name of the master's admin token file's principal.
pub const ADMIN_NAME: &str = "admin";
/// The largest form body the gate reads to find its CSRF field, and the
/// largest sign-in body.
pub const FORM_LIMIT: usize = 256 * 1024;

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`admin` for the admin token file).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Signed in by a web session: the session's CSRF token (to put in the
    /// forms of the pages it is shown). `None` for a bearer token.
    pub csrf: Option<String>,
    /// The session's hash, to end it.
    pub(crate) session: Option<String>,
}

impl Principal {
    /// Signed in by the session cookie (not a bearer token).
    pub fn by_session(&self) -> bool {
        self.csrf.is_some()
    }

    /// It has at least the role `need`.
    pub fn may(&self, need: Role) -> bool {
        self.role.allows(need)
    }

    /// At least the role `need`, or 403 saying what is missing.
    pub fn need(&self, need: Role) -> ApiResult<()> {
        if self.may(need) {
            return Ok(());
        }
        let needs = match need {
            Role::Reader => "a reader, submitter or admin token",
            Role::Submitter => "a submitter or admin token",
            Role::Admin => "an admin token",
        };
        Err(forbidden(format!(
            "this needs {needs}; token {:?} is a {}",
            self.name, self.role
        )))
    }

    /// May act on (cancel, rebuild) build `id`, submitted by `submitter`:
    /// an admin on any build, a submitter on its own only.
    pub fn may_act_on(&self, id: i64, submitter: Option<&str>) -> ApiResult<()> {
        self.need(Role::Submitter)?;
        if self.role == Role::Admin || submitter == Some(self.name.as_str()) {
            return Ok(());
        }
        let by = match submitter {
            Some(s) => format!("token {s:?}"),
            None => "no named token".to_string(),
        };
        Err(forbidden(format!(
            "build {id} was submitted by {by}: token {:?} (a submitter) may act only on its own builds",
            self.name
        )))
    }
}

pub(crate) fn unauthorized(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m)
}

pub(crate) fn forbidden(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m)
}

/// The 401 of a request that needs a credential and has none.
pub(crate) fn no_credential() -> ApiError {
    unauthorized(
        "this call needs a token (Authorization: Bearer …; set KILN_TOKEN) or a web session (sign in at /login)",
    )
}

/// The sha256 of a secret, in hex: what is stored of a token or a session id.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes, in hex.
pub(crate) fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A new API token (shown once; `kiln_` and 32 random bytes in hex).
pub(crate) fn new_token() -> String {
    format!("kiln_{}", random_hex())
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The session cookie of a request, if it has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A token checked: who it is, and what a session opened with it records.
pub(crate) struct Verified {
    pub principal: Principal,
    /// Its row (none: the admin token file).
    pub token_id: Option<i64>,
    pub token_hash: String,
}

/// Check a token: the admin token file's, or a live named one. A named
/// token's use is recorded (at most once a minute).
pub(crate) async fn verify_token(core: &Core, token: &str) -> ApiResult<Verified> {
    if same(token.as_bytes(), core.admin_token.as_bytes()) {
        return Ok(Verified {
            principal: Principal {
                name: ADMIN_NAME.to_string(),
                role: Role::Admin,
                csrf: None,
                session: None,
            },
            token_id: None,
            token_hash: sha256_hex(token),
        });
    }
    let hash = sha256_hex(token);
    let h = hash.clone();
    let row = core
        .store
        .read(move |c| kiln_store::auth::api_token_by_hash(c, &h))
        .await?
        .ok_or_else(|| unauthorized("invalid token"))?;
    if row.revoked_at.is_some() {
        return Err(unauthorized(format!("token {:?} was revoked", row.name)));
    }
    touch(core, row.id, row.last_used_at);
    Ok(Verified {
        principal: Principal {
            role: role_of(&row.role)?,
            name: row.name,
            csrf: None,
            session: None,
        },
        token_id: Some(row.id),
        token_hash: hash,
    })
}

fn role_of(s: &str) -> ApiResult<Role> {
    s.parse().map_err(ApiError::internal)
}

/// Record a token's use if the last record is a minute old (the write is
/// not waited for: a request never waits on it).
fn touch(core: &Core, id: i64, last: Option<i64>) {
    let now = kiln_store::now_ms();
    if !kiln_store::auth::touch_due(last, now) {
        return;
    }
    let w = core
        .store
        .write(move |t| kiln_store::auth::touch_api_token(t, id, now));
    tokio::spawn(async move {
        if let Err(e) = w.await {
            tracing::debug!("recording the use of a token: {e}");
        }
    });
}

/// The live session of a cookie value.
async fn session_of(core: &Core, cookie: &str) -> ApiResult<Option<Principal>> {
    let hash = sha256_hex(cookie);
    let h = hash.clone();
    let now = kiln_store::now_ms();
    let Some(s) = core
        .store
        .read(move |c| kiln_store::auth::live_session(c, &h, now))
        .await?
    else {
        return Ok(None);
    };
    match s.token_id {
        Some(id) => touch(core, id, s.token_last_used_at),
        // Opened with the admin token file: only while the file holds
        // that token still.
        None => {
            if !same(
                s.token_hash.as_bytes(),
                sha256_hex(&core.admin_token).as_bytes(),
            ) {
                return Ok(None);
            }
        }
    }
    Ok(Some(Principal {
        role: role_of(&s.role)?,
        name: s.name,
        csrf: Some(s.csrf),
        session: Some(hash),
    }))
}

/// Who the request is: `Ok(None)` for no credential (or a session cookie
/// that is not, or no longer, a live session: the browser keeps a stale
/// cookie, and the public pages stay readable); a bearer token that is not
/// valid is refused (401).
pub(crate) async fn authenticate(core: &Core, headers: &HeaderMap) -> ApiResult<Option<Principal>> {
    if let Some(t) = bearer(headers) {
        return Ok(Some(verify_token(core, t).await?.principal));
    }
    match session_cookie(headers) {
        Some(c) => session_of(core, c).await,
        None => Ok(None),
    }
}

tokio::task_local! {
    /// Who the request being served is (set by the gate around its handler).
    pub(crate) static CURRENT: Option<Principal>;
}

/// Who the request being served is, as the router's gate found it: for code
/// that runs inside a handler and has no extractor at hand (synchronous,
/// nothing read). `None` when anonymous, or outside a request served
/// through the gate.
pub fn caller() -> Option<Principal> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// Who the headers say the request is (a bearer token, or a live session),
/// if anyone. The extractors below read what the router's gate found
/// instead of asking the database again: prefer them in a handler.
pub async fn current(core: &Core, headers: &HeaderMap) -> Option<Principal> {
    authenticate(core, headers).await.ok().flatten()
}

/// A state-changing request signed in by the session cookie must carry the
/// session's CSRF token (`form_or_header_value`: the form field
/// [`CSRF_FIELD`] or the header [`CSRF_HEADER`]); one with a bearer token
/// needs none (a browser never adds it by itself). 403 otherwise.
pub fn check_csrf(principal: &Principal, form_or_header_value: Option<&str>) -> ApiResult<()> {
    let Some(want) = &principal.csrf else {
        return Ok(());
    };
    match form_or_header_value {
        Some(given) if same(given.trim().as_bytes(), want.as_bytes()) => Ok(()),
        Some(_) => Err(forbidden("the CSRF token does not match this session's")),
        None => Err(forbidden(
            "this request is signed in by the session cookie and needs its CSRF token \
             (form field csrf or header X-CSRF-Token)",
        )),
    }
}

/// The fields of an `application/x-www-form-urlencoded` body, decoded.
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// The first field `name` of a form body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_fields(body)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The body is a form (`application/x-www-form-urlencoded`).
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// GET, HEAD and OPTIONS change nothing.
pub fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

// ---------------------------------------------------------------- extractors

/// What the router's gate found out about a request (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct Authn(pub Option<Principal>);

/// The principal of a request: from the gate, or (a router without it)
/// found here, with the CSRF header checked for a state-changing request
/// signed in by the cookie.
async fn principal_of(
    parts: &mut axum::http::request::Parts,
    core: &Arc<Core>,
) -> ApiResult<Option<Principal>> {
    if let Some(Authn(p)) = parts.extensions.get::<Authn>() {
        return Ok(p.clone());
    }
    let p = authenticate(core, &parts.headers).await?;
    if let Some(p) = &p {
        if !is_safe(&parts.method) {
            let given = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            check_csrf(p, given)?;
        }
    }
    parts.extensions.insert(Authn(p.clone()));
    Ok(p)
}

/// Anyone: the principal if the request has one (never rejects, except a
/// bearer token that is not valid: 401).
pub struct MaybePrincipal(pub Option<Principal>);

impl axum::extract::FromRequestParts<Arc<Core>> for MaybePrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        core: &Arc<Core>,
    ) -> Result<Self, ApiError> {
        Ok(MaybePrincipal(principal_of(parts, core).await?))
    }
}

macro_rules! at_least {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        ///
        /// As an extractor it runs before the body is read, so a caller
        /// without the role learns nothing of the body's shape: 401 without
        /// a credential, 403 with a weaker role.
        pub struct $name(pub Principal);

        impl axum::extract::FromRequestParts<Arc<Core>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut axum::http::request::Parts,
                core: &Arc<Core>,
            ) -> Result<Self, ApiError> {
                let p = principal_of(parts, core).await?.ok_or_else(no_credential)?;
                p.need($role)?;
                Ok($name(p))
            }
        }
    };
}

at_least!(
    /// A caller with any role (a reader, a submitter or an admin).
    Reader,
    Role::Reader
);
at_least!(
    /// A caller that may submit: a submitter or an admin.
    Submitter,
    Role::Submitter
);
at_least!(
    /// An admin: a named admin token, or the master's admin token file.
    Admin,
    Role::Admin
);

// ---------------------------------------------------------------- routes

/// The cookie is `Secure` when the API is served over TLS, by the master
/// (`api_tls`) or by a proxy in front of it (`public_url` is `https://`).
fn cookie(core: &Core, value: &str, max_age_secs: i64) -> HeaderValue {
    let tls = core.cfg.api_tls
        || core
            .cfg
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
    let secure = if tls { "; Secure" } else { "" };
    let c = format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}"
    );
    // Hex and fixed words only: always a valid header value.
    HeaderValue::from_str(&c)
        .unwrap_or_else(|_| HeaderValue::from_static("kiln_session=; Max-Age=0"))
}

/// Where a form's `next` may send the browser: a path of this site.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control()) =>
        {
            n
        }
        _ => "/",
    }
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A sign-in from another site is refused (the `Origin` a browser sends
/// names neither the host asked nor `public_url`'s, or `Sec-Fetch-Site`
/// says cross-site): nobody may sign a visitor in to a session of theirs.
fn same_origin(public_url: Option<&str>, headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let public = public_url.map(|u| u.trim_end_matches('/'));
    origin_is_host(origin, headers)
        || public.is_some_and(|p| p.eq_ignore_ascii_case(origin.trim_end_matches('/')))
}

/// Whether an `Origin` (`scheme://host[:port]`) names the host the request
/// was sent to (its `Host` header).
pub(crate) fn origin_is_host(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, h)| h.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("the body is larger than {FORM_LIMIT} bytes"),
        )
    })
}

/// `POST /login`: a token (form field `token`, or JSON) opens a session.
/// A form is answered with a redirect (to its `next` field, a path of this
/// site, or `/`; a refused token to `/signin?failed=1`), JSON with a
/// [`SessionView`]; both set the cookie.
#[utoipa::path(
    post, path = "/login", tag = "auth",
    request_body(description = "A token: JSON, or the form field `token` (a form may add `next`, where to go)", content(
        (kiln_api::auth::LoginRequest = "application/json"),
        ("application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "JSON: the session (its cookie `kiln_session` is set)", body = kiln_api::auth::SessionView,
            headers(("set-cookie" = String, description = "kiln_session=…; HttpOnly; SameSite=Strict; Path=/"))),
        (status = 303, description = "A form: to its `next` (the cookie set), or to /signin?failed=1"),
        (status = 401, description = "No token, or not a valid one", body = kiln_api::ErrorBody),
        (status = 403, description = "A sign-in from another site", body = kiln_api::ErrorBody),
    ),
    security(())
)]
pub(super) async fn login(State(core): S, headers: HeaderMap, body: Body) -> Response {
    match open_session(&core, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            let r = e.into_response();
            if r.status() == StatusCode::UNAUTHORIZED && is_form(&headers) {
                see_other("/signin?failed=1")
            } else {
                r
            }
        }
    }
}

async fn open_session(core: &Core, headers: &HeaderMap, body: Body) -> ApiResult<Response> {
    let form = is_form(headers);
    if !same_origin(core.cfg.public_url.as_deref(), headers) {
        return Err(forbidden("a sign-in from another site is refused"));
    }
    let bytes = read_body(body).await?;
    let (token, next) = if form {
        (
            form_field(&bytes, "token").unwrap_or_default(),
            form_field(&bytes, "next"),
        )
    } else {
        let r: LoginRequest = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad(format!(
                "sign in with a form field `token` or JSON {{\"token\": …}}: {e}"
            ))
        })?;
        (r.token, None)
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(unauthorized("no token given"));
    }
    let v = verify_token(core, token).await?;
    // A session this browser had ends: one at a time.
    let old = session_cookie(headers).map(sha256_hex);
    let id = random_hex();
    let hash = sha256_hex(&id);
    let csrf = random_hex();
    let now = kiln_store::now_ms();
    let expires_at = now + SESSION_TTL_MS;
    let p = v.principal.clone();
    let (h, c) = (hash.clone(), csrf.clone());
    let (token_id, token_hash) = (v.token_id, v.token_hash);
    core.store
        .write(move |t| {
            if let Some(old) = old {
                kiln_store::auth::end_session(t, &old, now)?;
            }
            kiln_store::auth::add_session(
                t,
                &kiln_store::auth::NewSession {
                    hash: &h,
                    token_id,
                    token_hash: &token_hash,
                    name: &p.name,
                    role: p.role.as_str(),
                    csrf: &c,
                    now,
                    expires_at,
                },
            )
        })
        .await?;
    tracing::info!(
        "web session opened for token {} ({})",
        v.principal.name,
        v.principal.role
    );
    let mut r = if form {
        see_other(local_path(next.as_deref()))
    } else {
        Json(SessionView {
            name: v.principal.name,
            role: v.principal.role,
            csrf,
            expires_at,
        })
        .into_response()
    };
    let h = r.headers_mut();
    h.insert(header::SET_COOKIE, cookie(core, &id, SESSION_TTL_MS / 1000));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `POST /logout`: ends the request's session (its CSRF token checked by
/// the gate) and clears the cookie. A form is answered with a redirect to
/// `/`, anything else with `{}`.
#[utoipa::path(
    post, path = "/logout", tag = "auth",
    responses(
        (status = 200, description = "The session ended, the cookie cleared", body = kiln_api::EmptyBody),
        (status = 303, description = "A form: to /"),
    ),
    security((), ("session" = [], "csrf" = []))
)]
pub(super) async fn logout(
    State(core): S,
    MaybePrincipal(who): MaybePrincipal,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(hash) = who.as_ref().and_then(|p| p.session.clone()) {
        let now = kiln_store::now_ms();
        core.store
            .write(move |t| kiln_store::auth::end_session(t, &hash, now))
            .await?;
        if let Some(p) = &who {
            tracing::info!("web session of token {} ended", p.name);
        }
    }
    let mut r = if is_form(&headers) {
        see_other("/")
    } else {
        Json(EmptyBody {}).into_response()
    };
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie(&core, "", 0));
    Ok(r)
}

/// `GET /api/v1/whoami`.
#[utoipa::path(
    get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, description = "Not signed in", body = kiln_api::ErrorBody)),
    security(("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn whoami(Reader(p): Reader) -> Json<WhoAmI> {
    Json(WhoAmI {
        session: p.by_session(),
        name: p.name,
        role: p.role,
        csrf: p.csrf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role, csrf: Option<&str>) -> Principal {
        Principal {
            name: "alice".into(),
            role,
            csrf: csrf.map(str::to_string),
            session: None,
        }
    }

    fn status(r: ApiResult<()>) -> Option<StatusCode> {
        r.err().map(|e| e.into_response().status())
    }

    #[test]
    fn roles_and_ownership() {
        let sub = who(Role::Submitter, None);
        assert_eq!(status(sub.need(Role::Submitter)), None);
        assert_eq!(status(sub.need(Role::Admin)), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(sub.may_act_on(1, Some("alice"))), None);
        assert_eq!(
            status(sub.may_act_on(1, Some("bob"))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status(sub.may_act_on(1, None)), Some(StatusCode::FORBIDDEN));
        let admin = who(Role::Admin, None);
        assert_eq!(status(admin.may_act_on(1, Some("bob"))), None);
        let reader = who(Role::Reader, None);
        assert_eq!(
            status(reader.may_act_on(1, Some("alice"))),
            Some(StatusCode::FORBIDDEN)
        );
    }

    #[test]
    fn csrf_is_needed_by_a_session_only() {
        assert_eq!(status(check_csrf(&who(Role::Admin, None), None)), None);
        let s = who(Role::Submitter, Some("abc"));
        assert_eq!(status(check_csrf(&s, Some("abc"))), None);
        assert_eq!(
            status(check_csrf(&s, Some("abd"))),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status(check_csrf(&s, None)), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn forms_cookies_and_redirects() {
        assert_eq!(
            form_fields(b"token=a%2Bb+c&csrf=x&empty"),
            vec![
                ("token".to_string(), "a+b c".to_string()),
                ("csrf".to_string(), "x".to_string()),
                ("empty".to_string(), String::new())
            ]
        );
        assert_eq!(form_field(b"a=1&csrf=z", "csrf").as_deref(), Some("z"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=b; kiln_session=s1"),
        );
        assert_eq!(session_cookie(&h), Some("s1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t "));
        assert_eq!(bearer(&h), Some("t"));
        assert_eq!(local_path(Some("/builds/3")), "/builds/3");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "x"] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        let mut h = HeaderMap::new();
        assert!(same_origin(None, &h));
        h.insert(header::HOST, HeaderValue::from_static("kiln:8080"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://kiln:8080"));
        assert!(same_origin(None, &h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(None, &h));
        // Behind a proxy: the public URL's origin.
        let public = Some("https://kiln.example.org/");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://kiln.example.org"),
        );
        assert!(same_origin(public, &h));
        assert!(!same_origin(None, &h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(public, &h));
    }
}
