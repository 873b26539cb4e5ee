//! `/builds` (filtered, paginated by keyset), `/builds/ID` (everything
//! about one build), its files (`/builds/ID/files/ARCH/NAME`), and the
//! actions of a signed-in user (cancel, rebuild).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use kiln_core::state::{ArtifactKind, BuildState, JobState};
use kiln_store::browse::{BuildFilter, SourceKind};
use kiln_store::{ArtifactRow, BuildRow, JobRow};
use maud::{html, Markup};

use super::layout::{self, Frame};
use super::{html_response, signed_in, Viewer, WebError, WebResult};
use crate::Core;

type S = State<Arc<Core>>;

/// Builds per page of the list.
const PAGE: u32 = 50;

/// A table of builds, newest first (the list, the dashboard's latest).
pub(super) fn table(builds: &[BuildRow], now: i64) -> Markup {
    html! {
        div.scroll {
            table.builds {
                thead { tr { th { "Build" } th { "Package" } th { "Target" } th { "State" } th { "Source" } th { "By" } th { "Created" } th { "Took" } } }
                tbody {
                    @for b in builds {
                        tr data-build=(b.id) {
                            td { a href={ "/builds/" (b.id) } { (b.id) } }
                            td.pkg { a href={ "/builds/" (b.id) } { (layout::nevr(&b.package, &b.evr)) } }
                            td { a href={ "/targets/" (layout::q(&b.target)) } { (b.target) } }
                            td { span class={ "st bstate st-" (b.state) } { (b.state) } }
                            td { @if let Some(s) = &b.source { "git: " (s.project) } @else { "upload" } }
                            td {
                                @if let Some(who) = &b.submitter {
                                    a href={ "/builds?submitter=" (layout::q(who)) } { (who) }
                                } @else if let Some(s) = &b.source {
                                    span.muted { (s.trigger.as_str()) }
                                }
                            }
                            td { (layout::time(b.created_at)) }
                            td {
                                @if let Some(f) = b.finished_at {
                                    (layout::duration(f - b.created_at))
                                } @else {
                                    span.muted { (layout::duration(now - b.created_at)) "…" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    package: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    submitter: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    before: Option<i64>,
}

impl ListQuery {
    /// The query string of these filters (without the cursor).
    fn filters(&self) -> String {
        [
            ("state", &self.state),
            ("target", &self.target),
            ("package", &self.package),
            ("source", &self.source),
            ("submitter", &self.submitter),
            ("from", &self.from),
            ("to", &self.to),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", layout::q(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// `YYYY-MM-DD` → Unix ms at its start (UTC).
fn day_ms(s: &str) -> Result<i64, WebError> {
    let bad = || {
        WebError::BadRequest(format!(
            "{} is not a date (YYYY-MM-DD)",
            kiln_core::names::shown(s)
        ))
    };
    let mut it = s.splitn(3, '-');
    let (y, m, d) = (it.next(), it.next(), it.next());
    let (Some(y), Some(m), Some(d)) = (y, m, d) else {
        return Err(bad());
    };
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(layout::days_from_civil(y, m, d) * 86_400_000)
}

fn filter_of(q: &ListQuery) -> Result<BuildFilter, WebError> {
    let bad = |e: String| WebError::BadRequest(e);
    let mut f = BuildFilter {
        before: q.before,
        limit: PAGE,
        ..Default::default()
    };
    if !q.state.is_empty() {
        f.state = Some(q.state.parse::<BuildState>().map_err(bad)?);
    }
    if !q.target.is_empty() {
        kiln_core::names::check_ident("target", &q.target).map_err(|e| bad(e.to_string()))?;
        f.target = Some(q.target.clone());
    }
    if !q.package.is_empty() {
        let (name, prefix) = match q.package.strip_suffix('*') {
            Some(p) => (p, true),
            None => (q.package.as_str(), false),
        };
        if !name.is_empty() {
            kiln_core::names::check_ident("package", name).map_err(|e| bad(e.to_string()))?;
            f.package = Some(name.to_string());
            f.package_prefix = prefix;
        }
    }
    f.source = match q.source.as_str() {
        "" => None,
        "upload" => Some(SourceKind::Upload),
        "git" => Some(SourceKind::Git),
        other => {
            return Err(bad(format!(
                "source {} is neither upload nor git",
                kiln_core::names::shown(other)
            )))
        }
    };
    if !q.submitter.is_empty() {
        kiln_core::names::check_ident("submitter", &q.submitter).map_err(|e| bad(e.to_string()))?;
        f.submitter = Some(q.submitter.clone());
    }
    if !q.from.is_empty() {
        f.from_ms = Some(day_ms(&q.from)?);
    }
    if !q.to.is_empty() {
        // The last day given is included.
        f.to_ms = Some(day_ms(&q.to)? + 86_400_000);
    }
    Ok(f)
}

const STATES: &[&str] = &[
    "waiting",
    "queued",
    "building",
    "succeeded",
    "failed",
    "canceled",
    "skipped",
];

/// `GET /builds`.
pub(super) async fn list(
    State(core): S,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let f = filter_of(&q)?;
    let last = core.web.last_id();
    let page = core
        .store
        .read(move |c| kiln_store::browse::list_builds_page(c, &f))
        .await?;
    let now = kiln_store::now_ms();
    let filters = q.filters();
    let targets: Vec<&str> = core.cfg.targets.iter().map(|t| t.name.as_str()).collect();
    let body = html! {
        h1 { "Builds" }
        form.filters method="get" action="/builds" {
            label { "State " select name="state" {
                option value="" { "any" }
                @for s in STATES { option value=(s) selected[q.state == *s] { (s) } }
            } }
            label { "Target " select name="target" {
                option value="" { "any" }
                @for t in &targets { option value=(t) selected[q.target == *t] { (t) } }
            } }
            label { "Package " input type="text" name="package" value=(q.package) placeholder="name or prefix*" size="14"; }
            label { "Source " select name="source" {
                option value="" { "any" }
                option value="upload" selected[q.source == "upload"] { "upload" }
                option value="git" selected[q.source == "git"] { "git" }
            } }
            label { "Submitter " input type="text" name="submitter" value=(q.submitter) placeholder="token name" size="10"; }
            label { "From " input type="date" name="from" value=(q.from); }
            label { "To " input type="date" name="to" value=(q.to); }
            button type="submit" { "Filter" }
            @if !filters.is_empty() { " " a href="/builds" { "clear" } }
        }
        @if page.builds.is_empty() {
            p.empty { "No build matches." }
        } @else {
            (table(&page.builds, now))
        }
        nav.pager {
            @if q.before.is_some() {
                a href={ "/builds?" (filters) } { "← newest" }
            }
            @if let Some(next) = page.next {
                a href={ "/builds?" (filters) @if !filters.is_empty() { "&" } "before=" (next) } { "older →" }
            }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(
            Frame {
                title: "Builds",
                page: "builds",
                nav: "builds",
                viewer: viewer.as_ref(),
                last_event: last,
                build: None,
                job: None,
            },
            body,
        ),
    ))
}

/// Everything the build page shows, read in one go.
struct BuildData {
    b: BuildRow,
    jobs: Vec<JobRow>,
    artifacts: Vec<ArtifactRow>,
    published: Vec<(String, String)>,
    newest: Option<String>,
    /// Per job: the last successful duration of its package on its arch.
    expected: Vec<Option<i64>>,
}

async fn read_build(core: &Core, id: i64) -> WebResult<BuildData> {
    core.store
        .read(move |c| {
            let Some(b) = kiln_store::get_build(c, id)? else {
                return Err(kiln_store::StoreError::NotFound(format!("no build {id}")));
            };
            let jobs = kiln_store::jobs_of(c, id)?;
            let expected = jobs
                .iter()
                .map(|j| {
                    if b.package.is_empty() {
                        Ok(None)
                    } else {
                        kiln_store::browse::last_success_duration(c, &b.package, &j.arch, b.id)
                    }
                })
                .collect::<kiln_store::Result<Vec<_>>>()?;
            Ok(BuildData {
                artifacts: kiln_store::artifacts_of(c, id)?,
                published: kiln_store::browse::published_files(c, id)?,
                newest: if b.package.is_empty() {
                    None
                } else {
                    kiln_store::newest_evr(c, &b.target, &b.package)?
                },
                expected,
                jobs,
                b,
            })
        })
        .await
        .map_err(WebError::from)
}

/// The rows of a build's jobs (the build page; the dashboard's running
/// builds use the same classes).
pub(super) fn jobs_table(
    jobs: &[JobRow],
    expected: &[Option<i64>],
    waiting: &[Option<String>],
    now: i64,
) -> Markup {
    html! {
        div.scroll {
            table.jobs {
                thead { tr { th { "Job" } th { "Arch" } th { "State" } th { "Worker" } th { "Attempt" } th { "Started" } th { "Took" } th { "Progress" } th { "Log" } } }
                tbody {
                    @for (i, j) in jobs.iter().enumerate() {
                        tr.job #{ "job-" (j.id) } data-job=(j.id) data-arch=(j.arch) data-state=(j.state) {
                            td { (j.id) }
                            td.arch { (j.arch) }
                            td { span class={ "st jstate st-" (j.state) } { (j.state) } }
                            td.worker { @if let Some(w) = &j.worker { (w) } @else { "–" } }
                            td.attempt { (j.attempt) }
                            td { (layout::time_opt(j.started_at)) }
                            td {
                                @if let (Some(s), Some(f)) = (j.started_at, j.finished_at) { (layout::duration(f - s)) } @else { "–" }
                            }
                            td.prog {
                                @if matches!(j.state, JobState::Assigned | JobState::Running) {
                                    (layout::progress(j.started_at, expected.get(i).copied().flatten(), now))
                                } @else if j.state == JobState::Pending {
                                    span.muted { "waiting" }
                                } @else {
                                    "–"
                                }
                            }
                            td { a href={ "/jobs/" (j.id) "/log" } { "log" } }
                        }
                        @let why = waiting.get(i).cloned().flatten();
                        @if why.is_some() || j.message.is_some() {
                            tr.jobnote data-job=(j.id) {
                                td {}
                                td colspan="8" {
                                    @if let Some(w) = why { span.why { "Waits: " (w) } }
                                    @if let Some(m) = &j.message { span.msg { (m) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Where a build from git took its sources.
pub(super) fn source_section(s: &kiln_core::git::BuildSource) -> Markup {
    html! {
        section.source {
            h2 { "Source" }
            dl {
                dt { "Project" } dd { (s.project) " (" (s.mode.as_str()) ")" }
                dt { "Upstream" } dd { code { (s.upstream) } " at " code { (s.git_ref) } }
                dt { "Upstream commit" } dd {
                    @if let Some(c) = &s.upstream_commit { code.sha { (c) } } @else { "not fetched yet" }
                }
                @if let Some(p) = &s.packaging {
                    dt { "Packaging" } dd { code { (p) } @if let Some(r) = &s.packaging_ref { " at " code { (r) } } }
                    dt { "Packaging commit" } dd {
                        @if let Some(c) = &s.packaging_commit { code.sha { (c) } } @else { "not fetched yet" }
                    }
                }
                @if let Some(spec) = &s.spec { dt { "Spec" } dd { code { (spec) } } }
                @if let Some(v) = &s.version { dt { "Version" } dd { (v) @if let Some(r) = &s.release { "-" (r) } } }
                dt { "Trigger" } dd {
                    (s.trigger.as_str())
                    @if let Some(d) = &s.delivery { ", delivery " code { (d) } }
                    @if let Some(who) = &s.sender { ", sent by " (who) }
                }
            }
        }
    }
}

/// `GET /builds/ID`.
pub(super) async fn show(State(core): S, headers: HeaderMap, Path(id): Path<i64>) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let d = read_build(&core, id).await?;
    let waiting: Vec<Option<String>> = {
        let s = core.sched();
        d.jobs.iter().map(|j| s.waiting_reason(j.id)).collect()
    };
    let now = kiln_store::now_ms();
    let b = &d.b;
    let title = format!("Build {}: {}", b.id, layout::nevr(&b.package, &b.evr));
    let active = !b.state.is_final();
    let target = core.cfg.target(&b.target);
    let body = html! {
        h1 { "Build " (b.id) " " span.nevr { (layout::nevr(&b.package, &b.evr)) } " "
            span #build-state class={ "st bstate st-" (b.state) } data-build=(b.id) { (b.state) } }
        @if let Some(r) = &b.reason { p.reason { (r) } }
        section.facts {
            dl {
                dt { "Target" } dd { a href={ "/targets/" (layout::q(&b.target)) } { (b.target) } " (channel " (b.channel) @if !b.disttag.is_empty() { ", dist " (b.disttag) } ")" }
                dt { "Submitted" } dd {
                    (layout::time(b.created_at))
                    @if let Some(s) = &b.submitter { " by " strong { (s) } }
                    @match &b.source {
                        Some(s) => { " via " (s.trigger.as_str()) @if let Some(d) = &s.delivery { " (delivery " code { (d) } ")" } @if let Some(who) = &s.sender { ", sent by " (who) } }
                        None => { " as an uploaded SRPM" }
                    }
                }
                dt { "Finished" } dd {
                    @match b.finished_at {
                        Some(f) => { (layout::time(f)) " · took " (layout::duration(f - b.created_at)) }
                        None => { "not yet (" (layout::duration(now - b.created_at)) " so far)" }
                    }
                }
                dt { "Options" } dd {
                    "priority " (b.priority)
                    @if b.scratch { " · scratch (never published)" }
                    @if b.ci { " · CI (an equal version is rebuilt)" }
                }
                dt { "SRPM" } dd {
                    @if b.srpm_name.is_empty() { "not made yet (its srpm job makes it from git)" } @else {
                        (b.srpm_name) " · " (layout::size(b.srpm_size)) br; code.sha { (b.srpm_sha256) }
                    }
                }
                dt { "Version gate" } dd {
                    @if b.state == BuildState::Skipped {
                        "skipped" @if let Some(r) = &b.reason { ": " (r) }
                    } @else if b.package.is_empty() {
                        "decided once the SRPM is made"
                    } @else {
                        "passed" @if b.ci { " (CI: equal versions rebuilt)" }
                    }
                    @if let Some(n) = &d.newest { br; span.muted { "newest succeeded in " (b.target) " now: " (layout::nevr(&b.package, n)) } }
                }
                @if let Some(batch) = b.batch {
                    dt { "Batch" } dd { a href={ "/api/v1/batches/" (batch) } { (batch) } }
                }
                @if !b.waits_for.is_empty() {
                    dt { "Waits for" } dd { @for w in &b.waits_for { a href={ "/builds/" (w) } { (w) } " " } }
                }
                @if !b.excluded_arches.is_empty() {
                    dt { "Not built for" } dd { @for e in &b.excluded_arches { (e.arch) ": " (e.reason) br; } }
                }
            }
        }
        @if let Some(s) = &b.source { (source_section(s)) }
        section {
            h2 { "Jobs" }
            @if d.jobs.is_empty() { p.empty { "No job." } } @else { (jobs_table(&d.jobs, &d.expected, &waiting, now)) }
        }
        section {
            h2 { "Artifacts" }
            @if d.artifacts.is_empty() { p.empty { "None yet." } } @else {
                div.scroll { table.artifacts {
                    thead { tr { th { "Arch" } th { "File" } th { "Kind" } th { "Size" } th { "sha256" } } }
                    tbody {
                        @for a in &d.artifacts {
                            tr {
                                td { (a.arch) }
                                td { a href={ "/builds/" (b.id) "/files/" (layout::q(&a.arch)) "/" (layout::q(&a.name)) } { (a.name) } }
                                td { (a.kind) }
                                td.num { (layout::size(a.size)) }
                                td { code.sha { (a.sha256) } }
                            }
                        }
                    }
                } }
            }
        }
        section.publication {
            h2 { "Publication" }
            p {
                @match b.publish {
                    Some(p) => { span class={ "st pstate st-" (p) } { (p) } }
                    None if b.scratch => { "never (scratch build)" }
                    None => { "not queued (only a succeeded build is published)" }
                }
                @if let Some(e) = &b.publish_error { " " span.reason { (e) } }
            }
            @if target.is_some() {
                p { "Repository: " a href={ "/repos/" (layout::q(&b.target)) "/" } { "/repos/" (b.target) "/" }
                    " · " a href={ "/targets/" (layout::q(&b.target)) } { ".repo file" } }
            }
            @if !d.published.is_empty() {
                ul.files { @for (repo, file) in &d.published {
                    li { a href={ "/repos/" (layout::q(&b.target)) "/" (layout::q(repo)) "/" (file) } { (repo) "/" (file) } }
                } }
            }
        }
        @if let Some(v) = viewer.as_ref().filter(|v| v.may_act_on(b.submitter.as_deref())) {
            section.actions {
                h2 { "Actions" }
                @if active {
                    form.inline method="post" action={ "/builds/" (b.id) "/cancel" } {
                        input type="hidden" name="csrf" value=(v.csrf());
                        button.danger type="submit" { "Cancel" }
                    }
                }
                @if !b.srpm_sha256.is_empty() {
                    form.inline method="post" action={ "/builds/" (b.id) "/rebuild" } {
                        input type="hidden" name="csrf" value=(v.csrf());
                        button type="submit" { "Rebuild" }
                    }
                    form.inline method="post" action={ "/builds/" (b.id) "/rebuild" } {
                        input type="hidden" name="csrf" value=(v.csrf());
                        input type="hidden" name="ci" value="1";
                        button type="submit" { "Rebuild with --ci" }
                    }
                }
            }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(
            Frame {
                title: &title,
                page: "build",
                nav: "builds",
                viewer: viewer.as_ref(),
                last_event: last,
                build: Some(b.id),
                job: None,
            },
            body,
        ),
    ))
}

/// `GET /builds/ID/files/ARCH/NAME`: an artifact the build lists, from
/// `incoming/`; a regular file only (no link followed), never shown as a
/// page (a log is plain text, anything else an attachment). Ranges and
/// conditional requests as `ServeFile` does them.
pub(super) async fn file(
    State(core): S,
    Path((id, arch, name)): Path<(i64, String, String)>,
    req: Request,
) -> WebResult {
    use tower::ServiceExt;
    kiln_core::names::check_file_name(&name).map_err(|e| WebError::BadRequest(e.to_string()))?;
    if arch != crate::sched::SRC_ARCH {
        kiln_core::names::check_arch(&arch).map_err(|e| WebError::BadRequest(e.to_string()))?;
    }
    let (a, n) = (arch.clone(), name.clone());
    let (art, image) = core
        .store
        .read(move |c| {
            let art = kiln_store::artifacts_of(c, id)?
                .into_iter()
                .find(|x| x.arch == a && x.name == n);
            // An image build's files are kept under images/, by recipe.
            let image = match &art {
                Some(_) => kiln_store::get_build(c, id)?
                    .filter(|b| b.image.is_some())
                    .map(|b| b.package),
                None => None,
            };
            Ok(art.map(|art| (art, image)))
        })
        .await?
        .ok_or_else(|| WebError::NotFound(format!("build {id} has no file {arch}/{name}")))?;
    let dir = match &image {
        Some(recipe) => core.paths.image_files(recipe, id, &arch),
        None => core.paths.incoming(id, &arch),
    };
    let path = dir.join(&name);
    let p = path.clone();
    let ok = tokio::task::spawn_blocking(move || {
        std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file())
    })
    .await
    .unwrap_or(false);
    if !ok {
        return Err(WebError::NotFound(format!(
            "the file {arch}/{name} of build {id} is no longer kept"
        )));
    }
    let mut r = tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await
        .map_err(|e| WebError::Internal(format!("reading {name}: {e}")))?
        .map(axum::body::Body::new);
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if art.kind == ArtifactKind::Log {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    } else {
        let ct = if art.kind == ArtifactKind::Listing {
            "application/json"
        } else {
            "application/octet-stream"
        };
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        // check_file_name allowed no control character and no path; quotes
        // and backslashes are left out of the suggested name.
        let safe: String = name
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && c.is_ascii() && !c.is_ascii_control())
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(r)
}

/// The signed-in user of an action, with the form's CSRF token checked.
pub(super) async fn actor(core: &Core, headers: &HeaderMap, body: &[u8]) -> WebResult<Viewer> {
    let v = signed_in(core, headers)
        .await
        .ok_or_else(|| WebError::Forbidden("sign in to do this".into()))?;
    let csrf = super::form_fields(body)
        .into_iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v)
        .unwrap_or_default();
    if !v.csrf_ok(&csrf) {
        return Err(WebError::Forbidden(
            "the form's CSRF token is missing or stale: reload the page".into(),
        ));
    }
    Ok(v)
}

pub(super) fn see_other(to: String) -> Response {
    Redirect::to(&to).into_response()
}

/// `POST /builds/ID/cancel` (form: `csrf`).
pub(super) async fn cancel(
    State(core): S,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> WebResult {
    let v = actor(&core, &headers, &body).await?;
    let b = core
        .store
        .read(move |c| kiln_store::get_build(c, id))
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no build {id}")))?;
    if !v.may_act_on(b.submitter.as_deref()) {
        return Err(WebError::Forbidden(format!(
            "{} may not cancel build {id}",
            v.name
        )));
    }
    let (r, fx) = core.decide(|s, fx| s.cancel(fx, id));
    core.apply(fx).await;
    if let Err(e) = r {
        return Err(WebError::BadRequest(e.to_string()));
    }
    Ok(see_other(format!("/builds/{id}")))
}

/// `POST /builds/ID/rebuild` (form: `csrf`, `ci=1` for a CI build): the
/// same SRPM, target, arches, channel and priority, as a new build.
pub(super) async fn rebuild(
    State(core): S,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> WebResult {
    let v = actor(&core, &headers, &body).await?;
    let ci = super::form_fields(&body)
        .iter()
        .any(|(k, val)| k == "ci" && val == "1");
    let (b, jobs) = core
        .store
        .read(move |c| {
            Ok(match kiln_store::get_build(c, id)? {
                Some(b) => Some((b, kiln_store::jobs_of(c, id)?)),
                None => None,
            })
        })
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no build {id}")))?;
    if !v.may_act_on(b.submitter.as_deref()) {
        return Err(WebError::Forbidden(format!(
            "{} may not rebuild build {id}",
            v.name
        )));
    }
    if b.srpm_sha256.is_empty() {
        return Err(WebError::BadRequest(format!("build {id} has no SRPM yet")));
    }
    let arches: Vec<String> = jobs
        .iter()
        .map(|j| j.arch.clone())
        .filter(|a| a != crate::sched::SRC_ARCH)
        .collect();
    let req = kiln_api::SubmitRequest {
        srpm_sha256: b.srpm_sha256.clone(),
        srpm_name: b.srpm_name.clone(),
        target: Some(b.target.clone()),
        arches: (!arches.is_empty()).then_some(arches),
        channel: Some(b.channel.clone()),
        priority: Some(b.priority),
        now: false,
        scratch: b.scratch,
        ci,
    };
    let done = crate::submit::submit_as(&core, &req, Some(v.name.clone()))
        .await
        .map_err(|e| WebError::BadRequest(e.to_string()))?;
    Ok(see_other(format!("/builds/{}", done.build.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        let q = ListQuery {
            state: "failed".into(),
            package: "lib*".into(),
            from: "2026-01-31".into(),
            to: "2026-02-01".into(),
            ..Default::default()
        };
        let f = filter_of(&q).unwrap();
        assert_eq!(f.state, Some(BuildState::Failed));
        assert_eq!(
            (f.package.as_deref(), f.package_prefix),
            (Some("lib"), true)
        );
        assert_eq!(f.to_ms.unwrap() - f.from_ms.unwrap(), 2 * 86_400_000);
        assert_eq!(
            q.filters(),
            "state=failed&package=lib*&from=2026-01-31&to=2026-02-01"
        );
        for bad in [
            ListQuery {
                state: "done".into(),
                ..Default::default()
            },
            ListQuery {
                package: "<script>".into(),
                ..Default::default()
            },
            ListQuery {
                from: "yesterday".into(),
                ..Default::default()
            },
            ListQuery {
                source: "ftp".into(),
                ..Default::default()
            },
        ] {
            assert!(filter_of(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_git_source_is_shown_escaped() {
        let src = kiln_core::git::BuildSource {
            project: "p".into(),
            upstream: "https://example.com/<x>.git".into(),
            git_ref: "<img src=x onerror=alert(1)>".into(),
            upstream_commit: Some("a".repeat(40)),
            trigger: kiln_core::git::TriggerKind::Webhook,
            delivery: Some("d-1".into()),
            ..Default::default()
        };
        let h = source_section(&src).into_string();
        assert!(
            h.contains("&lt;img src=x onerror=alert(1)&gt;") && !h.contains("<img"),
            "{h}"
        );
        assert!(
            h.contains("webhook") && h.contains("d-1") && h.contains(&"a".repeat(40)),
            "{h}"
        );
    }

    #[test]
    fn what_comes_from_users_is_escaped() {
        let nb = kiln_store::NewBuild {
            target: "t".into(),
            package: "<b>pkg</b>".into(),
            evr: "1-1".into(),
            srpm_name: "x.src.rpm".into(),
            srpm_sha256: "ab".into(),
            srpm_size: 1,
            channel: "default".into(),
            disttag: String::new(),
            priority: 0,
            scratch: false,
            ci: false,
            excluded: vec![],
            arches: vec!["x86_64".into()],
            batch: None,
            waits_for: vec![],
            source: None,
            submitter: None,
        };
        let (b, mut jobs) = kiln_store::new_rows(&nb, 1, &[2]);
        jobs[0].message = Some("<script>alert(1)</script>".into());
        let t = table(&[b], 0).into_string();
        assert!(
            t.contains("&lt;b&gt;pkg&lt;/b&gt;") && !t.contains("<b>pkg"),
            "{t}"
        );
        let j = jobs_table(&jobs, &[None], &[Some("<i>why</i>".into())], 0).into_string();
        assert!(
            j.contains("&lt;script&gt;") && !j.contains("<script>"),
            "{j}"
        );
        assert!(
            j.contains("&lt;i&gt;why") && j.contains(r#"data-arch="x86_64""#),
            "{j}"
        );
    }
}
