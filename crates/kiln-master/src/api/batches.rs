//! Batches: submit several SRPMs as one ordered batch, and show its graph.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_api::{BatchMember, BatchRequest, BatchSubmitted, BatchView};

use super::error::{ApiError, ApiResult};
use super::session::Submitter;
use super::views::build_of;
use super::S;

#[utoipa::path(
    post, path = "/api/v1/batches", tag = "batches", operation_id = "submit_batch",
    request_body = BatchRequest,
    responses(
        (status = 201, body = BatchSubmitted),
        (status = 400, description = "bad_request: a request is wrong, or the order has a cycle", body = kiln_api::ErrorBody),
        (status = 404, description = "blob_missing or not_found", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = []))
)]
pub(super) async fn submit(
    State(core): S,
    Submitter(who): Submitter,
    Json(req): Json<BatchRequest>,
) -> ApiResult<(StatusCode, Json<BatchSubmitted>)> {
    let done = crate::batch::submit_batch_as(&core, &req, Some(who.name)).await?;
    let s = core.sched();
    let builds = done
        .builds
        .into_iter()
        .map(|(b, jobs)| build_of(&s, b, jobs, vec![]))
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(BatchSubmitted {
            batch: done.batch,
            builds,
        }),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/batches/{id}", tag = "batches", operation_id = "show_batch",
    params(("id" = i64, Path, description = "The batch id")),
    responses((status = 200, body = BatchView), (status = 404, description = "No such batch", body = kiln_api::ErrorBody)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn show(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<BatchView>> {
    let (batch, builds) = core
        .store
        .read(move |c| {
            Ok(match kiln_store::get_batch(c, id)? {
                Some(b) => Some((b, kiln_store::batch_builds(c, id)?)),
                None => None,
            })
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no batch {id}")))?;
    Ok(Json(BatchView {
        id: batch.id,
        target: batch.target,
        created_at: batch.created_at,
        builds: builds
            .into_iter()
            .map(|b| BatchMember {
                id: b.id,
                package: b.package,
                evr: b.evr,
                state: b.state,
                reason: b.reason,
                waits_for: b.waits_for,
                publish: b.publish,
            })
            .collect(),
    }))
}
