//! `GET /agents` (presence, last heartbeat, who halted and why), `GET /agents/{agent}` (one
//! agent: presence, halt, today's spend by model, its last 25 events), and
//! `POST /agents/{agent}/halt` and `/resume` (operator or admin, with a reason).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};
use gov_sdk::EventFilter;

use super::{
    EventView, FlashQuery, Nav, ReasonForm, agent_row, agent_rows, allowed, event_view, render,
};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list))
        .route("/agents/{agent}", get(agent))
        .route("/agents/{agent}/halt", post(halt))
        .route("/agents/{agent}/resume", post(resume))
}

struct AgentView {
    id: String,
    state: &'static str,
    heartbeat: String,
    halted: bool,
    halted_by: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct Agents {
    nav: Option<Nav>,
    flash: Option<String>,
    agents: Vec<AgentView>,
    can_decide: bool,
    csrf: String,
}

fn heartbeat(since: Option<std::time::Duration>) -> String {
    since
        .map(|d| format!("{} s ago", d.as_secs()))
        .unwrap_or_else(|| "never".into())
}

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    let (rows, _) = agent_rows(&state.gov).await?;
    let agents = rows
        .into_iter()
        .map(|a| AgentView {
            state: a.state,
            heartbeat: heartbeat(a.since_heartbeat),
            halted: a.halted,
            halted_by: a.halted_by.unwrap_or_default(),
            reason: a.halt_reason.unwrap_or_default(),
            id: a.id,
        })
        .collect();
    render(&Agents {
        nav: Nav::of(&user),
        flash: q.notice(),
        agents,
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
    })
}

/// `POST /agents/{agent}/halt`.
async fn halt(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Redirect, AppError> {
    allowed(&headers, &user, form.csrf.as_deref())?;
    state
        .gov
        .presence()
        .halt(&user.session.operator, &agent, form.reason()?)
        .await?;
    Ok(Redirect::to(&format!("/agents?done=halted+{agent}")))
}

/// `POST /agents/{agent}/resume`.
async fn resume(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(agent): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Redirect, AppError> {
    allowed(&headers, &user, form.csrf.as_deref())?;
    state
        .gov
        .presence()
        .resume(&user.session.operator, &agent, form.reason()?)
        .await?;
    Ok(Redirect::to(&format!("/agents?done=resumed+{agent}")))
}

#[derive(Template)]
#[template(path = "agent.html")]
struct AgentPage {
    nav: Option<Nav>,
    flash: Option<String>,
    id: String,
    state: &'static str,
    heartbeat: String,
    halted: bool,
    halted_by: String,
    reason: String,
    pending: Vec<super::GateView>,
    can_decide: bool,
    csrf: String,
    spend: Vec<(String, i64, String)>,
    recent: Vec<EventView>,
}

/// `GET /agents/{agent}`: presence, halt, today's spend and recent events of one agent.
async fn agent(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Html<String>, AppError> {
    let agent_id: gov_sdk::AgentId = id
        .parse()
        .map_err(|e: gov_sdk::IdError| AppError::BadRequest(format!("agent: {e}")))?;
    let status = state.gov.presence().status(&id).await?;
    let pending: Vec<_> = state
        .gov
        .gates()
        .pending()
        .await?
        .into_iter()
        .filter(|g| g.agent_id == id)
        .collect();
    let spend = state
        .gov
        .cost()
        .usage_today(&id)
        .await?
        .into_iter()
        .map(|u| (u.model, u.calls, u.cost.to_string()))
        .collect();
    let chain = &state.config.live_chain;
    let head = state.gov.audit().head(chain).await?.map_or(0, |h| h.seq);
    let rows = state
        .gov
        .audit()
        .events(&EventFilter {
            chain_id: chain.parse().ok(),
            agent_id: Some(agent_id),
            after_seq: Some((head - 5_000).max(0)),
            limit: Some(5_000),
            ..EventFilter::default()
        })
        .await?;
    let row = match agent_row(&status, &pending) {
        Some(row) => row,
        None => {
            // No presence row: an agent only if it made a request or wrote an event.
            let any = state
                .gov
                .audit()
                .events(&EventFilter {
                    chain_id: chain.parse().ok(),
                    agent_id: id.parse().ok(),
                    limit: Some(1),
                    ..EventFilter::default()
                })
                .await?;
            if pending.is_empty() && any.is_empty() {
                return Err(AppError::UnknownAgent(id));
            }
            super::AgentRow {
                id: id.clone(),
                state: super::shown_state(status.state, pending.len()),
                since_heartbeat: None,
                halted: false,
                halted_by: None,
                halt_reason: None,
                waiting: pending.len(),
            }
        }
    };
    let recent = rows.iter().rev().take(25).map(event_view).collect();
    render(&AgentPage {
        nav: Nav::of(&user),
        flash: None,
        state: row.state,
        heartbeat: heartbeat(row.since_heartbeat),
        halted: row.halted,
        halted_by: row.halted_by.unwrap_or_default(),
        reason: row.halt_reason.unwrap_or_default(),
        pending: pending.iter().map(super::gate_view).collect(),
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
        spend,
        recent,
        id,
    })
}
