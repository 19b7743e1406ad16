//! `GET /api/events` (audit rows by seq) and the description of `GET /events/stream` (served by
//! `crate::events`).

use axum::Json;
use axum::extract::{Query, State};
use gov_sdk::EventFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiResult, ApiUser};
use crate::AppState;
use crate::error::AppError;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(crate::events::stream))
}

/// Which rows.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// The chain (default: the one the console follows, `default`).
    chain: Option<String>,
    /// Only this agent's rows.
    agent: Option<String>,
    /// Only rows of this kind.
    kind: Option<String>,
    /// Rows after this seq (keyset pagination).
    after_seq: Option<i64>,
    /// At most this many rows.
    #[param(maximum = 10000)]
    limit: Option<u32>,
}

/// Audit rows in seq order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventList {
    /// Each row as the SDK serialises an `AuditRecord` (the same JSON as the live events):
    /// `chain_id`, `seq`, `event_id`, `occurred_at`, `agent_id`, `session_id`, `kind`, `actor`,
    /// `parent_event_id`, `payload` (canonical JSON text), `prev_hmac`, `key_id`, `row_hmac`,
    /// `signature`, `signer_key_id`, `signature_status`.
    #[schema(value_type = Vec<Object>)]
    events: Vec<gov_sdk::AuditRecord>,
}

/// Audit events by seq (keyset: `after_seq`).
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "the rows, in seq order", body = EventList),
        (status = 400, description = "not a chain or agent id", body = super::ErrorBody),
        (status = 401, description = "not signed in", body = super::ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    _user: ApiUser,
    Query(q): Query<EventsQuery>,
) -> ApiResult<EventList> {
    let bad = |e: gov_sdk::IdError| AppError::BadRequest(e.to_string());
    let filter = EventFilter {
        chain_id: Some(
            q.chain
                .as_deref()
                .unwrap_or(&state.config.live_chain)
                .parse()
                .map_err(bad)?,
        ),
        agent_id: q
            .agent
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(bad)?,
        kind: q.kind,
        after_seq: q.after_seq,
        limit: q.limit,
        ..EventFilter::default()
    };
    let events = state.gov.audit().events(&filter).await?;
    Ok(Json(EventList { events }))
}
