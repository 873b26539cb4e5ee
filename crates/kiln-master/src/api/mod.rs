//! The HTTP API (`/api/v1`, JSON) used by the CLI: one resource per file.
//! Every request passes the gate (`auth`): who it is (a bearer token or
//! the web session cookie, `session`), its CSRF token when it changes state
//! with the cookie, and the security headers of its answer. Reads are open
//! unless `web_public = false`; writes need a role (the extractors of
//! `session`, checked before the body is read). Handlers translate HTTP to
//! a call of a use case and back.
//! Every JSON body is a type of `kiln_api` (the CLI reads the same types);
//! `views` makes them from the store's rows.

mod auth;
mod batches;
mod blobs;
mod builds;
pub(crate) mod error;
mod hooks;
mod images;
mod logs;
pub mod openapi;
mod projects;
mod releases;
mod repos;
pub mod session;
pub(crate) mod tokens;
mod views;
pub(crate) mod workers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::Router;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use error::ApiError;
pub(crate) use logs::event;

use crate::{io_err, Core, MasterError};

type S = State<Arc<Core>>;

/// What one API connection may hold: a slot among `api_max_connections`,
/// and at most `api_header_timeout_secs` to send a request's headers (an
/// idle keep-alive connection is closed after as long). A client that opens
/// connections and sends nothing cannot exhaust the master's descriptors.
#[derive(Clone)]
struct HttpLimits {
    header_timeout: std::time::Duration,
    slots: Arc<tokio::sync::Semaphore>,
}

impl HttpLimits {
    fn slot(&self, remote: std::net::SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let s = self.slots.clone().try_acquire_owned().ok();
        if s.is_none() {
            tracing::warn!("API: too many connections; closing the one from {remote}");
        }
        s
    }

    async fn serve(&self, tcp: tokio::net::TcpStream, remote: std::net::SocketAddr, app: Router) {
        let Some(_slot) = self.slot(remote) else {
            return;
        };
        self.serve_io(tcp, remote, app).await
    }

    async fn serve_io<I>(&self, io: I, remote: std::net::SocketAddr, app: Router)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use hyper_util::rt::{TokioIo, TokioTimer};
        // HTTP/1.1, with a timer on every request's headers (an idle
        // keep-alive connection included). The CLI, dnf and browsers over
        // this listener speak HTTP/1.1; hyper-util's auto builder would
        // first wait, without a timeout, for the bytes that tell HTTP/2.
        let svc = hyper_util::service::TowerToHyperService::new(app);
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await
        {
            tracing::debug!("API connection from {remote}: {e}");
        }
    }
}

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
    let limits = HttpLimits {
        header_timeout: std::time::Duration::from_secs(core.cfg.api_header_timeout_secs.max(1)),
        slots: Arc::new(tokio::sync::Semaphore::new(
            core.cfg.api_max_connections.max(1) as usize,
        )),
    };
    let app = router(core);
    match tls {
        None => crate::tls::accept_loop(listener, "API", move |tcp, remote| {
            let (app, limits) = (app.clone(), limits.clone());
            async move { limits.serve(tcp, remote, app).await }
        }),
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            crate::tls::accept_loop(listener, "API", move |tcp, remote| {
                let (app, limits, acceptor) = (app.clone(), limits.clone(), acceptor.clone());
                async move {
                    let Some(_slot) = limits.slot(remote) else {
                        return;
                    };
                    let hs =
                        tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await;
                    match hs {
                        Ok(Ok(s)) => limits.serve_io(s, remote, app).await,
                        Ok(Err(e)) => tracing::debug!("API TLS handshake with {remote}: {e}"),
                        Err(_) => tracing::debug!("API TLS handshake with {remote} timed out"),
                    }
                }
            })
        }
    }
    Ok(addr)
}

/// Whether the master answers.
#[utoipa::path(
    get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain; charset=utf-8")),
    security(())
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Every route of the API listener but `/repos` (which needs the data
/// directory), with the OpenAPI document of those it documents. A handler
/// is registered with `routes!`, which reads its path and methods from its
/// `#[utoipa::path]`: the route and its description are one (see
/// `openapi.rs`, "How to add a route").
pub(crate) fn routes() -> OpenApiRouter<Arc<Core>> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(repos::ca_cert))
        .routes(routes!(repos::targets))
        .routes(routes!(builds::list_builds, builds::submit))
        .routes(routes!(batches::submit))
        .routes(routes!(batches::show))
        .routes(routes!(builds::show_build))
        .routes(routes!(builds::wait_build))
        .routes(routes!(builds::cancel_build))
        .routes(routes!(blobs::put_blob, blobs::head_blob).layer(DefaultBodyLimit::disable()))
        .routes(routes!(builds::list_jobs))
        .routes(routes!(logs::job_log))
        .routes(routes!(workers::list_workers))
        .routes(routes!(logs::events))
        .routes(routes!(workers::revoke_worker))
        .routes(routes!(tokens::create_token))
        .routes(routes!(tokens::list_api_tokens, tokens::create_api_token))
        .routes(routes!(tokens::revoke_api_token))
        .routes(routes!(session::whoami))
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(projects::list, projects::add))
        .routes(routes!(projects::show, projects::edit, projects::remove))
        .routes(routes!(projects::build))
        .routes(routes!(projects::hooks))
        .routes(routes!(images::list, images::add))
        .routes(routes!(images::remove))
        .routes(routes!(images::build))
        .routes(routes!(images::show))
        .routes(routes!(releases::promote))
        .routes(routes!(releases::rollback))
        .routes(routes!(releases::show))
        .routes(routes!(hooks::receive).layer(DefaultBodyLimit::disable()))
        .routes(routes!(repos::repo_file))
        .routes(routes!(repos::repo_packages))
        .routes(
            routes!(repos::repo_regen)
                .map(|r| r.route_layer(axum::middleware::from_fn(auth::need_admin))),
        )
        // Plain axum routers: their paths are checked against the document
        // by the scan in openapi.rs's tests.
        .merge(crate::web::routes().into())
        .merge(crate::metrics::routes().into())
        .merge(crate::stats::routes().into())
        .merge(crate::notify::routes())
}

pub fn router(core: Arc<Core>) -> Router {
    let (api, _document) = routes().split_for_parts();
    api.nest_service(
        "/repos",
        tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(
                core.clone(),
                repos::only_regular_files,
            ))
            .service(tower_http::services::ServeDir::new(core.paths.repos())),
    )
    .nest_service(
        "/releases",
        tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(
                core.clone(),
                releases::only_release_files,
            ))
            .service(tower_http::services::ServeDir::new(core.paths.releases())),
    )
    .layer(axum::middleware::from_fn_with_state(
        core.clone(),
        auth::gate,
    ))
    .with_state(core)
}
