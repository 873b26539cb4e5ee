//! The embedded static files (`/static/NAME`): in the binary, served with
//! an ETag (their sha256), cached for a year when asked by their versioned
//! URL (`?v=ETAG`, which every page uses), compressed once.

use std::sync::LazyLock;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: String,
    zstd: Option<Vec<u8>>,
}

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "kiln.css",
        "text/css; charset=utf-8",
        include_bytes!("static/kiln.css"),
    ),
    (
        "kiln.js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/kiln.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("static/favicon.svg"),
    ),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(name, content_type, body)| Asset {
            name,
            content_type,
            body,
            etag: hex::encode(&sha2::Sha256::digest(body)[..8]),
            zstd: zstd::bulk::compress(body, 19).ok(),
        })
        .collect()
});

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The versioned URL of a static file (`/static/kiln.js?v=ETAG`).
pub(super) fn url(name: &str) -> String {
    match find(name) {
        Some(a) => format!("/static/{name}?v={}", a.etag),
        None => format!("/static/{name}"),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct Version {
    v: Option<String>,
}

pub(super) async fn serve(
    Path(name): Path<String>,
    Query(ver): Query<Version>,
    headers: HeaderMap,
) -> Response {
    let Some(a) = find(&name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let etag = format!("\"{}\"", a.etag);
    let cache = if ver.v.as_deref() == Some(a.etag.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        super::encoded(&headers, a.content_type, a.body.to_vec(), a.zstd.as_deref())
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
