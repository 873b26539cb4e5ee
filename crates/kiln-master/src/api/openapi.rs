//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of the HTTP
//! API, generated from the Rust types (`kiln_api`'s `utoipa::ToSchema` and
//! `IntoParams` derives, `kiln_core::state`'s enums) and from each
//! handler's `#[utoipa::path]` attribute.
//!
//! # How to add a route
//!
//! 1. Put `#[utoipa::path(...)]` on the handler, like its neighbours (e.g.
//!    `builds::show_build`): method, `path = "/api/v1/..."` (axum's
//!    `{param}` syntax), `tag`, `params(...)` (path parameters by name and
//!    type; a query as its `kiln_api` type, which derives `IntoParams`),
//!    `request_body = T`, `responses(...)` (errors as
//!    `body = kiln_api::ErrorBody`), `operation_id` when the fn name is
//!    not unique, and `security(...)`, one of:
//!    - a read: `security((), ("bearer" = ["reader"]), ("session" = ["reader"]))`
//!      (anonymous unless `web_public = false`);
//!    - a write: `security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = []))`
//!      (`admin` for an admin's; the cookie goes with the CSRF header);
//!    - open to anyone: `security(())`.
//!
//!    New body types in `kiln_api` derive `utoipa::ToSchema`.
//! 2. Register it in `api::routes()` with `.routes(routes!(module::handler))`
//!    (one `routes!` per path, listing every handler of that path), not with
//!    `.route(...)`: `routes!` takes the path and the methods from the
//!    attribute, so the router and this document cannot disagree. A module
//!    with its own `routes()` (e.g. `notify`) returns an
//!    `utoipa_axum::router::OpenApiRouter<Arc<Core>>` built the same way,
//!    and `api::routes()` merges it without the `.into()` that a plain
//!    `Router` needs (`.merge(crate::notify::routes())`).
//! 3. A route that is not part of the API (an HTML page, static files)
//!    goes into `EXCLUDED` in the tests below, with the reason.
//!
//! The unit test `every_route_is_in_the_document` fails when a route is
//! neither documented nor excluded; `crates/kiln/tests/it/openapi.rs` asks
//! a real master for every documented path and method.
//!
//! # Why the routes are enumerated this way
//!
//! axum's `Router` cannot list its routes, so a test cannot ask it. A hand
//! kept list of paths would drift. Instead the API's routes are registered
//! through utoipa-axum's `OpenApiRouter`, which makes the route and the
//! document entry from the same attribute: those cannot drift. What is still
//! registered with a plain axum `.route("...")` (the web UI's pages and its
//! websocket in `web/`, `metrics`, `stats`, modules whose `routes()` return
//! a plain `Router`) is found by the test scanning this crate's sources for
//! the path literals of `.route(`, `.nest(`, `.nest_service(` and
//! `.route_service(`: each must be in the document or excluded with a
//! reason. The documents of those (`/metrics`, `/api/v1/stats`,
//! `/api/v1/ws`) are listed in [`Base`]; if a path changes on one side only,
//! the scan (route → document) or the integration test (document → route)
//! fails.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

use super::error::ApiError;

/// What the router does not build from a `#[utoipa::path]` of its own:
/// the document's head, the security schemes, the paths of the modules that
/// register plain axum routes, and the websocket's messages.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Kiln master API",
        description = "The HTTP API of the kiln master (`/api/v1`, JSON), its webhooks, \
            sign-in and operations endpoints. Every error answer is an `ErrorBody` \
            (`{\"code\", \"error\"}`); the code says what kind. Reads are open unless the \
            master is configured `web_public = false`; writes need a token with a role \
            (bearer) or a web session (cookie plus its CSRF header)."
    ),
    paths(crate::metrics::scrape, crate::stats::stats_json, websocket),
    components(schemas(kiln_api::live::ClientMsg, kiln_api::live::ServerMsg)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "builds", description = "Builds: submit, list, show, wait, cancel"),
        (name = "batches", description = "Several SRPMs built in order as one batch"),
        (name = "blobs", description = "SRPM uploads, by sha256"),
        (name = "jobs", description = "Jobs and their build logs"),
        (name = "events", description = "Live state changes"),
        (name = "workers", description = "Build workers"),
        (name = "tokens", description = "Worker enrollment tokens and named API tokens"),
        (name = "auth", description = "Who is calling; web sessions"),
        (name = "projects", description = "Builds from git"),
        (name = "targets", description = "Targets and their repositories"),
        (name = "webhooks", description = "Forge pushes, signed with a project's secret"),
        (name = "stats", description = "Statistics"),
        (name = "notify", description = "Notification sinks and their outboxes"),
        (name = "releases", description = "Image builds promoted to signed releases"),
        (name = "meta", description = "Health, metrics, the CA certificate, this document"),
    )
)]
pub(super) struct Base;

/// The web UI's live websocket (the protocol of `kiln_api::live`). Its
/// route is `web::routes()`'s and its handler (`web::ws::upgrade`) is
/// private to `web`, so it is described here; the tests check the route
/// and this description agree.
#[utoipa::path(
    get, path = "/api/v1/ws", tag = "events", operation_id = "websocket",
    description = "Upgrades to a websocket. Every message is one JSON text frame: the page \
        sends `ClientMsg` (subscriptions, then `resume`), the master sends `ServerMsg` \
        (ready, numbered events, logs, reload, errors).",
    responses(
        (status = 101, description = "Switching Protocols"),
        (status = 400, description = "Not a websocket upgrade request"),
        (status = 403, description = "A websocket from another site (its Origin is not this host)", body = String, content_type = "text/plain"),
    ),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
#[allow(dead_code)]
async fn websocket() {}

/// The three ways a request says who it is (`api/session.rs`). The roles a
/// requirement names (`reader`, `submitter`, `admin`) are the token's role
/// at least (OpenAPI 3.1 role names).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, api: &mut OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer TOKEN`: a named API token (its role: reader, \
                         submitter or admin) or the master's admin token file (admin). A bearer \
                         token that is not valid is refused (401) on every path.",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "kiln_session",
                "The web session cookie that `POST /login` sets (the role of the token that \
                 opened it). A state-changing request made with it also needs `csrf`.",
            ))),
        );
        c.add_security_scheme(
            "csrf",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-CSRF-Token",
                "The session's CSRF token (`SessionView.csrf`, `WhoAmI.csrf`); a form may post \
                 it as the field `csrf` instead. Needed with the cookie on every request but \
                 GET, HEAD and OPTIONS (403 without it); never with a bearer token.",
            ))),
        );
    }
}

/// The answers every operation can give beyond its own: added to each
/// operation that does not describe them itself.
fn common_responses(api: &mut OpenApi) {
    let error = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    let c = api.components.get_or_insert_with(Default::default);
    c.responses.insert(
        "Unauthorized".into(),
        RefOr::T(error(
            "unauthorized: a bearer token that is not valid; or no credential where one is \
             needed (a role, or any read of a master with `web_public = false`)",
        )),
    );
    c.responses.insert(
        "Forbidden".into(),
        RefOr::T(error(
            "forbidden: the caller's role is too weak, or a request made with the session \
             cookie lacks its CSRF token",
        )),
    );
    c.responses.insert(
        "Failure".into(),
        RefOr::T(error(
            "The master's own failure: internal (500), unavailable (503: nothing was kept, \
             retry), no_space (507)",
        )),
    );
    let text = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content("text/plain; charset=utf-8", ContentBuilder::new().build())
            .build()
    };
    for (name, what) in [
        ("NotJson", "The body is not valid JSON (a text answer)"),
        (
            "NotJsonType",
            "The body is not sent as `Content-Type: application/json` (a text answer)",
        ),
        (
            "NotTheSchema",
            "The JSON does not fit the request's schema (a text answer)",
        ),
    ] {
        c.responses.insert(name.into(), RefOr::T(text(what)));
    }
    for item in api.paths.paths.values_mut() {
        let ops = [
            (false, &mut item.get),
            (false, &mut item.head),
            (false, &mut item.options),
            (true, &mut item.post),
            (true, &mut item.put),
            (true, &mut item.delete),
            (true, &mut item.patch),
        ];
        for (write, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            let needs_role = op.security.iter().flatten().any(|req| {
                serde_json::to_value(req).is_ok_and(|v| {
                    v.as_object().is_some_and(|m| {
                        m.values()
                            .flat_map(|roles| roles.as_array().into_iter().flatten())
                            .any(|r| r != "reader")
                    })
                })
            });
            let r = &mut op.responses.responses;
            r.entry("401".into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Unauthorized")));
            if write || needs_role {
                r.entry("403".into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Forbidden")));
            }
            r.entry("default".into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Failure")));
            // axum's `Json` refuses a body before the handler sees it, in text.
            let json_body = op.request_body.as_ref().is_some_and(|b| match b {
                RefOr::T(b) => b.content.contains_key("application/json"),
                RefOr::Ref(_) => false,
            });
            if json_body {
                for (status, name) in [
                    ("400", "NotJson"),
                    ("415", "NotJsonType"),
                    ("422", "NotTheSchema"),
                ] {
                    r.entry(status.into())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                }
            }
        }
    }
}

/// The whole document: the API's routes as `api::routes()` registers them,
/// with what [`Base`] adds.
pub fn document() -> OpenApi {
    let mut api = super::routes().into_openapi();
    common_responses(&mut api);
    api
}

/// This document, as JSON. It is a function of the code alone: made once.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = serde_json::Value, content_type = "application/json")),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn openapi_json() -> Response {
    static JSON: OnceLock<Option<Bytes>> = OnceLock::new();
    let json = JSON.get_or_init(|| match serde_json::to_vec(&document()) {
        Ok(v) => Some(Bytes::from(v)),
        Err(e) => {
            tracing::error!("writing the OpenAPI document: {e}");
            None
        }
    });
    match json {
        Some(b) => ([(header::CONTENT_TYPE, "application/json")], b.clone()).into_response(),
        None => ApiError::internal("the OpenAPI document could not be written").into_response(),
    }
}

/// The document's head: [`Base`].
pub(super) fn base() -> OpenApi {
    Base::openapi()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use serde_json::Value;

    /// Route prefixes that are not part of the API and so not in the
    /// document, and why. A prefix covers the path itself and the paths
    /// under it (`/` covers `/` alone); a path under `/api/` is never
    /// excluded.
    pub(super) const EXCLUDED: &[(&str, &str)] = &[
        ("/", "the web UI's dashboard (HTML)"),
        (
            "/builds",
            "the web UI's build pages and their form actions (HTML)",
        ),
        ("/jobs", "the web UI's log page (HTML)"),
        (
            "/workers",
            "the web UI's workers page and its form actions (HTML)",
        ),
        (
            "/projects",
            "the web UI's project pages and their form actions (HTML)",
        ),
        ("/targets", "the web UI's target pages (HTML)"),
        (
            "/notify",
            "the web UI's notification page and its form actions (HTML; the API is /api/v1/notify)",
        ),
        (
            "/stats",
            "the web UI's statistics page (HTML; its data is /api/v1/stats)",
        ),
        ("/submit", "the web UI's upload page (HTML)"),
        (
            "/signin",
            "the web UI's sign-in page (HTML; the API is POST /login)",
        ),
        ("/static", "the web UI's embedded CSS and JavaScript"),
        (
            "/repos",
            "the published repositories: static files for dnf (ServeDir)",
        ),
        (
            "/releases",
            "the promoted images: static files (ServeDir), `latest` links followed",
        ),
    ];

    fn excluded(path: &str) -> Option<&'static str> {
        if path.starts_with("/api/") {
            return None;
        }
        EXCLUDED.iter().find_map(|(p, why)| {
            let hit = if *p == "/" {
                path == "/"
            } else {
                path == *p || path.starts_with(&format!("{p}/"))
            };
            hit.then_some(*why)
        })
    }

    fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rs_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The path literals of every `.route(`, `.nest(`, `.nest_service(` and
    /// `.route_service(` in this crate's sources (outside comments and test
    /// modules), with where they are; a call whose first argument is not a
    /// string literal is an error (the scan could not read it).
    fn scanned_routes() -> (BTreeMap<String, String>, Vec<String>) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rs_files(&src, &mut files);
        let (mut found, mut unreadable) = (BTreeMap::new(), Vec::new());
        for f in files {
            if f.ends_with("api/openapi.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests {")
                .next()
                .unwrap_or_default();
            let rel = f.strip_prefix(&src).unwrap().display().to_string();
            for (n, line) in code.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for call in [".route(", ".nest(", ".nest_service(", ".route_service("] {
                    for (i, _) in line.match_indices(call) {
                        // The literal may start on the next line.
                        let rest: String = code
                            .lines()
                            .skip(n)
                            .collect::<Vec<_>>()
                            .join("\n")
                            .chars()
                            .skip(line[..i + call.len()].chars().count())
                            .collect();
                        let rest = rest.trim_start();
                        let lit = rest
                            .strip_prefix('"')
                            .and_then(|r| r.split_once('"'))
                            .map(|(l, _)| l.to_string());
                        match lit {
                            Some(l) => {
                                found.insert(l, format!("{rel}:{}", n + 1));
                            }
                            None => unreadable.push(format!("{rel}:{}: {}", n + 1, line.trim())),
                        }
                    }
                }
            }
        }
        (found, unreadable)
    }

    fn doc() -> Value {
        serde_json::to_value(super::document()).unwrap()
    }

    #[test]
    fn every_route_is_in_the_document() {
        let doc = doc();
        let paths: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let (routes, unreadable) = scanned_routes();
        assert!(
            unreadable.is_empty(),
            "route paths the scan cannot read (write them as string literals): {unreadable:#?}"
        );
        // The scan finds what it must: the plain routes of web/, metrics, stats, /repos.
        for p in [
            "/api/v1/ws",
            "/metrics",
            "/api/v1/stats",
            "/repos",
            "/builds/{id}",
        ] {
            assert!(routes.contains_key(p), "the scan missed {p}: {routes:#?}");
        }
        let missing: Vec<String> = routes
            .iter()
            .filter(|(p, _)| !paths.contains(p.as_str()) && excluded(p).is_none())
            .map(|(p, at)| format!("{p} ({at})"))
            .collect();
        assert!(
            missing.is_empty(),
            "routes neither in the OpenAPI document nor excluded (see api/openapi.rs, \
             'How to add a route'): {missing:#?}"
        );
        // Every exclusion still excludes something, and nothing documented is excluded.
        for (prefix, _) in EXCLUDED {
            assert!(
                routes.keys().any(|p| excluded(p).is_some() && {
                    p == prefix || p.starts_with(&format!("{prefix}/"))
                }),
                "the exclusion {prefix} matches no route: remove it"
            );
        }
        for p in &paths {
            assert!(excluded(p).is_none(), "{p} is documented and excluded");
        }
        // The API's own routes, registered through routes!, are there.
        for p in [
            "/healthz",
            "/metrics",
            "/login",
            "/logout",
            "/ca.crt",
            "/hooks/{forge}",
            "/api/v1/openapi.json",
            "/api/v1/builds",
            "/api/v1/builds/{id}",
            "/api/v1/blobs/{sha}",
            "/api/v1/projects/{name}",
            "/api/v1/targets/{target}/regen",
            "/api/v1/ws",
            "/api/v1/stats",
        ] {
            assert!(paths.contains(p), "{p} is not in the document");
        }
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_operation_is_complete() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["in"], "cookie");
        assert_eq!(schemes["session"]["name"], "kiln_session");
        assert_eq!(schemes["csrf"]["in"], "header");
        let tags: BTreeSet<&str> = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        let mut ids = BTreeSet::new();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                n += 1;
                let at = format!("{method} {path}");
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_string()), "{at}: operationId {id} twice");
                let tag = op["tags"][0].as_str().unwrap_or_default();
                assert!(tags.contains(tag), "{at}: tag {tag:?} not declared");
                // Declared security, naming only the schemes above.
                let sec = op["security"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{at}: no security"));
                for req in sec {
                    for scheme in req.as_object().unwrap().keys() {
                        assert!(schemes.contains_key(scheme), "{at}: scheme {scheme}");
                    }
                }
                // A success answer, and the common errors.
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|s| s.starts_with('2') || s == "101"),
                    "{at}: no success answer"
                );
                assert!(responses.contains_key("401"), "{at}");
                // Every path parameter is declared.
                let params: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                let in_path: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .collect();
                assert_eq!(params, in_path, "{at}: path parameters");
                // A write with the cookie needs the CSRF header.
                if method != "get" {
                    for req in sec {
                        if req.get("session").is_some() {
                            assert!(req.get("csrf").is_some(), "{at}: session without csrf");
                        }
                    }
                }
            }
        }
        assert!(n >= 35, "only {n} operations");
        // Every reference resolves.
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let (kind, name) = r
                .strip_prefix("#/components/")
                .and_then(|r| r.split_once('/'))
                .unwrap_or_else(|| panic!("odd $ref {r}"));
            assert!(
                doc["components"][kind].get(name).is_some(),
                "$ref {r} does not resolve"
            );
        }
    }

    /// The schemas describe what serde writes: the properties of a few
    /// answers are exactly the keys of their JSON.
    #[test]
    fn schemas_match_the_json() {
        let doc = doc();
        let schemas = &doc["components"]["schemas"];
        let keys =
            |v: Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        let props = |name: &str| -> BTreeSet<String> { keys(schemas[name]["properties"].clone()) };
        let e = kiln_api::ErrorBody {
            code: kiln_api::ErrorCode::NotFound,
            error: "x".into(),
        };
        assert_eq!(props("ErrorBody"), keys(serde_json::to_value(e).unwrap()));
        let w = kiln_api::auth::WhoAmI {
            name: "a".into(),
            role: kiln_api::auth::Role::Admin,
            session: false,
            csrf: None,
        };
        assert_eq!(props("WhoAmI"), keys(serde_json::to_value(w).unwrap()));
        let j = kiln_api::JobView {
            id: 1,
            build: 1,
            arch: "x86_64".into(),
            state: kiln_api::JobState::Running,
            worker: None,
            attempt: 1,
            message: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            waiting: None,
        };
        assert_eq!(props("JobView"), keys(serde_json::to_value(j).unwrap()));
        // The state enums are their wire strings.
        let states: Vec<&str> = schemas["BuildState"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            states.contains(&"waiting") && states.contains(&"succeeded"),
            "{states:?}"
        );
        // The websocket's messages are described.
        assert!(schemas.get("ClientMsg").is_some() && schemas.get("ServerMsg").is_some());
    }
}
