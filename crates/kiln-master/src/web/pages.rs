//! `/workers`, `/targets`, `/targets/T`, `/stats` and `/submit`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use maud::{html, Markup};

use super::layout::{self, Frame};
use super::{html_response, signed_in, Viewer, WebError, WebResult};
use crate::Core;

type S = State<Arc<Core>>;

const DAY_MS: i64 = 86_400_000;

fn frame<'a>(
    title: &'a str,
    page: &'static str,
    viewer: Option<&'a Viewer>,
    last_event: u64,
) -> Frame<'a> {
    Frame {
        title,
        page,
        nav: page,
        viewer,
        last_event,
        build: None,
        job: None,
    }
}

/// `GET /workers`.
pub(super) async fn workers(State(core): S, headers: HeaderMap) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let now = kiln_store::now_ms();
    let live = core.sched().worker_views();
    let rows = core.store.read(kiln_store::list_workers).await?;
    // Counted per hour: the same figures for a whole hour's views.
    let hour = now - now.rem_euclid(3_600_000);
    let store = core.store.clone();
    let outcomes = core
        .web
        .outcomes
        .get(hour, || async move {
            store
                .read(move |c| kiln_store::browse::worker_outcomes(c, hour - 7 * DAY_MS))
                .await
        })
        .await?;
    let cert_ms = i64::from(core.cfg.cert_days) * DAY_MS;
    let body = html! {
        h1 { "Workers" }
        @if rows.is_empty() {
            p.empty { "No worker enrolled. An admin creates an enrollment token with "
                code { "kiln token create --worker NAME" } " and runs " code { "kiln worker enroll" } " on the worker." }
        } @else {
            div.scroll { table.workers {
                thead { tr {
                    th { "Worker" } th { "State" } th { "Arches" } th { "Channels" } th { "Slots" }
                    th { "Running" } th { "Seen" } th { "Certificate" } th.num { "Jobs (7 days)" } th.num { "Failed" }
                    @if viewer.as_ref().is_some_and(|v| v.is_admin()) { th { } }
                } }
                tbody { @for w in &rows {
                    @let l = live.get(&w.name);
                    @let o = outcomes.iter().find(|o| o.worker == w.name);
                    tr.worker data-worker=(w.name) {
                        td { (w.name) }
                        td {
                            @if w.revoked { span.st.st-failed { "revoked" } }
                            @else if l.is_some_and(|l| l.draining) { span.st.st-queued { "draining" } }
                            @else if l.is_some() { span.st.st-succeeded { "connected" } }
                            @else { span.st.st-canceled { "offline" } }
                        }
                        td { (l.map(|l| l.arches.join(", ")).unwrap_or_else(|| w.arches.join(", "))) }
                        td { (l.map(|l| l.channels.join(", ")).unwrap_or_else(|| w.channels.join(", "))) }
                        td.num { @if let Some(l) = l { (l.running.len()) "/" (l.capacity) } @else { "–/" (w.capacity) } }
                        td { @if let Some(l) = l { @for j in &l.running { a href={ "/jobs/" (j) "/log" } { "job " (j) } " " } } }
                        td { @if l.is_some() { "now" } @else if let Some(s) = w.last_seen { (layout::ago(s, now)) } @else { "never" } }
                        td { @if let Some(e) = w.enrolled_at { "expires ≈ " (layout::datetime(e + cert_ms).get(..10).unwrap_or_default()) } @else { "–" } }
                        td.num { (o.map(|o| o.succeeded + o.failed).unwrap_or(0)) }
                        td.num {
                            @if let Some(o) = o.filter(|o| o.succeeded + o.failed > 0) {
                                (o.failed) " (" (o.failed * 100 / (o.succeeded + o.failed)) "%)"
                            } @else { "–" }
                        }
                        @if let Some(v) = viewer.as_ref().filter(|v| v.is_admin()) {
                            td { @if !w.revoked {
                                form.inline method="post" action={ "/workers/" (layout::q(&w.name)) "/revoke" } {
                                    input type="hidden" name="csrf" value=(v.csrf());
                                    button.danger type="submit" title="Refuse its certificate from now on; its jobs go back to the queue" { "Revoke" }
                                }
                            } }
                        }
                    }
                } }
            } }
        }
        @if let Some(v) = viewer.as_ref().filter(|v| v.is_admin()) {
            section.actions {
                h2 { "Enroll a worker" }
                form method="post" action="/workers/enroll" {
                    input type="hidden" name="csrf" value=(v.csrf());
                    label { "Worker name " input type="text" name="name" required pattern="[A-Za-z0-9._+-]+" size="16"; }
                    " "
                    button type="submit" { "Issue an enrollment token" }
                }
                p.muted { "The token is shown once, with the command to run on the worker; it works once, within "
                    (layout::duration(core.cfg.token_ttl_secs as i64 * 1000)) "." }
            }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(frame("Workers", "workers", viewer.as_ref(), last), body),
    ))
}

/// The admin behind a form post, or why not.
pub(super) async fn admin_form(core: &Core, headers: &HeaderMap, body: &[u8]) -> WebResult<Viewer> {
    let v = super::builds::actor(core, headers, body).await?;
    if !v.is_admin() {
        return Err(WebError::Forbidden(format!(
            "{} is not an admin; only an admin may do this",
            v.name
        )));
    }
    Ok(v)
}

/// `POST /workers/NAME/revoke` (form: `csrf`; admin).
pub(super) async fn revoke(
    State(core): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> WebResult {
    admin_form(&core, &headers, &body).await?;
    crate::api::workers::revoke(&core, &name).await?;
    Ok(super::builds::see_other("/workers".into()))
}

/// The host name the browser reached the master by (for the command to
/// paste): the configured `public_url`'s, else the request's `Host`.
fn master_host(core: &Core, headers: &HeaderMap) -> String {
    let from_url = core.cfg.public_url.as_deref().and_then(|u| {
        let rest = u.split_once("://")?.1;
        let auth = rest.split('/').next()?;
        Some(strip_port(auth).to_string())
    });
    let from_header = || {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| strip_port(h).to_string())
    };
    from_url
        .or_else(from_header)
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
        })
        .unwrap_or_else(|| "MASTER-HOST".into())
}

/// `host:port` or `[v6]:port` → the host.
fn strip_port(auth: &str) -> &str {
    if let Some(end) = auth.find(']') {
        return &auth[..=end];
    }
    auth.split(':').next().unwrap_or(auth)
}

/// `POST /workers/enroll` (form: `csrf`, `name`; admin): a one-time
/// enrollment token, shown once with the command to paste on the worker.
pub(super) async fn enroll(
    State(core): S,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> WebResult {
    let v = admin_form(&core, &headers, &body).await?;
    let name = super::form_fields(&body)
        .into_iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let (token, expires) = crate::api::tokens::enrollment_token(&core, &name).await?;
    tracing::info!("{} issued an enrollment token for worker {name}", v.name);
    let command = format!(
        "kiln worker enroll --master https://{}:{} --token {token} --dir /var/lib/kiln-worker",
        master_host(&core, &headers),
        core.worker_addr().port()
    );
    let last = core.web.last_id();
    let body = html! {
        h1 { "Enrollment token for " (name) }
        p { "Run this on the worker, as the user that runs it, before "
            (layout::datetime(expires)) " (the token works once):" }
        pre.command { code id="enroll-command" { (command) } }
        p { "Then start it with " code { "kiln worker --dir /var/lib/kiln-worker" }
            ". This token is not shown again; " a href="/workers" { "back to the workers" } "." }
    };
    let mut r = html_response(
        &headers,
        layout::page(frame("Enroll a worker", "workers", Some(&v), last), body),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(r)
}

/// `GET /targets`.
pub(super) async fn targets(State(core): S, headers: HeaderMap) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let body = html! {
        h1 { "Targets" }
        div.scroll { table {
            thead { tr { th { "Target" } th { "Arches" } th { "Channel" } th { "Dist" } th { "Builds in" } th { "Signed" } th.num { "Keeps" } } }
            tbody { @for t in &core.cfg.targets {
                tr {
                    td { a href={ "/targets/" (layout::q(&t.name)) } { (t.name) } }
                    td { (t.arches.join(", ")) }
                    td { (t.channel) }
                    td { (t.disttag) }
                    td { @if t.buildroot.is_some() { "its buildroot" } @else { "the workers' systems" } }
                    td { @if t.sign_key.is_some() { "yes" } @else { "no" } }
                    td.num { (t.keep) }
                }
            } }
        } }
    };
    Ok(html_response(
        &headers,
        layout::page(frame("Targets", "targets", viewer.as_ref(), last), body),
    ))
}

/// The `.repo` file of a target as a client reaching this master at `host`
/// sees it (the same text `GET /api/v1/targets/T/repo` answers).
pub fn repo_file_text(core: &Core, t: &crate::Target, host: &str) -> String {
    // With TLS, dnf wants the CA as a local file: the .repo file says how
    // to fetch it once from /ca.crt and check it.
    let (scheme, header_lines, ssl) = if core.cfg.api_tls {
        let fp = core
            .ca
            .fingerprint()
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        (
            "https",
            format!(
                "# This master's CA: mkdir -p /etc/pki/kiln && curl -k -o /etc/pki/kiln/ca.crt https://{host}/ca.crt\n\
                 # then check: openssl x509 -in /etc/pki/kiln/ca.crt -noout -fingerprint -sha256\n\
                 # must print sha256 Fingerprint={fp}\n"
            ),
            "sslcacert=/etc/pki/kiln/ca.crt\n",
        )
    } else {
        ("http", String::new(), "")
    };
    let base = format!("{scheme}://{host}/repos/{}", t.name);
    let gpg = if t.sign_key.is_some() {
        format!(
            "gpgcheck=1\nrepo_gpgcheck=1\ngpgkey={base}/RPM-GPG-KEY-kiln-{}\n",
            t.name
        )
    } else {
        "gpgcheck=0\nrepo_gpgcheck=0\n".to_string()
    };
    format!(
        "{header_lines}[kiln-{n}]\nname=Kiln {n} ($basearch)\nbaseurl={base}/$basearch/\nenabled=1\n{gpg}{ssl}metadata_expire=60\n\n\
         [kiln-{n}-source]\nname=Kiln {n} (source)\nbaseurl={base}/source/\nenabled=0\n{gpg}{ssl}metadata_expire=60\n",
        n = t.name
    )
}

#[derive(serde::Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    q: String,
}

/// Packages listed on a target's page at most.
const PACKAGES: u32 = 200;

/// `GET /targets/T?q=SEARCH`.
pub(super) async fn target(
    State(core): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(s): Query<Search>,
) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let t = core.cfg.target(&name).ok_or_else(|| {
        WebError::NotFound(format!("no target {}", kiln_core::names::shown(&name)))
    })?;
    let search: String = s.q.chars().take(128).collect();
    let (tname, sq) = (t.name.clone(), search.clone());
    let ((packages, total), recent) = core
        .store
        .read(move |c| {
            Ok((
                kiln_store::browse::find_packages(c, &tname, &sq, PACKAGES)?,
                kiln_store::browse::recent_publications(c, &tname, 10)?,
            ))
        })
        .await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| core.api_addr().to_string());
    let repo = repo_file_text(&core, t, &host);
    let title = format!("Target {}", t.name);
    let tq = layout::q(&t.name);
    let body = html! {
        h1 { "Target " (t.name) }
        p { (t.arches.join(", ")) " · channel " (t.channel)
            @if !t.disttag.is_empty() { " · dist " code { (t.disttag) } }
            " · keeps " (t.keep) @if t.keep == 1 { " version · " } @else { " versions · " }
            @if t.buildroot.is_some() { "builds in its buildroot" } @else { "builds on the workers' systems" } }
        section {
            h2 { "Use it" }
            p { "Save as " code { "/etc/yum.repos.d/kiln-" (t.name) ".repo" } " ("
                a href={ "/api/v1/targets/" (tq) "/repo" } { "download" } "):" }
            pre.repofile { (repo) }
            @if t.sign_key.is_some() {
                p { "Packages and metadata are signed: "
                    a href={ "/repos/" (tq) "/RPM-GPG-KEY-kiln-" (tq) } { "RPM-GPG-KEY-kiln-" (t.name) } }
            } @else {
                p.muted { "This target does not sign its packages." }
            }
            p { "Browse: " a href={ "/repos/" (tq) "/" } { "/repos/" (t.name) "/" } }
        }
        section {
            h2 { "Published packages" }
            form.filters method="get" action={ "/targets/" (tq) } {
                input type="search" name="q" value=(search) placeholder="package name contains" aria-label="Search packages";
                button type="submit" { "Search" }
            }
            p.muted { (total) " package files"
                @if !search.is_empty() { " match " code { (search) } }
                @if total > u64::from(PACKAGES) { ", the first " (PACKAGES) " shown" } "." }
            @if !packages.is_empty() {
                div.scroll { table.packages {
                    thead { tr { th { "Name" } th { "Version" } th { "Arch" } th { "Repository" } th { "Build" } } }
                    tbody { @for p in &packages {
                        tr {
                            td { a href={ "/repos/" (tq) "/" (layout::q(&p.repo)) "/" (p.file) } { (p.name) } }
                            td { @if p.epoch > 0 { (p.epoch) ":" } (p.version) "-" (p.release) }
                            td { (p.arch) }
                            td { (p.repo) }
                            td { a href={ "/builds/" (p.build) } { (p.build) } }
                        }
                    } }
                } }
            }
        }
        section {
            h2 { "Last publications" }
            @if recent.is_empty() { p.empty { "Nothing published yet." } } @else {
                div.scroll { table.publications {
                    thead { tr { th { "Build" } th { "Package" } th { "Built" } th { "Published" } th.num { "Build to repository" } } }
                    tbody { @for p in &recent {
                        tr {
                            td { a href={ "/builds/" (p.build.id) } { (p.build.id) } }
                            td.pkg { (layout::nevr(&p.build.package, &p.build.evr)) }
                            td { @if let Some(f) = p.build.finished_at { (layout::time(f)) } }
                            td { @if let Some(at) = p.published_at { (layout::time(at)) } @else { span.muted { "not recorded" } } }
                            td.num { @if let Some(ms) = p.latency_ms() { (layout::duration(ms.max(0))) } @else { "–" } }
                        }
                    } }
                } }
            }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(
            Frame {
                nav: "targets",
                ..frame(&title, "target", viewer.as_ref(), last)
            },
            body,
        ),
    ))
}

/// `GET /stats`: the statistics (`crate::stats` computes them, the same
/// figures as `/api/v1/stats`; `crate::stats_page` draws them).
pub(super) async fn stats(State(core): S, headers: HeaderMap) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let v = crate::stats::stats(&core).await?;
    let body = html! {
        h1 { "Statistics" }
        (crate::stats_page::body(&v))
        p.muted { "The same figures as JSON: " a href="/api/v1/stats" { "/api/v1/stats" } "." }
    };
    Ok(html_response(
        &headers,
        layout::page(frame("Statistics", "stats", viewer.as_ref(), last), body),
    ))
}

/// The form of `/submit` (for a user who may submit).
fn submit_form(core: &Core, v: &Viewer) -> Markup {
    let default = core.cfg.default_target().map(|t| t.name.clone());
    let arches: std::collections::BTreeSet<&String> = core
        .cfg
        .targets
        .iter()
        .flat_map(|t| t.arches.iter())
        .collect();
    html! {
        form #submit-form method="post" action="/api/v1/builds" data-csrf=(v.csrf()) {
            p { label { "Source RPM " input #srpm type="file" name="srpm" accept=".src.rpm,.rpm" required; } }
            p { label { "Target "
                select #target name="target" {
                    @for t in &core.cfg.targets {
                        option value=(t.name) data-arches=(t.arches.join(" ")) selected[default.as_deref() == Some(t.name.as_str())] { (t.name) }
                    }
                }
            } }
            fieldset #arches {
                legend { "Arches (none checked: the target's)" }
                @for a in &arches {
                    label.arch { input type="checkbox" name="arch" value=(a); " " (a) } " "
                }
            }
            p {
                label { input #scratch type="checkbox" name="scratch"; " scratch (never published)" } " "
                label { input #ci type="checkbox" name="ci"; " CI (rebuild an equal version)" }
            }
            p { label { "Priority " input #priority type="number" name="priority" value="0" min="-1000" max="1000" step="1"; } }
            p { button #submit-go type="submit" { "Upload and build" } }
            p { progress #upload-progress max="100" value="0" hidden {} " " span #submit-status role="status" {} }
        }
        noscript { p.reason { "Uploading from the browser needs JavaScript; " code { "kiln submit FILE.src.rpm" } " does the same." } }
    }
}

/// `GET /submit`: upload an SRPM from the browser (hashed there with
/// `crypto.subtle` or the script's own SHA-256, uploaded only if the master
/// lacks it, with a progress bar), then build it.
pub(super) async fn submit(State(core): S, headers: HeaderMap) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let body = html! {
        h1 { "Submit a build" }
        @match viewer.as_ref().filter(|v| v.may_submit()) {
            Some(v) => { (submit_form(&core, v)) }
            None => {
                p { @if viewer.is_some() { "Your role may not submit builds." } @else {
                    a href="/signin" { "Sign in" } " with a submitter's or an admin's token to submit a build from here." } }
                p.muted { "Or from a shell: " code { "kiln submit FILE.src.rpm" } "." }
            }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(
            Frame {
                nav: "submit",
                ..frame("Submit", "submit", viewer.as_ref(), last)
            },
            body,
        ),
    ))
}

/// `/signin?next=PATH&failed=1`.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct SigninQuery {
    next: Option<String>,
    failed: Option<String>,
}

/// `GET /signin`: paste a token once; `POST /login` opens the session.
pub(super) async fn signin(
    State(core): S,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<SigninQuery>,
) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    // Only a path of this site to go back to.
    let next = q
        .next
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'));
    let body = html! {
        h1 { "Sign in" }
        @if q.failed.is_some() {
            p.error { "That token was refused (unknown, revoked, or mistyped)." }
        }
        @if let Some(v) = &viewer {
            p { "Signed in as " strong { (v.name) } " (" (v.role) ")." }
        }
        form.signin method="post" action="/login" {
            @if let Some(n) = &next { input type="hidden" name="next" value=(n); }
            p { label { "Token " input type="password" name="token" autocomplete="current-password" required size="40"; } }
            p { button type="submit" { "Sign in" } }
        }
        p.muted { "An admin makes tokens with " code { "kiln token create --name NAME --role admin|submitter|reader" } ". "
            "Reading needs no sign-in; submitting, canceling and rebuilding do." }
    };
    Ok(html_response(
        &headers,
        layout::page(
            Frame {
                nav: "",
                ..frame("Sign in", "signin", viewer.as_ref(), last)
            },
            body,
        ),
    ))
}
