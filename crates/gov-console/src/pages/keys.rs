//! `GET /gateway-keys` (admin: every agent's gateway keys, never a secret), `POST /gateway-keys`
//! (make one: the key is on the response page, the only time it is shown; it is neither logged
//! nor stored, and the response is `no-store` like every page) and
//! `POST /gateway-keys/{id}/revoke`. Each key made or revoked is recorded in the chain by the SDK
//! (`agent.key_added`, `agent.key_revoked`). Viewers and operators are refused (403).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::{CsrfOnly, FlashQuery, Nav, admin_allowed, render, when};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/gateway-keys", get(list).post(add))
        .route("/gateway-keys/{id}/revoke", post(revoke))
}

/// A key as listed: no secret, no hash.
struct KeyView {
    id: String,
    agent: String,
    label: String,
    created: String,
    /// When it was revoked (RFC 3339), or empty.
    revoked: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct Keys {
    nav: Option<Nav>,
    flash: Option<String>,
    keys: Vec<KeyView>,
    /// The key just made, shown once (on the response to the form that made it).
    made: Option<MadeKey>,
    csrf: String,
}

struct MadeKey {
    id: String,
    agent: String,
    key: String,
}

async fn page(
    state: &AppState,
    user: &CurrentUser,
    flash: Option<String>,
    made: Option<MadeKey>,
) -> Result<Html<String>, AppError> {
    let keys = state
        .gov
        .gateway_keys()
        .list(&user.session.operator, None)
        .await?
        .into_iter()
        .rev()
        .map(|k| KeyView {
            id: k.id,
            agent: k.agent,
            label: k.label,
            created: when(k.created_at),
            revoked: k.revoked_at.map(when).unwrap_or_default(),
        })
        .collect();
    render(&Keys {
        nav: Nav::of(user),
        flash,
        keys,
        made,
        csrf: user.session.csrf_token.clone(),
    })
}

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    user.require_admin()?;
    page(&state, &user, q.notice(), None).await
}

#[derive(Deserialize)]
struct NewKeyForm {
    csrf: Option<String>,
    agent: Option<String>,
    label: Option<String>,
}

/// `POST /gateway-keys`: an admin makes a key; the answer is the page with the key on it.
async fn add(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Form(form): Form<NewKeyForm>,
) -> Result<Html<String>, AppError> {
    admin_allowed(&headers, &user, form.csrf.as_deref())?;
    let agent = form.agent.as_deref().unwrap_or_default().trim();
    if agent.is_empty() {
        return Err(AppError::BadRequest("name the agent the key is for".into()));
    }
    let made = state
        .gov
        .gateway_keys()
        .add(
            &user.session.operator,
            agent,
            form.label.as_deref().unwrap_or_default().trim(),
        )
        .await?;
    let made = MadeKey {
        id: made.id,
        agent: made.agent,
        key: made.key.expose_secret().to_owned(),
    };
    page(&state, &user, None, Some(made)).await
}

/// `POST /gateway-keys/{id}/revoke`.
async fn revoke(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Redirect, AppError> {
    admin_allowed(&headers, &user, form.csrf.as_deref())?;
    if !state
        .gov
        .gateway_keys()
        .revoke(&user.session.operator, &id)
        .await?
    {
        return Err(AppError::BadRequest(format!(
            "no unrevoked gateway key has the id {id:?}"
        )));
    }
    Ok(Redirect::to(&format!(
        "/gateway-keys?done=revoked+key+{id}"
    )))
}
