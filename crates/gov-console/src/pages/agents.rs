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

use super::{EventView, FlashQuery, Nav, ReasonForm, allowed, event_view, render, state_name};
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
    let list = state.gov.presence().list().await?;
    let agents = list
        .iter()
        .filter_map(|a| {
            let p = a.presence.as_ref()?;
            Some(AgentView {
                id: p.agent_id.clone(),
                state: state_name(a.state),
                heartbeat: heartbeat(p.since_heartbeat),
                halted: p.halted,
                halted_by: p.halted_by.clone().unwrap_or_default(),
                reason: p.halt_reason.clone().unwrap_or_default(),
            })
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
    let p = status.presence.clone();
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
    let recent = rows.iter().rev().take(25).map(event_view).collect();
    render(&AgentPage {
        nav: Nav::of(&user),
        flash: None,
        state: state_name(status.state),
        heartbeat: heartbeat(p.as_ref().and_then(|p| p.since_heartbeat)),
        halted: p.as_ref().is_some_and(|p| p.halted),
        halted_by: p
            .as_ref()
            .and_then(|p| p.halted_by.clone())
            .unwrap_or_default(),
        reason: p
            .as_ref()
            .and_then(|p| p.halt_reason.clone())
            .unwrap_or_default(),
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
        spend,
        recent,
        id,
    })
}
