//! `GET /`: agents by presence state, today's spend, pending approvals, chain heads.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use gov_sdk::PresenceState;

use super::{GateView, Nav, gate_view, render};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/", get(dashboard))
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    nav: Option<Nav>,
    flash: Option<String>,
    live: usize,
    idle: usize,
    unresponsive: usize,
    halted: usize,
    spend_today: String,
    pending: Vec<GateView>,
    chains: String,
}

async fn dashboard(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Html<String>, AppError> {
    let gov = &state.gov;
    let agents = gov.presence().list().await?;
    let count = |s: PresenceState| agents.iter().filter(|a| a.state == s).count();
    let spend: i64 = gov
        .cost()
        .usage_today_all()
        .await?
        .iter()
        .map(|(_, u)| u.cost.0)
        .sum();
    let pending = gov.gates().pending().await?;
    let heads: Vec<String> = gov
        .audit()
        .heads()
        .await?
        .into_iter()
        .map(|h| format!("{}: {} events", h.chain_id, h.seq))
        .collect();
    render(&Dashboard {
        nav: Nav::of(&user),
        flash: None,
        live: count(PresenceState::Live),
        idle: count(PresenceState::Idle),
        unresponsive: count(PresenceState::Unresponsive),
        halted: count(PresenceState::Halted),
        spend_today: gov_sdk::MicroUsd(spend).to_string(),
        pending: pending.iter().take(10).map(gate_view).collect(),
        chains: if heads.is_empty() {
            "no events yet".into()
        } else {
            heads.join(", ")
        },
    })
}
