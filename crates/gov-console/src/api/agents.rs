//! `GET /api/agents` and `POST /api/agents/{agent}/halt` and `/resume`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiResult, ApiUser, ReasonBody, change_allowed};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(halt))
        .routes(routes!(resume))
}

/// The agents with a presence record.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentList {
    agents: Vec<Agent>,
}

/// One agent.
// Fields in alphabetical order, the order of the keys before the body was typed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Agent {
    agent_id: String,
    /// Why it was halted, while it is (null once resumed).
    halt_reason: Option<String>,
    halted: bool,
    /// Who halted it, while it is (null once resumed).
    halted_by: Option<String>,
    /// Its gate requests waiting for a decision.
    pending_requests: usize,
    /// Null if it never sent one.
    seconds_since_heartbeat: Option<u64>,
    /// `live`, `idle`, `unresponsive`, `halted`, or `waiting` (not halted, with a gate request
    /// pending).
    state: &'static str,
}

/// A halt's or a resume's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AgentSwitched {
    agent_id: String,
    /// False when the agent was already in that state.
    changed: bool,
    /// True after a halt, false after a resume.
    halted: bool,
}

/// Agents with presence state and halt details.
#[utoipa::path(
    get,
    path = "/api/agents",
    tag = "agents",
    responses(
        (status = 200, description = "the agents with a presence record", body = AgentList),
        (status = 401, description = "not signed in", body = super::ErrorBody),
    )
)]
async fn list(State(state): State<AppState>, _user: ApiUser) -> ApiResult<AgentList> {
    let (rows, _) = crate::pages::agent_rows(&state.gov).await?;
    let agents = rows
        .into_iter()
        .map(|a| Agent {
            agent_id: a.id,
            halt_reason: a.halt_reason,
            halted: a.halted,
            halted_by: a.halted_by,
            pending_requests: a.waiting,
            seconds_since_heartbeat: a.since_heartbeat.map(|d| d.as_secs()),
            state: a.state,
        })
        .collect();
    Ok(Json(AgentList { agents }))
}

/// Halts an agent (operator, admin).
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/halt",
    tag = "agents",
    params(("agent" = String, Path, description = "The agent's id")),
    request_body = ReasonBody,
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "halted", body = AgentSwitched),
        (status = 400, description = "no reason given", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "viewer, or CSRF token missing", body = super::ErrorBody),
    )
)]
async fn halt(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<AgentSwitched> {
    change_allowed(&headers, &user)?;
    let changed = state
        .gov
        .presence()
        .halt(&user.session.operator, &agent, body.reason()?)
        .await?;
    Ok(Json(AgentSwitched {
        agent_id: agent,
        changed,
        halted: true,
    }))
}

/// Resumes an agent (operator, admin).
#[utoipa::path(
    post,
    path = "/api/agents/{agent}/resume",
    tag = "agents",
    params(("agent" = String, Path, description = "The agent's id")),
    request_body = ReasonBody,
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "resumed", body = AgentSwitched),
        (status = 400, description = "no reason given", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "viewer, or CSRF token missing", body = super::ErrorBody),
    )
)]
async fn resume(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Json(body): Json<ReasonBody>,
) -> ApiResult<AgentSwitched> {
    change_allowed(&headers, &user)?;
    let changed = state
        .gov
        .presence()
        .resume(&user.session.operator, &agent, body.reason()?)
        .await?;
    Ok(Json(AgentSwitched {
        agent_id: agent,
        changed,
        halted: false,
    }))
}
