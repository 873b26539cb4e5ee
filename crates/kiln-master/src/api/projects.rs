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

#[utoipa::path(
    get, path = "/api/v1/projects", tag = "projects", operation_id = "list_projects",
    responses((status = 200, body = Vec<ProjectView>)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn list(State(core): S) -> ApiResult<Json<Vec<ProjectView>>> {
    Ok(Json(
        project::list(&core)
            .await?
            .iter()
            .map(ProjectView::of)
            .collect(),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/projects/{name}", tag = "projects", operation_id = "show_project",
    params(("name" = String, Path, description = "The project's name")),
    responses((status = 200, body = ProjectView), (status = 404, description = "No such project", body = kiln_api::ErrorBody)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn show(State(core): S, Path(name): Path<String>) -> ApiResult<Json<ProjectView>> {
    Ok(Json(ProjectView::of(&project::get(&core, &name).await?)))
}

#[utoipa::path(
    post, path = "/api/v1/projects", tag = "projects", operation_id = "add_project",
    request_body = Project,
    responses(
        (status = 201, body = ProjectView),
        (status = 400, description = "A name, URL, ref or target that is not valid", body = kiln_api::ErrorBody),
        (status = 409, description = "exists: a project of that name exists", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
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
#[utoipa::path(
    put, path = "/api/v1/projects/{name}", tag = "projects", operation_id = "edit_project",
    params(("name" = String, Path, description = "The project's name"), EditQuery),
    request_body = Project,
    responses(
        (status = 200, body = ProjectView),
        (status = 400, description = "Not valid, or the body names another project", body = kiln_api::ErrorBody),
        (status = 404, description = "No such project", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
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

#[utoipa::path(
    delete, path = "/api/v1/projects/{name}", tag = "projects", operation_id = "remove_project",
    params(("name" = String, Path, description = "The project's name")),
    responses((status = 200, body = EmptyBody), (status = 404, description = "No such project", body = kiln_api::ErrorBody)),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn remove(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<EmptyBody>> {
    project::remove(&core, &name).await?;
    tracing::info!("project {name} removed");
    Ok(Json(EmptyBody {}))
}

#[utoipa::path(
    post, path = "/api/v1/projects/{name}/build", tag = "projects", operation_id = "build_project",
    params(("name" = String, Path, description = "The project's name")),
    request_body = ProjectBuildRequest,
    responses(
        (status = 201, body = ProjectBuilt),
        (status = 400, description = "A ref or mode that is not valid", body = kiln_api::ErrorBody),
        (status = 404, description = "No such project", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = []))
)]
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
#[utoipa::path(
    get, path = "/api/v1/projects/{name}/hooks", tag = "projects", operation_id = "project_hooks",
    params(("name" = String, Path, description = "The project's name")),
    responses((status = 200, body = HooksInfo), (status = 404, description = "No such project", body = kiln_api::ErrorBody)),
    security(("bearer" = ["admin"]), ("session" = ["admin"]))
)]
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
