//! Projects (builds from git): list, show, add, edit, remove, build, and
//! what to paste into a forge's webhook settings.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_api::{
    EditQuery, EmptyBody, ErrorCode, HooksInfo, Project, ProjectBuildRequest, ProjectBuilt,
    ProjectView, TriggerKind,
};

use super::error::{ApiError, ApiResult};
use super::session::{Admin, Submitter};
use super::views::build_view;
use super::S;
use crate::project::{self, ProjectError, TriggerRequest};

impl From<ProjectError> for ApiError {
    fn from(e: ProjectError) -> Self {
        match e {
            ProjectError::Unknown(_) => ApiError::not_found(e.to_string()),
            ProjectError::Bad(m) => ApiError::bad(m),
            ProjectError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Exists, e.to_string())
            }
            ProjectError::Store(s) => s.into(),
        }
    }
}

pub(super) async fn list(State(core): S) -> ApiResult<Json<Vec<ProjectView>>> {
    Ok(Json(
        project::list(&core)
            .await?
            .iter()
            .map(ProjectView::of)
            .collect(),
    ))
}

pub(super) async fn show(State(core): S, Path(name): Path<String>) -> ApiResult<Json<ProjectView>> {
    Ok(Json(ProjectView::of(&project::get(&core, &name).await?)))
}

pub(super) async fn add(
    State(core): S,
    _: Admin,
    Json(p): Json<Project>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    let view = ProjectView::of(&p);
    project::put(&core, p, false).await?;
    tracing::info!("project {} added", view.name);
    Ok((StatusCode::CREATED, Json(view)))
}

/// Replace a project; a body without a secret keeps the stored one (unless
/// `clear_secret`).
pub(super) async fn edit(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
    Query(q): Query<EditQuery>,
    Json(mut p): Json<Project>,
) -> ApiResult<Json<ProjectView>> {
    if p.name != name {
        return Err(ApiError::bad(format!(
            "the body names project {:?}, the path {name:?} (a project cannot be renamed)",
            p.name
        )));
    }
    let old = project::get(&core, &name).await?;
    if p.secret.is_none() && !q.clear_secret {
        p.secret = old.secret;
    }
    let view = ProjectView::of(&p);
    project::put(&core, p, true).await?;
    tracing::info!("project {name} edited");
    Ok(Json(view))
}

pub(super) async fn remove(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<EmptyBody>> {
    project::remove(&core, &name).await?;
    tracing::info!("project {name} removed");
    Ok(Json(EmptyBody {}))
}

pub(super) async fn build(
    State(core): S,
    Submitter(who): Submitter,
    Path(name): Path<String>,
    Json(req): Json<ProjectBuildRequest>,
) -> ApiResult<(StatusCode, Json<ProjectBuilt>)> {
    let (git_ref, commit) = match req.git_ref {
        Some(r) if kiln_core::git::is_commit_id(&r) => (None, Some(r)),
        r => (r, None),
    };
    let t = project::trigger_as(
        &core,
        TriggerRequest {
            project: name,
            git_ref,
            commit,
            mode: req.mode,
            kind: TriggerKind::Cli,
            delivery: None,
            sender: None,
        },
        Some(who.name),
    )
    .await?;
    let mut builds = Vec::new();
    for b in &t.builds {
        builds.push(build_view(&core, b.id).await?);
    }
    Ok((
        StatusCode::CREATED,
        Json(ProjectBuilt {
            builds,
            superseded: t.superseded,
        }),
    ))
}

/// What to paste into GitHub, GitLab, Gitea or Forgejo (the secret
/// included: admin only).
pub(super) async fn hooks(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<HooksInfo>> {
    let p = project::get(&core, &name).await?;
    let base = core.cfg.public_url(core.api_addr());
    Ok(Json(HooksInfo {
        project: p.name,
        urls: ["github", "gitlab", "gitea"]
            .iter()
            .map(|f| (f.to_string(), format!("{base}/hooks/{f}")))
            .collect(),
        secret: p.secret,
        content_type: "application/json".into(),
        events: vec!["push".into(), "tag push".into()],
        mqtt_topic: core
            .cfg
            .mqtt
            .as_ref()
            .map(|m| format!("{}/trigger", m.prefix)),
    }))
}
