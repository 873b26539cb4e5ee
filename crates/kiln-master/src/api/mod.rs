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
mod error;
mod hooks;
mod logs;
mod projects;
mod repos;
pub mod session;
mod tokens;
mod views;
mod workers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post, put};
use axum::Router;

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

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ca.crt", get(repos::ca_cert))
        .route("/api/v1/targets", get(repos::targets))
        .route(
            "/api/v1/builds",
            get(builds::list_builds).post(builds::submit),
        )
        .route("/api/v1/batches", post(batches::submit))
        .route("/api/v1/batches/{id}", get(batches::show))
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
        .route(
            "/api/v1/api-tokens",
            get(tokens::list_api_tokens).post(tokens::create_api_token),
        )
        .route(
            "/api/v1/api-tokens/{name}/revoke",
            post(tokens::revoke_api_token),
        )
        .route("/api/v1/whoami", get(session::whoami))
        .route("/login", post(session::login))
        .route("/logout", post(session::logout))
        .route("/api/v1/projects", get(projects::list).post(projects::add))
        .route(
            "/api/v1/projects/{name}",
            get(projects::show)
                .put(projects::edit)
                .delete(projects::remove),
        )
        .route("/api/v1/projects/{name}/build", post(projects::build))
        .route("/api/v1/projects/{name}/hooks", get(projects::hooks))
        .route(
            "/hooks/{forge}",
            post(hooks::receive).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/targets/{target}/repo", get(repos::repo_file))
        .route(
            "/api/v1/targets/{target}/packages",
            get(repos::repo_packages),
        )
        .route(
            "/api/v1/targets/{target}/regen",
            post(repos::repo_regen).route_layer(axum::middleware::from_fn(auth::need_admin)),
        )
        .merge(crate::web::routes())
        .merge(crate::metrics::routes())
        .merge(crate::stats::routes())
        .merge(crate::notify::routes())
        .nest_service(
            "/repos",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    core.clone(),
                    repos::only_regular_files,
                ))
                .service(tower_http::services::ServeDir::new(core.paths.repos())),
        )
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            auth::gate,
        ))
        .with_state(core)
}
