//! `GET /api/coverage`: the share of recorded LLM calls that went through the SDK's gates
//! (governed) rather than being reported after the fact (observed), and the registry of wrapped
//! LLM clients: the Article 12 report's coverage section for a chosen period, computed by the
//! same function (`gov_report::coverage_between`). The dashboard's coverage pill shows the last
//! 24 hours of it, cached for a minute and recounted in the background ([`CoverageCache`]),
//! since counting reads the period's rows (seconds at a million rows): only the first dashboard
//! waits for a count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiResult, ApiUser};
use crate::AppState;
use crate::error::AppError;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(coverage))
}

/// The period when none is asked for: the last 24 hours.
pub(crate) const DEFAULT_PERIOD: time::Duration = time::Duration::hours(24);
/// How long the dashboard's pill reuses a computed coverage.
const PILL_TTL: Duration = Duration::from_secs(60);

/// Which period.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CoverageQuery {
    /// Start (inclusive), RFC 3339 or `YYYY-MM-DDTHH:MM` (UTC); default: 24 hours before `to`.
    from: Option<String>,
    /// End (exclusive), same forms; default: now.
    to: Option<String>,
}

/// Coverage over a period.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CoverageBody {
    /// Start of the period (RFC 3339).
    from: String,
    /// End of the period (RFC 3339, exclusive).
    to: String,
    /// The report's coverage section: `coverage_pct` (null with `reason_code` and `reason`
    /// when there is nothing to compute it from), `definition`, `governed_calls`,
    /// `observed_calls`, `wrapped_clients` (the registry: `provider`, `wrapper`,
    /// `model_family`, `host_digest`, `registered_at`).
    #[schema(value_type = Object)]
    coverage: gov_report::Coverage,
}

/// Governed against observed LLM calls over a period, and the wrapped clients.
#[utoipa::path(
    get,
    path = "/api/coverage",
    tag = "coverage",
    params(CoverageQuery),
    responses(
        (status = 200, description = "coverage over the period", body = CoverageBody),
        (status = 400, description = "a time that cannot be read, or an empty period", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
    )
)]
async fn coverage(
    State(state): State<AppState>,
    _user: ApiUser,
    Query(q): Query<CoverageQuery>,
) -> ApiResult<CoverageBody> {
    let to = crate::pages::events::parse_time("to", q.to.as_deref().unwrap_or(""))?
        .unwrap_or_else(OffsetDateTime::now_utc);
    let from = crate::pages::events::parse_time("from", q.from.as_deref().unwrap_or(""))?
        .unwrap_or(to - DEFAULT_PERIOD);
    if from >= to {
        return Err(AppError::BadRequest(format!(
            "the period is empty: from ({}) must be before to ({})",
            crate::pages::when(from),
            crate::pages::when(to)
        ))
        .into());
    }
    let coverage = gov_report::coverage_between(&state.gov, Some(from), to)
        .await
        .map_err(AppError::Report)?;
    Ok(Json(CoverageBody {
        from: crate::pages::when(from),
        to: crate::pages::when(to),
        coverage,
    }))
}

/// The dashboard's coverage of the last 24 hours, counted at most once a minute. A count older
/// than that is still answered while one background task counts again (stale while
/// revalidating); only when there is no count yet does a request wait, and requests that
/// arrive meanwhile wait for that same count.
#[derive(Debug, Default)]
pub(crate) struct CoverageCache {
    last: Mutex<Option<(Instant, Arc<gov_report::Coverage>)>>,
    /// Whether a background recount runs.
    refreshing: AtomicBool,
    /// Held while the first count runs.
    first: tokio::sync::Mutex<()>,
}

impl CoverageCache {
    fn cached(&self) -> Option<(Instant, Arc<gov_report::Coverage>)> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn count(
        &self,
        gov: &gov_sdk::Governance,
    ) -> Result<Arc<gov_report::Coverage>, AppError> {
        let now = OffsetDateTime::now_utc();
        let c = Arc::new(
            gov_report::coverage_between(gov, Some(now - DEFAULT_PERIOD), now)
                .await
                .map_err(AppError::Report)?,
        );
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), Arc::clone(&c)));
        Ok(c)
    }

    /// The coverage of the 24 hours before now as last counted: counted now when there is no
    /// count yet, else the last count, which starts a recount in the background when it is a
    /// minute old.
    pub(crate) async fn last_day(
        self: &Arc<Self>,
        gov: &gov_sdk::Governance,
    ) -> Result<Arc<gov_report::Coverage>, AppError> {
        if let Some((at, c)) = self.cached() {
            if at.elapsed() >= PILL_TTL && !self.refreshing.swap(true, Ordering::AcqRel) {
                let (this, gov) = (Arc::clone(self), gov.clone());
                tokio::spawn(async move {
                    if let Err(e) = this.count(&gov).await {
                        tracing::warn!(error = %e, "console: recounting coverage failed");
                    }
                    this.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(c);
        }
        let _first = self.first.lock().await;
        if let Some((_, c)) = self.cached() {
            return Ok(c);
        }
        self.count(gov).await
    }
}
