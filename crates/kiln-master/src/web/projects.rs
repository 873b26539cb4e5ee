//! `/projects` (builds from git: what each project builds, from where,
//! and how it is triggered) and `/projects/NAME`, with "Build now" for a
//! signed-in submitter or admin (`POST /projects/NAME/build`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use kiln_core::git::{GitMode, Project, TriggerKind};
use kiln_store::browse::{BuildFilter, SourceKind};
use maud::{html, Markup};

use super::layout::{self, Frame};
use super::{html_response, signed_in, WebError, WebResult};
use crate::project::{self, ProjectError, TriggerRequest};
use crate::Core;

type S = State<Arc<Core>>;

impl From<ProjectError> for WebError {
    fn from(e: ProjectError) -> WebError {
        match e {
            ProjectError::Unknown(_) => WebError::NotFound(e.to_string()),
            ProjectError::Bad(m) => WebError::BadRequest(m),
            ProjectError::Exists(_) => WebError::BadRequest(e.to_string()),
            ProjectError::Store(s) => s.into(),
        }
    }
}

fn frame<'a>(title: &'a str, viewer: Option<&'a super::Viewer>, last: u64) -> Frame<'a> {
    Frame {
        title,
        page: "projects",
        nav: "projects",
        viewer,
        last_event: last,
        build: None,
        job: None,
    }
}

fn refs(p: &Project) -> Markup {
    html! {
        code { (p.upstream) } " @ " code { (p.upstream_ref.as_deref().unwrap_or("HEAD")) }
        @if let Some(pk) = &p.packaging {
            br; "packaging " code { (pk) } " @ " code { (p.packaging_ref.as_deref().unwrap_or("HEAD")) }
        }
    }
}

/// `GET /projects`.
pub(super) async fn list(State(core): S, headers: HeaderMap) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let all = project::list(&core).await?;
    let body = html! {
        h1 { "Projects" }
        @if all.is_empty() {
            p.empty { "No project. An admin adds one with " code { "kiln project add" }
                " or a " code { "[[project]]" } " table in the master's configuration." }
        } @else {
            div.scroll { table.projects {
                thead { tr { th { "Project" } th { "Sources" } th { "Targets" } th { "Mode" } } }
                tbody { @for p in &all {
                    tr data-project=(p.name) {
                        td { a href={ "/projects/" (layout::q(&p.name)) } { (p.name) } }
                        td { (refs(p)) }
                        td { (p.targets.join(", ")) }
                        td { (p.mode.as_str()) }
                    }
                } }
            } }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(frame("Projects", viewer.as_ref(), last), body),
    ))
}

/// `GET /projects/NAME`: its settings, its latest builds, and the "Build
/// now" form.
pub(super) async fn show(
    State(core): S,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> WebResult {
    let viewer = signed_in(&core, &headers).await;
    let last = core.web.last_id();
    let p = project::get(&core, &name).await?;
    // The latest git builds, this project's among them (a project has no
    // index of its own: the newest 200 git builds are looked at).
    let f = BuildFilter {
        source: Some(SourceKind::Git),
        limit: 200,
        ..Default::default()
    };
    let page = core
        .store
        .read(move |c| kiln_store::browse::list_builds_page(c, &f))
        .await?;
    let mine: Vec<_> = page
        .builds
        .into_iter()
        .filter(|b| b.source.as_ref().is_some_and(|s| s.project == p.name))
        .take(20)
        .collect();
    let title = format!("Project {}", p.name);
    let now = kiln_store::now_ms();
    let body = html! {
        h1 { "Project " (p.name) }
        dl.facts {
            dt { "Sources" } dd { (refs(&p)) }
            @if let Some(s) = &p.spec { dt { "Spec" } dd { code { (s) } } }
            dt { "Targets" } dd { @for (i, t) in p.targets.iter().enumerate() {
                @if i > 0 { ", " } a href={ "/targets/" (layout::q(t)) } { (t) } } }
            dt { "Mode" } dd { (p.mode.as_str())
                @if p.submodules { " · with submodules" }
                @if p.tag_wins { " · the tag's version wins over the spec's" }
                @if p.cancel_superseded { " · a newer push cancels queued builds of the same branch" } }
            dt { "Webhook" } dd { @if p.secret.is_some() { "signed (secret set)" } @else { "no secret: webhooks are refused" } }
        }
        @if let Some(v) = viewer.as_ref().filter(|v| v.may_submit()) {
            section.actions {
                h2 { "Build now" }
                form method="post" action={ "/projects/" (layout::q(&p.name)) "/build" } {
                    input type="hidden" name="csrf" value=(v.csrf());
                    label { "Ref " input type="text" name="ref" size="24"
                        placeholder=(p.upstream_ref.as_deref().unwrap_or("HEAD"))
                        title="a branch, a tag (refs/tags/v1.2) or a commit id; empty: the project's own"; }
                    " "
                    label { "Mode " select name="mode" {
                        option value="" { "default (" (p.mode.as_str()) ", release for a tag)" }
                        option value="ci" { "ci" }
                        option value="release" { "release" }
                    } }
                    " "
                    button type="submit" { "Build now" }
                }
            }
        }
        section {
            h2 { "Latest builds" }
            @if mine.is_empty() { p.empty { "None among the latest builds from git." } }
            @else { (super::builds::table(&mine, now)) }
        }
    };
    Ok(html_response(
        &headers,
        layout::page(frame(&title, viewer.as_ref(), last), body),
    ))
}

/// `POST /projects/NAME/build` (form: `csrf`, `ref`, `mode`): as `kiln
/// project build`, recorded as started from the web by the signed-in
/// token; answers with the first build's page.
pub(super) async fn build(
    State(core): S,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> WebResult {
    let v = super::builds::actor(&core, &headers, &body).await?;
    if !v.may_submit() {
        return Err(WebError::Forbidden(format!(
            "{} is a reader; starting a build needs a submitter or admin token",
            v.name
        )));
    }
    let fields = super::form_fields(&body);
    let field = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mode = match field("mode") {
        None => None,
        Some(m) => Some(m.parse::<GitMode>().map_err(WebError::BadRequest)?),
    };
    let (git_ref, commit) = match field("ref") {
        Some(r) if kiln_core::git::is_commit_id(&r) => (None, Some(r)),
        r => (r, None),
    };
    let t = project::trigger_as(
        &core,
        TriggerRequest {
            project: name.clone(),
            git_ref,
            commit,
            mode,
            kind: TriggerKind::Web,
            delivery: None,
            sender: None,
        },
        Some(v.name.clone()),
    )
    .await?;
    tracing::info!("{} started project {name} from the web", v.name);
    Ok(super::builds::see_other(match t.builds.first() {
        Some(b) => format!("/builds/{}", b.id),
        None => format!("/projects/{}", layout::q(&name)),
    }))
}
