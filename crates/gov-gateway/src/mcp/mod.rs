//! The MCP gateway: `/mcp`, an MCP server (streamable HTTP, the official `rmcp` SDK) in front of
//! the configured upstream MCP servers, with every gate of the SDK's governed tool path.
//!
//! An agent authenticates with its gateway key (checked before the request reaches the MCP
//! layer). `tools/list` shows the upstream servers' tools the agent's scope allows and does not
//! hide, as `{prefix}{tool}`; scope and Cedar policies know them as `server/tool`. `tools/call`
//! goes: halt, scope and the Cedar policy set (`Resource::McpTool`, with the arguments), a
//! person's approval of the exact call for gated tools (configured, or a policy's `@approval`),
//! then [`gov_sdk::Contracts::run`]: halt again, budget headroom when configured, the
//! approval consumed, loop detection, `tool.started` (with the call's hash), the upstream call,
//! `tool.finished`. A call refused at any step never reaches the upstream server.
//!
//! A refusal is an MCP tool result with `isError: true` and a message saying what happened and
//! what to do (MCP clients show it to the model and the user), with `_meta["governance/refusal"]`
//! holding a stable `code`. A tool the agent may not see is an unknown tool (JSON-RPC `-32602`),
//! exactly like one that does not exist. Must never return or log a key, a token or a database
//! URL.

mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gov_sdk::policies::{PolicyCheck, Resource};
use gov_sdk::{Approval, CallContext, Contract, Error, Governance, Pre};
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    Implementation, ListToolsResult, MetaObject, PaginatedRequestParams, ResultType,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::McpConfig;
use crate::proxy::SESSION_HEADER;
use upstream::Upstream;

/// The `_meta` key of a refusal's code.
pub const REFUSAL_META: &str = "governance/refusal";

/// Who is calling: set by the authentication layer, read by the handler.
#[derive(Debug, Clone)]
struct Identity {
    agent: String,
    session: String,
}

/// A gated call waiting for a decision: (agent, session, action hash).
type WaitKey = (String, String, [u8; 32]);

/// Most remembered waiting calls; the memory is cleared when full (a call asked again then
/// finds its request among the pending ones).
const MAX_WAITING: usize = 10_000;

/// The MCP gateway's state.
#[derive(Debug)]
pub(crate) struct McpGateway {
    gov: Governance,
    config: McpConfig,
    upstreams: Vec<Upstream>,
    /// Requests this process opened and has not seen decided, so that calling again with the
    /// same arguments waits on the same request (other instances find it among the pending).
    waiting: Mutex<HashMap<WaitKey, Uuid>>,
    stop: CancellationToken,
}

impl McpGateway {
    pub(crate) fn new(gov: Governance, config: McpConfig) -> Arc<Self> {
        let upstreams = config.servers.iter().cloned().map(Upstream::new).collect();
        Arc::new(Self {
            gov,
            config,
            upstreams,
            waiting: Mutex::default(),
            stop: CancellationToken::new(),
        })
    }

    /// The MCP service mounted at `/mcp` (stateless: any instance answers any request).
    pub(crate) fn service(self: &Arc<Self>) -> StreamableHttpService<Front, NeverSessionManager> {
        let front = Front(Arc::clone(self));
        let config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_allowed_hosts(self.config.allowed_hosts.clone())
            .with_sse_keep_alive(Some(Duration::from_secs(10)))
            .with_cancellation_token(self.stop.child_token());
        StreamableHttpService::new(
            move || Ok(front.clone()),
            Arc::new(NeverSessionManager::default()),
            config,
        )
    }

    /// The token that ends the MCP service's streams.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Ends open MCP streams (calls waiting for approval answer nothing; their requests stay
    /// pending) and closes the upstream connections.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        for u in &self.upstreams {
            u.close().await;
        }
    }

    /// The server and upstream tool name of an exposed name.
    fn route<'n>(&self, name: &'n str) -> Option<(&Upstream, &'n str)> {
        self.upstreams.iter().find_map(|u| {
            name.strip_prefix(u.server.tool_prefix.as_str())
                .filter(|t| !t.is_empty())
                .map(|t| (u, t))
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<WaitKey, Uuid>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pending request for this exact call: one this process opened, else one in the queue
    /// (opened by another instance), else a new one.
    async fn request_for(
        &self,
        key: &WaitKey,
        scoped: &str,
        args: &Value,
    ) -> gov_sdk::Result<Uuid> {
        if let Some(id) = self.waiting().get(key) {
            return Ok(*id);
        }
        let (agent, session, hash) = key;
        let pending = self.gov.gates().pending().await?;
        if let Some(r) = pending.iter().find(|r| {
            r.agent_id == *agent
                && r.session_id.as_deref() == Some(session.as_str())
                && r.tool == scoped
                && r.action_hash.as_slice() == hash.as_slice()
        }) {
            return Ok(r.id);
        }
        let r = self
            .gov
            .gates()
            .request(agent, Some(session), scoped, args)
            .await?;
        Ok(r.id)
    }

    /// Waits for a person's decision on this exact call: the approval, or the result to
    /// answer with (pending, denied).
    async fn approval(
        &self,
        id: &Identity,
        scoped: &str,
        args: &Value,
    ) -> Result<Approval, CallToolResult> {
        let hash = match gov_core_hash(scoped, args) {
            Ok(h) => h,
            Err(e) => return Err(refusal(&e)),
        };
        let key: WaitKey = (id.agent.clone(), id.session.clone(), hash);
        // At most twice: a remembered request that lapsed or was used is replaced by a new one.
        for _ in 0..2 {
            let request = match self.request_for(&key, scoped, args).await {
                Ok(r) => r,
                Err(e) => return Err(refusal(&e)),
            };
            let gates = self.gov.gates();
            match gates.wait_for(request, self.config.approval_wait).await {
                Ok(a) => {
                    self.waiting().remove(&key);
                    return Ok(a);
                }
                Err(Error::ApprovalPending { request_id }) => {
                    let mut waiting = self.waiting();
                    if waiting.len() >= MAX_WAITING {
                        waiting.clear();
                    }
                    waiting.insert(key, request_id);
                    drop(waiting);
                    return Err(refused(
                        "approval_pending",
                        format!(
                            "governance: this call waits for a person's approval (request {request_id}); \
                             nothing was run. An operator approves or denies it in the console or with the \
                             governance CLI. Call the tool again with exactly the same arguments to keep \
                             waiting: it runs once approved."
                        ),
                        Some(request_id),
                    ));
                }
                Err(Error::ApprovalDenied {
                    request_id,
                    by,
                    reason,
                }) => {
                    self.waiting().remove(&key);
                    return Err(refused(
                        "approval_denied",
                        format!(
                            "governance: {by} denied this call (request {request_id}): {reason}. \
                             Nothing was run; do not retry it unchanged."
                        ),
                        Some(request_id),
                    ));
                }
                Err(Error::ApprovalRefused { .. }) => {
                    // Lapsed, or already used: ask again.
                    self.waiting().remove(&key);
                }
                Err(e) => return Err(refusal(&e)),
            }
        }
        Err(refused(
            "refused",
            "governance: the approval could not be obtained; nothing was run".into(),
            None,
        ))
    }

    /// `tools/call`, governed.
    async fn call(
        &self,
        id: &Identity,
        params: CallToolRequestParams,
    ) -> Result<CallToolResult, McpError> {
        let name = params.name.as_ref();
        let Some((up, tool)) = self.route(name) else {
            return Err(unknown_tool(name));
        };
        let server = up.server.name.as_str();
        let scoped = format!("{server}/{tool}");
        let args = Value::Object(params.arguments.clone().unwrap_or_default());
        let (agent, session) = (id.agent.as_str(), id.session.as_str());

        if let Err(e) = self.gov.presence().assert_not_halted(agent).await {
            return Ok(refusal(&e));
        }
        let mut gated = up.server.gated.contains(tool);
        let check = PolicyCheck {
            agent,
            session,
            resource: Resource::McpTool { server, tool },
            arguments: Some(&args),
            estimated_cost_micros: 0,
            session_spend_micros: 0,
        };
        match self.gov.policies().check(&check).await {
            Ok(()) => {}
            Err(Error::PolicyApprovalRequired { .. }) => gated = true,
            // Out of scope or hidden: audited as scope.denied, answered as unknown.
            Err(Error::ScopeViolation { .. }) => return Err(unknown_tool(name)),
            Err(e) => return Ok(refusal(&e)),
        }
        let approval = if gated {
            match self.approval(id, &scoped, &args).await {
                Ok(a) => Some(a),
                Err(answer) => return Ok(answer),
            }
        } else {
            None
        };

        let mut contract = Contract::new();
        if up.server.budget {
            contract = contract.require(Pre::BudgetAvailable);
        }
        if approval.is_some() {
            contract = contract.require(Pre::HitlApproved);
        }
        let ctx = CallContext {
            agent,
            session,
            tool: &scoped,
            args: &args,
        };
        let answer: Mutex<Option<CallToolResult>> = Mutex::new(None);
        let run = self
            .gov
            .contracts()
            .run(&contract, ctx, approval.as_ref(), |_| async {
                let r = up.call(tool, params.arguments.clone()).await?;
                let failed = r.is_error == Some(true);
                *answer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
                if failed {
                    Err("the tool answered with an error".to_owned())
                } else {
                    Ok(Value::Null)
                }
            })
            .await;
        let answer = answer
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (run, answer) {
            // The upstream answered (a tool error included): pass it through as it is, marked
            // complete (an upstream on an older protocol version leaves `resultType` out, which
            // 2026-07-28 clients require; rmcp drops it again for older clients).
            (Ok(_), Some(mut r)) | (Err(Error::ToolFailed { .. }), Some(mut r)) => {
                r.result_type = Some(ResultType::COMPLETE);
                Ok(r)
            }
            (Err(Error::ToolFailed { message, .. }), None) => Ok(refused(
                "upstream_unreachable",
                format!("governance: {message}; the call may not have run"),
                None,
            )),
            (Err(e), _) => Ok(refusal(&e)),
            (Ok(_), None) => Ok(refused(
                "refused",
                "governance: the upstream server gave no answer".into(),
                None,
            )),
        }
    }

    /// `tools/list`: the upstream tools the agent's scope allows and does not hide.
    async fn list(&self, id: &Identity) -> Result<ListToolsResult, McpError> {
        let listed = futures_util::future::join_all(self.upstreams.iter().map(|u| u.tools())).await;
        let mut shown = Vec::new();
        for (up, tools) in self.upstreams.iter().zip(listed) {
            let tools = match tools {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(server = %up.server.name, error = %e, "an MCP server's tools are left out of tools/list");
                    continue;
                }
            };
            let scoped: Vec<String> = tools
                .iter()
                .map(|t| format!("{}/{}", up.server.name, t.name))
                .collect();
            let allowed = self
                .gov
                .scope()
                .filter_tools(&id.agent, &scoped)
                .await
                .map_err(|_| unavailable())?;
            for (mut t, s) in tools.into_iter().zip(&scoped) {
                if allowed.contains(s) {
                    t.name = format!("{}{}", up.server.tool_prefix, t.name).into();
                    shown.push(t);
                }
            }
        }
        // What an agent may see is its own and changes with its scope: never cache it.
        Ok(ListToolsResult::with_all_items(shown)
            .with_cache_scope(CacheScope::Private)
            .with_ttl_ms(0))
    }
}

fn gov_core_hash(tool: &str, args: &Value) -> gov_sdk::Result<[u8; 32]> {
    Ok(gov_sdk::action_hash(tool, args)?)
}

fn unknown_tool(name: &str) -> McpError {
    McpError::invalid_params(format!("unknown tool: {name}"), None)
}

fn unavailable() -> McpError {
    McpError::internal_error(
        "governance is unavailable (its database is out of reach); nothing was run",
        None,
    )
}

/// An `isError` tool result with the refusal's code in `_meta`.
fn refused(code: &str, message: String, request: Option<Uuid>) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(message)]);
    let mut meta = serde_json::Map::new();
    let mut detail = json!({ "code": code });
    if let Some(id) = request {
        detail["request_id"] = json!(id.to_string());
    }
    meta.insert(REFUSAL_META.to_owned(), detail);
    r.meta = Some(MetaObject(meta));
    r
}

/// The result a refusal by the SDK answers with.
fn refusal(e: &Error) -> CallToolResult {
    let (code, message) = match e {
        _ if e.is_unavailable() => (
            "governance_unavailable",
            "governance is unavailable (its database is out of reach); nothing was run".to_owned(),
        ),
        Error::Halted { .. } => ("agent_halted", e.to_string()),
        Error::PolicyForbidden { .. } => ("policy_forbidden", e.to_string()),
        Error::BudgetExceeded { .. } => ("budget_exceeded", e.to_string()),
        Error::LoopDetected { .. } => ("loop_detected", e.to_string()),
        Error::ContractViolation { condition, .. } if condition == "budget_available" => {
            ("budget_exceeded", e.to_string())
        }
        Error::ContractViolation { .. } => ("contract_violation", e.to_string()),
        _ => ("refused", e.to_string()),
    };
    refused(
        code,
        format!("governance refused this call: {message}. Nothing was run."),
        None,
    )
}

/// The MCP handler: one per request, sharing the gateway.
#[derive(Debug, Clone)]
pub(crate) struct Front(Arc<McpGateway>);

fn identity(ctx: &RequestContext<RoleServer>) -> Result<Identity, McpError> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Identity>())
        .cloned()
        .ok_or_else(|| McpError::invalid_request("no authenticated agent", None))
}

impl rmcp::ServerHandler for Front {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "governance-mcp-gateway",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Tools of governed MCP servers. Each call is checked (halt, scope, policies, \
                 loops, budget) and audited; some wait for a person's approval. A refused call \
                 answers with isError and says why; nothing was run.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let id = identity(&ctx)?;
        self.0.list(&id).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let id = identity(&ctx)?;
        self.0.call(&id, request).await.map(Into::into)
    }
}

/// Authenticates `/mcp` requests with the agent's gateway key; refused requests never reach
/// the MCP layer (`401`, or `503` when the database is out of reach).
pub(crate) async fn authenticate(
    State(gw): State<Arc<crate::Gateway>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let agent = match gw.authenticate(headers).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return (
                StatusCode::UNAUTHORIZED,
                [("content-type", "application/json")],
                json!({"error": {"code": "invalid_api_key", "message": "a valid gateway key is required: Authorization: Bearer gk1_… (from `governance gateway add-key`)"}}).to_string(),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("content-type", "application/json")],
                json!({"error": {"code": "governance_unavailable", "message": "governance is unavailable; try again later"}}).to_string(),
            )
                .into_response();
        }
    };
    let session = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map_or_else(|| gw.config.default_session.clone(), str::to_owned);
    if gov_sdk::SessionId::new(&session).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            json!({"error": {"code": "invalid_request", "message": "x-governance-session is not a valid session id"}}).to_string(),
        )
            .into_response();
    }
    req.extensions_mut().insert(Identity { agent, session });
    next.run(req).await
}
