//! `GET /api/approvals` and `POST /api/approvals/{id}/approve` and `/deny`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiResult, ApiUser, ReasonBody, change_allowed};
use crate::AppState;
use crate::pages::{gate_id, when};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(approve))
        .routes(routes!(deny))
}

/// The pending gate requests.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PendingList {
    pending: Vec<PendingGate>,
}

/// A gate request waiting for a decision.
// Fields in alphabetical order, the order of the keys before the body was typed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PendingGate {
    agent_id: String,
    /// The tool call's arguments as JSON (null if they are not JSON).
    #[schema(value_type = Object)]
    args: Value,
    /// When it expires unanswered (RFC 3339).
    expires_at: String,
    id: uuid::Uuid,
    /// RFC 3339.
    requested_at: String,
    session_id: Option<String>,
    tool: String,
}

/// A decision taken.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Decided {
    id: uuid::Uuid,
    status: Decision,
}

/// `approved` or `denied`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Decision {
    /// Approved: the waiting call goes on.
    Approved,
    /// Denied: the waiting call is refused.
    Denied,
}

/// Pending gate requests.
#[utoipa::path(
    get,
    path = "/api/approvals",
    tag = "approvals",
    responses(
        (status = 200, description = "the pending requests", body = PendingList),
        (status = 401, description = "not signed in", body = super::ErrorBody),
    )
)]
async fn list(State(state): State<AppState>, _user: ApiUser) -> ApiResult<PendingList> {
    let pending = state.gov.gates().pending().await?;
    let pending = pending
        .iter()
        .map(|g| PendingGate {
            agent_id: g.agent_id.clone(),
            args: serde_json::from_str::<Value>(&g.args).unwrap_or(Value::Null),
            expires_at: when(g.expires_at),
            id: g.id,
            requested_at: when(g.requested_at),
            session_id: g.session_id.clone(),
            tool: g.tool.clone(),
        })
        .collect();
    Ok(Json(PendingList { pending }))
}

/// Approves a request (operator, admin; never the requester).
#[utoipa::path(
    post,
    path = "/api/approvals/{id}/approve",
    tag = "approvals",
    params(("id" = uuid::Uuid, Path, description = "The request's id")),
    request_body = ReasonBody,
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "approved", body = Decided),
        (status = 400, description = "no reason given, or not a request id", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "viewer, or CSRF token missing", body = super::ErrorBody),
        (status = 404, description = "no such request", body = super::ErrorBody),
        (status = 409, description = "refused: self-approval, already decided, expired", body = super::ErrorBody),
    )
)]
async fn approve(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<Decided> {
    change_allowed(&headers, &user)?;
    let id = gate_id(&id)?;
    state
        .gov
        .gates()
        .approve(&user.session.operator, id, body.reason()?)
        .await?;
    Ok(Json(Decided {
        id,
        status: Decision::Approved,
    }))
}

/// Denies a request (operator, admin).
#[utoipa::path(
    post,
    path = "/api/approvals/{id}/deny",
    tag = "approvals",
    params(("id" = uuid::Uuid, Path, description = "The request's id")),
    request_body = ReasonBody,
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "denied", body = Decided),
        (status = 400, description = "no reason given, or not a request id", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "viewer, or CSRF token missing", body = super::ErrorBody),
        (status = 404, description = "no such request", body = super::ErrorBody),
        (status = 409, description = "refused: already decided, expired", body = super::ErrorBody),
    )
)]
async fn deny(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<Decided> {
    change_allowed(&headers, &user)?;
    let id = gate_id(&id)?;
    state
        .gov
        .gates()
        .deny(&user.session.operator, id, body.reason()?)
        .await?;
    Ok(Json(Decided {
        id,
        status: Decision::Denied,
    }))
}
