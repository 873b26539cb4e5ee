//! Workers: who is connected, and revocation.

use axum::extract::{Path, State};
use axum::Json;
use kiln_api::{RevokeResponse, WorkerView};

use super::error::{ApiError, ApiResult};
use super::session::Admin;
use super::S;
use kiln_core::names::check_ident;

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

pub(super) async fn revoke_worker(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<RevokeResponse>> {
    check_ident("worker", &name).map_err(|e| ApiError::bad(e.to_string()))?;
    let n = name.clone();
    let serial = core
        .store
        .write(move |t| kiln_store::revoke_worker(t, &n))
        .await?;
    if let Some(s) = serial {
        core.revoked.revoke(s);
    }
    let ((), fx) = core.decide(|s, fx| s.evict(fx, &name));
    core.apply(fx).await;
    tracing::info!("worker {name} revoked");
    Ok(Json(RevokeResponse {
        name,
        revoked: true,
    }))
}
