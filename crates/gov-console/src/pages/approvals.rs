//! `GET /approvals` (pending gate requests, each with its context: the arguments whole and
//! indented, the time left, the agent's state now, its latest events in that session) and `POST /approvals/{id}/approve` and `/deny`
//! (operator or admin, with a reason; never the requester, which the database refuses).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};

use gov_sdk::EventFilter;

use super::{
    EventView, FlashQuery, GateView, Nav, ReasonForm, allowed, event_view, gate_id, gate_view,
    render,
};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/approvals", get(list))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
}

#[derive(Template)]
#[template(path = "approvals.html")]
struct Approvals {
    nav: Option<Nav>,
    flash: Option<String>,
    pending: Vec<Pending>,
    can_decide: bool,
    csrf: String,
}

/// A pending request with what an operator needs to decide it.
struct Pending {
    g: GateView,
    /// The arguments as indented JSON, whole (never cut), or as stored if not JSON.
    args_pretty: String,
    /// "4 min 12 s" until it lapses.
    time_left: String,
    /// The agent's presence now: `waiting`, `halted`, ... and its last heartbeat.
    agent_state: &'static str,
    heartbeat: String,
    /// The agent's latest events in that session, newest first.
    context: Vec<EventView>,
}

/// Rows of the chain searched for a request's session context.
const CONTEXT_ROWS: i64 = 5_000;
/// Requests shown with their context (the oldest first).
const SHOWN: usize = 50;

fn time_left(expires: time::OffsetDateTime) -> String {
    let left = (expires - time::OffsetDateTime::now_utc())
        .whole_seconds()
        .max(0);
    match left {
        0 => "lapsing now".into(),
        s if s < 60 => format!("{s} s left"),
        s if s < 3600 => format!("{} min {} s left", s / 60, s % 60),
        s => format!("{} h {} min left", s / 3600, (s % 3600) / 60),
    }
}

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    let gov = &state.gov;
    let pending = gov.gates().pending().await?;
    let presences = gov.presence().list().await?;
    let chain = &state.config.live_chain;
    let head = gov.audit().head(chain).await?.map_or(0, |h| h.seq);
    let mut shown = Vec::new();
    for g in pending.iter().take(SHOWN) {
        let status = presences.iter().find(|p| {
            p.presence
                .as_ref()
                .is_some_and(|p| p.agent_id == g.agent_id)
        });
        let row = status.and_then(|s| super::agent_row(s, &pending));
        let context = match g.session_id.as_deref().map(str::parse) {
            Some(Ok(session)) => gov
                .audit()
                .events(&EventFilter {
                    chain_id: chain.parse().ok(),
                    agent_id: g.agent_id.parse().ok(),
                    session_id: Some(session),
                    after_seq: Some((head - CONTEXT_ROWS).max(0)),
                    limit: Some(u32::try_from(CONTEXT_ROWS).unwrap_or(5_000)),
                    ..EventFilter::default()
                })
                .await?
                .iter()
                .rev()
                .take(8)
                .map(event_view)
                .collect(),
            _ => Vec::new(),
        };
        shown.push(Pending {
            args_pretty: serde_json::from_str::<serde_json::Value>(&g.args)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| g.args.clone()),
            time_left: time_left(g.expires_at),
            agent_state: row.as_ref().map_or("unknown", |r| r.state),
            heartbeat: row
                .as_ref()
                .and_then(|r| r.since_heartbeat)
                .map_or_else(|| "never".into(), |d| format!("{} s ago", d.as_secs())),
            context,
            g: gate_view(g),
        });
    }
    render(&Approvals {
        nav: Nav::of(&user),
        flash: q.notice(),
        pending: shown,
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
    })
}

/// `POST /approvals/{id}/approve`.
async fn approve(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Redirect, AppError> {
    allowed(&headers, &user, form.csrf.as_deref())?;
    let id = gate_id(&id)?;
    state
        .gov
        .gates()
        .approve(&user.session.operator, id, form.reason()?)
        .await?;
    Ok(Redirect::to(&form.back_to("approved")))
}

/// `POST /approvals/{id}/deny`.
async fn deny(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Redirect, AppError> {
    allowed(&headers, &user, form.csrf.as_deref())?;
    let id = gate_id(&id)?;
    state
        .gov
        .gates()
        .deny(&user.session.operator, id, form.reason()?)
        .await?;
    Ok(Redirect::to(&form.back_to("denied")))
}
