//! Workers: who is connected, and revocation.

use axum::extract::{Path, State};
use axum::Json;
use kiln_api::{RevokeResponse, WorkerView};

use super::error::{ApiError, ApiResult};
use super::session::Admin;
use super::S;
use kiln_core::names::check_ident;

#[utoipa::path(
    get, path = "/api/v1/workers", tag = "workers",
    responses((status = 200, body = Vec<WorkerView>)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn list_workers(State(core): S) -> ApiResult<Json<Vec<WorkerView>>> {
    let rows = core.store.read(kiln_store::list_workers).await?;
    let live = core.sched().worker_views();
    Ok(Json(
        rows.into_iter()
            .map(|w| match live.get(&w.name) {
                Some(l) => WorkerView {
                    name: w.name,
                    arches: l.arches.clone(),
                    channels: l.channels.clone(),
                    capacity: l.capacity,
                    running: l.running.len(),
                    running_jobs: l.running.clone(),
                    connected: true,
                    draining: l.draining,
                    revoked: w.revoked,
                    last_seen: Some(kiln_store::now_ms()),
                },
                None => WorkerView {
                    name: w.name,
                    arches: w.arches,
                    channels: w.channels,
                    capacity: w.capacity,
                    running: 0,
                    running_jobs: vec![],
                    connected: false,
                    draining: false,
                    revoked: w.revoked,
                    last_seen: w.last_seen,
                },
            })
            .collect(),
    ))
}

#[utoipa::path(
    post, path = "/api/v1/workers/{name}/revoke", tag = "workers",
    params(("name" = String, Path, description = "The worker's name")),
    responses(
        (status = 200, body = RevokeResponse),
        (status = 400, description = "Not a valid worker name", body = kiln_api::ErrorBody),
        (status = 404, description = "No such worker", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn revoke_worker(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<RevokeResponse>> {
    revoke(&core, &name).await?;
    Ok(Json(RevokeResponse {
        name,
        revoked: true,
    }))
}

/// Revoke a worker: its certificate refused from now on, its connection
/// dropped, its jobs back in the queue (the API and the web page's
/// button).
pub(crate) async fn revoke(core: &crate::Core, name: &str) -> ApiResult<()> {
    check_ident("worker", name).map_err(|e| ApiError::bad(e.to_string()))?;
    let n = name.to_string();
    let nq = core.notify.worker("worker.revoked", name);
    let queued = nq.is_some();
    let serial = core
        .store
        .write(move |t| {
            let serial = kiln_store::revoke_worker(t, &n)?;
            // worker.revoked, in the same commit, when it revoked something.
            if serial.is_some() {
                crate::notify::queue(t, &nq)?;
            }
            Ok(serial)
        })
        .await?;
    if queued && serial.is_some() {
        core.notify.wake();
    }
    if let Some(s) = serial {
        core.revoked.revoke(s);
    }
    let ((), fx) = core.decide(|s, fx| s.evict(fx, name));
    core.apply(fx).await;
    tracing::info!("worker {name} revoked");
    Ok(())
}
