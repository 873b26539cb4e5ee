//! `/api/v1/notify`: the sinks and their outboxes, a test delivery, and a
//! retry of dead notifications (types in `kiln_api::notify`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use kiln_api::notify::{RetryAnswer, SinkView, TestAnswer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::session::{Admin, Reader};
use crate::api::ApiError;
use crate::shared::Core;

type S = State<Arc<Core>>;

/// Registered through utoipa-axum (see `api/openapi.rs`): the route and
/// its document entry come from the same attribute.
pub(super) fn routes() -> OpenApiRouter<Arc<Core>> {
    OpenApiRouter::new()
        .routes(routes!(list_sinks))
        .routes(routes!(test_sink))
        .routes(routes!(retry_sink))
}

fn sink_of(core: &Core, name: &str) -> Result<Arc<super::Sink>, ApiError> {
    core.notify
        .sink(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no notification sink {name:?}")))
}

#[utoipa::path(
    get, path = "/api/v1/notify", tag = "notify",
    responses((status = 200, body = Vec<SinkView>), (status = 401, description = "No credential", body = kiln_api::ErrorBody)),
    security(("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn list_sinks(State(core): S, _: Reader) -> Result<Json<Vec<SinkView>>, ApiError> {
    Ok(Json(sink_views(&core).await?))
}

/// Every sink with its outbox's figures (the API and the web page).
pub(crate) async fn sink_views(core: &Core) -> kiln_store::Result<Vec<SinkView>> {
    let names: Vec<String> = core
        .notify
        .sinks
        .iter()
        .map(|s| s.cfg.name.clone())
        .collect();
    let counts = core
        .store
        .read(move |c| {
            names
                .iter()
                .map(|n| kiln_store::notify::sink_counts(c, n))
                .collect::<kiln_store::Result<Vec<_>>>()
        })
        .await?;
    Ok(core
        .notify
        .sinks
        .iter()
        .zip(counts)
        .map(|(s, c)| SinkView {
            name: s.cfg.name.clone(),
            kind: s.cfg.kind.as_str().to_string(),
            events: s.cfg.events.clone().unwrap_or_default(),
            targets: s.cfg.targets.clone().unwrap_or_default(),
            state: if c.queued > 0 && c.last_error.is_some() {
                "retrying".into()
            } else {
                "ok".into()
            },
            queued: c.queued,
            delivered: c.delivered,
            dead: c.dead,
            last_error: c.last_error,
            last_delivered_at: c.last_delivered_at,
        })
        .collect())
}

#[utoipa::path(
    post, path = "/api/v1/notify/{name}/test", tag = "notify",
    params(("name" = String, Path, description = "The sink's name")),
    responses((status = 200, body = TestAnswer), (status = 404, description = "No such sink", body = kiln_api::ErrorBody)),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn test_sink(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<TestAnswer>, ApiError> {
    Ok(Json(test(&core, &name).await?))
}

/// Send a `test` event to sink `name` now, and what it answered (the API
/// and the web page).
pub(crate) async fn test(core: &Core, name: &str) -> Result<TestAnswer, ApiError> {
    let sink = sink_of(core, name)?;
    let base = core.notify.base();
    let n = super::event::test_notice(name, &base);
    let r = super::deliver::send(core, &sink, &n).await;
    tracing::info!("notifications: test of {name}: {r:?}");
    let (ok, answer) = match r {
        Ok(a) => (true, a),
        Err(e) => (false, e.to_string()),
    };
    Ok(TestAnswer {
        name: name.to_string(),
        ok,
        answer,
        id: n.id,
    })
}

#[utoipa::path(
    post, path = "/api/v1/notify/{name}/retry", tag = "notify",
    params(("name" = String, Path, description = "The sink's name")),
    responses((status = 200, body = RetryAnswer), (status = 404, description = "No such sink", body = kiln_api::ErrorBody)),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn retry_sink(
    State(core): S,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<RetryAnswer>, ApiError> {
    Ok(Json(retry(&core, &name).await?))
}

/// Queue sink `name`'s dead notifications again (the API and the web
/// page).
pub(crate) async fn retry(core: &Core, name: &str) -> Result<RetryAnswer, ApiError> {
    let sink = sink_of(core, name)?;
    let n = name.to_string();
    let requeued = core
        .store
        .write(move |t| kiln_store::notify::retry_dead(t, &n, kiln_store::now_ms()))
        .await?;
    sink.kick.notify_one();
    tracing::info!("notifications: {name}: {requeued} dead notifications queued again");
    Ok(RetryAnswer {
        name: name.to_string(),
        requeued,
    })
}
