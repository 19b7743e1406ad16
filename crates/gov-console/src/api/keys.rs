//! `GET /api/gateway-keys`, `POST /api/gateway-keys` and `POST /api/gateway-keys/{id}/revoke`
//! (admin): the keys page's calls. A key's secret is in the answer to the call that made it,
//! and nowhere else.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiResult, ApiUser, csrf_allowed};
use crate::AppState;
use crate::error::AppError;
use crate::pages::when;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, add))
        .routes(routes!(revoke))
}

/// Every agent's gateway keys, newest first, without secrets.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyList {
    keys: Vec<GatewayKey>,
}

/// One gateway key (never its secret or hash).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GatewayKey {
    /// The key's public id.
    id: String,
    /// The agent it authenticates.
    agent: String,
    /// The operator's note.
    label: String,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339; null while the key is valid.
    revoked_at: Option<String>,
}

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct NewKeyBody {
    /// The agent it authenticates.
    agent: String,
    /// A note for operators (at most 200 printable characters).
    #[serde(default)]
    label: String,
}

/// A key just made: the only answer that holds its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MadeKey {
    id: String,
    agent: String,
    /// The key (`gk1_…`), shown this once.
    key: String,
}

/// A revocation's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Revoked {
    id: String,
    revoked: bool,
}

/// Every agent's gateway keys, without secrets (admin).
#[utoipa::path(
    get,
    path = "/api/gateway-keys",
    tag = "gateway-keys",
    responses(
        (status = 200, description = "the keys, newest first", body = KeyList),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "not an admin", body = super::ErrorBody),
    )
)]
async fn list(State(state): State<AppState>, ApiUser(user): ApiUser) -> ApiResult<KeyList> {
    user.require_admin()?;
    let keys = state
        .gov
        .gateway_keys()
        .list(&user.session.operator, None)
        .await?
        .into_iter()
        .rev()
        .map(|k| GatewayKey {
            id: k.id,
            agent: k.agent,
            label: k.label,
            created_at: when(k.created_at),
            revoked_at: k.revoked_at.map(when),
        })
        .collect();
    Ok(Json(KeyList { keys }))
}

/// Makes a gateway key for an agent (admin); the answer holds the key, the only time it is shown.
#[utoipa::path(
    post,
    path = "/api/gateway-keys",
    tag = "gateway-keys",
    request_body = NewKeyBody,
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "made", body = MadeKey),
        (status = 400, description = "a bad agent id or label", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "not an admin, or CSRF token missing", body = super::ErrorBody),
    )
)]
async fn add(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Json(body): Json<NewKeyBody>,
) -> ApiResult<MadeKey> {
    csrf_allowed(&headers, &user)?;
    user.require_admin()?;
    let made = state
        .gov
        .gateway_keys()
        .add(&user.session.operator, body.agent.trim(), body.label.trim())
        .await?;
    Ok(Json(MadeKey {
        id: made.id,
        agent: made.agent,
        key: made.key.expose_secret().to_owned(),
    }))
}

/// Revokes a gateway key (admin).
#[utoipa::path(
    post,
    path = "/api/gateway-keys/{id}/revoke",
    tag = "gateway-keys",
    params(("id" = String, Path, description = "The key's id")),
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "revoked", body = Revoked),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "not an admin, or CSRF token missing", body = super::ErrorBody),
        (status = 400, description = "no unrevoked key has that id", body = super::ErrorBody),
    )
)]
async fn revoke(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Revoked> {
    csrf_allowed(&headers, &user)?;
    user.require_admin()?;
    if !state
        .gov
        .gateway_keys()
        .revoke(&user.session.operator, &id)
        .await?
    {
        return Err(
            AppError::BadRequest(format!("no unrevoked gateway key has the id {id:?}")).into(),
        );
    }
    Ok(Json(Revoked { id, revoked: true }))
}
