//! The gate every request of the API listener goes through, before any
//! handler: who the request is (`session::authenticate`: a bearer token or
//! the session cookie; a bearer token that is not valid is refused at once,
//! 401), the CSRF token of a state-changing request signed in by the cookie
//! (403 without it), reads refused to anonymous callers when the master is
//! not public (`web_public = false`), and the security headers on every
//! answer. What the handlers need (a role) they ask with the extractors of
//! `session` (`Admin`, `Submitter`, `Reader`), checked before the body is
//! read.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::session::{
    authenticate, check_csrf, form_field, is_form, is_safe, no_credential, unauthorized, Authn,
    Principal, Role, CSRF_FIELD, CSRF_HEADER, CURRENT, FORM_LIMIT,
};

use super::error::{ApiError, ApiResult};
use super::S;
use crate::Core;

/// For the handlers that check their caller themselves (blob upload; the
/// repository regeneration, behind [`need_admin`] too): at least a
/// submitter, as the gate found the request to be. Outside the gate (a
/// router without it), only the admin token file is taken.
pub fn auth(core: &Core, headers: &HeaderMap) -> ApiResult<()> {
    match CURRENT.try_with(Clone::clone) {
        Ok(Some(p)) => p.need(Role::Submitter),
        Ok(None) => Err(no_credential()),
        Err(_) => admin_file(core, headers),
    }
}

fn admin_file(core: &Core, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(no_credential)?;
    let want = core.admin_token.as_bytes();
    let ok = given.len() == want.len()
        && given
            .bytes()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if ok {
        Ok(())
    } else {
        Err(unauthorized("invalid token"))
    }
}

/// A route layer: an admin only (before the handler and its body).
pub(super) async fn need_admin(req: Request, next: Next) -> Response {
    let who = req.extensions().get::<Authn>().and_then(|a| a.0.clone());
    match who {
        Some(p) => match p.need(Role::Admin) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        },
        None => no_credential().into_response(),
    }
}

/// Paths anyone may read even when the master is not public: the health
/// check, signing in and out, the CA certificate, the published
/// repositories (dnf sends no token), webhooks (signed on their own), and
/// the web UI's static files (the sign-in page needs its styles).
pub const OPEN_PATHS: &[&str] = &[
    "/healthz",
    "/login",
    "/logout",
    "/signin",
    "/ca.crt",
    "/favicon.ico",
];
/// Prefixes of the same.
pub const OPEN_PREFIXES: &[&str] = &["/repos/", "/hooks/", "/static/", "/assets/"];

fn open_path(path: &str) -> bool {
    path == "/repos"
        || OPEN_PATHS.contains(&path)
        || OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The security headers of every answer (a page may set its own
/// Content-Security-Policy; these are added where it has none).
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
];

fn secure(h: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        h.entry(HeaderName::from_static(name))
            .or_insert(HeaderValue::from_static(value));
    }
}

/// The gate (a layer over the whole router).
pub(super) async fn gate(State(core): S, req: Request, next: Next) -> Response {
    let mut r = match admit(&core, req).await {
        Ok((req, who)) => CURRENT.scope(who, next.run(req)).await,
        Err(r) => r,
    };
    secure(r.headers_mut());
    r
}

async fn admit(core: &Core, mut req: Request) -> Result<(Request, Option<Principal>), Response> {
    let who = authenticate(core, req.headers())
        .await
        .map_err(IntoResponse::into_response)?;
    let path = req.uri().path();
    if is_safe(req.method()) {
        if who.is_none() && !core.cfg.web_public && !open_path(path) {
            return Err(not_public(&req));
        }
    } else if let Some(p) = who.as_ref().filter(|p| p.by_session()) {
        // Signing in replaces the session; it needs none.
        if path != "/login" {
            req = csrf_checked(p, req)
                .await
                .map_err(IntoResponse::into_response)?;
        }
    }
    req.extensions_mut().insert(Authn(who.clone()));
    Ok((req, who))
}

/// An anonymous read of a master that is not public: 401, or for a
/// browser asking for a page, the sign-in page.
fn not_public(req: &Request) -> Response {
    let path = req.uri().path();
    let html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if html && !path.starts_with("/api/") {
        let next = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let next = percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC);
        let mut r = StatusCode::SEE_OTHER.into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("/signin?next={next}")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    unauthorized(
        "this master is not public (web_public = false): reading needs a token \
         (Authorization: Bearer …; set KILN_TOKEN) or a web session",
    )
    .into_response()
}

/// A state-changing request signed in by the cookie carries the session's
/// CSRF token: in the header, or in the form it posts (read here, bounded,
/// and handed on unchanged). Anything else (JSON, a multipart upload) must
/// use the header.
async fn csrf_checked(p: &Principal, req: Request) -> ApiResult<Request> {
    if let Some(v) = req.headers().get(CSRF_HEADER) {
        check_csrf(p, v.to_str().ok())?;
        return Ok(req);
    }
    if !is_form(req.headers()) {
        check_csrf(p, None)?;
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            kiln_api::ErrorCode::TooLarge,
            format!("a form posted with the session cookie takes at most {FORM_LIMIT} bytes"),
        )
    })?;
    check_csrf(p, form_field(&bytes, CSRF_FIELD).as_deref())?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_paths_are_few() {
        for p in [
            "/healthz",
            "/login",
            "/repos",
            "/repos/t/x86_64/a.rpm",
            "/hooks/github",
        ] {
            assert!(open_path(p), "{p}");
        }
        for p in [
            "/",
            "/builds/1",
            "/api/v1/builds",
            "/metrics",
            "/loginx",
            "/reposx",
        ] {
            assert!(!open_path(p), "{p}");
        }
    }

    #[test]
    fn security_headers_are_added_where_missing() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'"),
        );
        secure(&mut h);
        assert_eq!(h["content-security-policy"], "default-src 'none'");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "same-origin");
    }
}
