//! `GET /approvals` (pending gate requests) and `POST /approvals/{id}/approve` and `/deny`
//! (operator or admin, with a reason; never the requester, which the database refuses).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};

use super::{FlashQuery, GateView, Nav, ReasonForm, allowed, gate_id, gate_view, render};
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
    pending: Vec<GateView>,
    can_decide: bool,
    csrf: String,
}

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    let pending = state.gov.gates().pending().await?;
    render(&Approvals {
        nav: Nav::of(&user),
        flash: q.notice(),
        pending: pending.iter().map(gate_view).collect(),
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
