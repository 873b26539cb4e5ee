//! Releases (issue 12): promote a succeeded image build to a channel of a
//! release, roll a channel back, show a release; and the middleware that
//! guards the static `/releases/` tree (`crate::release` does the work).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_api::release::{
    PromoteAnswer, PromoteRequest, ReleaseView, RollbackRequest, DEFAULT_CHANNEL,
};
use kiln_api::ErrorCode;

use super::error::{ApiError, ApiResult};
use super::session::Admin;
use super::S;
use crate::release::{self, ReleaseError};

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::Invalid(m) => ApiError::bad(m),
            ReleaseError::NotFound(m) => ApiError::not_found(m),
            ReleaseError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, ErrorCode::Exists, m),
            ReleaseError::Store(s) => s.into(),
            ReleaseError::Io(io) => super::error::disk_error(std::io::Error::new(
                io.source.kind(),
                format!("{}: {}", io.what, io.source),
            )),
            other => ApiError::internal(other),
        }
    }
}

/// Promote an image build to a channel of a release: its files linked
/// into `/releases/{name}/{channel}/{version}/` with `SHA256SUMS` (and
/// `SHA256SUMS.asc` when the target signs), `latest` switched, recorded.
#[utoipa::path(
    post, path = "/api/v1/releases/{name}/promote", tag = "releases", operation_id = "promote_release",
    params(("name" = String, Path, description = "The release's name")),
    request_body = PromoteRequest,
    responses(
        (status = 200, description = "Promoted (or already the channel's latest: `changed` false)", body = PromoteAnswer),
        (status = 400, description = "Not an image build, not succeeded, or a bad name", body = kiln_api::ErrorBody),
        (status = 404, description = "No such build", body = kiln_api::ErrorBody),
        (status = 409, description = "The version is in the channel from another build", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn promote(
    State(core): S,
    Admin(who): Admin,
    Path(name): Path<String>,
    Json(req): Json<PromoteRequest>,
) -> ApiResult<Json<PromoteAnswer>> {
    let channel = req.channel.unwrap_or_else(|| DEFAULT_CHANNEL.to_string());
    Ok(Json(
        release::promote(&core, &name, &channel, req.build, Some(who.name)).await?,
    ))
}

/// Point a channel's `latest` back at the version promoted before.
#[utoipa::path(
    post, path = "/api/v1/releases/{name}/rollback", tag = "releases", operation_id = "rollback_release",
    params(("name" = String, Path, description = "The release's name")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "Rolled back", body = PromoteAnswer),
        (status = 400, description = "Nothing to roll back to, or a bad name", body = kiln_api::ErrorBody),
        (status = 404, description = "No such release or channel", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn rollback(
    State(core): S,
    Admin(who): Admin,
    Path(name): Path<String>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<Json<PromoteAnswer>> {
    Ok(Json(
        release::rollback(&core, &name, &req.channel, Some(who.name)).await?,
    ))
}

/// A release: its channels, the versions kept, which is latest, and the
/// history of promotions and rollbacks.
#[utoipa::path(
    get, path = "/api/v1/releases/{name}", tag = "releases", operation_id = "show_release",
    params(("name" = String, Path, description = "The release's name")),
    responses(
        (status = 200, body = ReleaseView),
        (status = 404, description = "No such release", body = kiln_api::ErrorBody),
    ),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn show(State(core): S, Path(name): Path<String>) -> ApiResult<Json<ReleaseView>> {
    Ok(Json(release::show(&core, &name).await?))
}

/// `/releases` serves regular files inside the release tree, and follows
/// one kind of symlink: `<name>/<channel>/latest`, whose target is a
/// version directory beside it (one plain name). Any other link, a
/// directory, a `.tmp-` directory or a special file is a 404.
pub(super) async fn only_release_files(
    State(core): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let decoded = percent_encoding::percent_decode_str(req.uri().path()).decode_utf8();
    let ok = decoded.is_ok_and(|rel| {
        let mut p = core.paths.releases();
        let mut depth = 0;
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            if c == "." || c == ".." || c.starts_with('.') || c.contains('\0') {
                return false;
            }
            p.push(c);
            depth += 1;
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if !(depth == 3 && c == release::LATEST) {
                        return false;
                    }
                    let Ok(to) = std::fs::read_link(&p) else {
                        return false;
                    };
                    let mut parts = to.components();
                    let plain = matches!(
                        (parts.next(), parts.next()),
                        (Some(std::path::Component::Normal(n)), None)
                            if n.to_str().is_some_and(|n| !n.starts_with('.'))
                    );
                    if !plain {
                        return false;
                    }
                    match p.parent() {
                        Some(dir) => p = dir.join(to),
                        None => return false,
                    }
                    if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                        return false;
                    }
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        depth > 0 && std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file())
    });
    if ok {
        next.run(req).await
    } else {
        ApiError::not_found("no such file in the releases").into_response()
    }
}
