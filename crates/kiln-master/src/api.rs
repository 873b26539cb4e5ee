//! The HTTP API (`/api/v1`, JSON) used by the CLI. Reads are open; writes
//! need the bearer token.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use kiln_core::names::{check_arch, check_file_name, check_ident};
use kiln_core::srpm::{inspect_srpm, plan_arches};
use kiln_store::{ArtifactRow, BuildRow, Excluded, JobRow, NewBuild};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::logs::LogEvent;
use crate::paths::{is_sha256, sha256_file};
use crate::{io_err, Core, MasterError};

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl From<kiln_store::StoreError> for ApiError {
    fn from(e: kiln_store::StoreError) -> Self {
        match e {
            kiln_store::StoreError::NotFound(m) => ApiError::not_found(m),
            kiln_store::StoreError::Invalid(m) => ApiError::bad(m),
            e @ (kiln_store::StoreError::CommitFailed(_) | kiln_store::StoreError::Closed) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;
type S = State<Arc<Core>>;

/// A caller that presented the admin token. As an extractor it runs before
/// the body is read, so a caller without a token learns nothing of the
/// body's shape.
struct Admin;

impl axum::extract::FromRequestParts<Arc<Core>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        core: &Arc<Core>,
    ) -> Result<Self, ApiError> {
        auth(core, &parts.headers).map(|()| Admin)
    }
}

fn auth(core: &Core, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this call needs a token (Authorization: Bearer …; set KILN_TOKEN)",
            )
        })?;
    let want = core.admin_token.as_bytes();
    let ok = given.len() == want.len()
        && given
            .bytes()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid token",
        ))
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
    let app = router(core);
    tokio::spawn(async move {
        let r = match tls {
            None => axum::serve(listener, app).await,
            Some(cfg) => axum::serve(TlsListener::new(listener, cfg), app).await,
        };
        if let Err(e) = r {
            tracing::error!("HTTP API stopped: {e}");
        }
    });
    Ok(addr)
}

/// The API's listener with TLS: connections are accepted and their
/// handshakes run concurrently (a slow client holds up nobody); the server
/// takes them as they complete.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    addr: std::net::SocketAddr,
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, cfg: Arc<rustls::ServerConfig>) -> TlsListener {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("API listener accept: {e}");
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(
                        std::time::Duration::from_secs(20),
                        acceptor.accept(tcp),
                    )
                    .await;
                    match hs {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, remote)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("API TLS handshake with {remote}: {e}"),
                        Err(_) => tracing::debug!("API TLS handshake with {remote} timed out"),
                    }
                });
            }
        });
        TlsListener { rx, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop never ends; if it did, serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ca.crt", get(ca_cert))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/builds", get(list_builds).post(submit))
        .route("/api/v1/builds/{id}", get(show_build))
        .route("/api/v1/builds/{id}/wait", get(wait_build))
        .route("/api/v1/builds/{id}/cancel", post(cancel_build))
        .route(
            "/api/v1/blobs/{sha}",
            put(put_blob)
                .get(head_blob)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}/log", get(job_log))
        .route("/api/v1/workers", get(list_workers))
        .route("/api/v1/events", get(events))
        .route("/api/v1/workers/{name}/revoke", post(revoke_worker))
        .route("/api/v1/tokens", post(create_token))
        .route("/api/v1/targets/{target}/repo", get(repo_file))
        .route("/api/v1/targets/{target}/packages", get(repo_packages))
        .route("/api/v1/targets/{target}/regen", post(repo_regen))
        .nest_service(
            "/repos",
            tower::ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    core.clone(),
                    only_regular_files,
                ))
                .service(tower_http::services::ServeDir::new(core.paths.repos())),
        )
        .with_state(core)
}

/// `/repos` serves regular files inside the repository tree and nothing
/// else: no symlink (at any depth), no directory, no special file.
async fn only_regular_files(
    State(core): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let decoded = percent_encoding::percent_decode_str(req.uri().path()).decode_utf8();
    let ok = decoded.is_ok_and(|rel| {
        let root = core.paths.repos();
        let mut p = root.clone();
        let mut parts = 0;
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            if c == "." || c == ".." || c.contains('\0') {
                return false;
            }
            p.push(c);
            parts += 1;
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => return false,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        parts > 0 && std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file())
    });
    if ok {
        next.run(req).await
    } else {
        ApiError::not_found("no such file in the repositories").into_response()
    }
}

async fn targets(State(core): S) -> Json<Vec<crate::Target>> {
    Json(core.cfg.targets.clone())
}

#[derive(Serialize, Deserialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: JobRow,
    pub waiting: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct BuildView {
    #[serde(flatten)]
    pub build: BuildRow,
    pub jobs: Vec<JobView>,
    pub artifacts: Vec<ArtifactRow>,
}

impl BuildView {
    /// A build with its jobs (each saying why it waits, if it does).
    fn new(
        s: &crate::sched::Sched,
        build: BuildRow,
        jobs: Vec<JobRow>,
        artifacts: Vec<ArtifactRow>,
    ) -> BuildView {
        BuildView {
            build,
            jobs: jobs.into_iter().map(|j| JobView::new(s, j)).collect(),
            artifacts,
        }
    }
}

impl JobView {
    fn new(s: &crate::sched::Sched, job: JobRow) -> JobView {
        JobView {
            waiting: s.waiting_reason(job.id),
            job,
        }
    }
}

async fn build_view(core: &Core, id: i64) -> ApiResult<BuildView> {
    let (build, jobs, artifacts) = core
        .store
        .read(move |c| {
            let b = kiln_store::get_build(c, id)?;
            Ok(match b {
                Some(b) => Some((
                    b,
                    kiln_store::jobs_of(c, id)?,
                    kiln_store::artifacts_of(c, id)?,
                )),
                None => None,
            })
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
    Ok(BuildView::new(&core.sched(), build, jobs, artifacts))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<u32>,
}

async fn list_builds(State(core): S, Query(q): Query<Limit>) -> ApiResult<Json<Vec<BuildView>>> {
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

async fn show_build(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<BuildView>> {
    Ok(Json(build_view(&core, id).await?))
}

/// Answer once the build has reached a final state.
async fn wait_build(State(core): S, Path(id): Path<i64>) -> ApiResult<Json<BuildView>> {
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

async fn cancel_build(
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

async fn submit(
    State(core): S,
    _: Admin,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<(StatusCode, Json<BuildView>)> {
    let known = || {
        core.cfg
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = match &req.target {
        Some(name) => core.cfg.target(name).ok_or_else(|| {
            ApiError::bad(format!("unknown target {name:?} (known: {})", known()))
        })?,
        None => core.cfg.default_target().ok_or_else(|| {
            ApiError::bad(format!(
                "no target given and no default_target configured (known: {})",
                known()
            ))
        })?,
    }
    .clone();
    let arches = req.arches.clone().unwrap_or_else(|| target.arches.clone());
    if arches.is_empty() {
        return Err(ApiError::bad("no arch given"));
    }
    for a in &arches {
        check_arch(a).map_err(|e| ApiError::bad(e.to_string()))?;
        // noarch is welcome everywhere (any worker builds it).
        if a != "noarch" && !target.implicit && !target.arches.contains(a) {
            return Err(ApiError::bad(format!(
                "target {} does not build {a} (its arches: {})",
                target.name,
                target.arches.join(", ")
            )));
        }
    }
    let channel = req
        .channel
        .clone()
        .unwrap_or_else(|| target.channel.clone());
    check_ident("channel", &channel).map_err(|e| ApiError::bad(e.to_string()))?;
    check_file_name(&req.srpm_name).map_err(|e| ApiError::bad(e.to_string()))?;
    if !req.srpm_name.ends_with(".src.rpm") {
        return Err(ApiError::bad(format!(
            "{:?} is not a source rpm name (it must end in .src.rpm)",
            req.srpm_name
        )));
    }
    if !is_sha256(&req.srpm_sha256) {
        return Err(ApiError::bad("malformed sha256"));
    }
    let cached = core
        .srpm_cache
        .lock()
        .ok()
        .and_then(|c| c.get(&req.srpm_sha256).cloned());
    let (size, info) = match cached {
        Some(hit) => hit,
        None => {
            let sha = req.srpm_sha256.clone();
            let size = core
                .store
                .read(move |c| kiln_store::has_blob(c, &sha))
                .await?;
            let path = core.paths.cas(&req.srpm_sha256);
            let Some(size) = size.filter(|_| path.is_file()) else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "blob_missing",
                    "the master does not have this SRPM yet: upload it first",
                ));
            };
            let info = tokio::task::spawn_blocking(move || inspect_srpm(&path))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::bad(e.to_string()))?;
            if let Ok(mut c) = core.srpm_cache.lock() {
                if c.len() >= 4096 {
                    c.clear();
                }
                c.insert(req.srpm_sha256.clone(), (size, info.clone()));
            }
            (size, info)
        }
    };
    let plan = plan_arches(&info, &arches).map_err(|e| ApiError::bad(e.to_string()))?;
    let skip = if req.scratch {
        None
    } else {
        version_gate(&core, &target.name, &info, req.ci).await?
    };
    let nb = NewBuild {
        target: target.name.clone(),
        package: info.name.clone(),
        evr: info.evr(),
        srpm_name: req.srpm_name.clone(),
        srpm_sha256: req.srpm_sha256.clone(),
        srpm_size: size,
        channel: channel.clone(),
        disttag: target.disttag.clone(),
        priority: req
            .priority
            .unwrap_or(if req.now { NOW_PRIORITY } else { 0 }),
        scratch: req.scratch,
        ci: req.ci,
        excluded: plan
            .excluded
            .iter()
            .map(|(arch, reason)| Excluded {
                arch: arch.clone(),
                reason: reason.clone(),
            })
            .collect(),
        arches: plan.build.clone(),
    };
    if let Some(reason) = skip {
        let (id, _) = core.decide(|s, _| s.allocate_ids(0).0);
        let b = core
            .store
            .write(move |t| kiln_store::insert_skipped(t, &nb, id, &reason))
            .await?;
        tracing::info!("build {} of {} skipped", b.id, info.nevra());
        let _ = core.events.send(crate::sched::Event::Build {
            build: b.id,
            state: kiln_core::state::BuildState::Skipped,
        });
        let _ = core.build_done.send(b.id);
        return Ok((StatusCode::CREATED, Json(build_view(&core, b.id).await?)));
    }
    // The build's rows get their ids here, so its jobs can be dispatched at
    // once: the insert is queued first and the assignments right behind it,
    // so they usually share one group commit (one fsync fewer on the way to
    // a worker). Nothing is sent before both are durable, and the build is
    // committed before we answer.
    let ((id, view), fx) = core.decide(|s, fx| {
        let (id, job_ids) = s.allocate_ids(nb.arches.len());
        let (build, jobs) = kiln_store::new_rows(&nb, id, &job_ids);
        s.submit(fx, build.clone(), jobs.clone());
        // The answer shows the build as committed; a dispatch in progress
        // shows in the next look.
        (id, BuildView::new(s, build, jobs, vec![]))
    });
    if let Err(e) = core.try_apply(fx).await {
        // Nothing was sent; the build never existed.
        let ((), undo) = core.decide(|s, fx| s.forget_build(fx, id));
        core.apply(undo).await;
        return Err(e.into());
    }
    tracing::debug!("build {id} of {} accepted", info.nevra());
    Ok((StatusCode::CREATED, Json(view)))
}

/// The seed's rule: a release build must be newer than the newest
/// succeeded build of the package in the target; a CI build may be equal.
/// Returns why the build is skipped, if it is.
async fn version_gate(
    core: &Core,
    target: &str,
    info: &kiln_core::srpm::PackageInfo,
    ci: bool,
) -> ApiResult<Option<String>> {
    use kiln_core::srpm::compare_evr;
    use std::cmp::Ordering;
    let (t, p) = (target.to_string(), info.name.clone());
    let Some(newest) = core
        .store
        .read(move |c| kiln_store::newest_evr(c, &t, &p))
        .await?
    else {
        return Ok(None);
    };
    let evr = info.evr();
    Ok(match compare_evr(&evr, &newest) {
        Ordering::Less => Some(format!(
            "{} {evr} is older than {newest}, the newest build in target {target}",
            info.name
        )),
        Ordering::Equal if !ci => Some(format!(
            "{} {evr} equals the newest build in target {target} ({newest}); only a CI build (--ci) rebuilds an equal version",
            info.name
        )),
        _ => None,
    })
}

fn target_of<'a>(core: &'a Core, name: &str) -> ApiResult<&'a crate::Target> {
    core.cfg
        .target(name)
        .ok_or_else(|| ApiError::not_found(format!("unknown target {name:?}")))
}

/// The master's CA certificate (public): what clients of an `https://` API
/// and dnf (`sslcacert`) trust.
async fn ca_cert(State(core): S) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        core.ca.cert_pem().to_string(),
    )
        .into_response()
}

/// A `.repo` file for a target, pointing at this master as the client
/// reached it.
async fn repo_file(
    State(core): S,
    headers: HeaderMap,
    Path(target): Path<String>,
) -> ApiResult<Response> {
    let t = target_of(&core, &target)?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| core.cfg.api_listen.to_string());
    // With TLS, dnf wants the CA as a local file: the .repo file says how
    // to fetch it once from /ca.crt and check it.
    let (scheme, header_lines, ssl) = if core.cfg.api_tls {
        let fp = core
            .ca
            .fingerprint()
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        (
            "https",
            format!(
                "# This master's CA: mkdir -p /etc/pki/kiln && curl -k -o /etc/pki/kiln/ca.crt https://{host}/ca.crt\n\
                 # then check: openssl x509 -in /etc/pki/kiln/ca.crt -noout -fingerprint -sha256\n\
                 # must print sha256 Fingerprint={fp}\n"
            ),
            "sslcacert=/etc/pki/kiln/ca.crt\n",
        )
    } else {
        ("http", String::new(), "")
    };
    let base = format!("{scheme}://{host}/repos/{}", t.name);
    let signed = t.sign_key.is_some();
    let gpg = if signed {
        format!(
            "gpgcheck=1\nrepo_gpgcheck=1\ngpgkey={base}/RPM-GPG-KEY-kiln-{}\n",
            t.name
        )
    } else {
        "gpgcheck=0\nrepo_gpgcheck=0\n".to_string()
    };
    let text = format!(
        "{header_lines}[kiln-{n}]\nname=Kiln {n} ($basearch)\nbaseurl={base}/$basearch/\nenabled=1\n{gpg}{ssl}metadata_expire=60\n\n\
         [kiln-{n}-source]\nname=Kiln {n} (source)\nbaseurl={base}/source/\nenabled=0\n{gpg}{ssl}metadata_expire=60\n",
        n = t.name
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn repo_packages(
    State(core): S,
    Path(target): Path<String>,
) -> ApiResult<Json<Vec<kiln_store::RepoPackage>>> {
    let t = target_of(&core, &target)?.name.clone();
    let rows = core
        .store
        .read(move |c| kiln_store::repo_packages(c, &t))
        .await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| r.retired_gen.is_none())
            .collect(),
    ))
}

async fn repo_regen(
    State(core): S,
    headers: HeaderMap,
    Path(target): Path<String>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    auth(&core, &headers)?;
    let t = target_of(&core, &target)?.name.clone();
    core.repo
        .request_regen(&t)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "target": t, "regen": "queued" })),
    ))
}

#[derive(Serialize)]
struct BlobInfo {
    sha256: String,
    size: u64,
    existing: bool,
}

async fn head_blob(State(core): S, Path(sha): Path<String>) -> ApiResult<Json<BlobInfo>> {
    if !is_sha256(&sha) {
        return Err(ApiError::bad("malformed sha256"));
    }
    let s2 = sha.clone();
    match core
        .store
        .read(move |c| kiln_store::has_blob(c, &s2))
        .await?
    {
        Some(size) => Ok(Json(BlobInfo {
            sha256: sha,
            size,
            existing: true,
        })),
        None => Err(ApiError::not_found(format!("no blob {sha}"))),
    }
}

/// Stream an SRPM into the content-addressed store. Checked for size (while
/// it streams), sha256 and a valid source rpm header before it is kept.
async fn put_blob(
    State(core): S,
    headers: HeaderMap,
    Path(sha): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<BlobInfo>)> {
    auth(&core, &headers)?;
    if !is_sha256(&sha) {
        return Err(ApiError::bad("malformed sha256"));
    }
    let s2 = sha.clone();
    if let Some(size) = core
        .store
        .read(move |c| kiln_store::has_blob(c, &s2))
        .await?
    {
        if core.paths.cas(&sha).is_file() {
            return Ok((
                StatusCode::OK,
                Json(BlobInfo {
                    sha256: sha,
                    size,
                    existing: true,
                }),
            ));
        }
    }
    let max = core.cfg.max_upload;
    let too_big = |n: u64| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("upload of {n} bytes exceeds the limit of {max} bytes (max_upload)"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max {
            return Err(too_big(len));
        }
    }
    let tmp = core
        .paths
        .tmp()
        .join(format!("upload-{}-{}", &sha[..16], rand::random::<u64>()));
    let result = receive(&tmp, body, max).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    let size = match result {
        Ok(size) => size,
        Err(Receive::TooBig(n)) => return Err(too_big(n)),
        Err(Receive::Interrupted(e)) => {
            return Err(ApiError::bad(format!("upload interrupted: {e}")))
        }
        Err(Receive::Disk(e)) => return Err(disk_error(e)),
    };
    let t2 = tmp.clone();
    let (got, _) = tokio::task::spawn_blocking(move || sha256_file(&t2))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    if got != sha {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ApiError::bad(format!(
            "the uploaded content has sha256 {got}, not {sha}"
        )));
    }
    let t2 = tmp.clone();
    // A panic while reading the header (a bug that input reached) is the
    // package's fault as far as the client is concerned: a 400, never the
    // panic text, and nothing kept.
    let checked = tokio::task::spawn_blocking(move || inspect_srpm(&t2))
        .await
        .unwrap_or_else(|_| Err(kiln_core::srpm::PackageError::Unreadable));
    if let Err(e) = checked {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ApiError::bad(e.to_string()));
    }
    tokio::fs::rename(&tmp, core.paths.cas(&sha))
        .await
        .map_err(disk_error)?;
    let s2 = sha.clone();
    core.store
        .write(move |t| kiln_store::add_blob(t, &s2, size))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(BlobInfo {
            sha256: sha,
            size,
            existing: false,
        }),
    ))
}

/// Write the body to `tmp`; Err(Some(n)) when it passes `max` bytes,
/// Err(None) when it breaks off.
/// Why an upload's body did not arrive whole.
enum Receive {
    /// Past the size limit, after this many bytes.
    TooBig(u64),
    /// The client's stream broke.
    Interrupted(String),
    /// The master could not write it.
    Disk(std::io::Error),
}

/// A failure of the master's own disk, as a client sees it: a full disk
/// says so, with 507; anything else is a 500.
fn disk_error(e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "no_space",
            "no space left on device on the master; nothing was kept, retry once there is room",
        )
    } else {
        ApiError::internal(format!("writing the upload: {e}"))
    }
}

async fn receive(tmp: &std::path::Path, body: Body, max: u64) -> Result<u64, Receive> {
    let mut f = tokio::fs::File::create(tmp).await.map_err(Receive::Disk)?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Receive::Interrupted(e.to_string()))?;
        n += chunk.len() as u64;
        if n > max {
            return Err(Receive::TooBig(n));
        }
        f.write_all(&chunk).await.map_err(Receive::Disk)?;
    }
    // tokio's File writes in the background: flush to see the last
    // write's error (a full disk) before syncing.
    f.flush().await.map_err(Receive::Disk)?;
    f.sync_all().await.map_err(Receive::Disk)?;
    Ok(n)
}

async fn list_jobs(State(core): S, Query(q): Query<Limit>) -> ApiResult<Json<Vec<JobView>>> {
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

#[derive(Deserialize)]
struct Follow {
    #[serde(default)]
    follow: bool,
}

/// The build log of a job; with `follow`, the response stays open and
/// streams new lines until the job ends.
async fn job_log(
    State(core): S,
    Path(id): Path<i64>,
    Query(q): Query<Follow>,
) -> ApiResult<Response> {
    let job = core
        .store
        .read(move |c| kiln_store::get_job(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let build = job.build;
    let active = core
        .sched()
        .job_current(id)
        .is_some_and(|(_, _, _, _, st)| !st.is_final());
    let mut sub = None;
    if q.follow && active {
        core.logs.open(build, id).map_err(ApiError::internal)?;
        sub = core.logs.subscribe(id);
    }
    let start = core
        .logs
        .read(build, id)
        .await
        .map_err(ApiError::internal)?;
    let Some(mut rx) = sub else {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], start).into_response());
    };
    let mut sent = start.len() as u64;
    let stream = async_stream(move |tx| async move {
        if tx.send(Ok(bytes::Bytes::from(start))).await.is_err() {
            return;
        }
        loop {
            match rx.recv().await {
                Ok(LogEvent::Data { offset, data }) => {
                    let end = offset + data.len() as u64;
                    if end <= sent {
                        continue;
                    }
                    let skip = sent.saturating_sub(offset) as usize;
                    sent = end;
                    if tx.send(Ok(data.slice(skip..))).await.is_err() {
                        return;
                    }
                }
                Ok(LogEvent::End) | Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(all) = core.logs.read(build, id).await {
                        if (all.len() as u64) > sent {
                            let rest = bytes::Bytes::from(all).slice(sent as usize..);
                            sent += rest.len() as u64;
                            if tx.send(Ok(rest)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A body stream fed by a task.
fn async_stream<F, Fut>(
    f: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<bytes::Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Every durable state change as newline-delimited JSON, live.
async fn events(State(core): S) -> Response {
    let mut rx = core.events.subscribe();
    let stream = async_stream(move |tx| async move {
        // Tell the client it is subscribed: events after this line are complete.
        if tx
            .send(Ok(bytes::Bytes::from_static(
                b"{\"kind\":\"subscribed\"}\n",
            )))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let line = match rx.recv().await {
                Ok(e) => serde_json::to_vec(&e).unwrap_or_default(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    format!("{{\"kind\":\"lagged\",\"missed\":{n}}}").into_bytes()
                }
                Err(_) => return,
            };
            let mut line = line;
            line.push(b'\n');
            if tx.send(Ok(bytes::Bytes::from(line))).await.is_err() {
                return;
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

#[derive(Serialize, Deserialize)]
pub struct WorkerOut {
    pub name: String,
    pub arches: Vec<String>,
    pub channels: Vec<String>,
    pub capacity: u32,
    pub running: usize,
    pub running_jobs: Vec<i64>,
    pub connected: bool,
    pub draining: bool,
    pub revoked: bool,
    pub last_seen: Option<i64>,
}

async fn list_workers(State(core): S) -> ApiResult<Json<Vec<WorkerOut>>> {
    let rows = core.store.read(kiln_store::list_workers).await?;
    let live = core.sched().worker_views();
    Ok(Json(
        rows.into_iter()
            .map(|w| match live.get(&w.name) {
                Some(l) => WorkerOut {
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
                None => WorkerOut {
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

async fn revoke_worker(
    State(core): S,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    auth(&core, &headers)?;
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
    Ok(Json(serde_json::json!({ "name": name, "revoked": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    worker: String,
}

async fn create_token(
    State(core): S,
    _: Admin,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    check_ident("worker", &req.worker).map_err(|e| ApiError::bad(e.to_string()))?;
    let (token, hash) = crate::tls::make_token(&core);
    let expires = kiln_store::now_ms() + (core.cfg.token_ttl_secs as i64) * 1000;
    let w = req.worker.clone();
    core.store
        .write(move |t| kiln_store::add_token(t, &hash, &w, expires))
        .await?;
    Ok(Json(
        serde_json::json!({ "token": token, "worker": req.worker, "expires_at": expires }),
    ))
}
