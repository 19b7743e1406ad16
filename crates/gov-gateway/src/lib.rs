//! The governance LLM gateway: OpenAI-compatible `POST /v1/chat/completions` and
//! `GET /v1/models`, and Anthropic `POST /v1/messages`, streaming and not, passed through to
//! the configured upstream with every gate of the SDK's guarded LLM path in front.
//!
//! An agent in any language points its provider SDK at the gateway and authenticates with its
//! own gateway key (`Authorization: Bearer gk1_…` or `x-api-key: gk1_…`); the provider's API key
//! lives only in the gateway's configuration. Each request then goes through
//! [`gov_sdk::llm::GuardClient`] — halt, scope on `provider` or `provider:model`, a budget
//! reservation from `max_tokens` (or `default_max_tokens`), `llm.request`, the upstream call,
//! settlement from the provider's usage (streams are asked to report it) and `llm.response` —
//! so a refused request never reaches the provider. Tools the agent may not use are removed
//! from the request's tool list; tool calls in the answer outside its scope are audited as
//! `scope.denied` and, when configured, refused.
//!
//! The gateway holds no state of its own (run as many as needed on one database: budgets are
//! reserved atomically in the database). It must never log or return a provider key, a gateway
//! key or an upstream URL, and must never let a request reach the upstream before the gates
//! passed.

mod auth;
mod config;
mod mcp;
mod proxy;
mod sse;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use gov_sdk::Governance;
use gov_sdk::llm::GuardClient;

pub use config::{
    Config, ConfigFile, McpConfig, McpFile, McpServer, McpServerFile, McpTransport, Provider,
    ProviderFile, ToolCallPolicy,
};
pub use mcp::REFUSAL_META;

/// Largest request body accepted (prompts with images can be large).
const MAX_BODY: usize = 32 << 20;

/// What can go wrong starting or running the gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration is not usable; the message names the field and the fix.
    #[error("{0}")]
    Config(String),
    /// The governance handle refused or failed.
    #[error(transparent)]
    Governance(#[from] gov_sdk::Error),
    /// Listening or serving failed.
    #[error("the gateway could not serve: {0}")]
    Io(#[from] std::io::Error),
}

/// The gateway's result type.
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

/// One upstream, with the guard client its calls go through.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) provider: Provider,
    pub(crate) guard: GuardClient,
}

/// The gateway: its configuration, the governance handle and the upstreams.
#[derive(Debug)]
pub struct Gateway {
    pub(crate) gov: Governance,
    pub(crate) config: Config,
    pub(crate) http: reqwest::Client,
    pub(crate) openai: Option<Upstream>,
    pub(crate) anthropic: Option<Upstream>,
    pub(crate) keys: auth::KeyCache,
    pub(crate) mcp: Option<Arc<mcp::McpGateway>>,
}

impl Gateway {
    /// Builds the gateway on `gov` (connected as the application role): registers a guard
    /// client per upstream in the coverage registry.
    pub async fn new(gov: Governance, config: Config) -> Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|_| GatewayError::Config("the HTTP client could not be built".into()))?;
        let upstream = async |p: &Option<Provider>| -> Result<Option<Upstream>> {
            let Some(p) = p else { return Ok(None) };
            let guard = gov
                .llm()
                .client(p.name.clone())
                .host(p.base_url.host_str().unwrap_or_default())
                .model_family(format!("gateway:{}", p.name))
                .build()
                .await?;
            Ok(Some(Upstream {
                provider: p.clone(),
                guard,
            }))
        };
        let openai = upstream(&config.openai).await?;
        let anthropic = upstream(&config.anthropic).await?;
        let mcp = config
            .mcp
            .clone()
            .map(|m| mcp::McpGateway::new(gov.clone(), m));
        Ok(Arc::new(Self {
            keys: auth::KeyCache::new(config.key_cache),
            mcp,
            gov,
            config,
            http,
            openai,
            anthropic,
        }))
    }

    /// The gateway's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        let mut router = Router::new()
            .route("/v1/chat/completions", post(proxy::chat_completions))
            .route("/v1/messages", post(proxy::messages))
            .route("/v1/models", get(proxy::models))
            .route("/healthz", get(healthz))
            .layer(DefaultBodyLimit::max(MAX_BODY));
        if let Some(m) = &self.mcp {
            let service = m.service();
            router = router.route_service(
                "/mcp",
                tower::ServiceBuilder::new()
                    .layer(axum::middleware::from_fn_with_state(
                        Arc::clone(self),
                        mcp::authenticate,
                    ))
                    .service(service),
            );
        }
        router.with_state(Arc::clone(self))
    }

    /// Ends the MCP gateway's open streams and closes its upstream connections (stdio servers
    /// are stopped).
    pub async fn shutdown_mcp(&self) {
        if let Some(m) = &self.mcp {
            m.shutdown().await;
        }
    }

    /// The governance handle.
    pub fn governance(&self) -> &Governance {
        &self.gov
    }
}

/// `200 ok` when the database answers, else `503`.
async fn healthz(State(gw): State<Arc<Gateway>>) -> (StatusCode, &'static str) {
    match gw.gov.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage unreachable\n"),
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting, lets the
/// calls in flight finish (for at most `shutdown_grace`; calls still open then end as
/// `llm.cancelled`) and waits until every call is settled.
pub async fn serve(
    gov: Governance,
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let grace = config.shutdown_grace;
    let gw = Gateway::new(gov.clone(), config).await?;
    let app = gw.router();
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    {
        let mcp_stop = gw.mcp.as_ref().map(|m| m.stop_token());
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            // MCP calls waiting for an approval end now (their requests stay pending).
            if let Some(t) = mcp_stop {
                t.cancel();
            }
            let _ = stopping.send(());
        });
        let server = std::future::IntoFuture::into_future(server);
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => r?,
            () = async {
                if stopped.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(grace_secs = grace.as_secs(),
                    "calls still in flight after the shutdown grace period end as cancelled");
            }
        }
    }
    gw.shutdown_mcp().await;
    drop(gw);
    gov.llm().settled().await;
    Ok(())
}
