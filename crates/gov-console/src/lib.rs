//! The governance web console: an axum server with server-rendered askama pages, the CSS and JS
//! of `console-web/` embedded, live events over SSE fed by the store's notifications
//! (LISTEN/NOTIFY on Postgres, the polled notification table on SQLite), and a JSON API.
//!
//! Operators sign in (argon2id, sessions stored by hash, HttpOnly SameSite=Strict cookies), then
//! see agents by presence, approve or deny gate requests, halt and resume agents, watch events
//! live, read costs, verify the chain and download the Article 12 report. Every state-changing
//! request carries the session's CSRF token; roles are enforced on the server.
//!
//! The console talks to storage only through `gov-sdk` (checked by `cargo xtask tidy`). It must
//! connect as an operator tool (the schema owner), like the CLI: deciding gates and resuming
//! agents are not granted to the application role.

mod api;
mod auth;
mod chain_status;
mod error;
mod events;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use gov_sdk::Governance;
use tower_http::set_header::SetResponseHeaderLayer;

pub use api::openapi_document;
pub use error::AppError;

/// How the console runs.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Mark the session cookie `Secure` (serve behind HTTPS). Default false, for localhost.
    pub secure_cookies: bool,
    /// How long a session lasts (default 8 hours).
    pub session_ttl: Duration,
    /// Sign-in attempts allowed per client address per minute (default 5).
    pub sign_ins_per_minute: u32,
    /// The chain whose events the live view follows (default `default`).
    pub live_chain: String,
    /// Live events held for subscribers that are behind (default 4,096); one that falls
    /// further behind is told (`event: lagged`) and caught up from the database.
    pub live_buffer: usize,
    /// How long the chain status `/health/governance` reports is reused before a health request
    /// verifies the chains again, in the background (default 5 minutes; zero verifies on every
    /// signed-in health request). An operator's explicit verification refreshes it at once.
    pub chain_check_interval: Duration,
    /// Verify every chain in the background this often, from the start (default: never). Its
    /// result is what the dashboard, the chain page and `/health/governance` show.
    pub verify_every: Option<Duration>,
}

/// The default of [`ConsoleConfig::chain_check_interval`].
pub const DEFAULT_CHAIN_CHECK_INTERVAL: Duration = Duration::from_secs(300);

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            secure_cookies: false,
            session_ttl: Duration::from_secs(8 * 3600),
            sign_ins_per_minute: 5,
            live_chain: "default".into(),
            live_buffer: events::DEFAULT_LIVE_BUFFER,
            chain_check_interval: DEFAULT_CHAIN_CHECK_INTERVAL,
            verify_every: None,
        }
    }
}

/// Shared by every request.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) gov: Governance,
    pub(crate) config: Arc<ConsoleConfig>,
    pub(crate) limiter: Arc<auth::SignInLimiter>,
    pub(crate) events: events::Broadcaster,
    pub(crate) latency: Arc<api::Latency>,
    pub(crate) verify_job: Arc<std::sync::Mutex<api::VerifyJob>>,
    pub(crate) chain_status: Arc<chain_status::ChainStatus>,
    pub(crate) coverage: Arc<api::coverage::CoverageCache>,
}

/// The console's routes over `gov`. Starts the live-event feed (one listening connection,
/// shared by every subscriber).
pub fn router(gov: Governance, config: ConsoleConfig) -> Router {
    let state = AppState {
        events: events::Broadcaster::start(
            gov.clone(),
            config.live_chain.clone(),
            config.live_buffer,
        ),
        limiter: Arc::new(auth::SignInLimiter::new(config.sign_ins_per_minute)),
        latency: Arc::new(api::Latency::default()),
        verify_job: Arc::default(),
        chain_status: Arc::new(chain_status::ChainStatus::new(config.chain_check_interval)),
        coverage: Arc::default(),
        config: Arc::new(config),
        gov,
    };
    if let Some(every) = state.config.verify_every.filter(|d| !d.is_zero()) {
        let (status, gov) = (Arc::clone(&state.chain_status), state.gov.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = status.verify_now(&gov).await
                    && e.kind() != gov_sdk::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, "console: the periodic chain verification failed");
                }
            }
        });
    }
    let csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
               connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; \
               object-src 'none'";
    let headers: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=()",
        ),
    ];
    let (api, _) = api::routes().split_for_parts();
    let mut app = Router::new()
        .merge(auth::routes())
        .merge(pages::routes())
        .merge(api)
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            pages::error_nav,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::measure,
        ))
        .with_state(state);
    for (name, value) in headers {
        app = app.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ));
    }
    app.layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ))
}

/// Serves the console on `bind` until the process is stopped.
pub async fn serve(
    gov: Governance,
    config: ConsoleConfig,
    bind: SocketAddr,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    serve_on(gov, config, listener).await
}

/// Serves the console on an already bound listener (tests bind port 0).
pub async fn serve_on(
    gov: Governance,
    config: ConsoleConfig,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let app = router(gov, config);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
