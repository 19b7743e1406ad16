//! The proxied endpoints: authenticate, read the request, remove tools outside scope, then make
//! the upstream call inside the guard client (so the gates run first and the call is settled
//! from the provider's usage), and hand the provider's answer back as it came: status, the
//! headers that matter, body or SSE events byte for byte. A gateway refusal is an error body in
//! the shape of the API asked (OpenAI or Anthropic) with `x-should-retry: false`.
//!
//! Must not forward the agent's credentials upstream, return a provider key, or show an
//! upstream URL in an error.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use gov_sdk::llm::anthropic::{StreamEvent, Usage as AnthropicUsage};
use gov_sdk::llm::openai::{ChatChunk, ChatUsage};
use gov_sdk::llm::{Completion, GuardedStream, LlmCall, PartialUsage, StreamChunk};
use gov_sdk::{BudgetDenial, Error, ErrorKind, TokenUsage};
use serde_json::{Map, Value, json};

use crate::sse::{Block, Framer};
use crate::{Gateway, ToolCallPolicy, Upstream};

/// The header naming the session a request is budgeted under.
pub(crate) const SESSION_HEADER: &str = "x-governance-session";

/// Request headers passed to the upstream (the rest, credentials included, are not).
const FORWARD: &[&str] = &[
    "accept",
    "user-agent",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
    "idempotency-key",
];

/// Response headers not passed back (hop by hop, or recomputed).
const DROP_BACK: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "set-cookie",
];

/// Which API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Self::OpenAi => "/v1/chat/completions",
            Self::Anthropic => "/v1/messages",
        }
    }

    fn upstream(self, gw: &Gateway) -> Option<&Upstream> {
        match self {
            Self::OpenAi => gw.openai.as_ref(),
            Self::Anthropic => gw.anthropic.as_ref(),
        }
    }
}

/// A refusal or failure of the gateway itself, in the API's error shape.
fn refuse(api: Api, status: StatusCode, code: &str, message: &str) -> Response {
    let body = match api {
        Api::OpenAi => {
            json!({"error": {"message": message, "type": code, "code": code, "param": null}})
        }
        Api::Anthropic => {
            let kind = match status {
                StatusCode::UNAUTHORIZED => "authentication_error",
                StatusCode::FORBIDDEN => "permission_error",
                StatusCode::NOT_FOUND => "not_found_error",
                StatusCode::BAD_REQUEST => "invalid_request_error",
                StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message, "governance_code": code}})
        }
    };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    resp
}

/// A governance error as the agent sees it.
fn refuse_error(api: Api, e: &Error) -> Response {
    let (status, code) = match e {
        Error::Halted { .. } => (StatusCode::FORBIDDEN, "agent_halted"),
        Error::ScopeViolation { .. } => (StatusCode::FORBIDDEN, "scope_violation"),
        Error::BudgetExceeded {
            denial: BudgetDenial::NoMaxTokens,
            ..
        } => (StatusCode::BAD_REQUEST, "max_tokens_required"),
        Error::BudgetExceeded {
            denial: BudgetDenial::UnknownModel,
            ..
        } => (StatusCode::BAD_REQUEST, "model_not_priced"),
        Error::BudgetExceeded { .. } => (StatusCode::PAYMENT_REQUIRED, "budget_exceeded"),
        Error::LoopDetected { .. } => (StatusCode::TOO_MANY_REQUESTS, "loop_detected"),
        e => match e.kind() {
            ErrorKind::Refused => (StatusCode::FORBIDDEN, "refused"),
            ErrorKind::Config => (StatusCode::BAD_REQUEST, "invalid_request"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "governance_unavailable"),
            ErrorKind::Upstream => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "governance_error"),
        },
    };
    let message = if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        "the gateway could not complete the request".to_owned()
    } else {
        format!("governance: {e}")
    };
    refuse(api, status, code, &message)
}

fn unauthenticated(api: Api) -> Response {
    refuse(
        api,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        "governance: a valid gateway key is required (Authorization: Bearer gk1_… or x-api-key); ask an operator for one (`governance gateway add-key --agent NAME`)",
    )
}

/// Authenticates the request: the agent, or the response to send.
async fn agent_of(gw: &Gateway, api: Api, headers: &HeaderMap) -> Result<String, Response> {
    match gw.authenticate(headers).await {
        Ok(Some(agent)) => Ok(agent),
        Ok(None) => Err(unauthenticated(api)),
        Err(e) => Err(refuse_error(api, &e)),
    }
}

pub(crate) async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(gw, Api::OpenAi, headers, body).await
}

pub(crate) async fn messages(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(gw, Api::Anthropic, headers, body).await
}

/// `GET /v1/models`: the upstream's list, narrowed to the models the agent may call.
pub(crate) async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let api = Api::OpenAi;
    let Some(up) = gw.openai.as_ref() else {
        return refuse(
            api,
            StatusCode::NOT_FOUND,
            "not_configured",
            "governance: this gateway has no OpenAI-compatible upstream",
        );
    };
    let agent = match agent_of(&gw, api, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let req = upstream_request(
        &gw,
        up,
        api,
        &headers,
        reqwest::Method::GET,
        "/v1/models",
        None,
    );
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => {
            return refuse(
                api,
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "governance: the upstream could not be reached",
            );
        }
    };
    let status = resp.status();
    let up_headers = resp.headers().clone();
    let Ok(bytes) = resp.bytes().await else {
        return refuse(
            api,
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            "governance: the upstream's answer was cut off",
        );
    };
    if !status.is_success() {
        return passthrough(status, &up_headers, Body::from(bytes));
    }
    let Ok(mut list) = serde_json::from_slice::<Map<String, Value>>(&bytes) else {
        return passthrough(status, &up_headers, Body::from(bytes));
    };
    if let Some(Value::Array(data)) = list.get_mut("data") {
        let mut kept = Vec::with_capacity(data.len());
        for m in data.drain(..) {
            let id = m.get("id").and_then(Value::as_str).unwrap_or_default();
            match gw
                .gov
                .scope()
                .allows_model(&agent, &up.provider.name, id)
                .await
            {
                Ok(true) => kept.push(m),
                Ok(false) => {}
                Err(e) => return refuse_error(api, &e),
            }
        }
        *data = kept;
    }
    let body = serde_json::to_vec(&list).unwrap_or_default();
    passthrough(status, &up_headers, Body::from(body))
}

/// The upstream request: the provider's key, the forwarded headers and the body.
fn upstream_request(
    gw: &Gateway,
    up: &Upstream,
    api: Api,
    headers: &HeaderMap,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> reqwest::RequestBuilder {
    use secrecy::ExposeSecret as _;
    let mut url = up.provider.base_url.clone();
    let mut prefix = url.path().trim_end_matches('/').to_owned();
    if prefix.ends_with("/v1") {
        prefix.truncate(prefix.len() - 3);
    }
    url.set_path(&format!("{prefix}{path}"));
    let mut out = reqwest::header::HeaderMap::new();
    for name in FORWARD {
        for v in headers.get_all(*name) {
            if let Ok(n) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
                out.append(n, v.clone());
            }
        }
    }
    // The configuration checked that the key makes a valid header value.
    if let Some(key) = &up.provider.api_key
        && let Ok(mut v) = HeaderValue::from_str(&match api {
            Api::OpenAi => format!("Bearer {}", key.expose_secret()),
            Api::Anthropic => key.expose_secret().to_owned(),
        })
    {
        v.set_sensitive(true);
        let name = match api {
            Api::OpenAi => header::AUTHORIZATION,
            Api::Anthropic => HeaderName::from_static("x-api-key"),
        };
        out.insert(name, v);
    }
    if api == Api::Anthropic && !out.contains_key("anthropic-version") {
        out.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    }
    let mut req = gw.http.request(method, url).headers(out);
    if let Some(body) = body {
        req = req
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    req
}

/// The provider's status, headers (but hop-by-hop ones) and body.
fn passthrough(status: StatusCode, headers: &reqwest::header::HeaderMap, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let out = resp.headers_mut();
    for (name, value) in headers {
        if !DROP_BACK.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    resp
}

/// Why the upstream call failed, in words safe to audit: no URL, no key, no provider text.
#[derive(Debug)]
enum UpstreamFailure {
    Status(u16, Option<String>),
    Transport(&'static str),
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s, Some(code)) => write!(f, "upstream status {s} ({code})"),
            Self::Status(s, None) => write!(f, "upstream status {s}"),
            Self::Transport(kind) => write!(f, "upstream {kind}"),
        }
    }
}

fn transport(e: &reqwest::Error) -> UpstreamFailure {
    UpstreamFailure::Transport(if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    })
}

/// A provider's error code, when it looks like one (never free text).
fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let code = [e.get("code"), e.get("type")]
        .into_iter()
        .flatten()
        .find_map(|c| c.as_str().filter(|s| !s.is_empty()))?;
    (code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    .then(|| code.to_owned())
}

/// The names of the tools a request offers.
fn tool_name(api: Api, tool: &Value) -> Option<&str> {
    match api {
        Api::OpenAi => tool
            .get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| tool.get("name")),
        Api::Anthropic => tool.get("name"),
    }
    .and_then(Value::as_str)
}

/// Removes the tools the agent may not use from the request (the tool choice too, when it
/// names one of them, or when no tool is left).
async fn filter_tools(
    gw: &Gateway,
    api: Api,
    agent: &str,
    req: &mut Map<String, Value>,
) -> gov_sdk::Result<Vec<String>> {
    let Some(Value::Array(tools)) = req.get("tools") else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = tools
        .iter()
        .filter_map(|t| tool_name(api, t).map(str::to_owned))
        .collect();
    let allowed = gw.gov.scope().filter_tools(agent, &names).await?;
    let removed: Vec<String> = names
        .iter()
        .filter(|n| !allowed.contains(n))
        .cloned()
        .collect();
    if removed.is_empty() {
        return Ok(removed);
    }
    if let Some(Value::Array(tools)) = req.get_mut("tools") {
        // A tool without a name (a provider's built-in) is not the agent's to use either.
        tools.retain(|t| tool_name(api, t).is_some_and(|n| allowed.iter().any(|a| a == n)));
        if tools.is_empty() {
            req.remove("tools");
            req.remove("tool_choice");
            req.remove("parallel_tool_calls");
            return Ok(removed);
        }
    }
    let chosen = req.get("tool_choice").and_then(|c| {
        c.get("function")
            .and_then(|f| f.get("name"))
            .or_else(|| c.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if chosen.is_some_and(|c| removed.contains(&c)) {
        req.remove("tool_choice");
    }
    Ok(removed)
}

/// The tool calls an answer makes (non-streaming).
fn answer_tool_calls(api: Api, v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match api {
        Api::OpenAi => {
            for c in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let calls = c.get("message").and_then(|m| m.get("tool_calls"));
                for t in calls.and_then(Value::as_array).into_iter().flatten() {
                    if let Some(n) = t
                        .get("function")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                    {
                        out.push(n.to_owned());
                    }
                }
            }
        }
        Api::Anthropic => {
            for b in v
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if b.get("type").and_then(Value::as_str) == Some("tool_use")
                    && let Some(n) = b.get("name").and_then(Value::as_str)
                {
                    out.push(n.to_owned());
                }
            }
        }
    }
    out
}

/// Checks each tool call against the agent's scope (a denial is audited as `scope.denied`);
/// the first one refused, if any.
async fn check_tool_calls(gw: &Gateway, agent: &str, calls: &[String]) -> Option<Error> {
    let mut first = None;
    for name in calls {
        if let Err(e) = gw.gov.scope().check(agent, name).await
            && first.is_none()
        {
            first = Some(e);
        }
    }
    first
}

fn usage_of(p: PartialUsage) -> Option<TokenUsage> {
    Some(TokenUsage {
        input_tokens: p.input_tokens?,
        output_tokens: p.output_tokens?,
        cached_input_tokens: p.cached_input_tokens.unwrap_or(0),
    })
}

/// Usage, finish reason and model of a whole (non-streamed) answer.
fn answer_facts(api: Api, v: &Value) -> (Option<TokenUsage>, Option<String>, Option<String>) {
    let usage = v.get("usage").cloned().and_then(|u| match api {
        Api::OpenAi => serde_json::from_value::<ChatUsage>(u)
            .ok()
            .and_then(|u| usage_of(u.into())),
        Api::Anthropic => serde_json::from_value::<AnthropicUsage>(u)
            .ok()
            .and_then(|u| usage_of(u.into())),
    });
    let finish = match api {
        Api::OpenAi => v
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("finish_reason")),
        Api::Anthropic => v.get("stop_reason"),
    }
    .and_then(Value::as_str)
    .map(str::to_owned);
    let model = v.get("model").and_then(Value::as_str).map(str::to_owned);
    (usage, finish, model)
}

/// One event of a streamed answer: its bytes and what the gates read from it.
struct Frame {
    block: Block,
    openai: Option<ChatChunk>,
    anthropic: Option<StreamEvent>,
    tools: Vec<String>,
    /// The usage chunk the gateway asked for and the agent did not: not forwarded.
    hidden: bool,
}

impl Frame {
    fn new(api: Api, block: Block, hide_usage_chunk: bool) -> Self {
        let mut f = Self {
            block,
            openai: None,
            anthropic: None,
            tools: Vec::new(),
            hidden: false,
        };
        let data = f.block.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return f;
        }
        match api {
            Api::OpenAi => {
                if let Ok(c) = serde_json::from_str::<ChatChunk>(data) {
                    for choice in &c.choices {
                        let calls = choice.delta.extra.get("tool_calls");
                        for t in calls.and_then(Value::as_array).into_iter().flatten() {
                            if let Some(n) = t
                                .get("function")
                                .and_then(|f| f.get("name"))
                                .and_then(Value::as_str)
                            {
                                f.tools.push(n.to_owned());
                            }
                        }
                    }
                    f.hidden = hide_usage_chunk && c.choices.is_empty() && c.usage.is_some();
                    f.openai = Some(c);
                }
            }
            Api::Anthropic => {
                if let Ok(e) = serde_json::from_str::<StreamEvent>(data) {
                    if let StreamEvent::ContentBlockStart { content_block, .. } = &e
                        && content_block.get("type").and_then(Value::as_str) == Some("tool_use")
                        && let Some(n) = content_block.get("name").and_then(Value::as_str)
                    {
                        f.tools.push(n.to_owned());
                    }
                    f.anthropic = Some(e);
                }
            }
        }
        f
    }
}

impl StreamChunk for Frame {
    fn usage(&self) -> Option<PartialUsage> {
        self.openai
            .as_ref()
            .and_then(StreamChunk::usage)
            .or_else(|| self.anthropic.as_ref().and_then(StreamChunk::usage))
    }

    fn finish_reason(&self) -> Option<&str> {
        self.openai
            .as_ref()
            .and_then(StreamChunk::finish_reason)
            .or_else(|| self.anthropic.as_ref().and_then(StreamChunk::finish_reason))
    }

    fn response_model(&self) -> Option<&str> {
        self.openai
            .as_ref()
            .and_then(StreamChunk::response_model)
            .filter(|m| !m.is_empty())
            .or_else(|| {
                self.anthropic
                    .as_ref()
                    .and_then(StreamChunk::response_model)
            })
    }
}

/// The upstream's events as frames.
fn frames(
    api: Api,
    resp: reqwest::Response,
    hide_usage_chunk: bool,
) -> impl futures_util::Stream<Item = Result<Frame, UpstreamFailure>> + Send + 'static {
    futures_util::stream::unfold(
        (resp, Framer::default(), false),
        move |(mut resp, mut framer, mut done)| async move {
            loop {
                if let Some(b) = framer.next_block() {
                    return Some((
                        Ok(Frame::new(api, b, hide_usage_chunk)),
                        (resp, framer, done),
                    ));
                }
                if done {
                    let b = framer.rest()?;
                    return Some((
                        Ok(Frame::new(api, b, hide_usage_chunk)),
                        (resp, framer, done),
                    ));
                }
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        if framer.push(&bytes).is_err() {
                            return Some((
                                Err(UpstreamFailure::Transport("decode")),
                                (resp, Framer::default(), true),
                            ));
                        }
                    }
                    Ok(None) => done = true,
                    Err(e) => {
                        return Some((Err(transport(&e)), (resp, Framer::default(), true)));
                    }
                }
            }
        },
    )
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(gw: Arc<Gateway>, api: Api, headers: HeaderMap, body: Bytes) -> Response {
    let Some(up) = api.upstream(&gw) else {
        return refuse(
            api,
            StatusCode::NOT_FOUND,
            "not_configured",
            "governance: this gateway has no upstream for this API",
        );
    };
    let agent = match agent_of(&gw, api, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let session = header_str(&headers, SESSION_HEADER)
        .map(str::to_owned)
        .unwrap_or_else(|| gw.config.default_session.clone());
    let Ok(mut req) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return refuse(
            api,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "governance: the request body is not a JSON object",
        );
    };
    let Some(model) = req.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return refuse(
            api,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "governance: the request names no model",
        );
    };
    // The same request again and again from one agent in one session is a loop: the SDK's
    // detector on `llm:<provider>` and the request as sent (audited as `loop.detected`; refused
    // with 429 when the detector halts the agent).
    let request_value = Value::Object(req.clone());
    let loop_tool = format!("llm:{}", up.provider.name);
    if let Err(e) = gw
        .gov
        .loops()
        .record(&agent, &session, &loop_tool, &request_value)
        .await
    {
        return refuse_error(api, &e);
    }
    drop(request_value);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let declared = match api {
        Api::OpenAi => req
            .get("max_completion_tokens")
            .and_then(Value::as_u64)
            .or_else(|| req.get("max_tokens").and_then(Value::as_u64)),
        Api::Anthropic => req.get("max_tokens").and_then(Value::as_u64),
    };
    // A request that declares no limit is reserved for the default (the gateway's, else the
    // handle's `CostConfig`), and the default goes upstream with it, so the provider cannot
    // generate more than was reserved: `max_completion_tokens` for OpenAI (the field of its
    // current API, and the only one its reasoning models take), `max_tokens` for Anthropic.
    if declared.is_none()
        && let Some(n) = gw
            .config
            .default_max_tokens
            .or(gw.gov.config().cost.default_max_tokens)
    {
        let field = match api {
            Api::OpenAi => "max_completion_tokens",
            Api::Anthropic => "max_tokens",
        };
        req.insert(field.into(), Value::from(n));
    }
    let removed = match filter_tools(&gw, api, &agent, &mut req).await {
        Ok(r) => r,
        Err(e) => return refuse_error(api, &e),
    };
    if !removed.is_empty() {
        tracing::debug!(
            agent,
            removed = removed.len(),
            "tools outside the agent's scope removed from the request"
        );
    }
    let mut hide_usage_chunk = false;
    if stream && api == Api::OpenAi {
        let opts = req
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = opts {
            hide_usage_chunk = o.get("include_usage").and_then(Value::as_bool) != Some(true);
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    let mut call = LlmCall::new(agent.clone(), session, model)
        .input_tokens(gov_sdk::llm::estimate_tokens(body.len()));
    if let Some(m) = declared {
        call = call.max_tokens(m);
    } else if let Some(m) = gw.config.default_max_tokens {
        call = call.default_max_tokens(m);
    }
    let out = match serde_json::to_vec(&req) {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                api,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "governance: the request could not be re-encoded",
            );
        }
    };
    let request = upstream_request(
        &gw,
        up,
        api,
        &headers,
        reqwest::Method::POST,
        api.path(),
        Some(out),
    );
    if stream {
        streamed(gw.clone(), up, api, agent, call, request, hide_usage_chunk).await
    } else {
        unary(&gw, up, api, &agent, call, request).await
    }
}

/// A whole answer: the provider's status, headers and bytes, and its JSON.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    bytes: Bytes,
    json: Value,
}

async fn unary(
    gw: &Gateway,
    up: &Upstream,
    api: Api,
    agent: &str,
    call: LlmCall,
    request: reqwest::RequestBuilder,
) -> Response {
    // The provider's own error answer, handed back as it came.
    let failed: Mutex<Option<Response>> = Mutex::new(None);
    let result = up
        .guard
        .guard(call, || async {
            let resp = request.send().await.map_err(|e| transport(&e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(|e| transport(&e))?;
            if !status.is_success() {
                let code = error_code(&bytes);
                *failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(passthrough(status, &headers, Body::from(bytes)));
                return Err(UpstreamFailure::Status(status.as_u16(), code));
            }
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (usage, finish, model) = answer_facts(api, &json);
            let mut done = Completion::new(Answer {
                status,
                headers,
                bytes,
                json,
            });
            if let Some(u) = usage {
                done = done.usage(u);
            }
            if let Some(f) = finish {
                done = done.finish_reason(f);
            }
            if let Some(m) = model {
                done = done.response_model(m);
            }
            Ok(done)
        })
        .await;
    let failed = failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match result {
        Ok(governed) => {
            let a = governed.output;
            let calls = answer_tool_calls(api, &a.json);
            if let Some(e) = check_tool_calls(gw, agent, &calls).await
                && gw.config.tool_calls == ToolCallPolicy::Block
            {
                return refuse_error(api, &e);
            }
            passthrough(a.status, &a.headers, Body::from(a.bytes))
        }
        Err(e) => match failed {
            Some(resp) => resp,
            None if e.kind() == ErrorKind::Upstream => refuse(
                api,
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "governance: the upstream could not be reached",
            ),
            None => refuse_error(api, &e),
        },
    }
}

async fn streamed(
    gw: Arc<Gateway>,
    up: &Upstream,
    api: Api,
    agent: String,
    call: LlmCall,
    request: reqwest::RequestBuilder,
    hide_usage_chunk: bool,
) -> Response {
    let failed: Mutex<Option<Response>> = Mutex::new(None);
    let head: Mutex<Option<(StatusCode, reqwest::header::HeaderMap)>> = Mutex::new(None);
    let result = up
        .guard
        .guard_stream(call, || async {
            let resp = request.send().await.map_err(|e| transport(&e))?;
            let status = resp.status();
            if !status.is_success() {
                let headers = resp.headers().clone();
                let bytes = resp.bytes().await.map_err(|e| transport(&e))?;
                let code = error_code(&bytes);
                *failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(passthrough(status, &headers, Body::from(bytes)));
                return Err(UpstreamFailure::Status(status.as_u16(), code));
            }
            *head
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((status, resp.headers().clone()));
            Ok(frames(api, resp, hide_usage_chunk))
        })
        .await;
    let failed = failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let stream = match result {
        Ok(s) => s,
        Err(e) => {
            return match failed {
                Some(resp) => resp,
                None if e.kind() == ErrorKind::Upstream => refuse(
                    api,
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "governance: the upstream could not be reached",
                ),
                None => refuse_error(api, &e),
            };
        }
    };
    let (status, headers) = head
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .unwrap_or_default();
    let body = forward(gw, api, agent, stream);
    let mut resp = passthrough(status, &headers, Body::from_stream(body));
    resp.headers_mut()
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("text/event-stream"));
    resp
}

/// What the agent receives of a guarded stream: the provider's events as they came, but the
/// usage chunk it did not ask for; with `tool_calls = "block"`, nothing after an out-of-scope
/// tool call but an error event, once the call is settled.
fn forward(
    gw: Arc<Gateway>,
    api: Api,
    agent: String,
    stream: GuardedStream<Frame>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    struct St {
        gw: Arc<Gateway>,
        agent: String,
        stream: GuardedStream<Frame>,
        blocked: Option<Error>,
        ended: bool,
    }
    let st = St {
        gw,
        agent,
        stream,
        blocked: None,
        ended: false,
    };
    futures_util::stream::unfold(st, move |mut st| async move {
        loop {
            if st.ended {
                return None;
            }
            match st.stream.next().await {
                Some(Ok(frame)) => {
                    if !frame.tools.is_empty()
                        && let Some(e) = check_tool_calls(&st.gw, &st.agent, &frame.tools).await
                        && st.gw.config.tool_calls == ToolCallPolicy::Block
                        && st.blocked.is_none()
                    {
                        st.blocked = Some(e);
                    }
                    if frame.hidden || st.blocked.is_some() {
                        continue;
                    }
                    return Some((Ok(frame.block.raw), st));
                }
                Some(Err(_)) => {
                    st.ended = true;
                    return Some((Err(std::io::Error::other("the upstream stream failed")), st));
                }
                None => {
                    st.ended = true;
                    let e = st.blocked.take()?;
                    return Some((Ok(blocked_event(api, &e)), st));
                }
            }
        }
    })
    .boxed()
}

/// The event that ends a stream whose answer called a tool outside scope.
fn blocked_event(api: Api, e: &Error) -> Bytes {
    let message = format!("governance: {e}");
    let text = match api {
        Api::OpenAi => format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"error": {"message": message, "type": "scope_violation", "code": "scope_violation"}})
        ),
        Api::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "error": {"type": "permission_error", "message": message}})
        ),
    };
    Bytes::from(text)
}
