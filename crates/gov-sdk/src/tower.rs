//! A tower layer that governs the tool endpoints of an axum service (feature `tower`): each
//! request is one tool call of one agent, and takes the SDK's tool path before the handler sees
//! it.
//!
//! [`GovernLayer`] reads the agent from a header (`x-governance-agent` by default), the session
//! from another (`x-governance-session`, else a default), the tool from the request (the last
//! path segment by default, or any function of the request head) and the arguments from the
//! JSON body. Then, in order: the halt and scope checks with the Cedar policy sets, which see
//! the arguments (`policies().check`; [`crate::Scope::check`] in a build without the `cedar`
//! feature); human approval for the tools that need one (configured here, a
//! contract's `hitl_approved`, or a Cedar `@approval`), through [`crate::Gates`]; and the
//! governed runner ([`crate::Contracts::run`]: the halt check, the tool's contract, loop
//! detection, `tool.started`, the handler, `tool.finished`, postconditions). Nothing here
//! restates a rule: each step is the SDK's own.
//!
//! A refusal never reaches the handler and is answered with a JSON body
//! `{"error": {"code", "message"}}` and a status from one table ([`refusal_status`]): 403 for a
//! halted agent, a scope or policy refusal, a denied or refused approval or a failed
//! precondition (`budget_available` included), 429 for a loop, 400 for a request that names no agent or
//! tool, 503 when governance cannot decide (fail closed). A tool that needs approval is answered
//! `202 Accepted` with `{"status": "approval_pending", "request_id"}` (and the
//! `x-governance-approval` header); the agent repeats the call with that header once an operator
//! approved, and the approval is consumed for exactly that call. With
//! [`ApprovalMode::Wait`] the layer waits for the decision instead.
//!
//! The handler's own answer is passed back unchanged, a 4xx or 5xx included (audited as a
//! failed tool in `tool.finished`).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

use crate::{CallContext, Contract, Error, ErrorKind, Governance, Pre};

/// The default header naming the agent.
pub const AGENT_HEADER: &str = "x-governance-agent";
/// The default header naming the session.
pub const SESSION_HEADER: &str = "x-governance-session";
/// The header that carries a gate request's id: in a `202` answer, and in the repeated call.
pub const APPROVAL_HEADER: &str = "x-governance-approval";

/// What the layer does when a tool needs a person's approval and the call carries none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalMode {
    /// Ask (`gate.requested`) and answer `202` with the request id at once (the default).
    #[default]
    Respond,
    /// Ask, then wait up to this long for the decision; answer `202` if none came.
    Wait(Duration),
}

type ToolFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

struct Settings {
    gov: Governance,
    agent_header: String,
    session_header: String,
    default_session: Option<String>,
    tool: Arc<ToolFn>,
    contracts: HashMap<String, Contract>,
    approval: BTreeSet<String>,
    mode: ApprovalMode,
    max_body: usize,
}

/// Governs the tool endpoints of a service: see the [module](self) documentation.
///
/// ```no_run
/// # async fn run(gov: gov_sdk::Governance) {
/// use axum::{Json, Router, routing::post};
/// use gov_sdk::tower::GovernLayer;
///
/// let app: Router = Router::new()
///     .route("/tools/read_invoice", post(|| async { Json(serde_json::json!({"total": 42})) }))
///     .route("/tools/send_email", post(|| async { "sent" }))
///     .layer(GovernLayer::new(gov).require_approval("send_email"));
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct GovernLayer {
    settings: Arc<Settings>,
}

impl std::fmt::Debug for GovernLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernLayer")
            .field("agent_header", &self.settings.agent_header)
            .field("session_header", &self.settings.session_header)
            .field("approval", &self.settings.approval)
            .field("mode", &self.settings.mode)
            .finish_non_exhaustive()
    }
}

/// The last non-empty segment of the path (`/tools/send_email` → `send_email`).
fn last_segment(parts: &Parts) -> Option<String> {
    parts
        .uri
        .path()
        .rsplit('/')
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}

impl GovernLayer {
    /// A layer on `gov` with the defaults: agent from `x-governance-agent`, session from
    /// `x-governance-session` (required), tool from the last path segment, no contracts, no
    /// approvals, bodies up to 64 KiB.
    pub fn new(gov: Governance) -> Self {
        Self {
            settings: Arc::new(Settings {
                gov,
                agent_header: AGENT_HEADER.to_owned(),
                session_header: SESSION_HEADER.to_owned(),
                default_session: None,
                tool: Arc::new(last_segment),
                contracts: HashMap::new(),
                approval: BTreeSet::new(),
                mode: ApprovalMode::Respond,
                max_body: 64 * 1024,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        match Arc::get_mut(&mut self.settings) {
            Some(s) => f(s),
            None => {
                let s = &*self.settings;
                let mut copy = Settings {
                    gov: s.gov.clone(),
                    agent_header: s.agent_header.clone(),
                    session_header: s.session_header.clone(),
                    default_session: s.default_session.clone(),
                    tool: s.tool.clone(),
                    contracts: s.contracts.clone(),
                    approval: s.approval.clone(),
                    mode: s.mode,
                    max_body: s.max_body,
                };
                f(&mut copy);
                self.settings = Arc::new(copy);
            }
        }
        self
    }

    /// The header naming the agent.
    pub fn agent_header(self, name: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        self.edit(|s| s.agent_header = name)
    }

    /// The header naming the session.
    pub fn session_header(self, name: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        self.edit(|s| s.session_header = name)
    }

    /// The session of calls that name none (by default such a call is refused).
    pub fn default_session(self, session: impl Into<String>) -> Self {
        let session = session.into();
        self.edit(|s| s.default_session = Some(session))
    }

    /// How the tool is named from the request head (method, path, headers, extensions such as
    /// axum's `MatchedPath`); `None` refuses the call. Default: the last path segment.
    pub fn tool_from(self, f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        let f: Arc<ToolFn> = Arc::new(f);
        self.edit(|s| s.tool = f)
    }

    /// The contract of `tool` (pre and postconditions; see [`Contract`]). Postconditions see
    /// the handler's answer as JSON (`null` when it is not JSON).
    pub fn contract(self, tool: impl Into<String>, contract: Contract) -> Self {
        let tool = tool.into();
        self.edit(|s| {
            s.contracts.insert(tool, contract);
        })
    }

    /// Calls of `tool` need a person's approval, bound to the call's agent, session and
    /// arguments and usable once.
    pub fn require_approval(self, tool: impl Into<String>) -> Self {
        let tool = tool.into();
        self.edit(|s| {
            s.approval.insert(tool);
        })
    }

    /// What to do while an approval is pending (default: answer `202` at once).
    pub fn approval_mode(self, mode: ApprovalMode) -> Self {
        self.edit(|s| s.mode = mode)
    }

    /// The largest request body read as the call's arguments (default 64 KiB; larger is 413).
    pub fn max_body_bytes(self, n: usize) -> Self {
        self.edit(|s| s.max_body = n)
    }
}

impl<S> tower::Layer<S> for GovernLayer {
    type Service = GovernService<S>;

    fn layer(&self, inner: S) -> GovernService<S> {
        GovernService {
            settings: self.settings.clone(),
            inner,
        }
    }
}

/// The service [`GovernLayer`] makes.
#[derive(Clone)]
pub struct GovernService<S> {
    settings: Arc<Settings>,
    inner: S,
}

impl<S> std::fmt::Debug for GovernService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernService").finish_non_exhaustive()
    }
}

/// The HTTP status and code a refusal is answered with: the one table of this layer.
pub fn refusal_status(e: &Error) -> (StatusCode, &'static str) {
    match e {
        Error::Halted { .. } => (StatusCode::FORBIDDEN, "agent_halted"),
        Error::ScopeViolation { .. } => (StatusCode::FORBIDDEN, "scope_violation"),
        Error::PolicyForbidden { .. } => (StatusCode::FORBIDDEN, "policy_forbidden"),
        Error::ContractViolation { phase: "post", .. } => {
            (StatusCode::BAD_GATEWAY, "contract_violated")
        }
        Error::ContractViolation { .. } => (StatusCode::FORBIDDEN, "contract_violated"),
        Error::ApprovalPending { .. } => (StatusCode::ACCEPTED, "approval_pending"),
        Error::ApprovalDenied { .. } => (StatusCode::FORBIDDEN, "approval_denied"),
        Error::ApprovalRefused { .. } => (StatusCode::FORBIDDEN, "approval_refused"),
        Error::BudgetExceeded { .. } => (StatusCode::PAYMENT_REQUIRED, "budget_exceeded"),
        Error::LoopDetected { .. } => (StatusCode::TOO_MANY_REQUESTS, "loop_detected"),
        e => match e.kind() {
            ErrorKind::Refused => (StatusCode::FORBIDDEN, "refused"),
            ErrorKind::Config => (StatusCode::BAD_REQUEST, "invalid_request"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "governance_unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "governance_error"),
        },
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An answer of the layer itself: a request it cannot read (no agent, no tool, a body that is
/// not JSON), or a failure.
fn error_response(status: StatusCode, code: &str, message: String) -> Response<Body> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

/// The answer to a refusal (or a pending approval).
fn refusal(e: &Error) -> Response<Body> {
    let (status, code) = refusal_status(e);
    if let Error::ApprovalPending { request_id } = e {
        let mut resp = json_response(
            status,
            &json!({
                "status": "approval_pending",
                "request_id": request_id.to_string(),
                "message": format!(
                    "a person must approve this call: repeat it with the header {APPROVAL_HEADER}: {request_id} once approved"
                ),
            }),
        );
        if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
            resp.headers_mut().insert(APPROVAL_HEADER, v);
        }
        return resp;
    }
    // Server-side failures say nothing about their cause (it is logged).
    let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(error = %e, "governance could not decide a tool call");
        "governance could not decide this call".to_owned()
    } else {
        e.to_string()
    };
    let mut body = json!({ "error": { "code": code, "message": message } });
    let request_id = match e {
        Error::ApprovalDenied { request_id, .. } | Error::ApprovalRefused { request_id, .. } => {
            Some(request_id)
        }
        _ => None,
    };
    if let Some(id) = request_id {
        body["request_id"] = Value::String(id.to_string());
    }
    json_response(status, &body)
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// One tool call as read from a request.
struct Call {
    agent: String,
    session: String,
    tool: String,
    args: Value,
    approval: Option<uuid::Uuid>,
}

/// Reads the call from the request, or the answer that refuses it.
async fn read_call(
    settings: &Settings,
    parts: &Parts,
    body: Body,
) -> std::result::Result<(Call, Bytes), Response<Body>> {
    let Some(agent) = header(parts, &settings.agent_header) else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "agent_required",
            format!(
                "the request names no agent: set the {} header",
                settings.agent_header
            ),
        ));
    };
    let session = match header(parts, &settings.session_header) {
        Some(s) => s.to_owned(),
        None => match &settings.default_session {
            Some(s) => s.clone(),
            None => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "session_required",
                    format!(
                        "the request names no session: set the {} header",
                        settings.session_header
                    ),
                ));
            }
        },
    };
    if let Err(e) = gov_core::AgentId::new(agent)
        .map(|_| ())
        .and_then(|()| gov_core::SessionId::new(&session).map(|_| ()))
    {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            e.to_string(),
        ));
    }
    let Some(tool) = (settings.tool)(parts).filter(|t| !t.is_empty() && t.len() <= 256) else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "tool_required",
            "the request names no tool this service governs".to_owned(),
        ));
    };
    let approval = match header(parts, APPROVAL_HEADER) {
        Some(v) => match uuid::Uuid::parse_str(v) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_approval",
                    format!("the {APPROVAL_HEADER} header is not a request id"),
                ));
            }
        },
        None => None,
    };
    let limited = http_body_util::Limited::new(body, settings.max_body);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the tool call's body is over {} bytes or could not be read",
                    settings.max_body
                ),
            ));
        }
    };
    let args = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v,
            Err(_) => {
                return Err(error_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "json_required",
                    "the tool call's arguments must be a JSON body".to_owned(),
                ));
            }
        }
    };
    Ok((
        Call {
            agent: agent.to_owned(),
            session,
            tool,
            args,
            approval,
        },
        bytes,
    ))
}

impl<S> GovernService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
{
    async fn run(self, req: Request<Body>) -> std::result::Result<Response<Body>, S::Error> {
        let settings = self.settings.clone();
        let gov = &settings.gov;
        let (parts, body) = req.into_parts();
        let (call, bytes) = match read_call(&settings, &parts, body).await {
            Ok(c) => c,
            Err(resp) => return Ok(resp),
        };
        // Halt, scope and the Cedar policy sets (with the call's arguments); an `@approval`
        // permit asks a person.
        let mut needs_approval = settings.approval.contains(&call.tool);
        match allowed(gov, &call).await {
            Ok(()) => {}
            Err(Error::PolicyApprovalRequired { .. }) => needs_approval = true,
            Err(e) => return Ok(refusal(&e)),
        }
        let mut contract = settings
            .contracts
            .get(&call.tool)
            .cloned()
            .unwrap_or_default();
        let hitl = contract.pre.iter().any(|p| matches!(p, Pre::HitlApproved));
        if needs_approval && !hitl {
            contract.pre.push(Pre::HitlApproved);
        }
        let approval = if needs_approval || hitl {
            match approve(gov, &settings, &call).await {
                Ok(a) => Some(a),
                Err(e) => return Ok(refusal(&e)),
            }
        } else {
            None
        };
        // The governed runner: halt, contract, loops, tool.started, the handler,
        // tool.finished, postconditions.
        let wants_output = !contract.post.is_empty();
        let answer: Slot<S::Error> = Arc::default();
        let slot = answer.clone();
        let inner = self.inner;
        let ctx = CallContext {
            agent: &call.agent,
            session: &call.session,
            tool: &call.tool,
            args: &call.args,
        };
        let ran = gov
            .contracts()
            .run(&contract, ctx, approval.as_ref(), move |_args| {
                handle(inner, parts, bytes, slot, wants_output)
            })
            .await;
        let answer = answer.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (ran, answer) {
            // The handler ran: its answer, whatever it is (a failed tool is audited as such).
            (Ok(_) | Err(Error::ToolFailed { .. }), Some(answer)) => answer,
            (Err(e), _) => Ok(refusal(&e)),
            // Cannot happen: the runner only succeeds after the handler answered.
            (Ok(_), None) => Ok(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "governance_error",
                "governance could not decide this call".to_owned(),
            )),
        }
    }
}

/// The halt check, scope and the enforced Cedar policy set, which sees the call's arguments.
#[cfg(feature = "cedar")]
async fn allowed(gov: &Governance, call: &Call) -> crate::Result<()> {
    use crate::policies::{PolicyCheck, Resource};
    let check = PolicyCheck {
        session: &call.session,
        arguments: Some(&call.args),
        ..PolicyCheck::new(&call.agent, Resource::Tool(&call.tool))
    };
    gov.policies().check(&check).await
}

/// The halt check and scope (this build has no Cedar policy sets).
#[cfg(not(feature = "cedar"))]
async fn allowed(gov: &Governance, call: &Call) -> crate::Result<()> {
    gov.scope().check(&call.agent, &call.tool).await
}

/// Where the handler's answer (or its service's error) is kept for the layer to return.
type Slot<E> = Arc<Mutex<Option<std::result::Result<Response<Body>, E>>>>;

/// The approval of this exact call: the one named by the call's approval header, or a new
/// request (answered as pending, or waited for).
async fn approve(
    gov: &Governance,
    settings: &Settings,
    call: &Call,
) -> crate::Result<crate::Approval> {
    if let Some(id) = call.approval {
        return gov.gates().poll(id).await;
    }
    let request = gov
        .gates()
        .request(&call.agent, Some(&call.session), &call.tool, &call.args)
        .await?;
    match settings.mode {
        ApprovalMode::Respond => Err(Error::ApprovalPending {
            request_id: request.id,
        }),
        ApprovalMode::Wait(timeout) => gov.gates().wait_for(request.id, timeout).await,
    }
}

/// Runs the handler: its answer goes into `slot`; the runner sees `Ok` (with the answer as JSON
/// when postconditions need it) for a 2xx or 3xx, an error naming the status otherwise.
async fn handle<S>(
    inner: S,
    parts: Parts,
    bytes: Bytes,
    slot: Slot<S::Error>,
    wants_output: bool,
) -> std::result::Result<Value, String>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
{
    use tower::ServiceExt as _;
    let req = Request::from_parts(parts, Body::from(bytes));
    let put = |r| *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    match inner.oneshot(req).await {
        Ok(resp) => {
            let status = resp.status();
            let (resp, output) = if wants_output {
                let (head, body) = resp.into_parts();
                match body.collect().await {
                    Ok(c) => {
                        let b = c.to_bytes();
                        let v = serde_json::from_slice(&b).unwrap_or(Value::Null);
                        (Response::from_parts(head, Body::from(b)), v)
                    }
                    Err(_) => {
                        put(Ok(Response::from_parts(head, Body::empty())));
                        return Err("the handler's answer could not be read".to_owned());
                    }
                }
            } else {
                (resp, Value::Null)
            };
            put(Ok(resp));
            if status.is_client_error() || status.is_server_error() {
                Err(format!("HTTP {}", status.as_u16()))
            } else {
                Ok(output)
            }
        }
        Err(e) => {
            let text = e.to_string();
            put(Err(e));
            Err(text)
        }
    }
}

impl<S> tower::Service<Request<Body>> for GovernService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        // The inner service is made ready per call (`oneshot`), on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = Self {
            settings: self.settings.clone(),
            inner: self.inner.clone(),
        };
        Box::pin(this.run(req))
    }
}
