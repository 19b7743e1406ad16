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

/// A decision taken, or a vote recorded.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Decided {
    id: uuid::Uuid,
    status: Decision,
    /// Approvals given so far.
    approvals: u32,
    /// Approvals the request needs (its workflow's quorum).
    quorum: u32,
    /// The shadow policy-set version an approval saved as a rule proposed.
    #[serde(skip_serializing_if = "Option::is_none")]
    proposed_rule_version: Option<i64>,
}

/// `approved`, `denied`, or `voted` (recorded; the quorum is not reached yet).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Decision {
    /// Approved: the waiting call goes on.
    Approved,
    /// Denied: the waiting call is refused.
    Denied,
    /// A vote recorded; more approvals are needed.
    Voted,
}

/// The body of approve: a reason, and what the approval covers.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub(crate) struct ApproveBody {
    /// Why; required, since it is recorded in the audit chain.
    #[schema(min_length = 1)]
    reason: String,
    /// `once` (the default), `session` (the session's later requests for the same tool), or
    /// `rule` (admins: also proposes a Cedar policy as the next shadow version).
    #[serde(default)]
    scope: Option<String>,
}

fn decided(id: uuid::Uuid, v: &gov_sdk::Vote, approve: bool) -> Decided {
    Decided {
        id,
        status: match (v.decided, approve) {
            (true, true) => Decision::Approved,
            (true, false) => Decision::Denied,
            (false, _) => Decision::Voted,
        },
        approvals: v.approvals,
        quorum: v.quorum,
        proposed_rule_version: v.proposed_rule.as_ref().map(|r| r.0),
    }
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
    request_body = ApproveBody,
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "approved, or the vote recorded", body = Decided),
        (status = 400, description = "no reason given, or not a request id", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "viewer, or CSRF token missing", body = super::ErrorBody),
        (status = 404, description = "no such request", body = super::ErrorBody),
        (status = 409, description = "refused: self-approval, already decided or voted, not in the approver group, expired", body = super::ErrorBody),
    )
)]
async fn approve(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<ApproveBody>,
) -> ApiResult<Decided> {
    change_allowed(&headers, &user)?;
    let id = gate_id(&id)?;
    let scope = match body.scope.as_deref() {
        None | Some("") => gov_sdk::ApprovalScope::Once,
        Some(s) => gov_sdk::ApprovalScope::parse(s).ok_or_else(|| {
            crate::error::AppError::BadRequest("an approval covers once, session or rule".into())
        })?,
    };
    if scope == gov_sdk::ApprovalScope::Rule {
        user.require_admin()?;
    }
    let reason = crate::pages::required_reason(Some(&body.reason))?;
    let v = state
        .gov
        .gates()
        .approve_with(&user.session.operator, id, reason, scope)
        .await?;
    Ok(Json(decided(id, &v, true)))
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
    let v = state
        .gov
        .gates()
        .deny(&user.session.operator, id, body.reason()?)
        .await?;
    Ok(Json(decided(id, &v, false)))
}
