//! The MCP gateway end to end: an upstream MCP server on loopback (rmcp, recording every call
//! it receives), the gateway in front of it, and MCP clients: rmcp's own and the official Python
//! `mcp` package (installed from PyPI into a cached virtual environment). Hidden and
//! out-of-scope tools are absent, a gated tool waits for an operator's approval of that exact
//! call (approved through the SDK, and through the console's approve form over HTTP), a denied
//! call never reaches the upstream, a halted agent is refused, and the chain verifies clean.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gov_sdk::{GateRecord, Governance, MicroUsd, Operator, OperatorRole, ScopePolicy};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleClient, RoleServer, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt as _};
use serde_json::{Value, json};

use crate::support::{AGENT, Served, World};

/// What the upstream MCP server received: (tool, arguments).
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// The upstream server: four tools, every call recorded.
#[derive(Debug, Clone)]
struct Upstream {
    calls: Calls,
}

impl ServerHandler for Upstream {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, rmcp::ErrorData> {
        let schema = match json!({"type": "object"}) {
            Value::Object(o) => Arc::new(o),
            _ => unreachable!("an object"),
        };
        Ok(ListToolsResult::with_all_items(
            ["lookup", "delete_db", "secret_tool", "not_in_scope"]
                .map(|n| Tool::new(n, format!("the {n} tool"), Arc::clone(&schema)))
                .to_vec(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, rmcp::ErrorData> {
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        self.calls
            .lock()
            .expect("lock")
            .push((request.name.to_string(), args.clone()));
        let text = match request.name.as_ref() {
            "lookup" => format!("found {}", args["q"].as_str().unwrap_or_default()),
            "delete_db" => format!("deleted {}", args["table"].as_str().unwrap_or_default()),
            other => format!("ran {other}"),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Starts the upstream MCP server; its URL and what it receives.
async fn upstream() -> (String, Calls) {
    let calls = Calls::default();
    let server = Upstream {
        calls: Arc::clone(&calls),
    };
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(false),
    );
    let app = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/mcp"), calls)
}

/// The gateway configuration's `[mcp]` part, with `delete_db` gated.
fn mcp_config(upstream: &str, wait_secs: u64) -> String {
    format!(
        "[mcp]\napproval_wait_secs = {wait_secs}\n[mcp.servers.up]\nurl = \"{upstream}\"\ngated = [\"delete_db\"]\n"
    )
}

/// The agent may use three of the upstream's tools, one of them hidden.
async fn scope(world: &World) {
    world
        .gov
        .scope()
        .register(
            ScopePolicy::new(AGENT.parse().expect("agent"))
                .allow_tools(["up/lookup", "up/delete_db", "up/secret_tool"])
                .hide_tools(["up/secret_tool"]),
        )
        .await
        .expect("scope");
}

/// An operator (on the owner's connection), signed in.
async fn operator(gov: &Governance) -> Operator {
    gov.operators()
        .add("alice", OperatorRole::Operator, "correct horse battery")
        .await
        .expect("add operator");
    gov.operators()
        .authenticate("alice", "correct horse battery")
        .await
        .expect("sign in")
}

/// Waits until a gate request for `tool` with `args` is pending, and returns it.
async fn pending(gov: &Governance, tool: &str, args: &Value) -> GateRecord {
    let hash = gov_sdk::action_hash(tool, args).expect("hash");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = gov.gates().pending().await.expect("pending");
        if let Some(r) = all
            .into_iter()
            .find(|r| r.tool == tool && r.action_hash == hash)
        {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request for {tool} {args} appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An rmcp client of the gateway with `key`.
async fn client(url: &str, key: &str) -> RunningService<RoleClient, ()> {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{url}/mcp"))
        .auth_header(key.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("connect to the gateway")
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

fn refusal_code(r: &CallToolResult) -> Option<String> {
    r.meta.as_ref().and_then(|m| {
        m.0.get(gov_gateway::REFUSAL_META)?["code"]
            .as_str()
            .map(str::to_owned)
    })
}

async fn call(
    c: &RunningService<RoleClient, ()>,
    tool: &str,
    args: Value,
) -> Result<CallToolResult, rmcp::ServiceError> {
    let mut p = CallToolRequestParams::new(tool.to_owned());
    p.arguments = args.as_object().cloned();
    c.call_tool(p).await
}

#[tokio::test]
async fn the_mcp_gateway_filters_gates_and_audits_tool_calls() {
    let (up, calls) = upstream().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    scope(&world).await;
    let alice = operator(&world.gov).await;
    let gw = Served::start(&world, "http://127.0.0.1:9", &mcp_config(&up, 60)).await;
    let agent = client(&gw.url, &world.key).await;

    // Hidden and out-of-scope tools are absent.
    let mut names: Vec<String> = agent
        .list_all_tools()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["up__delete_db", "up__lookup"]);

    // An allowed call reaches the upstream and comes back as it answered.
    let r = call(&agent, "up__lookup", json!({"q": "INV-7"}))
        .await
        .expect("lookup");
    assert_eq!(text(&r), "found INV-7");
    assert_ne!(r.is_error, Some(true));

    // Hidden, out of scope and unknown tools are all "unknown" and never reach the upstream.
    for tool in ["up__secret_tool", "up__not_in_scope", "nope"] {
        let e = call(&agent, tool, json!({}))
            .await
            .expect_err("not callable");
        assert!(e.to_string().contains("unknown tool"), "{tool}: {e}");
    }
    assert_eq!(calls.lock().expect("lock").len(), 1);

    // A gated call waits for an operator's approval of that exact call, then runs.
    let args = json!({"table": "users"});
    let (r, ()) = tokio::join!(call(&agent, "up__delete_db", args.clone()), async {
        let req = pending(&world.gov, "up/delete_db", &args).await;
        assert_eq!(calls.lock().expect("lock").len(), 1, "not before approval");
        world
            .gov
            .gates()
            .approve(&alice, req.id, "ok to drop users")
            .await
            .expect("approve");
    });
    let r = r.expect("approved call");
    assert_eq!(text(&r), "deleted users");

    // A denied call never reaches the upstream; the agent is told so.
    let other = json!({"table": "orders"});
    let (r, ()) = tokio::join!(call(&agent, "up__delete_db", other.clone()), async {
        let req = pending(&world.gov, "up/delete_db", &other).await;
        world
            .gov
            .gates()
            .deny(&alice, req.id, "never the orders")
            .await
            .expect("deny");
    });
    let r = r.expect("a tool result");
    assert_eq!(r.is_error, Some(true));
    assert_eq!(refusal_code(&r).as_deref(), Some("approval_denied"));
    assert!(text(&r).contains("never the orders"), "{}", text(&r));
    let seen: Vec<String> = calls
        .lock()
        .expect("lock")
        .iter()
        .map(|(t, a)| format!("{t} {a}"))
        .collect();
    assert_eq!(
        seen,
        [r#"lookup {"q":"INV-7"}"#, r#"delete_db {"table":"users"}"#]
    );

    // A halted agent is refused before anything reaches the upstream.
    world
        .gov
        .presence()
        .halt(&alice, AGENT, "incident")
        .await
        .expect("halt");
    crate::support::until_halted(&gw.gov, AGENT).await;
    let r = call(&agent, "up__lookup", json!({"q": "x"}))
        .await
        .expect("a tool result");
    assert_eq!(refusal_code(&r).as_deref(), Some("agent_halted"));
    assert_eq!(calls.lock().expect("lock").len(), 2);

    // No key, a bad key: 401 before the MCP layer.
    let http = reqwest::Client::new();
    for auth in [None, Some("Bearer gk1_not-a-key")] {
        let mut req = http
            .post(format!("{}/mcp", gw.url))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.expect("send").status(), 401);
    }

    // The audit: the calls with their hashes, the gate's life, the refusals.
    let events = world.events().await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "tool.started",
        "tool.finished",
        "gate.requested",
        "gate.approved",
        "gate.consumed",
        "gate.denied",
        "scope.denied",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let started: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k == "tool.started")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    let hash = gov_sdk::action_hash("up/delete_db", &args).expect("hash");
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(started[1]["tool"], "up/delete_db");
    assert_eq!(started[1]["args_sha256"], hex.as_str());

    agent.cancel().await.expect("close");
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn a_pending_call_answers_at_once_and_runs_when_called_again_after_approval() {
    let (up, calls) = upstream().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    scope(&world).await;
    let alice = operator(&world.gov).await;
    let gw = Served::start(&world, "http://127.0.0.1:9", &mcp_config(&up, 0)).await;
    let agent = client(&gw.url, &world.key).await;

    let args = json!({"table": "users"});
    let r = call(&agent, "up__delete_db", args.clone())
        .await
        .expect("a tool result");
    assert_eq!(refusal_code(&r).as_deref(), Some("approval_pending"));
    // Calling again waits on the same request; still nothing reaches the upstream.
    let again = call(&agent, "up__delete_db", args.clone())
        .await
        .expect("a tool result");
    assert_eq!(refusal_code(&again).as_deref(), Some("approval_pending"));
    assert_eq!(world.gov.gates().pending().await.expect("pending").len(), 1);
    assert!(calls.lock().expect("lock").is_empty());

    let req = pending(&world.gov, "up/delete_db", &args).await;
    world
        .gov
        .gates()
        .approve(&alice, req.id, "fine")
        .await
        .expect("approve");
    // Other arguments are another call: the approval does not cover them.
    let r = call(&agent, "up__delete_db", json!({"table": "orders"}))
        .await
        .expect("a tool result");
    assert_eq!(refusal_code(&r).as_deref(), Some("approval_pending"));
    let r = call(&agent, "up__delete_db", args.clone())
        .await
        .expect("approved");
    assert_eq!(text(&r), "deleted users");
    // The approval is spent: the same call again asks anew.
    let r = call(&agent, "up__delete_db", args.clone())
        .await
        .expect("a tool result");
    assert_eq!(refusal_code(&r).as_deref(), Some("approval_pending"));
    assert_eq!(calls.lock().expect("lock").len(), 1);

    agent.cancel().await.expect("close");
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

/// The agent, with the official Python `mcp` client (`mcp.Client` over streamable HTTP).
const PY_AGENT: &str = r#"
import asyncio, os, sys
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

url, key, phase = os.environ["GW_URL"] + "/mcp", os.environ["GW_KEY"], sys.argv[1]

def connect():
    http = httpx2.AsyncClient(
        headers={"Authorization": "Bearer " + key, "x-governance-session": "py"},
        timeout=httpx2.Timeout(30, read=300),
    )
    return Client(streamable_http_client(url, http_client=http))

def text(r):
    return "".join(getattr(c, "text", "") for c in r.content)

def code(r):
    meta = r.model_dump(by_alias=True).get("_meta") or {}
    return (meta.get("governance/refusal") or {}).get("code")

async def main():
    async with connect() as c:
        if phase == "serve":
            names = sorted(t.name for t in (await c.list_tools()).tools)
            assert names == ["up__delete_db", "up__lookup"], names
            r = await c.call_tool("up__lookup", {"q": "py"})
            assert not r.is_error and text(r) == "found py", r
            # Waits until the operator approves this exact call.
            r = await c.call_tool("up__delete_db", {"table": "users"})
            assert not r.is_error and text(r) == "deleted users", r
            # Denied: a tool error the model can read, nothing ran.
            r = await c.call_tool("up__delete_db", {"table": "orders"})
            assert r.is_error and code(r) == "approval_denied", r
            try:
                await c.call_tool("up__secret_tool", {})
                raise SystemExit("a hidden tool was callable")
            except SystemExit:
                raise
            except Exception as e:
                assert "unknown tool" in str(e), e
        elif phase == "halted":
            r = await c.call_tool("up__lookup", {"q": "py"})
            assert r.is_error and code(r) == "agent_halted", r
    print("ok", phase)

asyncio.run(main())
"#;

#[tokio::test]
async fn the_official_python_mcp_client_works_through_the_gateway() {
    let home = tempfile::tempdir().expect("home");
    let home_path = home.path().to_owned();
    let python = tokio::task::spawn_blocking(move || {
        crate::python::venv(&home_path, "gateway-py-mcp", &["mcp"])
    })
    .await
    .expect("venv");
    let (up, calls) = upstream().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    scope(&world).await;
    let alice = operator(&world.gov).await;
    let gw = Served::start(&world, "http://127.0.0.1:9", &mcp_config(&up, 60)).await;
    let script = home.path().join("agent.py");
    std::fs::write(&script, PY_AGENT).expect("script");
    let phase = |p: &'static str| {
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(&script)
            .arg(p)
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GW_URL", &gw.url)
            .env("GW_KEY", &world.key);
        cmd
    };
    let mut serve = phase("serve");
    let agent = tokio::task::spawn_blocking(move || {
        crate::python::run(&mut serve, "the Python MCP agent (serve)");
    });
    let users = json!({"table": "users"});
    let req = pending(&world.gov, "up/delete_db", &users).await;
    world
        .gov
        .gates()
        .approve(&alice, req.id, "ok")
        .await
        .expect("approve");
    let orders = json!({"table": "orders"});
    let req = pending(&world.gov, "up/delete_db", &orders).await;
    world
        .gov
        .gates()
        .deny(&alice, req.id, "no")
        .await
        .expect("deny");
    agent.await.expect("the Python agent");
    let seen: Vec<String> = calls
        .lock()
        .expect("lock")
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(
        seen,
        ["lookup", "delete_db"],
        "the denied call never arrived"
    );

    world
        .gov
        .presence()
        .halt(&alice, AGENT, "incident")
        .await
        .expect("halt");
    crate::support::until_halted(&gw.gov, AGENT).await;
    let mut halted = phase("halted");
    tokio::task::spawn_blocking(move || {
        crate::python::run(&mut halted, "the Python MCP agent (halted)");
    })
    .await
    .expect("the Python agent");
    assert_eq!(calls.lock().expect("lock").len(), 2);
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

/// A stdio MCP server (the Python SDK's `MCPServer`): `env_names` answers the names of its
/// environment, `remove` appends its path to the file `CALLS_LOG` names.
const PY_STDIO_SERVER: &str = r#"
import os
from mcp.server import MCPServer

app = MCPServer("stdio-upstream")

@app.tool()
def env_names() -> str:
    return ",".join(sorted(os.environ))

@app.tool()
def remove(path: str) -> str:
    with open(os.environ["CALLS_LOG"], "a") as f:
        f.write(path + "\n")
    return "removed " + path

app.run()
"#;

#[tokio::test]
async fn a_stdio_server_gets_a_clean_environment_and_the_same_gates() {
    let home = tempfile::tempdir().expect("home");
    let home_path = home.path().to_owned();
    let python = tokio::task::spawn_blocking(move || {
        crate::python::venv(&home_path, "gateway-py-mcp", &["mcp"])
    })
    .await
    .expect("venv");
    let script = home.path().join("server.py");
    std::fs::write(&script, PY_STDIO_SERVER).expect("script");
    let log = home.path().join("calls.log");
    std::fs::write(&log, "").expect("log");

    let world = World::new(MicroUsd(1_000_000)).await;
    world
        .gov
        .scope()
        .register(
            ScopePolicy::new(AGENT.parse().expect("agent"))
                .allow_tools(["st/env_names", "st/remove"]),
        )
        .await
        .expect("scope");
    let alice = operator(&world.gov).await;
    let extra = format!(
        "[mcp]\n[mcp.servers.st]\ncommand = [{:?}, {:?}]\nenv = [\"CALLS_LOG\"]\ngated = [\"remove\"]\n",
        python.display().to_string(),
        script.display().to_string()
    );
    let path = std::env::var("PATH").unwrap_or_default();
    let home_dir = home.path().display().to_string();
    let log_path = log.display().to_string();
    let env = move |n: &str| match n {
        "PATH" => Some(path.clone()),
        "HOME" => Some(home_dir.clone()),
        "CALLS_LOG" => Some(log_path.clone()),
        _ => None,
    };
    let gw = Served::start_with_env(&world, "http://127.0.0.1:9", &extra, &env).await;
    let agent = client(&gw.url, &world.key).await;

    let mut names: Vec<String> = agent
        .list_all_tools()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["st__env_names", "st__remove"]);

    // Only the variables the configuration names reach the server: not the gateway's own
    // environment (this test process's database URL, for one).
    let r = call(&agent, "st__env_names", json!({}))
        .await
        .expect("env_names");
    let seen = text(&r);
    let seen: Vec<&str> = seen.split(',').collect();
    assert!(seen.contains(&"CALLS_LOG"), "{seen:?}");
    for name in &seen {
        // Python may add LC_CTYPE itself (PEP 538).
        assert!(
            ["PATH", "HOME", "CALLS_LOG", "LC_CTYPE"].contains(name),
            "{name} reached the stdio server: {seen:?}"
        );
    }

    // A denied call never reaches the stdio server.
    let args = json!({"path": "/etc/important"});
    let (r, ()) = tokio::join!(call(&agent, "st__remove", args.clone()), async {
        let req = pending(&world.gov, "st/remove", &args).await;
        world
            .gov
            .gates()
            .deny(&alice, req.id, "no")
            .await
            .expect("deny");
    });
    assert_eq!(
        refusal_code(&r.expect("a tool result")).as_deref(),
        Some("approval_denied")
    );
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "");

    agent.cancel().await.expect("close");
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn cedar_policies_forbid_or_ask_for_mcp_tools_with_their_arguments() {
    use gov_sdk::policies::{PolicySet, Slot};
    let (up, calls) = upstream().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    scope(&world).await;
    let set = PolicySet::parse(
        r#"
        @id("all") permit (principal, action, resource);
        @id("no-secret-lookups")
        forbid (principal, action == Governance::Action::"mcp_tool_call", resource == Governance::McpTool::"up/lookup")
        when { context.arguments has q && context.arguments.q == "payroll" };
        @id("deletes-need-a-person")
        @approval("a person checks every delete")
        permit (principal, action == Governance::Action::"mcp_tool_call", resource in Governance::McpServer::"up")
        when { context.arguments has table };
        "#,
        r#"{"arguments": {"q": "string", "table": "string"}}"#,
    )
    .expect("valid policies");
    world
        .gov
        .policies()
        .apply(Slot::Enforced, Some(&set), "alice")
        .await
        .expect("apply");
    // No tool is gated in the configuration: the policy alone asks for approval.
    let config = format!("[mcp]\napproval_wait_secs = 0\n[mcp.servers.up]\nurl = \"{up}\"\n");
    let gw = Served::start(&world, "http://127.0.0.1:9", &config).await;
    let agent = client(&gw.url, &world.key).await;

    let r = call(&agent, "up__lookup", json!({"q": "INV-7"}))
        .await
        .expect("lookup");
    assert_eq!(text(&r), "found INV-7");
    let r = call(&agent, "up__lookup", json!({"q": "payroll"}))
        .await
        .expect("a tool result");
    assert_eq!(refusal_code(&r).as_deref(), Some("policy_forbidden"));
    let r = call(&agent, "up__delete_db", json!({"table": "users"}))
        .await
        .expect("a tool result");
    assert_eq!(refusal_code(&r).as_deref(), Some("approval_pending"));
    assert_eq!(
        calls.lock().expect("lock").len(),
        1,
        "only the allowed lookup"
    );

    let kinds: Vec<String> = world.events().await.into_iter().map(|(k, _)| k).collect();
    assert!(kinds.iter().any(|k| k == "policy.denied"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "policy.approval_required"),
        "{kinds:?}"
    );
    agent.cancel().await.expect("close");
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn repeated_identical_calls_are_flagged_as_a_loop() {
    let (up, _calls) = upstream().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    scope(&world).await;
    let gw = Served::start(&world, "http://127.0.0.1:9", &mcp_config(&up, 0)).await;
    let agent = client(&gw.url, &world.key).await;
    for _ in 0..3 {
        call(&agent, "up__lookup", json!({"q": "again"}))
            .await
            .expect("lookup");
    }
    let loops: Vec<Value> = world
        .events()
        .await
        .into_iter()
        .filter(|(k, _)| k == "loop.detected")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["tool"], "up/lookup");
    agent.cancel().await.expect("close");
    gw.shutdown().await;
}
