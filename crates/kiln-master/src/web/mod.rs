//! The web UI (issue 10): server-rendered pages, embedded assets, and the
//! live updates over `/api/v1/ws`.
//!
//! Every page is HTML made on the server (maud: every value escaped) and
//! works without JavaScript; one small script (`static/kiln.js`, no inline
//! script anywhere, so a CSP of `script-src 'self'` holds) makes pages live:
//! it subscribes over the websocket to what the page shows and resumes from
//! the event id the page was made at ([`Hub`]). Pages read the store and
//! the scheduler's memory; they change nothing except through the action
//! forms, which need a signed-in user ([`signed_in`]) and its CSRF token.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`Hub`] (event ids, the ring kept for resuming), routes, who is signed in, HTML answers |
//! | `ws.rs` | `/api/v1/ws`: subscriptions, resume, logs |
//! | `layout.rs` | the frame of every page, formatters |
//! | `assets.rs` | `/static/…` (embedded, ETag, cached) |
//! | `dashboard.rs` | `/` |
//! | `builds.rs` | `/builds`, `/builds/ID`, its files and actions |
//! | `logpage.rs` | `/jobs/ID/log` |
//! | `pages.rs` | `/workers`, `/targets[/T]`, `/stats`, `/submit` |

mod assets;
mod builds;
mod dashboard;
mod layout;
mod logpage;
mod notify;
mod pages;
mod projects;
pub(crate) mod ws;

/// The `.repo` file text (the same as `GET /api/v1/targets/T/repo`'s).
pub use pages::repo_file_text;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kiln_api::live::{LiveEvent, ServerMsg};
use maud::Markup;
use tokio::sync::broadcast;

use crate::Core;

/// Events kept for pages that resume (a page that reconnects within that
/// many events gets exactly what it missed; an older one reloads).
pub const KEEP: usize = 10_000;

/// The live event hub: numbers every committed event (ids increase, and
/// start past the previous run's: they begin at the master's start time in
/// ms × 1000), keeps the last [`KEEP`] for pages that resume, and fans them
/// out to the websockets.
pub struct Hub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Fanout>,
    /// Aggregates over many rows that pages show, recomputed at most every
    /// [`AGGREGATE_TTL`]: builds per hour today (dashboard), job outcomes
    /// per worker over 7 days (workers page).
    pub(crate) hours: Cached<Vec<(i64, kiln_core::state::BuildState, u64)>>,
    pub(crate) outcomes: Cached<Vec<kiln_store::browse::WorkerOutcomes>>,
    /// Followed logs' last messages, shared by the pages in step.
    pub(crate) log_frames: Arc<ws::LogFrames>,
}

/// How long an aggregate a page shows is reused. With a million builds,
/// counting today's builds per hour reads tens of thousands of rows: done
/// at most this often, not on every page view.
pub(crate) const AGGREGATE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A value computed from the database, kept for a while, for one key (the
/// day it is about, say).
pub(crate) struct Cached<T> {
    slot: tokio::sync::Mutex<Option<(std::time::Instant, i64, T)>>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            slot: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> Cached<T> {
    /// The value for `key`, computed by `f` when absent, of another key or
    /// older than [`AGGREGATE_TTL`]. One computation at a time.
    pub(crate) async fn get<F, Fut, E>(&self, key: i64, f: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, k, v)) = slot.as_ref() {
            if *k == key && at.elapsed() < AGGREGATE_TTL {
                return Ok(v.clone());
            }
        }
        let v = f().await?;
        *slot = Some((std::time::Instant::now(), key, v.clone()));
        Ok(v)
    }
}

struct Ring {
    /// The id the next event gets.
    next: u64,
    /// The oldest event id a page may resume after: events before it were
    /// lost (the hub fell behind the event stream) or are of an earlier run.
    floor: u64,
    events: VecDeque<Arc<Numbered>>,
    /// The events of one build, for the pages that follow only it (a build
    /// page, a log page): they are not woken by the rest of the farm's
    /// events. Made by the first such page, dropped once none is left.
    builds: HashMap<i64, broadcast::Sender<Fanout>>,
}

/// Which events a receiver gets: all of them (the dashboard, or a page
/// that follows several builds), or one build's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Build(i64),
}

impl Scope {
    fn takes(self, n: &Numbered) -> bool {
        match self {
            Scope::All => true,
            Scope::Build(b) => n.build == b,
        }
    }
}

/// How many events a one-build receiver holds before it lags (a build has
/// a handful of events; a page that falls this far behind resumes from the
/// ring).
const BUILD_CHANNEL: usize = 64;

/// An event with its id, serialized once for every websocket.
pub(crate) struct Numbered {
    pub id: u64,
    /// The build it is about.
    pub build: i64,
    /// `{"event": {...}}`.
    pub json: String,
}

/// What the hub sends its websockets.
#[derive(Clone)]
pub(crate) enum Fanout {
    Event(Arc<Numbered>),
    /// Events were lost: every page must reload.
    Gap,
}

impl Default for Hub {
    fn default() -> Hub {
        let base = kiln_store::now_ms().max(1) as u64 * 1000;
        let (tx, _) = broadcast::channel(1024);
        Hub {
            ring: Mutex::new(Ring {
                next: base,
                floor: base - 1,
                events: VecDeque::new(),
                builds: HashMap::new(),
            }),
            tx,
            hours: Cached::default(),
            outcomes: Cached::default(),
            log_frames: Arc::default(),
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the newest event (what a page made now resumes from).
    pub fn last_id(&self) -> u64 {
        self.lock().next - 1
    }

    /// Number an event, keep it and send it to the websockets (under the
    /// ring's lock, so a page that resumes sees each event exactly once:
    /// from the ring or from its receiver).
    pub(crate) fn publish(&self, event: kiln_api::Event) {
        let build = match &event {
            kiln_api::Event::Job { build, .. }
            | kiln_api::Event::Build { build, .. }
            | kiln_api::Event::Publish { build, .. } => *build,
            kiln_api::Event::Subscribed | kiln_api::Event::Lagged { .. } => 0,
        };
        let mut r = self.lock();
        let id = r.next;
        r.next += 1;
        let json =
            serde_json::to_string(&ServerMsg::Event(LiveEvent { id, event })).unwrap_or_default();
        let n = Arc::new(Numbered { id, build, json });
        r.events.push_back(n.clone());
        while r.events.len() > KEEP {
            r.events.pop_front();
        }
        if let Some(tx) = r.builds.get(&build) {
            if tx.send(Fanout::Event(n.clone())).is_err() {
                // Nobody follows that build any more.
                r.builds.remove(&build);
            }
        }
        let _ = self.tx.send(Fanout::Event(n));
    }

    /// The hub missed events: no page may resume from before now. An id is
    /// skipped so that a page made after the gap can resume.
    pub(crate) fn gap(&self) {
        let mut r = self.lock();
        r.floor = r.next;
        r.next += 1;
        r.events.clear();
        for tx in r.builds.values() {
            let _ = tx.send(Fanout::Gap);
        }
        let _ = self.tx.send(Fanout::Gap);
    }

    /// A receiver of `scope`'s events (under the ring's lock).
    fn subscribe(&self, r: &mut Ring, scope: Scope) -> broadcast::Receiver<Fanout> {
        match scope {
            Scope::All => self.tx.subscribe(),
            Scope::Build(b) => {
                if let Some(tx) = r.builds.get(&b) {
                    return tx.subscribe();
                }
                // Channels of builds nobody follows any more go.
                r.builds.retain(|_, tx| tx.receiver_count() > 0);
                let (tx, rx) = broadcast::channel(BUILD_CHANNEL);
                r.builds.insert(b, tx);
                rx
            }
        }
    }

    /// Follow `scope`'s events from now: a receiver, and the newest id.
    pub(crate) fn follow(&self, scope: Scope) -> (broadcast::Receiver<Fanout>, u64) {
        let mut r = self.lock();
        let rx = self.subscribe(&mut r, scope);
        (rx, r.next - 1)
    }

    /// Follow `scope`'s events after `last`: a receiver, the newest id, and
    /// `scope`'s events after `last` up to it; None when they are not all
    /// kept (the page must reload).
    pub(crate) fn resume(
        &self,
        last: u64,
        scope: Scope,
    ) -> Option<(broadcast::Receiver<Fanout>, u64, Vec<Arc<Numbered>>)> {
        let mut r = self.lock();
        let newest = r.next - 1;
        let first_kept = r.next - r.events.len() as u64;
        if last < r.floor || last > newest || last + 1 < first_kept {
            return None;
        }
        let skip = (last + 1 - first_kept) as usize;
        let missed = r
            .events
            .iter()
            .skip(skip)
            .filter(|n| scope.takes(n))
            .cloned()
            .collect();
        Some((self.subscribe(&mut r, scope), newest, missed))
    }
}

/// The web UI's routes (merged into the master's router).
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/", get(dashboard::dashboard))
        .route("/builds", get(builds::list))
        .route("/builds/{id}", get(builds::show))
        .route("/builds/{id}/files/{arch}/{name}", get(builds::file))
        .route("/builds/{id}/cancel", post(builds::cancel))
        .route("/builds/{id}/rebuild", post(builds::rebuild))
        .route("/jobs/{id}/log", get(logpage::log))
        .route("/workers", get(pages::workers))
        .route("/projects", get(projects::list))
        .route("/notify", get(notify::list))
        .route("/notify/{name}/test", post(notify::test))
        .route("/notify/{name}/retry", post(notify::retry))
        .route("/projects/{name}", get(projects::show))
        .route("/projects/{name}/build", post(projects::build))
        .route("/workers/enroll", post(pages::enroll))
        .route("/workers/{name}/revoke", post(pages::revoke))
        .route("/targets", get(pages::targets))
        .route("/targets/{target}", get(pages::target))
        .route("/stats", get(pages::stats))
        .route("/submit", get(pages::submit))
        .route("/signin", get(pages::signin))
        .route("/static/{name}", get(assets::serve))
        .route("/api/v1/ws", get(ws::upgrade))
}

/// Start what the web UI runs in the background (called once at start):
/// the task that numbers the events for the websockets.
pub fn start(core: &Arc<Core>) {
    let mut rx = core.events.subscribe();
    let core = core.clone();
    tokio::spawn(async move {
        use broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(e) => core.web.publish(ws::event(e)),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("web: {n} events passed unseen; open pages will reload");
                    core.web.gap();
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Who is signed in, as the pages need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub name: String,
    /// `admin`, `submitter` or `reader`.
    pub role: String,
    /// The session's CSRF token (hidden field `csrf` of every form); None
    /// for a bearer token, which needs none.
    pub csrf: Option<String>,
}

impl Viewer {
    /// May submit builds (and cancel or rebuild its own).
    pub fn may_submit(&self) -> bool {
        matches!(self.role.as_str(), "admin" | "submitter")
    }

    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    /// May cancel or rebuild a build submitted by `submitter`.
    pub fn may_act_on(&self, submitter: Option<&str>) -> bool {
        self.is_admin() || (self.may_submit() && submitter == Some(self.name.as_str()))
    }

    /// What the forms of its pages carry as `csrf`.
    pub fn csrf(&self) -> &str {
        self.csrf.as_deref().unwrap_or_default()
    }

    /// The form's CSRF token is the session's (constant time); a bearer
    /// token needs none.
    pub fn csrf_ok(&self, given: &str) -> bool {
        let Some(want) = &self.csrf else {
            return true;
        };
        let (a, b) = (want.as_bytes(), given.as_bytes());
        !a.is_empty()
            && a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The signed-in user of a request (its session cookie, or a bearer
/// token: then without a CSRF token, which a bearer request needs none of).
pub(crate) async fn signed_in(core: &Core, headers: &HeaderMap) -> Option<Viewer> {
    crate::api::session::current(core, headers)
        .await
        .map(|p| Viewer {
            name: p.name,
            role: p.role.to_string(),
            csrf: p.csrf,
        })
}

/// What a page handler answers when it cannot show its page.
#[derive(Debug)]
pub(crate) enum WebError {
    NotFound(String),
    BadRequest(String),
    Forbidden(String),
    Unavailable(String),
    Internal(String),
}

impl From<kiln_store::StoreError> for WebError {
    fn from(e: kiln_store::StoreError) -> WebError {
        use kiln_store::StoreError as E;
        match e {
            E::NotFound(m) => WebError::NotFound(m),
            E::Invalid(m) => WebError::BadRequest(m),
            E::CommitFailed(_) | E::Closed => {
                WebError::Unavailable("the database is unavailable; try again".into())
            }
            other => {
                tracing::error!("web: {other}");
                WebError::Internal("the master failed to read its database".into())
            }
        }
    }
}

impl From<crate::api::error::ApiError> for WebError {
    fn from(e: crate::api::error::ApiError) -> WebError {
        let m = e.message().to_string();
        match e.status() {
            StatusCode::NOT_FOUND => WebError::NotFound(m),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => WebError::Forbidden(m),
            StatusCode::SERVICE_UNAVAILABLE => WebError::Unavailable(m),
            s if s.is_client_error() => WebError::BadRequest(m),
            _ => WebError::Internal(m),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, msg) = match self {
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, "Forbidden", m),
            WebError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m),
            WebError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error", m),
        };
        let mut r = html_response(&HeaderMap::new(), layout::error_page(title, &msg));
        *r.status_mut() = status;
        r
    }
}

pub(crate) type WebResult<T = Response> = Result<T, WebError>;

/// Whether the client takes `encoding` (`Accept-Encoding`, `q=0` refuses).
fn accepts(headers: &HeaderMap, encoding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|e| e.eq_ignore_ascii_case(encoding))
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        })
}

/// A body, zstd-compressed when the client takes it (browsers and curl
/// do; zstd is already in the master, gzip would need a new crate).
pub(crate) fn encoded(
    headers: &HeaderMap,
    content_type: &'static str,
    body: Vec<u8>,
    zstd: Option<&[u8]>,
) -> Response {
    let mut r = if let Some(z) = zstd.filter(|_| accepts(headers, "zstd")) {
        let mut r = z.to_vec().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        r
    } else {
        body.into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    r
}

/// A page as the answer (compressed when it pays; never cached: it shows
/// the state of now).
pub(crate) fn html_response(headers: &HeaderMap, page: Markup) -> Response {
    let body = page.into_string().into_bytes();
    let z = (body.len() > 1024 && accepts(headers, "zstd"))
        .then(|| zstd::bulk::compress(&body, 3).ok())
        .flatten();
    let mut r = encoded(headers, "text/html; charset=utf-8", body, z.as_deref());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The fields of an `application/x-www-form-urlencoded` body.
pub(crate) use crate::api::session::form_fields;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(build: i64) -> kiln_api::Event {
        kiln_api::Event::Build {
            build,
            state: kiln_api::BuildState::Queued,
        }
    }

    #[test]
    fn a_page_resumes_with_exactly_what_it_missed() {
        let hub = Hub::default();
        let start = hub.last_id();
        // A page made before any event resumes with nothing missed.
        let (_rx, newest, missed) = hub.resume(start, Scope::All).unwrap();
        assert_eq!((newest, missed.len()), (start, 0));
        for b in 1..=5 {
            hub.publish(event(b));
        }
        let (mut rx, newest, missed) = hub.resume(start + 2, Scope::All).unwrap();
        assert_eq!(newest, start + 5);
        assert_eq!(
            missed.iter().map(|n| n.build).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(missed[0].json.starts_with(r#"{"event":{"id":"#));
        // What follows comes on the receiver, once.
        hub.publish(event(6));
        match rx.try_recv() {
            Ok(Fanout::Event(n)) => assert_eq!((n.id, n.build), (start + 6, 6)),
            _ => panic!("no event"),
        }
        assert!(rx.try_recv().is_err());
        // From the future, or from an earlier run: reload.
        assert!(hub.resume(start + 7, Scope::All).is_none());
        assert!(hub.resume(start - 5, Scope::All).is_none());
    }

    /// A page that follows one build gets its events alone, in order, and
    /// resumes with that build's events only; the farm's other events do
    /// not reach its receiver; a gap does.
    #[test]
    fn a_page_of_one_build_gets_only_that_builds_events() {
        let hub = Hub::default();
        let start = hub.last_id();
        let (mut one, _) = hub.follow(Scope::Build(7));
        let (mut all, _) = hub.follow(Scope::All);
        for b in [1, 7, 2, 7, 3] {
            hub.publish(event(b));
        }
        let mut got = Vec::new();
        while let Ok(Fanout::Event(n)) = one.try_recv() {
            got.push((n.id - start, n.build));
        }
        assert_eq!(got, [(2, 7), (4, 7)]);
        let mut n_all = 0;
        while all.try_recv().is_ok() {
            n_all += 1;
        }
        assert_eq!(n_all, 5);
        let (_, newest, missed) = hub.resume(start + 2, Scope::Build(7)).unwrap();
        assert_eq!(newest, start + 5);
        assert_eq!(
            missed
                .iter()
                .map(|n| (n.id - start, n.build))
                .collect::<Vec<_>>(),
            [(4, 7)]
        );
        hub.gap();
        assert!(matches!(one.try_recv(), Ok(Fanout::Gap)));
        // Once nobody follows build 7, its channel goes.
        drop(one);
        hub.publish(event(7));
        assert!(hub.lock().builds.is_empty());
    }

    #[test]
    fn too_old_or_past_a_gap_means_reload() {
        let hub = Hub::default();
        let start = hub.last_id();
        for b in 0..(KEEP as i64 + 3) {
            hub.publish(event(b));
        }
        assert!(
            hub.resume(start, Scope::All).is_none(),
            "the oldest were dropped"
        );
        assert!(hub.resume(start + 2, Scope::All).is_none());
        let (_, _, missed) = hub.resume(start + 3, Scope::All).unwrap();
        assert_eq!(missed.len(), KEEP);
        let before = hub.last_id();
        let (mut rx, _) = hub.follow(Scope::All);
        hub.gap();
        assert!(matches!(rx.try_recv(), Ok(Fanout::Gap)));
        assert!(
            hub.resume(before, Scope::All).is_none(),
            "events were lost after it"
        );
        // A page made after the gap resumes.
        let after = hub.last_id();
        hub.publish(event(1));
        let (_, _, missed) = hub.resume(after, Scope::All).unwrap();
        assert_eq!(missed.len(), 1);
    }

    #[test]
    fn encodings_and_forms() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, zstd;q=0.5"),
        );
        assert!(accepts(&h, "zstd"));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, zstd;q=0"),
        );
        assert!(!accepts(&h, "zstd"));
        assert_eq!(
            form_fields(b"csrf=a%2Bb&ci=1&x"),
            [
                ("csrf".to_string(), "a+b".to_string()),
                ("ci".to_string(), "1".to_string()),
                ("x".to_string(), String::new())
            ]
        );
        let v = Viewer {
            name: "u".into(),
            role: "submitter".into(),
            csrf: Some("tok".into()),
        };
        assert!(v.csrf_ok("tok") && !v.csrf_ok("tok2") && !v.csrf_ok(""));
        let bearer = Viewer {
            csrf: None,
            ..v.clone()
        };
        assert!(bearer.csrf_ok(""));
        assert!(v.may_act_on(Some("u")) && !v.may_act_on(Some("w")) && !v.may_act_on(None));
    }
}
