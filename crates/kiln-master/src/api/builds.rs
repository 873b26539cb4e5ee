//! Builds and jobs: list, show, wait, cancel, submit.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use super::auth::{auth, Admin};
use super::error::{ApiError, ApiResult};
use super::views::{build_view, BuildView, JobView};
use super::S;

#[derive(Deserialize)]
pub(super) struct Limit {
    limit: Option<u32>,
}

pub(super) async fn list_builds(
    State(core): S,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<BuildView>>> {
    let limit = q.limit.unwrap_or(100).min(10_000);
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
            .map(|(build, jobs, artifacts)| BuildView::new(&s, build, jobs, artifacts))
            .collect(),
    ))
}

pub(super) async fn show_build(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<BuildView>> {
    Ok(Json(build_view(&core, id).await?))
}

/// Answer once the build has reached a final state.
pub(super) async fn wait_build(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<BuildView>> {
    let mut rx = core.build_done.subscribe();
    loop {
        let v = build_view(&core, id).await?;
        if v.build.state.is_final() {
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

pub(super) async fn cancel_build(
    State(core): S,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<BuildView>> {
    auth(&core, &headers)?;
    let (r, fx) = core.decide(|s, fx| s.cancel(fx, id));
    core.apply(fx).await;
    if let Err(e) = r {
        let v = build_view(&core, id).await?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_active",
            format!("{e}: it is {}", v.build.state),
        ));
    }
    Ok(Json(build_view(&core, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub srpm_sha256: String,
    pub srpm_name: String,
    pub target: Option<String>,
    pub arches: Option<Vec<String>>,
    pub channel: Option<String>,
    pub priority: Option<i64>,
    #[serde(default)]
    pub now: bool,
    #[serde(default)]
    pub scratch: bool,
    #[serde(default)]
    pub ci: bool,
}

/// Priority given by `--now`: ahead of everything submitted normally.
pub const NOW_PRIORITY: i64 = 100;

pub(super) async fn submit(
    State(core): S,
    _: Admin,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<(StatusCode, Json<BuildView>)> {
    let view = crate::submit::submit(&core, &req).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub(super) async fn list_jobs(
    State(core): S,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Vec<JobView>>> {
    let limit = q.limit.unwrap_or(100).min(10_000);
    let jobs = core
        .store
        .read(move |c| kiln_store::list_jobs(c, limit))
        .await?;
    let s = core.sched();
    Ok(Json(
        jobs.into_iter().map(|j| JobView::new(&s, j)).collect(),
    ))
}
