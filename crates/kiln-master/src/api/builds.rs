//! Builds and jobs: list, show, wait, cancel, submit.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_api::{BuildView, ErrorCode, JobView, ListQuery, SubmitRequest};

use super::error::{ApiError, ApiResult};
use super::session::{Role, Submitter};
use super::views::{build_of, build_view, job};
use super::S;

/// How many a listing shows: 100 unless asked, at most 10 000.
fn limit(q: &ListQuery) -> u32 {
    q.limit.unwrap_or(100).min(10_000)
}

#[utoipa::path(
    get, path = "/api/v1/builds", tag = "builds",
    params(kiln_api::ListQuery),
    responses((status = 200, description = "Builds, newest first", body = Vec<BuildView>)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn list_builds(
    State(core): S,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<BuildView>>> {
    let limit = limit(&q);
    let rows = core
        .store
        .read(move |c| {
            let builds = kiln_store::list_builds(c, limit)?;
            builds
                .into_iter()
                .map(|b| {
                    let jobs = kiln_store::jobs_of(c, b.id)?;
                    let arts = kiln_store::artifacts_of(c, b.id)?;
                    Ok((b, jobs, arts))
                })
                .collect::<kiln_store::Result<Vec<_>>>()
        })
        .await?;
    let s = core.sched();
    Ok(Json(
        rows.into_iter()
            .map(|(build, jobs, artifacts)| build_of(&s, build, jobs, artifacts))
            .collect(),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/builds/{id}", tag = "builds",
    params(("id" = i64, Path, description = "The build id")),
    responses((status = 200, body = BuildView), (status = 404, description = "No such build", body = kiln_api::ErrorBody)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn show_build(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<BuildView>> {
    Ok(Json(build_view(&core, id).await?))
}

/// Answer once the build has reached a final state.
#[utoipa::path(
    get, path = "/api/v1/builds/{id}/wait", tag = "builds",
    params(("id" = i64, Path, description = "The build id")),
    responses((status = 200, description = "The build, once final", body = BuildView), (status = 404, description = "No such build", body = kiln_api::ErrorBody)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn wait_build(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<BuildView>> {
    let mut rx = core.build_done.subscribe();
    loop {
        let v = build_view(&core, id).await?;
        if v.state.is_final() {
            return Ok(Json(v));
        }
        loop {
            match rx.recv().await {
                Ok(b) if b == id => break,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(_) => return Err(ApiError::internal("the master is stopping")),
            }
        }
    }
}

/// Cancel a build: an admin any, a submitter its own (403 otherwise).
#[utoipa::path(
    post, path = "/api/v1/builds/{id}/cancel", tag = "builds",
    params(("id" = i64, Path, description = "The build id")),
    responses(
        (status = 200, description = "The build, canceled", body = BuildView),
        (status = 404, description = "No such build", body = kiln_api::ErrorBody),
        (status = 409, description = "not_active: the build has already ended", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = []))
)]
pub(super) async fn cancel_build(
    State(core): S,
    Submitter(who): Submitter,
    Path(id): Path<i64>,
) -> ApiResult<Json<BuildView>> {
    if who.role != Role::Admin {
        let b = core
            .store
            .read(move |c| kiln_store::get_build(c, id))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
        who.may_act_on(id, b.submitter.as_deref())?;
    }
    let (r, fx) = core.decide(|s, fx| s.cancel(fx, id));
    core.apply(fx).await;
    if let Err(e) = r {
        let v = build_view(&core, id).await?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NotActive,
            format!("{e}: it is {}", v.state),
        ));
    }
    Ok(Json(build_view(&core, id).await?))
}

/// Submit a build; it records the caller's token name as its submitter.
#[utoipa::path(
    post, path = "/api/v1/builds", tag = "builds", operation_id = "submit_build",
    request_body = SubmitRequest,
    responses(
        (status = 201, description = "The build (state skipped, with its reason, when the version gate skipped it)", body = BuildView),
        (status = 400, description = "bad_request: the request or the SRPM is wrong", body = kiln_api::ErrorBody),
        (status = 404, description = "blob_missing: upload the SRPM (PUT /api/v1/blobs/{sha256}), then submit again; or not_found", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = []))
)]
pub(super) async fn submit(
    State(core): S,
    Submitter(who): Submitter,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<(StatusCode, Json<BuildView>)> {
    let done = crate::submit::submit_as(&core, &req, Some(who.name)).await?;
    let view = build_of(&core.sched(), done.build, done.jobs, vec![]);
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(
    get, path = "/api/v1/jobs", tag = "jobs",
    params(kiln_api::ListQuery),
    responses((status = 200, description = "Jobs, newest first", body = Vec<JobView>)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn list_jobs(
    State(core): S,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<JobView>>> {
    let limit = limit(&q);
    let jobs = core
        .store
        .read(move |c| kiln_store::list_jobs(c, limit))
        .await?;
    let s = core.sched();
    Ok(Json(jobs.into_iter().map(|j| job(&s, j)).collect()))
}
