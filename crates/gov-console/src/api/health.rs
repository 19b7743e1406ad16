//! `GET /health/governance` and the request latencies it reports.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::optional_user;
use crate::chain_status::ChainIntegrity;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Latencies of the last requests, for `/health/governance`.
#[derive(Default)]
pub(crate) struct Latency(Mutex<VecDeque<u32>>);

const KEPT: usize = 1_024;

impl Latency {
    fn record(&self, micros: u32) {
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() == KEPT {
            q.pop_front();
        }
        q.push_back(micros);
    }

    /// (p50, p95) in microseconds over the kept requests.
    fn percentiles(&self) -> Option<(u32, u32)> {
        let mut v: Vec<u32> = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |p: usize| v[(v.len() - 1) * p / 100];
        Some((at(50), at(95)))
    }
}

/// Records how long each request took (not the SSE stream, which lasts).
pub(crate) async fn measure(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let live = req.uri().path() == "/events/stream";
    let start = Instant::now();
    let res = next.run(req).await;
    if !live {
        let micros = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
        state.latency.record(micros);
    }
    res
}

/// `ok`, or `degraded` when the database is out of reach.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Reachability {
    /// The database answers.
    Ok,
    /// The database is out of reach (503).
    Degraded,
}

/// What anyone may see.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthStatus {
    status: Reachability,
}

/// What a signed-in user sees.
// Fields in alphabetical order, the order of the keys before the body was typed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthDetails {
    /// When `chain_integrity` was computed (RFC 3339): the start of the verification it comes
    /// from. It is reused for the console's chain check interval (`--chain-check-secs`, 300 s by
    /// default) or until a user verifies the chains.
    chain_checked_at: String,
    chain_integrity: ChainIntegrity,
    grants: Grants,
    key_resolution: KeyResolution,
    /// p50 and p95 over the last 1,024 requests; null before the first.
    latency: Option<Latencies>,
    /// Browsers following the live events.
    live_subscribers: usize,
    status: Reachability,
}

/// `/health/governance`'s body: the status alone for anyone, the details signed in.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Health {
    /// Signed in.
    Details(Box<HealthDetails>),
    /// Anyone else.
    Status(HealthStatus),
}

/// The connection's grants on the audit table; only `least_privilege` (null) when they cannot
/// be read.
// Fields in alphabetical order, the order of the keys before the body was typed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Grants {
    #[serde(skip_serializing_if = "Option::is_none")]
    can_update_or_delete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    has_roles: Option<bool>,
    least_privilege: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owns_audit_table: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    superuser: Option<bool>,
}

/// The audit key in use.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyResolution {
    current_key_id: String,
    rotation_aware: bool,
}

/// Request latencies in microseconds.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Latencies {
    p50_us: u32,
    p95_us: u32,
}

/// `GET /health/governance`: status for anyone; details for a signed-in user.
#[utoipa::path(
    get,
    path = "/health/governance",
    tag = "health",
    security((), ("session" = [])),
    responses(
        (status = 200, description = "The database answers. Anyone gets `{\"status\": \"ok\"}`; a signed-in user also the chain integrity (cached: `chain_checked_at` says when it was computed), key resolution, grants, latency and live subscribers", body = Health),
        (status = 503, description = "The database is out of reach (`degraded`)", body = Health),
    )
)]
pub(crate) async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let reachable = state.gov.ping().await.is_ok();
    let (status, code) = if reachable {
        (Reachability::Ok, StatusCode::OK)
    } else {
        (Reachability::Degraded, StatusCode::SERVICE_UNAVAILABLE)
    };
    let Some(_user) = optional_user(&headers, &state).await else {
        return (code, Json(Health::Status(HealthStatus { status }))).into_response();
    };
    let checked = state.chain_status.current(&state.gov).await;
    let grants = match state.gov.privileges().await {
        Ok(p) => Grants {
            role: Some(p.role.clone()),
            least_privilege: Some(p.is_least_privilege()),
            superuser: Some(p.superuser),
            owns_audit_table: Some(p.owns_audit_table),
            can_update_or_delete: Some(p.can_update || p.can_delete || p.can_truncate),
            has_roles: Some(p.has_roles),
            note: Some(if !p.has_roles {
                "SQLite has no roles: whoever can write the file can change it, and the HMAC chain is what proves the record (docs/storage.md)"
            } else {
                "the console connects as an operator tool; services should connect as the application role"
            }),
        },
        Err(_) => Grants {
            can_update_or_delete: None,
            has_roles: None,
            least_privilege: None,
            note: None,
            owns_audit_table: None,
            role: None,
            superuser: None,
        },
    };
    let details = HealthDetails {
        chain_checked_at: crate::pages::when(checked.at),
        chain_integrity: checked.integrity,
        grants,
        key_resolution: KeyResolution {
            current_key_id: state.gov.audit().key_id().to_owned(),
            rotation_aware: gov_sdk::ROTATION_AWARE,
        },
        latency: state
            .latency
            .percentiles()
            .map(|(p50_us, p95_us)| Latencies { p50_us, p95_us }),
        live_subscribers: state.events.subscribers(),
        status,
    };
    (code, Json(Health::Details(Box::new(details)))).into_response()
}
