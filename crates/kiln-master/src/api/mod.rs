//! The HTTP API (`/api/v1`, JSON) used by the CLI: one resource per file.
//! Reads are open; writes need the bearer token (checked before the body
//! is read). Handlers translate HTTP to a call of a use case and back.

mod auth;
mod blobs;
mod builds;
mod error;
mod logs;
mod repos;
mod tokens;
mod views;
mod workers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post, put};
use axum::Router;

pub use builds::{SubmitRequest, NOW_PRIORITY};
pub use error::ApiError;
pub(crate) use views::build_view;
pub use views::{BuildView, JobView};
pub use workers::WorkerOut;

use crate::{io_err, Core, MasterError};

type S = State<Arc<Core>>;

pub async fn serve(core: Arc<Core>) -> Result<std::net::SocketAddr, MasterError> {
    let listener = tokio::net::TcpListener::bind(core.cfg.api_listen)
        .await
        .map_err(io_err(format!("binding {}", core.cfg.api_listen)))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("reading the API listener address"))?;
    let tls = if core.cfg.api_tls {
        let (cert, key) = core
            .ca
            .issue_server_cert(&crate::tls::server_names(&core))?;
        Some(Arc::new(kiln_core::pki::api_endpoint_config(
            &cert, &key, &core.ca,
        )?))
    } else {
        None
    };
    let app = router(core);
    tokio::spawn(async move {
        let r = match tls {
            None => axum::serve(listener, app).await,
            Some(cfg) => axum::serve(crate::tls::TlsListener::new(listener, cfg), app).await,
        };
        if let Err(e) = r {
            tracing::error!("HTTP API stopped: {e}");
        }
    });
    Ok(addr)
}

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ca.crt", get(repos::ca_cert))
        .route("/api/v1/targets", get(repos::targets))
        .route(
            "/api/v1/builds",
            get(builds::list_builds).post(builds::submit),
        )
        .route("/api/v1/builds/{id}", get(builds::show_build))
        .route("/api/v1/builds/{id}/wait", get(builds::wait_build))
        .route("/api/v1/builds/{id}/cancel", post(builds::cancel_build))
        .route(
            "/api/v1/blobs/{sha}",
            put(blobs::put_blob)
                .get(blobs::head_blob)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/jobs", get(builds::list_jobs))
        .route("/api/v1/jobs/{id}/log", get(logs::job_log))
        .route("/api/v1/workers", get(workers::list_workers))
        .route("/api/v1/events", get(logs::events))
        .route(
            "/api/v1/workers/{name}/revoke",
            post(workers::revoke_worker),
        )
        .route("/api/v1/tokens", post(tokens::create_token))
        .route("/api/v1/targets/{target}/repo", get(repos::repo_file))
        .route(
            "/api/v1/targets/{target}/packages",
            get(repos::repo_packages),
        )
        .route("/api/v1/targets/{target}/regen", post(repos::repo_regen))
        .nest_service(
            "/repos",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    core.clone(),
                    repos::only_regular_files,
                ))
                .service(tower_http::services::ServeDir::new(core.paths.repos())),
        )
        .with_state(core)
}
