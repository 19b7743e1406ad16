//! Connections to the upstream MCP servers: streamable HTTP (with an optional bearer token) or
//! a stdio server the gateway spawns with a cleared environment (only the variables the
//! configuration names reach it, never the gateway's database URL or audit secret).
//!
//! A connection is made on first use and kept; when it fails it is dropped and made again on
//! the next use. Errors are short sentences naming the server, never its URL or token; a
//! server's own JSON-RPC refusal message is passed on.

use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject, Tool};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, ServiceExt as _};
use secrecy::ExposeSecret as _;

use crate::config::{McpServer, McpTransport};

/// One upstream server and its connection, if made.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) server: McpServer,
    client: tokio::sync::Mutex<Option<RunningService<RoleClient, ()>>>,
}

impl Upstream {
    pub(crate) fn new(server: McpServer) -> Self {
        Self {
            server,
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<RunningService<RoleClient, ()>, String> {
        let name = &self.server.name;
        match &self.server.transport {
            McpTransport::Http { url, bearer } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                if let Some(token) = bearer {
                    config = config.auth_header(token.expose_secret().to_owned());
                }
                let transport = StreamableHttpClientTransport::from_config(config);
                ().serve(transport)
                    .await
                    .map_err(|_| format!("the MCP server {name} could not be reached"))
            }
            McpTransport::Stdio { program, args, env } => {
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args).env_clear().envs(env.iter().cloned());
                let transport = TokioChildProcess::new(cmd)
                    .map_err(|e| format!("the MCP server {name} could not be started: {e}"))?;
                ().serve(transport)
                    .await
                    .map_err(|_| format!("the MCP server {name} did not start as an MCP server"))
            }
        }
    }

    /// A live connection's peer, connecting when there is none.
    async fn peer(&self) -> Result<Peer<RoleClient>, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.peer().clone());
        }
        let c = self.connect().await?;
        let peer = c.peer().clone();
        *slot = Some(c);
        Ok(peer)
    }

    /// Drops the connection (it is made again on the next use).
    async fn reset(&self) {
        let old = self.client.lock().await.take();
        if let Some(mut c) = old {
            let _ = c.close().await;
        }
    }

    /// Every tool the server lists.
    pub(crate) async fn tools(&self) -> Result<Vec<Tool>, String> {
        let peer = self.peer().await?;
        match peer.list_all_tools().await {
            Ok(t) => Ok(t),
            Err(_) => {
                self.reset().await;
                Err(format!(
                    "the MCP server {} did not list its tools",
                    self.server.name
                ))
            }
        }
    }

    /// Calls `tool` with `args`: the server's result (which may be a tool error), or why the
    /// server could not answer.
    pub(crate) async fn call(
        &self,
        tool: &str,
        args: Option<JsonObject>,
    ) -> Result<CallToolResult, String> {
        let peer = self.peer().await?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = args;
        match peer.call_tool(params).await {
            Ok(r) => Ok(r),
            Err(rmcp::ServiceError::McpError(e)) => Err(format!(
                "the MCP server {} refused the call: {}",
                self.server.name, e.message
            )),
            Err(_) => {
                self.reset().await;
                Err(format!(
                    "the MCP server {} could not be reached",
                    self.server.name
                ))
            }
        }
    }

    /// Closes the connection (a stdio server is stopped).
    pub(crate) async fn close(&self) {
        self.reset().await;
    }
}
