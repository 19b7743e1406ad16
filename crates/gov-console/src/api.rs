//! The JSON API under `/api` (same sessions and roles as the pages; state-changing calls carry
//! the session's CSRF token in `X-CSRF-Token`), `/health/governance`, and request latency.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gov_sdk::EventFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{CurrentUser, optional_user, same_site};
use crate::error::AppError;

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

/// An API error: the same statuses as pages, as JSON (401 instead of a redirect).
pub(crate) struct ApiError(AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        Self(e)
    }
}

impl From<gov_sdk::Error> for ApiError {
    fn from(e: gov_sdk::Error) -> Self {
        Self(AppError::Sdk(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "console API request failed");
        }
        (
            status,
            Json(json!({
                "error": self.0.public_message(),
                "kind": self.0.kind(),
                "status": status.as_u16(),
            })),
        )
            .into_response()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// The API's signed-in user: a missing or expired session is 401, not a redirect.
pub(crate) struct ApiUser(CurrentUser);

impl axum::extract::FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        CurrentUser::from_request_parts(parts, state)
            .await
            .map(Self)
            .map_err(ApiError)
    }
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

fn change_allowed(headers: &HeaderMap, user: &CurrentUser) -> Result<(), AppError> {
    same_site(headers)?;
    user.check_csrf(csrf_header(headers))?;
    user.require_operator()
}

/// `GET /health/governance`: status for anyone; details for a signed-in user.
pub(crate) async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let reachable = state.gov.ping().await.is_ok();
    let status = if reachable { "ok" } else { "degraded" };
    let code = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let Some(_user) = optional_user(&headers, &state).await else {
        return (code, Json(json!({ "status": status }))).into_response();
    };
    let chain = match state.gov.audit().verify_all().await {
        Ok(r) if r.is_clean() => json!({ "status": "clean", "events_checked": r.events_checked }),
        Ok(r) if r.verdict() == gov_sdk::Verdict::Unverifiable => {
            let chains: Vec<&str> = r.unverifiable().map(|(c, _)| c).collect();
            json!({ "status": "unverifiable", "events_checked": r.events_checked, "chains": chains })
        }
        Ok(r) => {
            let first = r
                .first_finding()
                .map(|(c, f)| json!({ "chain": c, "seq": f.seq, "reason": f.reason.as_str() }));
            json!({ "status": "tampered", "events_checked": r.events_checked, "first": first })
        }
        // No audit events at all: nothing to verify.
        Err(e) if e.kind() == gov_sdk::ErrorKind::NotFound => json!({ "status": "empty" }),
        Err(_) => json!({ "status": "unknown" }),
    };
    let grants = match state.gov.privileges().await {
        Ok(p) => json!({
            "role": p.role,
            "least_privilege": p.is_least_privilege(),
            "superuser": p.superuser,
            "owns_audit_table": p.owns_audit_table,
            "can_update_or_delete": p.can_update || p.can_delete || p.can_truncate,
            "has_roles": p.has_roles,
            "note": if !p.has_roles {
                "SQLite has no roles: whoever can write the file can change it, and the HMAC chain is what proves the record (docs/storage.md)"
            } else {
                "the console connects as an operator tool; services should connect as the application role"
            },
        }),
        Err(_) => json!({ "least_privilege": null }),
    };
    let latency = state
        .latency
        .percentiles()
        .map(|(p50, p95)| json!({ "p50_us": p50, "p95_us": p95 }));
    (
        code,
        Json(json!({
            "status": status,
            "chain_integrity": chain,
            "key_resolution": {
                "current_key_id": state.gov.audit().key_id(),
                "rotation_aware": gov_sdk::ROTATION_AWARE,
            },
            "grants": grants,
            "latency": latency,
            "live_subscribers": state.events.subscribers(),
        })),
    )
        .into_response()
}

/// `GET /api/openapi.json`.
pub(crate) async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../../../console-web/openapi.json"),
    )
}

pub(crate) async fn agents(State(state): State<AppState>, _user: ApiUser) -> ApiResult {
    let list = state.gov.presence().list().await?;
    let agents: Vec<Value> = list
        .iter()
        .filter_map(|a| {
            let p = a.presence.as_ref()?;
            Some(json!({
                "agent_id": p.agent_id,
                "state": crate::pages::state_name(a.state),
                "seconds_since_heartbeat": p.since_heartbeat.map(|d| d.as_secs()),
                "halted": p.halted,
                "halted_by": p.halted_by,
                "halt_reason": p.halt_reason,
            }))
        })
        .collect();
    Ok(Json(json!({ "agents": agents })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReasonBody {
    reason: String,
}

fn reason(b: &ReasonBody) -> Result<&str, AppError> {
    crate::pages::required_reason(Some(&b.reason))
}

/// `POST /api/agents/{agent}/halt` and `/resume`.
pub(crate) async fn switch_agent(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path((agent, action)): Path<(String, String)>,
    Json(body): Json<ReasonBody>,
) -> ApiResult {
    change_allowed(&headers, &user)?;
    let presence = state.gov.presence();
    let changed = match action.as_str() {
        "halt" => {
            presence
                .halt(&user.session.operator, &agent, reason(&body)?)
                .await?
        }
        "resume" => {
            presence
                .resume(&user.session.operator, &agent, reason(&body)?)
                .await?
        }
        _ => return Err(AppError::NotFound.into()),
    };
    Ok(Json(
        json!({ "agent_id": agent, "halted": action == "halt", "changed": changed }),
    ))
}

pub(crate) async fn approvals(State(state): State<AppState>, _user: ApiUser) -> ApiResult {
    let pending = state.gov.gates().pending().await?;
    let list: Vec<Value> = pending
        .iter()
        .map(|g| {
            json!({
                "id": g.id,
                "agent_id": g.agent_id,
                "session_id": g.session_id,
                "tool": g.tool,
                "args": serde_json::from_str::<Value>(&g.args).unwrap_or(Value::Null),
                "requested_at": crate::pages::when(g.requested_at),
                "expires_at": crate::pages::when(g.expires_at),
            })
        })
        .collect();
    Ok(Json(json!({ "pending": list })))
}

/// `POST /api/approvals/{id}/approve` and `/deny`.
pub(crate) async fn decide(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    Json(body): Json<ReasonBody>,
) -> ApiResult {
    change_allowed(&headers, &user)?;
    let id = crate::pages::gate_id(&id)?;
    let gates = state.gov.gates();
    let operator = &user.session.operator;
    let status = match decision.as_str() {
        "approve" => gates
            .approve(operator, id, reason(&body)?)
            .await
            .map(|()| "approved"),
        "deny" => gates
            .deny(operator, id, reason(&body)?)
            .await
            .map(|()| "denied"),
        _ => return Err(AppError::NotFound.into()),
    }?;
    Ok(Json(json!({ "id": id, "status": status })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    chain: Option<String>,
    agent: Option<String>,
    kind: Option<String>,
    after_seq: Option<i64>,
    limit: Option<u32>,
}

pub(crate) async fn events(
    State(state): State<AppState>,
    _user: ApiUser,
    Query(q): Query<EventsQuery>,
) -> ApiResult {
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
    let rows = state.gov.audit().events(&filter).await?;
    Ok(Json(json!({ "events": rows })))
}

pub(crate) async fn verify(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
) -> ApiResult {
    same_site(&headers)?;
    user.check_csrf(csrf_header(&headers))?;
    let report = state.gov.audit().verify_all().await?;
    let mut v = serde_json::to_value(&report).map_err(|e| AppError::BadRequest(e.to_string()))?;
    v["status"] = json!(report.verdict().as_str());
    Ok(Json(v))
}

/// The console's background verification: one at a time, with its progress.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct VerifyJob {
    /// `idle`, `running`, `clean`, `tampered` or `failed`.
    status: &'static str,
    /// Who started it.
    started_by: Option<String>,
    /// The chain being verified.
    chain: Option<String>,
    /// Rows checked so far in that chain, and its total.
    checked: u64,
    total: u64,
    /// Rows checked in chains already done.
    done_events: u64,
    /// The report when finished.
    report: Option<Value>,
    /// Why it failed, when it did.
    error: Option<String>,
}

/// `POST /api/chain/verification`: starts verifying every chain in the background (any
/// signed-in user; CSRF header). 409 while one is running.
pub(crate) async fn start_verification(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<Value>)> {
    same_site(&headers)?;
    user.check_csrf(csrf_header(&headers))?;
    {
        let mut job = state
            .verify_job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if job.status == "running" {
            return Ok((
                StatusCode::CONFLICT,
                Json(json!({ "error": "a verification is already running", "status": 409 })),
            ));
        }
        *job = VerifyJob {
            status: "running",
            started_by: Some(user.username().to_owned()),
            ..VerifyJob::default()
        };
    }
    let (gov, job) = (state.gov.clone(), std::sync::Arc::clone(&state.verify_job));
    tokio::spawn(async move {
        let progress_job = std::sync::Arc::clone(&job);
        let opts = gov_sdk::VerifyOptions {
            progress: Some(std::sync::Arc::new(move |p: gov_sdk::VerifyProgress| {
                let mut j = progress_job
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if j.chain.as_deref() != Some(p.chain_id.as_str()) {
                    j.done_events += j.checked;
                    j.chain = Some(p.chain_id);
                }
                j.checked = p.checked;
                j.total = p.total;
            })),
            ..gov_sdk::VerifyOptions::default()
        };
        let result = gov.audit().verify_with(None, &opts).await;
        let mut j = job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(report) => {
                j.status = report.verdict().as_str();
                j.report = serde_json::to_value(&report).ok();
            }
            Err(e) => {
                tracing::warn!(error = %e, "console verification failed");
                j.status = "failed";
                j.error = Some(if !crate::error::status_for(e.kind()).is_server_error() {
                    e.to_string()
                } else {
                    "verification could not complete; the cause is in the console's log".into()
                });
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "running" }))))
}

/// `GET /api/chain/verification`: the background verification's state and progress.
pub(crate) async fn verification(State(state): State<AppState>, _user: ApiUser) -> ApiResult {
    let job = state
        .verify_job
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut v = serde_json::to_value(&job).map_err(|e| AppError::BadRequest(e.to_string()))?;
    if job.status.is_empty() {
        v["status"] = json!("idle");
    }
    Ok(Json(v))
}
