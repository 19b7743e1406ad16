//! `POST /api/chain/verify` (verify now, answer the report) and `POST`/`GET
//! /api/chain/verification` (verify in the background, one at a time, with progress). Any
//! signed-in user may verify (it only reads), with the CSRF header. Each result also refreshes
//! the chain status `/health/governance` reports.

use std::sync::{Arc, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gov_sdk::{Verdict, VerifyReport};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiResult, ApiUser, csrf_allowed};
use crate::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify))
        .routes(routes!(verification, start_verification))
}

/// `clean`, `tampered` or `unverifiable`: the worst over the chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReportStatus {
    /// Every row verified.
    Clean,
    /// Rows no configured key can check (written with another secret; docs/cli.md).
    Unverifiable,
    /// A chain fails verification.
    Tampered,
}

impl From<Verdict> for ReportStatus {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Clean => Self::Clean,
            Verdict::Unverifiable => Self::Unverifiable,
            Verdict::Tampered => Self::Tampered,
        }
    }
}

/// The verification report with its verdict.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Verified {
    /// The report as the SDK serialises a `VerifyReport`: `chains` (per chain: `chain_id`,
    /// `events_checked`, `finding`, `unverifiable`, `signatures`, ...) and `events_checked`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    report: VerifyReport,
    status: ReportStatus,
}

/// Verifies every chain.
#[utoipa::path(
    post,
    path = "/api/chain/verify",
    tag = "chain",
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 200, description = "the verification report", body = Verified),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "CSRF token missing", body = super::ErrorBody),
        (status = 404, description = "no events to verify", body = super::ErrorBody),
    )
)]
async fn verify(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
) -> ApiResult<Verified> {
    csrf_allowed(&headers, &user)?;
    let report = state.chain_status.verify_now(&state.gov).await?;
    Ok(Json(Verified {
        status: report.verdict().into(),
        report,
    }))
}

/// The background verification's state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum JobStatus {
    /// None has run since the console started.
    #[default]
    Idle,
    /// One is under way.
    Running,
    /// Done: every row verified.
    Clean,
    /// Done: rows no configured key can check.
    Unverifiable,
    /// Done: a chain fails verification.
    Tampered,
    /// It could not complete (`error` says why).
    Failed,
}

/// The console's background verification: one at a time, with its progress.
#[derive(Debug, Default, Clone, Serialize, ToSchema)]
pub(crate) struct VerifyJob {
    status: JobStatus,
    /// Who started it.
    started_by: Option<String>,
    /// The chain being verified.
    chain: Option<String>,
    /// Rows checked so far in that chain.
    checked: u64,
    /// The rows of that chain.
    total: u64,
    /// Rows checked in chains already done.
    done_events: u64,
    /// The report when finished (as `POST /api/chain/verify` answers it, without `status`).
    #[schema(value_type = Option<Object>)]
    report: Option<VerifyReport>,
    /// Why it failed, when it did.
    error: Option<String>,
}

/// `POST /api/chain/verification`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Started {
    /// `running`.
    status: JobStatus,
}

/// `POST /api/chain/verification` while one runs (409).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlreadyRunning {
    error: &'static str,
    status: u16,
}

/// Starts verifying every chain in the background.
#[utoipa::path(
    post,
    path = "/api/chain/verification",
    tag = "chain",
    security(("session" = [], "csrf" = [])),
    responses(
        (status = 202, description = "started", body = Started),
        (status = 401, description = "not signed in", body = super::ErrorBody),
        (status = 403, description = "CSRF token missing", body = super::ErrorBody),
        (status = 409, description = "one is already running", body = AlreadyRunning),
    )
)]
async fn start_verification(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    csrf_allowed(&headers, &user)?;
    {
        let mut job = state
            .verify_job
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if job.status == JobStatus::Running {
            let body = AlreadyRunning {
                error: "a verification is already running",
                status: 409,
            };
            return Ok((StatusCode::CONFLICT, Json(body)).into_response());
        }
        *job = VerifyJob {
            status: JobStatus::Running,
            started_by: Some(user.username().to_owned()),
            ..VerifyJob::default()
        };
    }
    let (gov, job, cache) = (
        state.gov.clone(),
        Arc::clone(&state.verify_job),
        Arc::clone(&state.chain_status),
    );
    tokio::spawn(async move {
        let progress_job = Arc::clone(&job);
        let opts = gov_sdk::VerifyOptions {
            progress: Some(Arc::new(move |p: gov_sdk::VerifyProgress| {
                let mut j = progress_job.lock().unwrap_or_else(PoisonError::into_inner);
                if j.chain.as_deref() != Some(p.chain_id.as_str()) {
                    j.done_events += j.checked;
                    j.chain = Some(p.chain_id);
                }
                j.checked = p.checked;
                j.total = p.total;
            })),
            ..gov_sdk::VerifyOptions::default()
        };
        let ticket = cache.begin();
        let result = gov.audit().verify_with(None, &opts).await;
        cache.record_outcome(&gov, ticket, &result).await;
        let mut j = job.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(report) => {
                j.status = match report.verdict() {
                    Verdict::Clean => JobStatus::Clean,
                    Verdict::Unverifiable => JobStatus::Unverifiable,
                    Verdict::Tampered => JobStatus::Tampered,
                };
                j.report = Some(report);
            }
            Err(e) => {
                tracing::warn!(error = %e, "console verification failed");
                j.status = JobStatus::Failed;
                j.error = Some(if !crate::error::status_for(e.kind()).is_server_error() {
                    e.to_string()
                } else {
                    "verification could not complete; the cause is in the console's log".into()
                });
            }
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(Started {
            status: JobStatus::Running,
        }),
    )
        .into_response())
}

/// The background verification: its status, progress (`chain`, `checked`, `total`) and the
/// report when done.
#[utoipa::path(
    get,
    path = "/api/chain/verification",
    tag = "chain",
    responses(
        (status = 200, description = "the job", body = VerifyJob),
        (status = 401, description = "not signed in", body = super::ErrorBody),
    )
)]
async fn verification(State(state): State<AppState>, _user: ApiUser) -> ApiResult<VerifyJob> {
    let job = state
        .verify_job
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Ok(Json(job))
}
