//! `GET /approvals` (pending gate requests, each with its context: the arguments whole and
//! indented, the time left, the agent's state now, its latest events in that session, where its
//! quorum stands), `GET /approvals/{id}` (one request, decided or not, with its workflow and
//! votes: the page notifications link to) and `POST /approvals/{id}/approve` and `/deny`
//! (operator or admin, with a reason; never the requester, which the database refuses; an
//! approval covers the request once, the rest of its session, or, for admins, is saved as a
//! proposed rule).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};

use gov_sdk::{ApprovalScope, EventFilter};

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
        .route("/approvals/{id}", get(one))
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
    is_admin: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "approval.html")]
struct One {
    nav: Option<Nav>,
    flash: Option<String>,
    g: GateView,
    status: &'static str,
    decision: String,
    args_pretty: String,
    time_left: String,
    workflow: WorkflowView,
    votes: Vec<VoteView>,
    can_decide: bool,
    is_admin: bool,
    csrf: String,
}

/// Where a request's workflow stands, as shown.
struct WorkflowView {
    /// `four-eyes`, or empty (no route matched).
    name: String,
    /// "1 of 2 approvals".
    progress: String,
    /// "from finance", or empty (any operator).
    group: String,
    /// "escalates to managers at …", "escalated to managers at …", or empty.
    escalation: String,
}

struct VoteView {
    operator: String,
    vote: &'static str,
    reason: String,
    at: String,
}

fn workflow_view(g: &gov_sdk::GateRecord) -> WorkflowView {
    let w = &g.workflow;
    WorkflowView {
        name: w.name.clone().unwrap_or_default(),
        progress: format!(
            "{} of {} approval{}",
            w.approvals,
            w.quorum,
            if w.quorum == 1 { "" } else { "s" }
        ),
        group: w
            .approver_group
            .as_deref()
            .map(|x| format!("from {x}"))
            .unwrap_or_default(),
        escalation: match (&w.escalate_to, w.escalated_at, w.escalates_at) {
            (Some(to), Some(at), _) => format!("escalated to {to} at {}", super::when(at)),
            (Some(to), None, Some(at)) => format!("escalates to {to} at {}", super::when(at)),
            _ => String::new(),
        },
    }
}

fn pretty(args: &str) -> String {
    serde_json::from_str::<serde_json::Value>(args)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| args.to_owned())
}

/// A pending request with what an operator needs to decide it.
struct Pending {
    g: GateView,
    workflow: WorkflowView,
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
            workflow: workflow_view(g),
            args_pretty: pretty(&g.args),
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
        is_admin: user.require_admin().is_ok(),
        csrf: user.session.csrf_token.clone(),
    })
}

/// `GET /approvals/{id}`: one request, whatever its state (the page notifications link to).
async fn one(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    let id = gate_id(&id)?;
    let gov = &state.gov;
    let g = gov.gates().get(id).await.map_err(|e| match e {
        gov_sdk::Error::ApprovalRefused { .. } => AppError::NotFound,
        other => other.into(),
    })?;
    let votes = gov
        .gates()
        .votes(id)
        .await?
        .into_iter()
        .map(|v| VoteView {
            operator: v.operator,
            vote: if v.approve { "approved" } else { "denied" },
            reason: v.reason,
            at: super::when(v.voted_at),
        })
        .collect();
    let now = gov.config().store.clock.now();
    let (status, decision) = match g.status {
        gov_sdk::GateStatus::Pending if g.expires_at < now => ("expired", String::new()),
        gov_sdk::GateStatus::Pending => ("pending", String::new()),
        gov_sdk::GateStatus::Denied if g.workflow.expired_at.is_some() => (
            "expired",
            "denied: no decision before it expired".to_owned(),
        ),
        gov_sdk::GateStatus::Denied => (
            "denied",
            format!(
                "denied by {}: {}",
                g.decided_by.as_deref().unwrap_or("?"),
                g.decision_reason.as_deref().unwrap_or_default()
            ),
        ),
        gov_sdk::GateStatus::Approved | gov_sdk::GateStatus::Consumed => (
            if g.status == gov_sdk::GateStatus::Approved {
                "approved"
            } else {
                "used"
            },
            match g.workflow.grant_id {
                Some(_) => format!(
                    "approved for the session by {}",
                    g.decided_by.as_deref().unwrap_or("?")
                ),
                None => format!(
                    "approved by {}: {}",
                    g.decided_by.as_deref().unwrap_or("?"),
                    g.decision_reason.as_deref().unwrap_or_default()
                ),
            },
        ),
    };
    render(&One {
        nav: Nav::of(&user),
        flash: q.notice(),
        status,
        decision,
        args_pretty: pretty(&g.args),
        time_left: time_left(g.expires_at),
        workflow: workflow_view(&g),
        votes,
        can_decide: status == "pending" && user.require_operator().is_ok(),
        is_admin: user.require_admin().is_ok(),
        csrf: user.session.csrf_token.clone(),
        g: gate_view(&g),
    })
}

/// Where a decision's form returns to, with what it did.
fn back(form: &ReasonForm, id: uuid::Uuid, done: &str) -> String {
    match form.back.as_deref() {
        Some("request") => format!("/approvals/{id}?done={}", done.replace(' ', "+")),
        _ => form.back_to(&done.replace(' ', "+")),
    }
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
    let scope = match form.scope.as_deref() {
        None | Some("") => ApprovalScope::Once,
        Some(s) => ApprovalScope::parse(s).ok_or_else(|| {
            AppError::BadRequest("an approval covers once, session or rule".into())
        })?,
    };
    if scope == ApprovalScope::Rule {
        user.require_admin()?;
    }
    let vote = state
        .gov
        .gates()
        .approve_with(&user.session.operator, id, form.reason()?, scope)
        .await?;
    let done = match (&vote.proposed_rule, vote.decided, scope) {
        (Some((version, _)), _, _) => {
            format!("approved; rule proposed as shadow version {version}")
        }
        (None, false, _) => format!("vote recorded {} of {}", vote.approvals, vote.quorum),
        (None, true, ApprovalScope::Session) => "approved for the session".to_owned(),
        _ => "approved".to_owned(),
    };
    Ok(Redirect::to(&back(&form, id, &done)))
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
    Ok(Redirect::to(&back(&form, id, "denied")))
}
