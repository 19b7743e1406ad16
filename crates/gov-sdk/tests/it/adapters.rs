//! The Rust ecosystem adapters (features `async-openai`, `rig`, `tower`): the clients agents
//! actually use, pointed at a mock provider on loopback, and an axum service's tool endpoints
//! behind the layer. Each goes through the SDK's guarded paths: what the chain holds, what the
//! budget counters hold, and that a refused call never reaches the provider or the handler.

#![cfg(any(feature = "async-openai", feature = "rig", feature = "tower"))]

use gov_sdk::{
    AuditRecord, BudgetCounter, BudgetPolicy, CostConfig, EventFilter, Governance, MicroUsd,
    ModelPrice, PriceTable, ScopePolicy,
};
use gov_testdb::TestDb;
use serde_json::Value;

use crate::support::SECRET;

const AGENT: &str = "agent-1";
const SESSION: &str = "s-1";
const KEY: &str = "sk-test-do-not-leak-4242";
/// "Hello, world": 12 bytes, so 3 input tokens estimated; with max_tokens 100 the reservation
/// is 3 + 100 × 2 = 203 micro-USD.
const PROMPT: &str = "Hello, world";

/// A handle with gpt-test priced at one micro-USD per input token and two per output token,
/// the agent allowed gpt-test of OpenAI and the tools `read_invoice` and `send_email`, and a
/// per-session cap of `cap`.
async fn setup(db: &TestDb, cap: MicroUsd) -> Governance {
    let mut prices = PriceTable::builtin();
    prices.set(
        "openai",
        "gpt-test",
        ModelPrice {
            input: 1_000_000,
            output: 2_000_000,
            cached_input: 500_000,
        },
    );
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .cost(CostConfig {
            prices,
            ..CostConfig::default()
        })
        .connect()
        .await
        .expect("connect");
    gov.scope()
        .register(
            ScopePolicy::new(AGENT.parse().expect("agent id"))
                .allow_apis(["openai:gpt-test"])
                .allow_tools(["read_invoice", "send_email"]),
        )
        .await
        .expect("scope policy");
    gov.cost()
        .register(BudgetPolicy::new(AGENT.parse().expect("agent id")).per_session(cap))
        .await
        .expect("budget policy");
    gov
}

/// Every event of the agent, in chain order, once settled: (kind, payload).
async fn chain(gov: &Governance) -> Vec<(String, Value)> {
    gov.llm().settled().await;
    let rows: Vec<AuditRecord> = gov
        .audit()
        .events(&EventFilter {
            agent_id: Some(AGENT.parse().expect("agent id")),
            limit: Some(1_000),
            ..EventFilter::default()
        })
        .await
        .expect("events");
    rows.into_iter()
        .map(|r| {
            let p = r.payload_json().expect("payload is JSON");
            (r.kind, p)
        })
        .collect()
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

async fn session_counter(gov: &Governance) -> BudgetCounter {
    gov.llm().settled().await;
    gov.cost()
        .snapshot(AGENT, SESSION)
        .await
        .expect("snapshot")
        .status
        .session
}

async fn verified(gov: &Governance) {
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "the chain verifies: {report:?}");
}

async fn halt(gov: &Governance) {
    let op = crate::support::operator(gov, "alice").await;
    gov.presence()
        .halt(&op, AGENT, "incident 7")
        .await
        .expect("halt");
}

#[cfg(any(feature = "async-openai", feature = "rig"))]
mod mock {
    use serde_json::{Value, json};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// An OpenAI-compatible provider answering every chat completion with `response`.
    pub(super) async fn openai(response: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(response)
            .mount(&server)
            .await;
        server
    }

    /// A whole answer: 3 tokens in, 5 out (13 micro-USD at the test prices).
    pub(super) fn completion() -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "gpt-test-2026-01-01",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hi there"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        }))
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-test-2026-01-01",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    /// A streamed answer whose last chunk carries the usage: 10 in, 20 out (50 micro-USD).
    pub(super) fn stream() -> ResponseTemplate {
        let events = [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Hi"}), None),
            chunk(json!({"content": " there"}), None),
            chunk(json!({}), Some("stop")),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": "gpt-test-2026-01-01", "choices": [],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}),
        ];
        let body: String = events
            .iter()
            .map(|e| format!("data: {e}\n\n"))
            .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
            .collect();
        ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
    }

    pub(super) async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
        server
            .received_requests()
            .await
            .expect("request recording is on")
    }
}

#[cfg(feature = "async-openai")]
mod async_openai_client {
    use async_openai::Client;
    use async_openai::config::OpenAIConfig;
    use async_openai::error::OpenAIError;
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
        CreateChatCompletionRequestArgs,
    };
    use futures_util::StreamExt as _;
    use gov_sdk::{Error, MicroUsd};
    use gov_testdb::TestDb;
    use serde_json::Value;

    use super::{AGENT, KEY, PROMPT, SESSION, chain, kinds, mock, session_counter, setup};

    async fn client(gov: &gov_sdk::Governance, base: &str) -> Client<OpenAIConfig> {
        gov.llm()
            .async_openai(AGENT, SESSION)
            .build(
                OpenAIConfig::new()
                    .with_api_base(format!("{base}/v1"))
                    .with_api_key(KEY),
            )
            .await
            .expect("governed async-openai client")
    }

    fn request() -> CreateChatCompletionRequest {
        CreateChatCompletionRequestArgs::default()
            .model("gpt-test")
            .max_completion_tokens(100u32)
            .messages([ChatCompletionRequestUserMessageArgs::default()
                .content(PROMPT)
                .build()
                .expect("message")
                .into()])
            .build()
            .expect("request")
    }

    /// The SDK error inside async-openai's, for a refusal.
    fn governance_error(e: &OpenAIError) -> &Error {
        match e {
            OpenAIError::Boxed(b) => b.downcast_ref::<Error>().expect("a governance error"),
            other => panic!("not a refusal: {other}"),
        }
    }

    #[tokio::test]
    async fn async_openai_chat_is_gated_settled_and_audited() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let server = mock::openai(mock::completion()).await;
        let openai = client(&gov, &server.uri()).await;

        let answer = openai.chat().create(request()).await.expect("answer");
        assert_eq!(
            answer.choices[0].message.content.as_deref(),
            Some("Hi there")
        );

        // The provider got the request as async-openai wrote it, with the key.
        let sent = mock::requests(&server).await;
        assert_eq!(sent.len(), 1);
        let body: Value = serde_json::from_slice(&sent[0].body).expect("JSON body");
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["max_completion_tokens"], 100);
        assert_eq!(
            sent[0]
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {KEY}").as_str())
        );

        // Settled from the usage: 3 × 1 + 5 × 2 micro-USD, nothing left reserved.
        let counter = session_counter(&gov).await;
        assert_eq!(
            (counter.spent, counter.reserved),
            (MicroUsd(13), MicroUsd(0))
        );
        let events = chain(&gov).await;
        assert_eq!(kinds(&events), ["llm.request", "llm.response"]);
        assert_eq!(events[0].1["wrapper"], "async-openai");
        assert_eq!(events[0].1["max_tokens"], 100);
        assert_eq!(events[1].1["cost_micros"], 13);
        assert_eq!(events[1].1["estimated"], false);
        super::verified(&gov).await;
        let clients = gov.llm().clients().await.expect("registry");
        assert!(clients.iter().any(|c| c.wrapper == "async-openai"));
    }

    #[tokio::test]
    async fn async_openai_over_budget_is_refused_before_the_provider() {
        let db = TestDb::new().await;
        // 100 micro-USD: less than the 203 the call reserves.
        let gov = setup(&db, MicroUsd(100)).await;
        let server = mock::openai(mock::completion()).await;
        let openai = client(&gov, &server.uri()).await;

        let err = openai.chat().create(request()).await.expect_err("refused");
        assert!(
            matches!(governance_error(&err), Error::BudgetExceeded { .. }),
            "{err}"
        );
        assert!(mock::requests(&server).await.is_empty(), "nothing was sent");
        let counter = session_counter(&gov).await;
        assert_eq!(
            (counter.spent, counter.reserved),
            (MicroUsd(0), MicroUsd(0))
        );
        assert_eq!(kinds(&chain(&gov).await), ["budget.denied"]);
        super::verified(&gov).await;
    }

    #[tokio::test]
    async fn async_openai_halted_agent_is_refused() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        super::halt(&gov).await;
        let server = mock::openai(mock::completion()).await;
        let openai = client(&gov, &server.uri()).await;

        let err = openai.chat().create(request()).await.expect_err("refused");
        assert!(
            matches!(governance_error(&err), Error::Halted { .. }),
            "{err}"
        );
        assert!(mock::requests(&server).await.is_empty(), "nothing was sent");
        assert!(!kinds(&chain(&gov).await).contains(&"llm.request"));
    }

    #[tokio::test]
    async fn async_openai_provider_errors_reach_the_caller_unchanged_and_are_audited() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let body = serde_json::json!({"error": {"type": "requests", "code": "rate_limit_exceeded",
            "message": format!("Rate limit reached for key {KEY}")}});
        let server = mock::openai(wiremock::ResponseTemplate::new(429).set_body_json(body)).await;
        let openai = client(&gov, &server.uri()).await;

        let err = openai.chat().create(request()).await.expect_err("429");
        match &err {
            OpenAIError::ApiError(api) => {
                assert_eq!(api.status_code.as_u16(), 429);
                assert_eq!(api.api_error.code.as_deref(), Some("rate_limit_exceeded"));
            }
            other => panic!("async-openai's own error for a provider answer: {other}"),
        }
        let counter = session_counter(&gov).await;
        assert_eq!(
            (counter.spent, counter.reserved),
            (MicroUsd(0), MicroUsd(0)),
            "released"
        );
        let events = chain(&gov).await;
        assert_eq!(kinds(&events), ["llm.request", "llm.error"]);
        assert_eq!(events[1].1["status"], 429);
        assert_eq!(events[1].1["error_type"], "rate_limit_exceeded");
        let text = serde_json::to_string(&events).expect("JSON");
        assert!(!text.contains(KEY), "the provider's text is not recorded");
    }

    /// One call in another session, named by the session header: governed under it, and the
    /// header is not sent to the provider.
    #[tokio::test]
    async fn async_openai_session_header_names_the_session_and_stays_home() {
        use async_openai::traits::RequestOptionsBuilder as _;
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let server = mock::openai(mock::completion()).await;
        let openai = client(&gov, &server.uri()).await;

        openai
            .chat()
            .header(gov_sdk::llm::async_openai::SESSION_HEADER, "s-2")
            .expect("header")
            .create(request())
            .await
            .expect("answer");
        let sent = mock::requests(&server).await;
        assert!(
            sent[0]
                .headers
                .get(gov_sdk::llm::async_openai::SESSION_HEADER)
                .is_none()
        );
        gov.llm().settled().await;
        let other = gov.cost().snapshot(AGENT, "s-2").await.expect("snapshot");
        assert_eq!(other.status.session.spent, MicroUsd(13));
        assert_eq!(session_counter(&gov).await.spent, MicroUsd(0));
    }

    /// An agent holding the governed client tries a request the gates do not read (here, an
    /// update of a stored completion): refused before it is sent, so enabling more of
    /// async-openai opens no ungoverned path.
    #[tokio::test]
    async fn async_openai_requests_other_than_chat_completions_are_refused() {
        use async_openai::types::chat::UpdateChatCompletionRequest;
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let server = mock::openai(mock::completion()).await;
        let openai = client(&gov, &server.uri()).await;

        let update = UpdateChatCompletionRequest {
            metadata: serde_json::json!({ "k": "v" }).into(),
        };
        let err = openai
            .chat()
            .update("chatcmpl-1", update)
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, OpenAIError::InvalidArgument(m) if m.contains("chat completions only")),
            "{err}"
        );
        assert!(mock::requests(&server).await.is_empty(), "nothing was sent");
    }

    #[tokio::test]
    async fn async_openai_stream_settles_from_the_usage_chunk_it_asked_for() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let server = mock::openai(mock::stream()).await;
        let openai = client(&gov, &server.uri()).await;

        let mut stream = openai
            .chat()
            .create_stream(request())
            .await
            .expect("stream");
        let mut text = String::new();
        let mut chunks = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("chunk");
            chunks += 1;
            assert!(
                !chunk.choices.is_empty(),
                "the usage chunk the caller did not ask for is not passed on"
            );
            if let Some(t) = chunk.choices[0].delta.content.as_deref() {
                text.push_str(t);
            }
        }
        assert_eq!((text.as_str(), chunks), ("Hi there", 4));

        let sent = mock::requests(&server).await;
        let body: Value = serde_json::from_slice(&sent[0].body).expect("JSON body");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);

        // 10 × 1 + 20 × 2 micro-USD, from the last chunk's usage.
        let counter = session_counter(&gov).await;
        assert_eq!(
            (counter.spent, counter.reserved),
            (MicroUsd(50), MicroUsd(0))
        );
        let events = chain(&gov).await;
        assert_eq!(kinds(&events), ["llm.request", "llm.response"]);
        assert_eq!(events[0].1["stream"], true);
        assert_eq!(events[1].1["estimated"], false);
        super::verified(&gov).await;
    }
}

#[cfg(feature = "tower")]
mod tower_layer {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use gov_sdk::tower::{APPROVAL_HEADER, ApprovalMode, GovernLayer};
    use gov_sdk::{Contract, MicroUsd};
    use gov_testdb::TestDb;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::{AGENT, SESSION, chain, kinds, setup};

    /// A tool service: `read_invoice`, `send_email` and `delete_customer`, counting the calls
    /// that reach a handler.
    fn app(layer: GovernLayer, reached: Arc<AtomicUsize>) -> Router {
        let handler = move |body: String| {
            let reached = reached.clone();
            async move {
                reached.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({ "ok": true, "echo": body }))
            }
        };
        Router::new()
            .route("/tools/read_invoice", post(handler.clone()))
            .route("/tools/send_email", post(handler.clone()))
            .route("/tools/delete_customer", post(handler))
            .layer(layer)
    }

    fn call(tool: &str) -> http::request::Builder {
        Request::post(format!("/tools/{tool}"))
            .header("x-governance-agent", AGENT)
            .header("x-governance-session", SESSION)
            .header("content-type", "application/json")
    }

    async fn send(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, body)
    }

    fn body(tool: &str, args: &Value) -> Request<Body> {
        call(tool)
            .body(Body::from(args.to_string()))
            .expect("request")
    }

    #[tokio::test]
    async fn tower_allowed_tool_passes_and_is_audited() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let reached = Arc::new(AtomicUsize::new(0));
        let app = app(GovernLayer::new(gov.clone()), reached.clone());

        let (status, _, answer) = send(&app, body("read_invoice", &json!({"id": "INV-7"}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            answer["echo"], r#"{"id":"INV-7"}"#,
            "the handler got the body"
        );
        assert_eq!(reached.load(Ordering::SeqCst), 1);
        let events = chain(&gov).await;
        assert_eq!(kinds(&events), ["tool.started", "tool.finished"]);
        assert_eq!(events[1].1["tool"], "read_invoice");
        assert_eq!(events[1].1["ok"], true);
        super::verified(&gov).await;
    }

    #[tokio::test]
    async fn tower_out_of_scope_tool_is_refused_with_403_before_the_handler() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let reached = Arc::new(AtomicUsize::new(0));
        let app = app(GovernLayer::new(gov.clone()), reached.clone());

        let (status, headers, answer) =
            send(&app, body("delete_customer", &json!({"id": "C-1"}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(answer["error"]["code"], "scope_violation");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("delete_customer")),
            "{answer}"
        );
        assert_eq!(reached.load(Ordering::SeqCst), 0, "the handler never ran");
        let events = chain(&gov).await;
        assert_eq!(kinds(&events), ["scope.denied"]);
        assert_eq!(events[0].1["tool"], "delete_customer");

        // A request that names no agent is refused as such, not run.
        let req = Request::post("/tools/read_invoice")
            .header("x-governance-session", SESSION)
            .body(Body::empty())
            .expect("request");
        let (status, _, answer) = send(&app, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["error"]["code"], "agent_required");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn tower_halted_agent_is_refused() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        super::halt(&gov).await;
        let reached = Arc::new(AtomicUsize::new(0));
        let app = app(GovernLayer::new(gov.clone()), reached.clone());

        let (status, _, answer) = send(&app, body("read_invoice", &json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(answer["error"]["code"], "agent_halted");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        assert!(!kinds(&chain(&gov).await).contains(&"tool.started"));
    }

    #[tokio::test]
    async fn tower_gated_tool_waits_for_an_operator_and_the_approval_is_used_once() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let reached = Arc::new(AtomicUsize::new(0));
        let app = app(
            GovernLayer::new(gov.clone()).require_approval("send_email"),
            reached.clone(),
        );
        let args = json!({"to": "cfo@example.com", "subject": "Q3"});

        // First call: pending, with the request id to repeat it with.
        let (status, headers, answer) = send(&app, body("send_email", &args)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(answer["status"], "approval_pending");
        let id = answer["request_id"]
            .as_str()
            .expect("request id")
            .to_owned();
        assert_eq!(headers[APPROVAL_HEADER], id.as_str());
        assert_eq!(reached.load(Ordering::SeqCst), 0);

        // Repeated before a decision: still pending.
        let repeat = |args: &Value| {
            call("send_email")
                .header(APPROVAL_HEADER, id.as_str())
                .body(Body::from(args.to_string()))
                .expect("request")
        };
        let (status, _, _) = send(&app, repeat(&args)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(reached.load(Ordering::SeqCst), 0);

        // An operator approves; the same call goes through, once.
        let op = crate::support::operator(&gov, "alice").await;
        gov.gates()
            .approve(&op, id.parse().expect("uuid"), "expected report")
            .await
            .expect("approve");
        // Other arguments under the same approval: refused.
        let (status, _, answer) = send(&app, repeat(&json!({"to": "x@evil.example"}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        let (status, _, answer) = send(&app, repeat(&args)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(reached.load(Ordering::SeqCst), 1);
        let (status, _, answer) = send(&app, repeat(&args)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "used once: {answer}");
        assert_eq!(reached.load(Ordering::SeqCst), 1);

        let events = chain(&gov).await;
        let kinds = kinds(&events);
        for kind in [
            "gate.requested",
            "gate.approved",
            "gate.consumed",
            "tool.started",
            "tool.finished",
        ] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
        super::verified(&gov).await;
    }

    /// A Cedar `@approval` permit that depends on the arguments: a small refund passes, a
    /// large one waits for a person, with no approval configured on the layer.
    #[cfg(feature = "cedar")]
    #[tokio::test]
    async fn tower_cedar_approval_on_the_arguments_asks_a_person() {
        use gov_sdk::ScopePolicy;
        use gov_sdk::policies::{PolicySet, Slot};
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        gov.scope()
            .register(ScopePolicy::new(AGENT.parse().expect("agent id")).allow_tools(["refund"]))
            .await
            .expect("scope policy");
        let set = PolicySet::parse(
            r#"
            @id("tools")
            permit (principal, action == Governance::Action::"tool_call", resource);
            @id("large-refund")
            @approval("refunds over 1,000 USD need a second person")
            permit (principal, action == Governance::Action::"tool_call", resource == Governance::Tool::"refund")
            when { context.arguments has amount && context.arguments.amount > 1000 };
            "#,
            r#"{ "arguments": { "amount": "long" } }"#,
        )
        .expect("valid policies");
        gov.policies()
            .apply(Slot::Enforced, Some(&set), "alice")
            .await
            .expect("apply");
        let reached = Arc::new(AtomicUsize::new(0));
        let handler = {
            let reached = reached.clone();
            move || {
                let reached = reached.clone();
                async move {
                    reached.fetch_add(1, Ordering::SeqCst);
                    "refunded"
                }
            }
        };
        let app = Router::new()
            .route("/tools/refund", post(handler))
            .layer(GovernLayer::new(gov.clone()));

        let (status, _, _) = send(&app, body("refund", &json!({"amount": 10}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reached.load(Ordering::SeqCst), 1);
        let (status, _, answer) = send(&app, body("refund", &json!({"amount": 5000}))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["status"], "approval_pending");
        assert_eq!(reached.load(Ordering::SeqCst), 1, "the large refund waits");
        let kinds = kinds(&chain(&gov).await).join(" ");
        assert!(kinds.contains("policy.approval_required"), "{kinds}");
        assert!(kinds.contains("gate.requested"), "{kinds}");
    }

    #[tokio::test]
    async fn tower_wait_mode_holds_the_call_until_an_operator_decides() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let reached = Arc::new(AtomicUsize::new(0));
        let app = app(
            GovernLayer::new(gov.clone())
                .contract("send_email", Contract::new())
                .require_approval("send_email")
                .approval_mode(ApprovalMode::Wait(Duration::from_secs(30))),
            reached.clone(),
        );
        let args = json!({"to": "cfo@example.com"});
        let waiting = tokio::spawn({
            let app = app.clone();
            let req = body("send_email", &args);
            async move { send(&app, req).await }
        });
        // The operator decides once the request is in the queue.
        let op = crate::support::operator(&gov, "alice").await;
        let pending = loop {
            let p = gov.gates().pending().await.expect("pending");
            if let Some(r) = p.into_iter().next() {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        gov.gates()
            .approve(&op, pending.id, "ok")
            .await
            .expect("approve");
        let (status, _, answer) = waiting.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }
}

#[cfg(feature = "rig")]
mod rig_model {
    use gov_sdk::llm::rig::GovernedModel;
    use gov_sdk::{Error, MicroUsd};
    use gov_testdb::TestDb;
    use rig_core::completion::CompletionRequest;
    use rig_core::providers::openai::OpenAIConfig;
    use serde_json::Value;

    use super::{AGENT, KEY, PROMPT, SESSION, chain, kinds, mock, session_counter, setup};

    async fn model(gov: &gov_sdk::Governance, base: &str) -> GovernedModel {
        let chat = OpenAIConfig::new(KEY)
            .with_base_url(format!("{base}/v1"))
            .client()
            .chat("gpt-test");
        gov.llm()
            .rig(chat, AGENT, SESSION)
            .build()
            .await
            .expect("governed rig model")
    }

    fn request() -> CompletionRequest {
        let mut r = CompletionRequest::new(PROMPT);
        r.max_tokens = Some(100);
        r
    }

    #[tokio::test]
    async fn rig_completion_is_gated_settled_and_audited() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let server = mock::openai(mock::completion()).await;
        let model = model(&gov, &server.uri()).await;
        assert_eq!(model.provider(), "openai");

        let answer = model.call(request()).await.expect("answer");
        assert_eq!(answer.output.usage.output_tokens, Some(5));
        assert_eq!(answer.receipt.cost, MicroUsd(13));
        let sent = mock::requests(&server).await;
        assert_eq!(sent.len(), 1);
        let body: Value = serde_json::from_slice(&sent[0].body).expect("JSON body");
        assert_eq!(body["model"], "gpt-test");

        let counter = session_counter(&gov).await;
        assert_eq!(
            (counter.spent, counter.reserved),
            (MicroUsd(13), MicroUsd(0))
        );
        let events = chain(&gov).await;
        assert_eq!(kinds(&events), ["llm.request", "llm.response"]);
        assert_eq!(events[0].1["wrapper"], "rig");
        assert_eq!(events[1].1["estimated"], false);
        super::verified(&gov).await;
    }

    #[tokio::test]
    async fn rig_over_budget_and_halted_calls_never_reach_the_provider() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(100)).await;
        let server = mock::openai(mock::completion()).await;
        let model = model(&gov, &server.uri()).await;

        let err = model.call(request()).await.expect_err("over budget");
        assert!(matches!(err, Error::BudgetExceeded { .. }), "{err}");
        super::halt(&gov).await;
        let err = model.call(request()).await.expect_err("halted");
        assert!(matches!(err, Error::Halted { .. }), "{err}");
        assert!(mock::requests(&server).await.is_empty(), "nothing was sent");
        let counter = session_counter(&gov).await;
        assert_eq!(
            (counter.spent, counter.reserved),
            (MicroUsd(0), MicroUsd(0))
        );
        assert!(!kinds(&chain(&gov).await).contains(&"llm.request"));
        super::verified(&gov).await;
    }

    #[tokio::test]
    async fn rig_stream_settles_when_it_ends() {
        let db = TestDb::new().await;
        let gov = setup(&db, MicroUsd(1_000_000)).await;
        let server = mock::openai(mock::stream()).await;
        let model = model(&gov, &server.uri()).await;

        let mut stream = model.stream(request()).await.expect("stream");
        let mut items = 0;
        while let Some(item) = stream.next().await {
            item.expect("item");
            items += 1;
        }
        assert!(items > 0);
        let sent = mock::requests(&server).await;
        let body: Value = serde_json::from_slice(&sent[0].body).expect("JSON body");
        assert_eq!(
            body["stream_options"]["include_usage"], true,
            "rig asks for usage"
        );
        let receipt = stream.receipt().expect("settled").clone();
        assert_eq!(receipt.usage.output_tokens, 20);
        assert!(!receipt.estimated);
        let events = chain(&gov).await;
        assert_eq!(kinds(&events), ["llm.request", "llm.response"]);
        assert_eq!(events[0].1["stream"], true);
        super::verified(&gov).await;
    }
}
