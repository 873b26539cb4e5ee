//! SRPM uploads into the content-addressed store.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use kiln_api::{BlobInfo, ErrorCode};

use super::auth::auth;
use super::error::{disk_error, ApiError, ApiResult};
use super::S;
use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::paths::{is_sha256, sha256_file};
use kiln_core::srpm::inspect_srpm;

#[utoipa::path(
    get, path = "/api/v1/blobs/{sha}", tag = "blobs",
    description = "Whether the master holds this content (HEAD answers the same without a body).",
    params(("sha" = String, Path, description = "The content's sha256 (64 lowercase hex digits)")),
    responses(
        (status = 200, body = BlobInfo),
        (status = 400, description = "Not a sha256", body = kiln_api::ErrorBody),
        (status = 404, description = "The master does not hold it", body = kiln_api::ErrorBody),
    ),
    security((), ("bearer" = ["reader"]), ("session" = ["reader"]))
)]
pub(super) async fn head_blob(
    State(core): S,
    Path(sha): Path<String>,
) -> ApiResult<Json<BlobInfo>> {
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
#[utoipa::path(
    put, path = "/api/v1/blobs/{sha}", tag = "blobs",
    params(("sha" = String, Path, description = "The content's sha256 (64 lowercase hex digits)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The SRPM's bytes"),
    responses(
        (status = 200, description = "Already held", body = BlobInfo),
        (status = 201, description = "Kept", body = BlobInfo),
        (status = 400, description = "Not a sha256, a digest that does not match, not a source rpm, or an interrupted upload", body = kiln_api::ErrorBody),
        (status = 413, description = "too_large: past max_upload", body = kiln_api::ErrorBody),
        (status = 507, description = "no_space: the master's disk is full", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["submitter"]), ("session" = ["submitter"], "csrf" = []))
)]
pub(super) async fn put_blob(
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
            ErrorCode::TooLarge,
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
        Ok(size) => {
            core.metrics
                .client_upload_bytes
                .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            size
        }
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
        .unwrap_or(Err(kiln_core::srpm::PackageError::Unreadable));
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
pub(super) enum Receive {
    /// Past the size limit, after this many bytes.
    TooBig(u64),
    /// The client's stream broke.
    Interrupted(String),
    /// The master could not write it.
    Disk(std::io::Error),
}

pub(super) async fn receive(tmp: &std::path::Path, body: Body, max: u64) -> Result<u64, Receive> {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    // After a failure of the master's disk the rest of the body is still
    // read (and dropped), within the limit, so the client hears why
    // instead of a connection closed under its upload.
    let (mut file, mut failed) = match tokio::fs::File::create(tmp).await {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(e)),
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Receive::Interrupted(e.to_string()))?;
        n += chunk.len() as u64;
        if n > max {
            return Err(Receive::TooBig(n));
        }
        if let Some(f) = file.as_mut().filter(|_| failed.is_none()) {
            if let Err(e) = f.write_all(&chunk).await {
                failed = Some(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(Receive::Disk(e));
    }
    let Some(mut f) = file else {
        return Err(Receive::Disk(std::io::Error::other("no upload file")));
    };
    // tokio's File writes in the background: flush to see the last
    // write's error (a full disk) before syncing.
    f.flush().await.map_err(Receive::Disk)?;
    f.sync_all().await.map_err(Receive::Disk)?;
    Ok(n)
}
