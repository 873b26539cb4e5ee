//! The admin token: checked before anything else of a write request.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use kiln_api::ErrorCode;

use super::error::{ApiError, ApiResult};
use crate::Core;

/// A caller that presented the admin token. As an extractor it runs before
/// the body is read, so a caller without a token learns nothing of the
/// body's shape.
pub struct Admin;

impl axum::extract::FromRequestParts<Arc<Core>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        core: &Arc<Core>,
    ) -> Result<Self, ApiError> {
        auth(core, &parts.headers).map(|()| Admin)
    }
}

pub fn auth(core: &Core, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
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
            ErrorCode::Unauthorized,
            "invalid token",
        ))
    }
}
