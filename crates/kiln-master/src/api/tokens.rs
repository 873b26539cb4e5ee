//! Tokens: the one-time enrollment tokens of workers, and the named API
//! tokens with roles (made, listed and revoked by an admin; stored hashed,
//! shown once).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_api::auth::{ApiTokenCreated, ApiTokenRequest, ApiTokenRevoked, ApiTokenView};
use kiln_api::{TokenRequest, TokenResponse};

use super::error::{ApiError, ApiResult};
use super::session::{new_token, sha256_hex, Admin, Role, ADMIN_NAME};
use super::S;
use kiln_core::names::check_ident;

#[utoipa::path(
    post, path = "/api/v1/tokens", tag = "tokens",
    request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, description = "Not a valid worker name", body = kiln_api::ErrorBody)),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn create_token(
    State(core): S,
    _: Admin,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let (token, expires) = enrollment_token(&core, &req.worker).await?;
    Ok(Json(TokenResponse {
        expires_at: expires,
        token,
        worker: req.worker,
    }))
}

/// A one-time enrollment token for worker `name` and when it expires
/// (Unix ms): the API and the workers page.
pub(crate) async fn enrollment_token(core: &crate::Core, name: &str) -> ApiResult<(String, i64)> {
    check_ident("worker", name).map_err(|e| ApiError::bad(e.to_string()))?;
    let (token, hash) = crate::tls::make_token(core);
    let expires = kiln_store::now_ms() + (core.cfg.token_ttl_secs as i64) * 1000;
    let w = name.to_string();
    core.store
        .write(move |t| kiln_store::add_token(t, &hash, &w, expires))
        .await?;
    Ok((token, expires))
}

fn check_name(name: &str) -> ApiResult<()> {
    check_ident("token", name).map_err(|e| ApiError::bad(e.to_string()))?;
    if name == ADMIN_NAME {
        return Err(ApiError::bad(
            "the name admin is the master's admin token file's; choose another",
        ));
    }
    Ok(())
}

fn view(t: kiln_store::auth::ApiTokenRow) -> ApiResult<ApiTokenView> {
    Ok(ApiTokenView {
        role: t.role.parse::<Role>().map_err(ApiError::internal)?,
        revoked: t.revoked_at.is_some(),
        name: t.name,
        created_at: t.created_at,
        last_used_at: t.last_used_at,
        revoked_at: t.revoked_at,
    })
}

/// `POST /api/v1/api-tokens`: a named token with a role; the token is in
/// this answer only.
#[utoipa::path(
    post, path = "/api/v1/api-tokens", tag = "tokens",
    request_body = ApiTokenRequest,
    responses(
        (status = 201, description = "The token, shown this once", body = ApiTokenCreated),
        (status = 400, description = "Not a valid name, or one a live token has", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn create_api_token(
    State(core): S,
    Admin(who): Admin,
    Json(req): Json<ApiTokenRequest>,
) -> ApiResult<(StatusCode, Json<ApiTokenCreated>)> {
    check_name(&req.name)?;
    if let Some(e) = &req.email {
        if !e.contains('@')
            || e.len() > 320
            || e.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == ',')
        {
            return Err(ApiError::bad(format!("{e:?} is not an e-mail address")));
        }
    }
    let token = new_token();
    let hash = sha256_hex(&token);
    let (name, role) = (req.name.clone(), req.role);
    let email = req.email.clone();
    let now = kiln_store::now_ms();
    let row = core
        .store
        .write(move |t| {
            let row = kiln_store::auth::add_api_token(t, &name, role.as_str(), &hash, now)?;
            if email.is_some() {
                kiln_store::notify::set_token_email(t, &name, email.as_deref())?;
            }
            Ok(row)
        })
        .await?;
    tracing::info!("token {} ({}) created by {}", row.name, req.role, who.name);
    Ok((
        StatusCode::CREATED,
        Json(ApiTokenCreated {
            name: row.name,
            role: req.role,
            created_at: row.created_at,
            token,
        }),
    ))
}

/// `GET /api/v1/api-tokens`: every token, revoked ones included (never a
/// token or its hash).
#[utoipa::path(
    get, path = "/api/v1/api-tokens", tag = "tokens",
    responses((status = 200, body = Vec<ApiTokenView>)),
    security(("bearer" = ["admin"]), ("session" = ["admin"]))
)]
pub(super) async fn list_api_tokens(
    State(core): S,
    _: Admin,
) -> ApiResult<Json<Vec<ApiTokenView>>> {
    let rows = core.store.read(kiln_store::auth::list_api_tokens).await?;
    Ok(Json(rows.into_iter().map(view).collect::<ApiResult<_>>()?))
}

/// `POST /api/v1/api-tokens/NAME/revoke`: refused from now on, and its web
/// sessions end.
#[utoipa::path(
    post, path = "/api/v1/api-tokens/{name}/revoke", tag = "tokens",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, body = ApiTokenRevoked),
        (status = 400, description = "Not a valid name, or the admin token file's", body = kiln_api::ErrorBody),
        (status = 404, description = "No such live token", body = kiln_api::ErrorBody),
    ),
    security(("bearer" = ["admin"]), ("session" = ["admin"], "csrf" = []))
)]
pub(super) async fn revoke_api_token(
    State(core): S,
    Admin(who): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<ApiTokenRevoked>> {
    check_ident("token", &name).map_err(|e| ApiError::bad(e.to_string()))?;
    if name == ADMIN_NAME {
        return Err(ApiError::bad(
            "the admin token file cannot be revoked: replace <data>/admin.token and restart the master",
        ));
    }
    let n = name.clone();
    let now = kiln_store::now_ms();
    let (_, ended) = core
        .store
        .write(move |t| kiln_store::auth::revoke_api_token(t, &n, now))
        .await?;
    tracing::info!(
        "token {name} revoked by {} ({ended} web sessions ended)",
        who.name
    );
    Ok(Json(ApiTokenRevoked {
        name,
        revoked: true,
        sessions_ended: ended,
    }))
}
