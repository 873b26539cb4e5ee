//! Targets and their repositories: `.repo` files, what is published,
//! regeneration, the CA certificate, and `/repos` (regular files only).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_api::{PackageView, RegenResponse, TargetView};

use super::auth::auth;
use super::error::{ApiError, ApiResult};
use super::S;
use crate::Core;

#[utoipa::path(
    get, path = "/api/v1/targets", tag = "targets", operation_id = "list_targets",
    responses((status = 200, body = Vec<TargetView>)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn targets(State(core): S) -> Json<Vec<TargetView>> {
    Json(core.cfg.targets.iter().map(target_view).collect())
}

/// A configured target as clients see it.
fn target_view(t: &crate::Target) -> TargetView {
    TargetView {
        name: t.name.clone(),
        disttag: t.disttag.clone(),
        arches: t.arches.clone(),
        channel: t.channel.clone(),
        keep: t.keep,
        sign_key: t.sign_key.clone(),
        tosign_dir: t.tosign_dir.clone(),
        buildroot: t.buildroot.as_ref().map(|b| kiln_api::BuildrootView {
            repos: b.repos.clone(),
            packages: b.packages.clone(),
            releasever: b.releasever.clone(),
            gpgcheck: b.gpgcheck,
            own_repo: b.own_repo,
            extra_repos_of: b.extra_repos_of.clone(),
        }),
    }
}

/// A live package of a repository as clients see it.
fn package_view(p: kiln_store::RepoPackage) -> PackageView {
    PackageView {
        target: p.target,
        repo: p.repo,
        file: p.file,
        name: p.name,
        epoch: p.epoch,
        version: p.version,
        release: p.release,
        arch: p.arch,
        build: p.build,
        retired_gen: p.retired_gen,
    }
}

pub(super) fn target_of<'a>(core: &'a Core, name: &str) -> ApiResult<&'a crate::Target> {
    core.cfg
        .target(name)
        .ok_or_else(|| ApiError::not_found(format!("unknown target {name:?}")))
}

/// The master's CA certificate (public): what clients of an `https://` API
/// and dnf (`sslcacert`) trust.
#[utoipa::path(
    get, path = "/ca.crt", tag = "meta",
    responses((status = 200, description = "The CA certificate (PEM) the master's certificates chain to", body = String, content_type = "application/x-pem-file")),
    security(())
)]
pub(super) async fn ca_cert(State(core): S) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        core.ca.cert_pem().to_string(),
    )
        .into_response()
}

/// A `.repo` file for a target, pointing at this master as the client
/// reached it.
#[utoipa::path(
    get, path = "/api/v1/targets/{target}/repo", tag = "targets",
    params(("target" = String, Path, description = "The target's name")),
    responses(
        (status = 200, description = "A dnf .repo file for the target, pointing at this master", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 404, description = "No such target", body = kiln_api::ErrorBody),
    ),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn repo_file(
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
    let text = crate::web::repo_file_text(&core, t, &host);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[utoipa::path(
    get, path = "/api/v1/targets/{target}/packages", tag = "targets",
    params(("target" = String, Path, description = "The target's name")),
    responses((status = 200, description = "The live packages of its repositories", body = Vec<PackageView>), (status = 404, description = "No such target", body = kiln_api::ErrorBody)),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn repo_packages(
    State(core): S,
    Path(target): Path<String>,
) -> ApiResult<Json<Vec<PackageView>>> {
    let t = target_of(&core, &target)?.name.clone();
    let rows = core
        .store
        .read(move |c| kiln_store::repo_packages(c, &t))
        .await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| r.retired_gen.is_none())
            .map(package_view)
            .collect(),
    ))
}

#[utoipa::path(
    post, path = "/api/v1/targets/{target}/regen", tag = "targets",
    params(("target" = String, Path, description = "The target's name")),
    responses(
        (status = 202, body = RegenResponse),
        (status = 400, description = "The repository builder cannot take it", body = kiln_api::ErrorBody),
        (status = 404, description = "No such target", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn repo_regen(
    State(core): S,
    headers: HeaderMap,
    Path(target): Path<String>,
) -> ApiResult<(StatusCode, Json<RegenResponse>)> {
    auth(&core, &headers)?;
    let t = target_of(&core, &target)?.name.clone();
    core.repo
        .request_regen(&t)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RegenResponse {
            regen: "queued".into(),
            target: t,
        }),
    ))
}

/// `/repos` serves regular files inside the repository tree and nothing
/// else: no symlink (at any depth), no directory, no special file.
pub(super) async fn only_regular_files(
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
