//! Test support: a mock provider on loopback speaking the OpenAI and Anthropic wire formats
//! (plain and streamed), a database with an agent, its policies and gateway key, and a gateway
//! served on a port of its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gov_sdk::admin::Admin;
use gov_sdk::{
    BudgetPolicy, CostConfig, EventFilter, Governance, MicroUsd, ModelPrice, PriceTable,
    ScopePolicy,
};
use gov_testdb::TestDb;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

pub(crate) const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
pub(crate) const AGENT: &str = "py-agent";
/// The provider's key: only the gateway holds it; the mock checks it arrives.
pub(crate) const PROVIDER_KEY: &str = "sk-upstream-only-the-gateway-knows";

/// What the mock provider saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) requests: AtomicUsize,
    pub(crate) bodies: Mutex<Vec<Value>>,
    pub(crate) auth: Mutex<Vec<String>>,
    /// Each answer waits this long first (to hold calls in flight).
    pub(crate) delay_ms: std::sync::atomic::AtomicU64,
    /// Notified when a request arrives.
    pub(crate) arrived: tokio::sync::Notify,
}

impl Seen {
    pub(crate) fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn last_body(&self) -> Value {
        self.bodies
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// Prompt and completion tokens every answer reports.
pub(crate) const PROMPT_TOKENS: u64 = 7;
pub(crate) const COMPLETION_TOKENS: u64 = 5;

async fn record(seen: &Seen, headers: &HeaderMap, body: &Value) {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.bodies.lock().expect("lock").push(body.clone());
    let auth = headers
        .get("authorization")
        .or_else(|| headers.get("x-api-key"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.auth.lock().expect("lock").push(auth);
    seen.arrived.notify_one();
    let delay = seen.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

fn sse(events: Vec<String>) -> Response {
    let body = Body::from_stream(futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, std::io::Error>(axum::body::Bytes::from(e))),
    ));
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("x-request-id", "req-mock-stream")
        .body(body)
        .expect("response")
}

/// `gpt-429` answers a rate-limit error; `gpt-tool` calls the tool `delete_db`; any other
/// model answers "Hello!".
async fn openai_chat(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    record(&seen, &headers, &body).await;
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model == "gpt-429" {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7"), ("x-request-id", "req-mock-429")],
            axum::Json(json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})),
        )
            .into_response();
    }
    let tool = model == "gpt-tool";
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS});
    if body["stream"].as_bool() == Some(true) {
        let mut events = Vec::new();
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        if tool {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "delete_db", "arguments": "{}"}}]}),
                Value::Null,
            ));
            events.push(chunk(json!({}), json!("tool_calls")));
        } else {
            events.push(chunk(json!({"content": "Hel"}), Value::Null));
            events.push(chunk(json!({"content": "lo!"}), Value::Null));
            events.push(chunk(json!({}), json!("stop")));
        }
        if body["stream_options"]["include_usage"].as_bool() == Some(true) {
            events.push(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage})
            ));
        }
        events.push("data: [DONE]\n\n".into());
        return sse(events);
    }
    let message = if tool {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "delete_db", "arguments": "{}"}}]})
    } else {
        json!({"role": "assistant", "content": "Hello!"})
    };
    (
        [("x-request-id", "req-mock-1"), ("openai-processing-ms", "3")],
        axum::Json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": if tool { "tool_calls" } else { "stop" }}],
            "usage": usage,
        })),
    )
        .into_response()
}

async fn openai_models(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> Response {
    record(&seen, &headers, &Value::Null).await;
    axum::Json(json!({"object": "list", "data": [
        {"id": "gpt-test", "object": "model", "created": 1, "owned_by": "mock"},
        {"id": "gpt-secret", "object": "model", "created": 1, "owned_by": "mock"},
    ]}))
    .into_response()
}

async fn anthropic_messages(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    record(&seen, &headers, &body).await;
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if body["stream"].as_bool() == Some(true) {
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        return sse(vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ev("ping", json!({"type": "ping"})),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello!"}}),
            ),
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": COMPLETION_TOKENS}}),
            ),
            ev("message_stop", json!({"type": "message_stop"})),
        ]);
    }
    (
        [("request-id", "req-mock-a1")],
        axum::Json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS},
        })),
    )
        .into_response()
}

/// Starts the mock provider; its base URL and what it saw.
pub(crate) async fn mock_provider() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/models", get(openai_models))
        .route("/v1/messages", post(anthropic_messages))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the mock");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

/// One micro-USD per input token, two per output token.
pub(crate) fn prices() -> PriceTable {
    let mut prices = PriceTable::builtin();
    let p = ModelPrice {
        input: 1_000_000,
        output: 2_000_000,
        cached_input: 500_000,
    };
    for m in ["gpt-test", "gpt-tool", "gpt-429", "claude-test"] {
        prices.set("test", m, p);
    }
    prices
}

/// A governance handle on `url` with the test prices.
pub(crate) async fn connect(url: &str) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .spool(false)
        .cost(CostConfig {
            prices: prices(),
            ..CostConfig::default()
        })
        .connect()
        .await
        .expect("connect")
}

/// A database with the agent's scope (OpenAI's gpt-test, gpt-tool and gpt-429, all of
/// Anthropic; the tool `lookup`), its per-session cap and a gateway key; the operator's handle
/// and the key.
pub(crate) struct World {
    pub(crate) db: TestDb,
    pub(crate) gov: Governance,
    pub(crate) key: String,
    pub(crate) key_id: String,
}

impl World {
    pub(crate) async fn new(cap: MicroUsd) -> Self {
        let db = TestDb::new().await;
        let gov = connect(db.url()).await;
        gov.scope()
            .register(
                ScopePolicy::new(AGENT.parse().expect("agent"))
                    .allow_apis([
                        "openai:gpt-test",
                        "openai:gpt-tool",
                        "openai:gpt-429",
                        "anthropic",
                    ])
                    .allow_tools(["lookup"]),
            )
            .await
            .expect("scope");
        gov.cost()
            .register(BudgetPolicy::new(AGENT.parse().expect("agent")).per_session(cap))
            .await
            .expect("budget");
        let admin = Admin::connect(db.url()).await.expect("admin");
        let k = admin.add_gateway_key(AGENT, "test").await.expect("key");
        admin.close().await;
        Self {
            db,
            gov,
            key: k.key.expose_secret().to_owned(),
            key_id: k.id,
        }
    }

    /// The agent's events in chain order: (kind, payload).
    pub(crate) async fn events(&self) -> Vec<(String, Value)> {
        self.gov
            .audit()
            .events(&EventFilter {
                agent_id: Some(AGENT.parse().expect("agent")),
                limit: Some(10_000),
                ..EventFilter::default()
            })
            .await
            .expect("events")
            .into_iter()
            .map(|r| {
                let p = r.payload_json().expect("payload");
                (r.kind, p)
            })
            .collect()
    }

    /// What the session `s` spent, in micro-USD.
    pub(crate) async fn spent(&self, session: &str) -> i64 {
        self.gov
            .cost()
            .snapshot(AGENT, session)
            .await
            .expect("snapshot")
            .status
            .session
            .spent
            .0
    }

    /// Every chain verifies clean.
    pub(crate) async fn assert_chain_clean(&self) {
        let report = self.gov.audit().verify_chain().await.expect("verify");
        assert!(report.is_clean(), "{report:?}");
    }
}

/// A gateway serving `world` against `upstream`, connected as the application role.
pub(crate) struct Served {
    pub(crate) url: String,
    pub(crate) gov: Governance,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<gov_gateway::Result<()>>>,
}

impl Served {
    pub(crate) async fn start(world: &World, upstream: &str, extra: &str) -> Self {
        Self::start_with_env(world, upstream, extra, &|_| None).await
    }

    /// [`Served::start`], with `env` answering the variables the configuration names (besides
    /// the provider key `UP`).
    pub(crate) async fn start_with_env(
        world: &World,
        upstream: &str,
        extra: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let gov = connect(&world.db.app_url()).await;
        Self::start_on(gov, upstream, extra, env).await
    }

    /// A gateway on the handle `gov` (so a test can configure it).
    pub(crate) async fn start_on(
        gov: Governance,
        upstream: &str,
        extra: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let text = format!(
            "key_cache_secs = 0\n{extra}\n[openai]\nbase_url = \"{upstream}/v1\"\napi_key_env = \"UP\"\n[anthropic]\nbase_url = \"{upstream}\"\napi_key_env = \"UP\"\n"
        );
        let config = gov_gateway::Config::from_toml(&text, &|n| {
            if n == "UP" {
                Some(PROVIDER_KEY.to_owned())
            } else {
                env(n)
            }
        })
        .expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gov_gateway::serve(
            gov.clone(),
            config,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            url: format!("http://{addr}"),
            gov,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks the gateway to stop and waits until it has (calls settled).
    pub(crate) async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("served");
        }
    }
}

/// Waits until the gateway's own handle refuses `agent` as halted: the halt reaches its
/// cache by notification, as in every process of the SDK, so reading storage is not enough.
pub(crate) async fn until_halted(gw: &Governance, agent: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match gw.presence().assert_not_halted(agent).await {
            Err(gov_sdk::Error::Halted { .. }) => return,
            Ok(()) => {}
            Err(e) => panic!("halt check: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never saw the halt"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
