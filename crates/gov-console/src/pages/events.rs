//! `GET /events`: the last 50 events of the followed chain, then new ones live (`GET
//! /events/stream`, `crate::events`, routed with the API so that it is described in the OpenAPI
//! document), filtered by agent or kind.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use gov_sdk::EventFilter;
use serde::Deserialize;

use super::{EventView, Nav, event_view, render};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

#[derive(Template)]
#[template(path = "events.html")]
struct Events {
    nav: Option<Nav>,
    flash: Option<String>,
    agent: String,
    kind: String,
    recent: Vec<EventView>,
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    agent: Option<String>,
    kind: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<EventQuery>,
) -> Result<Html<String>, AppError> {
    let agent = q.agent.unwrap_or_default();
    let kind = q.kind.unwrap_or_default();
    let chain = &state.config.live_chain;
    let head = state.gov.audit().head(chain).await?.map_or(0, |h| h.seq);
    let filter = EventFilter {
        chain_id: chain.parse().ok(),
        agent_id: if agent.is_empty() {
            None
        } else {
            Some(
                agent
                    .parse()
                    .map_err(|e: gov_sdk::IdError| AppError::BadRequest(format!("agent: {e}")))?,
            )
        },
        kind: (!kind.is_empty()).then(|| kind.clone()),
        after_seq: Some((head - 500).max(0)),
        limit: Some(500),
        ..EventFilter::default()
    };
    let rows = state.gov.audit().events(&filter).await?;
    let recent = rows.iter().rev().take(50).map(event_view).collect();
    render(&Events {
        nav: Nav::of(&user),
        flash: None,
        agent,
        kind,
        recent,
    })
}
