//! `GET /chain` (chain heads, the verification form, the report form) and `POST /chain`
//! (verifies every chain and shows the result; any signed-in user, since it only reads). The
//! page's script verifies through `/api/chain/verification` instead, with a progress bar.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use axum::routing::get;
use axum::{Form, Router};

use super::{CsrfOnly, Nav, render};
use crate::AppState;
use crate::auth::{CurrentUser, same_site};
use crate::chain_status::ChainLine;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/chain", get(chain).post(verify))
}

struct VerifyView {
    status: &'static str,
    summary: String,
    /// When that verification started (RFC 3339).
    at: String,
}

/// One chain's row: its head, its stored checkpoints and the last verification's line for it.
struct ChainRow {
    chain: String,
    head_seq: i64,
    checkpoints: usize,
    /// The newest checkpoint's seq and time (empty without one).
    last_checkpoint: String,
    /// From the last verification (absent when it did not cover this chain).
    verified: Option<ChainLine>,
}

#[derive(Template)]
#[template(path = "chain.html")]
struct Chain {
    nav: Option<Nav>,
    flash: Option<String>,
    chains: Vec<ChainRow>,
    csrf: String,
    result: Option<VerifyView>,
}

async fn chain_page(state: &AppState, user: &CurrentUser) -> Result<Html<String>, AppError> {
    let gov = &state.gov;
    let last = state.chain_status.latest(gov).await;
    let lines: Vec<ChainLine> = last
        .as_ref()
        .and_then(|c| c.chains.as_deref().cloned())
        .unwrap_or_default();
    let mut chains = Vec::new();
    for h in gov.audit().heads().await? {
        let cps = gov.audit().checkpoints(&h.chain_id).await?;
        chains.push(ChainRow {
            checkpoints: cps.len(),
            last_checkpoint: cps
                .iter()
                .max_by_key(|c| c.seq)
                .map(|c| format!("seq {} at {}", c.seq, super::when(c.signed_at)))
                .unwrap_or_default(),
            verified: lines.iter().find(|l| l.chain == h.chain_id).cloned(),
            chain: h.chain_id,
            head_seq: h.seq,
        });
    }
    let result = last.map(|c| {
        let events: u64 = c
            .chains
            .iter()
            .flat_map(|l| l.iter())
            .map(|l| l.events_checked)
            .sum();
        VerifyView {
            status: c.integrity.status_str(),
            summary: if c.chains.is_some() {
                format!("{events} events checked")
            } else {
                c.integrity.summary()
            },
            at: super::when(c.at),
        }
    });
    render(&Chain {
        nav: Nav::of(user),
        flash: None,
        chains,
        csrf: user.session.csrf_token.clone(),
        result,
    })
}

/// `GET /chain`: with the last verification's result and time (whoever or whatever ran it: this
/// page, the API, a health check, the periodic verification, or a console before a restart:
/// results are recorded in the database), so a reload or a restart keeps it.
async fn chain(State(state): State<AppState>, user: CurrentUser) -> Result<Html<String>, AppError> {
    chain_page(&state, &user).await
}

/// `POST /chain`: verification reads only; any signed-in user may run it. Its result is also
/// the one `/health/governance` reports from then on.
async fn verify(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Html<String>, AppError> {
    same_site(&headers)?;
    user.check_csrf(form.csrf.as_deref())?;
    state.chain_status.verify_now(&state.gov).await?;
    chain_page(&state, &user).await
}
