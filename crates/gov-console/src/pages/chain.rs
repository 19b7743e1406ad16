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
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/chain", get(chain).post(verify))
}

struct VerifyView {
    status: &'static str,
    summary: String,
    /// When that verification started (RFC 3339).
    at: String,
    chains: Vec<(String, u64, u64, u64, String)>,
}

#[derive(Template)]
#[template(path = "chain.html")]
struct Chain {
    nav: Option<Nav>,
    flash: Option<String>,
    heads: Vec<(String, i64)>,
    csrf: String,
    result: Option<VerifyView>,
}

async fn chain_page(
    state: &AppState,
    user: &CurrentUser,
    result: Option<VerifyView>,
) -> Result<Html<String>, AppError> {
    let heads = state
        .gov
        .audit()
        .heads()
        .await?
        .into_iter()
        .map(|h| (h.chain_id, h.seq))
        .collect();
    render(&Chain {
        nav: Nav::of(user),
        flash: None,
        heads,
        csrf: user.session.csrf_token.clone(),
        result,
    })
}

/// `GET /chain`: with the last verification's result and time (whoever or whatever ran it: this
/// page, the API, a health check, the periodic verification), so a reload keeps it.
async fn chain(State(state): State<AppState>, user: CurrentUser) -> Result<Html<String>, AppError> {
    let last = state
        .chain_status
        .latest()
        .and_then(|c| c.report.map(|r| view_of(&r, c.at)));
    chain_page(&state, &user, last).await
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
    let at = time::OffsetDateTime::now_utc();
    let report = state.chain_status.verify_now(&state.gov).await?;
    chain_page(&state, &user, Some(view_of(&report, at))).await
}

fn view_of(report: &gov_sdk::VerifyReport, at: time::OffsetDateTime) -> VerifyView {
    VerifyView {
        at: super::when(at),
        status: report.verdict().as_str(),
        summary: format!("{} events checked", report.events_checked),
        chains: report
            .chains
            .iter()
            .map(|c| {
                (
                    c.chain_id.clone(),
                    c.events_checked,
                    c.signatures.signed,
                    c.signatures.unsigned + c.signatures.unsigned_local_failure,
                    match (&c.finding, &c.unverifiable) {
                        (Some(f), _) => {
                            format!("seq {}: {}: {}", f.seq, f.reason.as_str(), f.detail)
                        }
                        (None, Some(u)) => {
                            format!("not verifiable with the configured keys: {}", u.advice)
                        }
                        (None, None) => "clean".into(),
                    },
                )
            })
            .collect(),
    }
}
