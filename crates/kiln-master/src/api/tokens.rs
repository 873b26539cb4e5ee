//! Enrollment tokens.

use axum::extract::State;
use axum::Json;
use kiln_api::{TokenRequest, TokenResponse};

use super::auth::Admin;
use super::error::{ApiError, ApiResult};
use super::S;
use kiln_core::names::check_ident;

pub(super) async fn create_token(
    State(core): S,
    _: Admin,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    check_ident("worker", &req.worker).map_err(|e| ApiError::bad(e.to_string()))?;
    let (token, hash) = crate::tls::make_token(&core);
    let expires = kiln_store::now_ms() + (core.cfg.token_ttl_secs as i64) * 1000;
    let w = req.worker.clone();
    core.store
        .write(move |t| kiln_store::add_token(t, &hash, &w, expires))
        .await?;
    Ok(Json(TokenResponse {
        expires_at: expires,
        token,
        worker: req.worker,
    }))
}
