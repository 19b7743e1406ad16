//! The MCP gateway's added latency: the same `tools/call` (a tool that answers at once) sent by
//! an rmcp client straight to an MCP server on loopback, then through the gateway's `/mcp`
//! (gateway key, halt, scope, the governed tool runner with `tool.started` and `tool.finished`
//! committed, the upstream call), p50 and p99 of each and of the difference. Calls run back to
//! back with distinct arguments (so the loop detector stays quiet), on a fresh test database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gov_sdk::admin::Admin;
use gov_sdk::{Governance, ScopePolicy};
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
use secrecy::ExposeSecret as _;

use crate::{percentile, round};

const AGENT: &str = "bench-mcp";
const CALLS: usize = 500;
const WARMUP: usize = 50;

/// An MCP server with one tool, `echo`, that answers at once.
#[derive(Debug, Clone)]
struct Echo;

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, rmcp::ErrorData> {
        let schema = serde_json::Map::from_iter([("type".to_owned(), "object".into())]);
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "echo",
            "answers at once",
            Arc::new(schema),
        )]))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, rmcp::ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text("ok")]).into())
    }
}

async fn serve_router(app: axum::Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("could not bind a loopback port")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

async fn client(url: String, key: Option<String>) -> Result<RunningService<RoleClient, ()>> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(k) = key {
        config = config.auth_header(k);
    }
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .context("could not connect an MCP client")
}

/// Latencies of `CALLS` calls of `tool` (after `WARMUP`), sorted.
async fn timed(c: &RunningService<RoleClient, ()>, tool: &str) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let mut p = CallToolRequestParams::new(tool.to_owned());
        p.arguments = Some(serde_json::Map::from_iter([("i".to_owned(), i.into())]));
        let t = Instant::now();
        let r = c.call_tool(p).await.context("a tool call failed")?;
        let took = t.elapsed();
        anyhow::ensure!(r.is_error != Some(true), "a tool call was refused: {r:?}");
        if i >= WARMUP {
            samples.push(took);
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

/// Runs the comparison on a fresh test database and returns the figures.
pub(crate) async fn bench() -> Result<serde_json::Value> {
    let db = gov_testdb::TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(crate::SECRET)
        .connect()
        .await?;
    gov.scope()
        .register(ScopePolicy::new(AGENT.parse()?).allow_tools(["up/echo"]))
        .await?;
    let admin = Admin::connect(db.url()).await?;
    let key = admin.add_gateway_key(AGENT, "bench").await?;
    admin.close().await;

    let upstream = StreamableHttpService::new(
        || Ok(Echo),
        Arc::new(NeverSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(false),
    );
    let up = serve_router(axum::Router::new().route_service("/mcp", upstream)).await?;
    let config = gov_gateway::Config::from_toml(
        &format!("[mcp]\n[mcp.servers.up]\nurl = \"{up}/mcp\"\n"),
        &|_| None,
    )?;
    let gw = gov_gateway::Gateway::new(gov.clone(), config).await?;
    let gw_url = serve_router(gw.router()).await?;

    let direct = client(format!("{up}/mcp"), None).await?;
    let through = client(
        format!("{gw_url}/mcp"),
        Some(key.key.expose_secret().to_owned()),
    )
    .await?;
    let d = timed(&direct, "echo").await?;
    let g = timed(&through, "up__echo").await?;
    let _ = direct.cancel().await;
    let _ = through.cancel().await;
    gw.shutdown_mcp().await;
    gov.close().await;

    let (d50, d99) = (percentile(&d, 0.50), percentile(&d, 0.99));
    let (g50, g99) = (percentile(&g, 0.50), percentile(&g, 0.99));
    Ok(serde_json::json!({
        "calls": CALLS,
        "direct_p50_us": round(d50),
        "direct_p99_us": round(d99),
        "gateway_p50_us": round(g50),
        "gateway_p99_us": round(g99),
        "added_p50_us": round(g50 - d50),
        "added_p99_us": round(g99 - d99),
    }))
}
