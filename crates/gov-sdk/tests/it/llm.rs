//! Governed LLM calls against mock providers on loopback speaking the real wire formats
//! (OpenAI chat completions and Anthropic messages, plain and streamed): what the chain holds,
//! what the budget counters hold to the micro-USD, and that refused calls never reach the
//! provider.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gov_sdk::llm::anthropic::{self, MessagesRequest};
use gov_sdk::llm::openai::{ChatMessage, ChatRequest};
use gov_sdk::llm::{Completion, LlmCall, PartialUsage, StreamChunk};
use gov_sdk::{
    AuditRecord, BudgetCounter, BudgetDenial, BudgetPolicy, CostConfig, Error, EventFilter,
    Governance, GovernanceBuilder, MicroUsd, ModelPrice, PriceTable, ScopePolicy, TokenUsage,
};
use gov_testdb::TestDb;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{OTHER_SECRET, SECRET};

const AGENT: &str = "agent-1";
const SESSION: &str = "s-1";
/// A key the provider echoes in its error text: it must never reach an error or the chain.
const KEY: &str = "sk-test-do-not-leak-4242";

/// One micro-USD per input token, two per output token, half a micro-USD per cached token.
fn price() -> ModelPrice {
    ModelPrice {
        input: 1_000_000,
        output: 2_000_000,
        cached_input: 500_000,
    }
}

/// A handle on `url` with the test prices.
fn builder(url: &str, default_max_tokens: Option<u64>) -> GovernanceBuilder {
    let mut prices = PriceTable::builtin();
    prices.set("openai", "gpt-test", price());
    prices.set("anthropic", "claude-test", price());
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .cost(CostConfig {
            prices,
            default_max_tokens,
            ..CostConfig::default()
        })
}

async fn setup_with(db: &TestDb, default_max_tokens: Option<u64>, cap: MicroUsd) -> Governance {
    let gov = builder(db.url(), default_max_tokens)
        .connect()
        .await
        .expect("connect");
    policies(&gov, cap).await;
    gov
}

/// The agent's scope (gpt-test of OpenAI, all of Anthropic) and its per-session cap.
async fn policies(gov: &Governance, cap: MicroUsd) {
    gov.scope()
        .register(
            ScopePolicy::new(AGENT.parse().expect("agent id"))
                .allow_apis(["openai:gpt-test", "anthropic"]),
        )
        .await
        .expect("scope policy");
    gov.cost()
        .register(BudgetPolicy::new(AGENT.parse().expect("agent id")).per_session(cap))
        .await
        .expect("budget policy");
}

async fn setup(db: &TestDb) -> Governance {
    setup_with(db, None, MicroUsd(1_000_000)).await
}

/// "Hello, world": 12 bytes, so 3 input tokens estimated; with max_tokens 100 the reservation
/// is 3 + 100 × 2 = 203 micro-USD.
const PROMPT: &str = "Hello, world";
const RESERVED: i64 = 203;

fn chat() -> ChatRequest {
    ChatRequest::new("gpt-test", vec![ChatMessage::user(PROMPT)]).max_tokens(100)
}

fn message() -> MessagesRequest {
    MessagesRequest::new("claude-test", vec![anthropic::Message::user(PROMPT)]).max_tokens(100)
}

/// Every event of the agent, in chain order: (kind, payload).
async fn chain(gov: &Governance) -> Vec<(String, Value)> {
    records(gov)
        .await
        .into_iter()
        .map(|r| {
            let p = r.payload_json().expect("payload is JSON");
            (r.kind, p)
        })
        .collect()
}

/// Every record of the agent, in chain order, once the calls that returned are settled (they
/// settle in the background by default).
async fn records(gov: &Governance) -> Vec<AuditRecord> {
    gov.llm().settled().await;
    gov.audit()
        .events(&EventFilter {
            agent_id: Some(AGENT.parse().expect("agent id")),
            limit: Some(1_000),
            ..EventFilter::default()
        })
        .await
        .expect("events")
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

/// The session's counter, once the calls that returned are settled.
async fn session_counter(gov: &Governance) -> BudgetCounter {
    gov.llm().settled().await;
    gov.cost()
        .snapshot(AGENT, SESSION)
        .await
        .expect("snapshot")
        .status
        .session
}

/// Waits until the agent's chain holds an event of `kind` (written by a task the SDK spawned
/// when a call was dropped); fails after about ten seconds.
async fn wait_for(gov: &Governance, kind: &str) -> Vec<(String, Value)> {
    for _ in 0..500 {
        let events = chain(gov).await;
        if events.iter().any(|(k, _)| k == kind) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {kind} event was recorded");
}

async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .collect()
}

fn anthropic_sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().expect("type")
            )
        })
        .collect()
}

fn openai_chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
           "model": "gpt-test-2026-01-01",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn openai_usage_chunk() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
           "model": "gpt-test-2026-01-01", "choices": [],
           "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
                     "prompt_tokens_details": {"cached_tokens": 4}}})
}

fn openai_stream(with_usage: bool) -> String {
    let mut events = vec![
        openai_chunk(json!({"role": "assistant", "content": ""}), None),
        openai_chunk(json!({"content": "Hi"}), None),
        openai_chunk(json!({"content": " there"}), None),
        openai_chunk(json!({}), Some("stop")),
    ];
    if with_usage {
        events.push(openai_usage_chunk());
    }
    sse(&events)
}

fn anthropic_stream(with_usage: bool) -> String {
    let mut start = json!({"id": "msg_1", "type": "message", "role": "assistant",
                           "model": "claude-test-2026", "content": [], "stop_reason": null});
    let mut delta = json!({"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": null}});
    if with_usage {
        start["usage"] = json!({"input_tokens": 10, "cache_read_input_tokens": 4,
                                "cache_creation_input_tokens": 0, "output_tokens": 1});
        delta["usage"] = json!({"output_tokens": 20});
    }
    anthropic_sse(&[
        json!({"type": "message_start", "message": start}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}}),
        json!({"type": "content_block_stop", "index": 0}),
        delta,
        json!({"type": "message_stop"}),
    ])
}

async fn openai_server(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

async fn anthropic_server(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(response)
        .mount(&server)
        .await;
    server
}

fn event_stream(body: String) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

async fn openai_client(gov: &Governance, base: &str) -> gov_sdk::llm::openai::OpenAiClient {
    gov.llm()
        .openai(base)
        .api_key(KEY)
        .build()
        .await
        .expect("openai client")
}

async fn anthropic_client(
    gov: &Governance,
    base: &str,
) -> gov_sdk::llm::anthropic::AnthropicClient {
    gov.llm()
        .anthropic(base)
        .api_key(KEY)
        .build()
        .await
        .expect("anthropic client")
}

/// What a settled call's events must say.
struct Settled<'a> {
    provider: &'a str,
    model: &'a str,
    stream: bool,
    /// Input, output, cached input tokens.
    usage: (u64, u64, u64),
    cost: i64,
    estimated: bool,
    finish: &'a str,
}

/// The request and response events of a settled call, checked field by field.
fn assert_settled(events: &[(String, Value)], e: Settled<'_>) {
    let Settled {
        provider,
        model,
        stream,
        usage,
        cost,
        estimated,
        finish,
    } = e;
    assert_eq!(
        kinds(events),
        ["llm.request", "llm.response"],
        "{events:#?}"
    );
    let req = &events[0].1;
    assert_eq!(req["provider"], provider);
    assert_eq!(req["model"], model);
    assert_eq!(req["stream"], stream);
    assert_eq!(req["max_tokens"], 100);
    assert_eq!(req["input_tokens_estimate"], 3);
    assert_eq!(req["reserved_micros"], RESERVED);
    let resp = &events[1].1;
    assert_eq!(resp["provider"], provider);
    assert_eq!(resp["model"], model);
    assert_eq!(resp["stream"], stream);
    assert_eq!(resp["input_tokens"], usage.0);
    assert_eq!(resp["output_tokens"], usage.1);
    assert_eq!(resp["cached_input_tokens"], usage.2);
    assert_eq!(resp["cost_micros"], cost);
    assert_eq!(resp["reserved_micros"], RESERVED);
    assert_eq!(resp["estimated"], estimated);
    assert_eq!(resp["finish_reason"], finish);
    assert!(resp["latency_ms"].is_u64(), "{resp}");
}

async fn assert_spent(gov: &Governance, spent: i64) {
    let c = session_counter(gov).await;
    assert_eq!(c.spent, MicroUsd(spent), "{c:?}");
    assert_eq!(c.reserved, MicroUsd(0), "nothing stays reserved: {c:?}");
    let day = gov.cost().snapshot(AGENT, SESSION).await.expect("snapshot");
    assert_eq!(day.status.day.spent, MicroUsd(spent));
}

#[tokio::test]
async fn openai_call_is_gated_settled_and_audited() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let server = openai_server(ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
        "model": "gpt-test-2026-01-01",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
                  "prompt_tokens_details": {"cached_tokens": 4}}
    })))
    .await;
    let client = openai_client(&gov, &server.uri()).await;
    let out = client
        .chat(AGENT, SESSION, chat())
        .await
        .expect("governed call");
    assert_eq!(out.output.text(), "Hi there");
    // 6 fresh input tokens × 1 + 4 cached × 0.5 + 20 output × 2 = 48 micro-USD.
    assert_eq!(out.receipt.cost, MicroUsd(48));
    assert_eq!(out.receipt.reserved, MicroUsd(RESERVED));
    assert!(!out.receipt.estimated);
    let events = chain(&gov).await;
    assert_settled(
        &events,
        Settled {
            provider: "openai",
            model: "gpt-test",
            stream: false,
            usage: (10, 20, 4),
            cost: 48,
            estimated: false,
            finish: "stop",
        },
    );
    assert_eq!(events[1].1["response_model"], "gpt-test-2026-01-01");
    let recs = records(&gov).await;
    assert_eq!(
        recs[1].parent_event_id,
        Some(recs[0].event_id),
        "the response points at its request"
    );
    assert_eq!(recs[0].session_id.as_deref(), Some(SESSION));
    assert_spent(&gov, 48).await;

    // The wire: the key as a bearer token, the declared max_tokens, no stream fields.
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers.get("authorization").map(|v| v.as_bytes()),
        Some(format!("Bearer {KEY}").as_bytes())
    );
    let body: Value = seen[0].body_json().expect("json body");
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["max_tokens"], 100);
    assert_eq!(
        body["messages"][0],
        json!({"role": "user", "content": PROMPT})
    );
    assert!(body.get("stream").is_none() && body.get("stream_options").is_none());
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
}

#[tokio::test]
async fn anthropic_call_is_gated_settled_and_audited() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let server = anthropic_server(ResponseTemplate::new(200).set_body_json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-2026",
        "content": [{"type": "text", "text": "Hi there"}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 4,
                  "cache_creation_input_tokens": 0, "output_tokens": 20}
    })))
    .await;
    let client = anthropic_client(&gov, &server.uri()).await;
    let out = client
        .messages(AGENT, SESSION, message())
        .await
        .expect("governed call");
    assert_eq!(out.output.text(), "Hi there");
    // Input 10 uncached + 4 cache reads = 14, of which 4 cached: 10 + 2 + 40 = 52.
    assert_eq!(out.receipt.cost, MicroUsd(52));
    let events = chain(&gov).await;
    assert_settled(
        &events,
        Settled {
            provider: "anthropic",
            model: "claude-test",
            stream: false,
            usage: (14, 20, 4),
            cost: 52,
            estimated: false,
            finish: "end_turn",
        },
    );
    assert_spent(&gov, 52).await;
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers.get("x-api-key").map(|v| v.as_bytes()),
        Some(KEY.as_bytes())
    );
    assert_eq!(
        seen[0]
            .headers
            .get("anthropic-version")
            .map(|v| v.as_bytes()),
        Some(anthropic::API_VERSION.as_bytes())
    );
    let body: Value = seen[0].body_json().expect("json body");
    assert_eq!(body["max_tokens"], 100);
    assert!(body.get("stream").is_none());
}

#[tokio::test]
async fn openai_stream_settles_with_the_usage_of_its_last_chunk() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let server = openai_server(event_stream(openai_stream(true))).await;
    let client = openai_client(&gov, &server.uri()).await;
    let mut stream = client
        .chat_stream(AGENT, SESSION, chat())
        .await
        .expect("stream opens");
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(chunk.expect("chunk").text());
    }
    assert_eq!(text, "Hi there");
    let receipt = stream.receipt().expect("settled at the end");
    assert_eq!(receipt.cost, MicroUsd(48));
    assert!(!receipt.estimated);
    let events = chain(&gov).await;
    assert_settled(
        &events,
        Settled {
            provider: "openai",
            model: "gpt-test",
            stream: true,
            usage: (10, 20, 4),
            cost: 48,
            estimated: false,
            finish: "stop",
        },
    );
    assert_spent(&gov, 48).await;
    let body: Value = requests(&server).await[0].body_json().expect("json body");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn anthropic_stream_settles_with_start_and_delta_usage() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let server = anthropic_server(event_stream(anthropic_stream(true))).await;
    let client = anthropic_client(&gov, &server.uri()).await;
    let stream = client
        .messages_stream(AGENT, SESSION, message())
        .await
        .expect("stream opens");
    let (events_seen, receipt) = stream.collect().await.expect("whole stream");
    let text: String = events_seen.iter().map(|e| e.text()).collect();
    assert_eq!(text, "Hi there");
    assert!(matches!(
        events_seen.last(),
        Some(anthropic::StreamEvent::MessageStop)
    ));
    assert_eq!(receipt.cost, MicroUsd(52));
    assert_eq!(receipt.finish_reason.as_deref(), Some("end_turn"));
    let events = chain(&gov).await;
    assert_settled(
        &events,
        Settled {
            provider: "anthropic",
            model: "claude-test",
            stream: true,
            usage: (14, 20, 4),
            cost: 52,
            estimated: false,
            finish: "end_turn",
        },
    );
    assert_eq!(events[1].1["response_model"], "claude-test-2026");
    assert_spent(&gov, 52).await;
    let body: Value = requests(&server).await[0].body_json().expect("json body");
    assert_eq!(body["stream"], true);
}

#[tokio::test]
async fn streams_without_usage_settle_at_max_tokens_marked_estimated() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let oa = openai_server(event_stream(openai_stream(false))).await;
    let an = anthropic_server(event_stream(anthropic_stream(false))).await;
    let openai = openai_client(&gov, &oa.uri()).await;
    let anthropic = anthropic_client(&gov, &an.uri()).await;

    let (_, receipt) = openai
        .chat_stream(AGENT, SESSION, chat())
        .await
        .expect("stream opens")
        .collect()
        .await
        .expect("whole stream");
    // Settled at the reservation: 3 estimated input tokens + 100 output tokens = 203.
    assert!(receipt.estimated);
    assert_eq!(receipt.cost, MicroUsd(RESERVED));
    assert_eq!(
        receipt.usage,
        TokenUsage {
            input_tokens: 3,
            output_tokens: 100,
            cached_input_tokens: 0
        }
    );
    let events = chain(&gov).await;
    assert_settled(
        &events,
        Settled {
            provider: "openai",
            model: "gpt-test",
            stream: true,
            usage: (3, 100, 0),
            cost: RESERVED,
            estimated: true,
            finish: "stop",
        },
    );
    assert_spent(&gov, RESERVED).await;

    let (_, receipt) = anthropic
        .messages_stream(AGENT, SESSION, message())
        .await
        .expect("stream opens")
        .collect()
        .await
        .expect("whole stream");
    assert!(receipt.estimated);
    assert_eq!(receipt.cost, MicroUsd(RESERVED));
    let events = chain(&gov).await;
    assert_settled(
        &events[2..],
        Settled {
            provider: "anthropic",
            model: "claude-test",
            stream: true,
            usage: (3, 100, 0),
            cost: RESERVED,
            estimated: true,
            finish: "end_turn",
        },
    );
    assert_spent(&gov, 2 * RESERVED).await;
}

#[tokio::test]
async fn provider_errors_are_audited_and_release_the_reservation() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let oa_500 = openai_server(ResponseTemplate::new(500).set_body_json(json!({
        "error": {"message": "The server had an error", "type": "server_error", "param": null, "code": null}
    })))
    .await;
    let oa_429 = openai_server(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "7")
            .set_body_json(json!({
                "error": {"message": format!("Rate limit reached for key {KEY}"), "type": "requests",
                          "param": null, "code": "rate_limit_exceeded"}
            })),
    )
    .await;
    let an_429 = anthropic_server(ResponseTemplate::new(429).set_body_json(json!({
        "type": "error", "error": {"type": "rate_limit_error", "message": format!("slow down {KEY}")}
    })))
    .await;
    let an_500 = anthropic_server(ResponseTemplate::new(500).set_body_json(json!({
        "type": "error", "error": {"type": "api_error", "message": "Internal server error"}
    })))
    .await;

    let cases: [(&MockServer, bool, u16, &str, Option<u64>); 4] = [
        (&oa_500, true, 500, "server_error", None),
        (&oa_429, true, 429, "rate_limit_exceeded", Some(7)),
        (&an_429, false, 429, "rate_limit_error", None),
        (&an_500, false, 500, "api_error", None),
    ];
    for (i, (server, is_openai, status, code, retry)) in cases.into_iter().enumerate() {
        let err = if is_openai {
            openai_client(&gov, &server.uri())
                .await
                .chat(AGENT, SESSION, chat())
                .await
                .expect_err("the provider failed")
        } else {
            anthropic_client(&gov, &server.uri())
                .await
                .messages_stream(AGENT, SESSION, message())
                .await
                .expect_err("the provider failed")
        };
        match &err {
            Error::Provider {
                kind,
                status: s,
                error_type,
                retry_after_s,
                ..
            } => {
                assert_eq!(*kind, "http_status");
                assert_eq!(*s, Some(status));
                assert_eq!(error_type.as_deref(), Some(code));
                assert_eq!(*retry_after_s, retry);
            }
            other => panic!("expected a provider error, got {other}"),
        }
        let text = err.to_string();
        assert!(!text.contains(KEY) && !text.contains("127.0.0.1"), "{text}");
        let events = chain(&gov).await;
        assert_eq!(events.len(), 2 * (i + 1), "{events:#?}");
        let (kind, p) = &events[2 * i + 1];
        assert_eq!(events[2 * i].0, "llm.request");
        assert_eq!(kind, "llm.error");
        assert_eq!(p["status"], status);
        assert_eq!(p["kind"], "http_status");
        assert_eq!(p["error_type"], code);
        assert_eq!(p["released_micros"], RESERVED);
        assert_eq!(
            p["provider"],
            if is_openai { "openai" } else { "anthropic" }
        );
        assert!(!p.to_string().contains(KEY));
        assert_spent(&gov, 0).await;
    }
}

/// A provider that sends the head of a stream and then holds the connection open, as a slow
/// model does; it counts the requests it received.
struct StallingServer {
    uri: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StallingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StallingServer {
    async fn start(first: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let uri = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (counter, first) = (counter.clone(), first.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut tmp).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    let chunk = format!("{:x}\r\n{first}\r\n", first.len());
                    if sock.write_all(head.as_bytes()).await.is_err()
                        || sock.write_all(chunk.as_bytes()).await.is_err()
                    {
                        return;
                    }
                    // Hold the stream open until the client goes away.
                    let _ = sock.read(&mut tmp).await;
                });
            }
        });
        Self {
            uri,
            requests,
            task,
        }
    }
}

#[tokio::test]
async fn a_stream_dropped_mid_way_is_audited_as_cancelled_and_released() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let oa = StallingServer::start(format!(
        "data: {}\n\n",
        openai_chunk(json!({"role": "assistant", "content": "Hi"}), None)
    ))
    .await;
    let an = StallingServer::start(anthropic_sse(&[
        json!({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test-2026",
        "content": [], "stop_reason": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    ]))
    .await;

    let mut stream = openai_client(&gov, &oa.uri)
        .await
        .chat_stream(AGENT, SESSION, chat())
        .await
        .expect("stream opens");
    let first = stream.next().await.expect("an item").expect("a chunk");
    assert_eq!(first.text(), "Hi");
    // The budget is held while the stream is open.
    assert_eq!(session_counter(&gov).await.reserved, MicroUsd(RESERVED));
    drop(stream);
    let events = wait_for(&gov, "llm.cancelled").await;
    assert_eq!(kinds(&events), ["llm.request", "llm.cancelled"]);
    let p = &events[1].1;
    assert_eq!(p["provider"], "openai");
    assert_eq!(p["stream"], true);
    assert_eq!(p["chunks"], 1);
    assert_eq!(p["released_micros"], RESERVED);
    assert_spent(&gov, 0).await;
    assert_eq!(oa.requests.load(Ordering::SeqCst), 1);

    let mut stream = anthropic_client(&gov, &an.uri)
        .await
        .messages_stream(AGENT, SESSION, message())
        .await
        .expect("stream opens");
    let first = stream.next().await.expect("an item").expect("an event");
    assert_eq!(first.usage().and_then(|u| u.input_tokens), Some(10));
    drop(stream);
    for _ in 0..500 {
        if chain(&gov).await.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = chain(&gov).await;
    assert_eq!(
        kinds(&events),
        [
            "llm.request",
            "llm.cancelled",
            "llm.request",
            "llm.cancelled"
        ]
    );
    assert_eq!(events[3].1["provider"], "anthropic");
    assert_eq!(events[3].1["released_micros"], RESERVED);
    assert_spent(&gov, 0).await;
    assert_eq!(an.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_call_over_budget_never_reaches_the_provider() {
    let db = TestDb::new().await;
    // A cap of 200 micro-USD: each call would reserve 203.
    let gov = setup_with(&db, None, MicroUsd(200)).await;
    let oa = openai_server(ResponseTemplate::new(200)).await;
    let an = anthropic_server(ResponseTemplate::new(200)).await;
    let e1 = openai_client(&gov, &oa.uri())
        .await
        .chat_stream(AGENT, SESSION, chat())
        .await
        .expect_err("over budget");
    let e2 = anthropic_client(&gov, &an.uri())
        .await
        .messages(AGENT, SESSION, message())
        .await
        .expect_err("over budget");
    for e in [&e1, &e2] {
        assert!(
            matches!(e, Error::BudgetExceeded { requested, .. } if *requested == RESERVED),
            "{e}"
        );
    }
    assert!(requests(&oa).await.is_empty(), "the provider saw a request");
    assert!(requests(&an).await.is_empty(), "the provider saw a request");
    let events = chain(&gov).await;
    assert_eq!(kinds(&events), ["budget.denied", "budget.denied"]);
    for ((_, p), model) in events.iter().zip(["gpt-test", "claude-test"]) {
        assert_eq!(p["reason"], "session_usd");
        assert_eq!(p["requested_micros"], RESERVED);
        assert_eq!(p["cap"], 200);
        assert_eq!(p["model"], model);
    }
    assert_spent(&gov, 0).await;
}

async fn open_reservations(db: &TestDb) -> i64 {
    let pool = db.admin_pool().await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM budget_reservations WHERE closed_at IS NULL")
            .fetch_one(&pool)
            .await
            .expect("count");
    pool.close().await;
    n
}

#[tokio::test]
async fn a_reservation_never_commits_without_its_llm_request() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let server = openai_server(ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
    })))
    .await;
    let client = openai_client(&gov, &server.uri()).await;
    gov.audit()
        .log(crate::support::event(AGENT, "tool.call", 1))
        .await
        .expect("log");
    // The head row is moved back behind the chain's back: the next append collides with seq 1.
    db.tamper(&["UPDATE chain_heads SET seq = 0, head_hmac = decode(repeat('00', 32), 'hex')"])
        .await;
    let err = client
        .chat(AGENT, SESSION, chat())
        .await
        .expect_err("the llm.request cannot be appended");
    assert!(
        !matches!(err, Error::Provider { .. } | Error::BudgetExceeded { .. }),
        "{err}"
    );
    assert!(
        requests(&server).await.is_empty(),
        "the provider saw a request"
    );
    // The reservation rolled back with the event: nothing is held, nothing was requested.
    assert_eq!(open_reservations(&db).await, 0);
    assert_spent(&gov, 0).await;
    assert_eq!(kinds(&chain(&gov).await), ["tool.call"]);

    // Put the head back: calls go through, and the chain verifies.
    db.tamper(&["UPDATE chain_heads h SET seq = 1, head_hmac = e.row_hmac FROM audit_events e WHERE e.seq = 1"],
    )
    .await;
    client
        .chat(AGENT, SESSION, chat())
        .await
        .expect("governed call");
    assert_eq!(
        kinds(&chain(&gov).await),
        ["tool.call", "llm.request", "llm.response"]
    );
    assert_eq!(open_reservations(&db).await, 0);
    assert_spent(&gov, 50).await;
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
}

#[tokio::test]
async fn concurrent_calls_and_logs_share_the_chain_without_losing_a_micro_usd() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let client = gov.llm().client("openai").build().await.expect("client");
    let usage = TokenUsage {
        input_tokens: 10,
        output_tokens: 20,
        cached_input_tokens: 4,
    };
    let mut tasks = Vec::new();
    for n in 0..16u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let call = LlmCall::new(AGENT, SESSION, "gpt-test")
                .max_tokens(100)
                .input_tokens(3);
            client
                .guard(call, || async move {
                    tokio::task::yield_now().await;
                    if n % 4 == 3 {
                        Err(std::io::Error::other("connection reset"))
                    } else {
                        Ok(Completion::new(n).usage(usage))
                    }
                })
                .await
                .map(|g| g.output)
        }));
    }
    // Plain events on the same chain meanwhile, through the group-committing writer.
    for n in 0..40 {
        gov.audit()
            .log(crate::support::event(AGENT, "tool.call", n))
            .await
            .expect("log");
    }
    let mut answered = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => answered += 1,
            Err(e) => assert!(matches!(e, Error::Provider { .. }), "{e}"),
        }
    }
    assert_eq!(answered, 12);
    let recs = records(&gov).await;
    let count = |kind: &str| recs.iter().filter(|r| r.kind == kind).count();
    assert_eq!(
        (
            count("llm.request"),
            count("llm.response"),
            count("llm.error"),
            count("tool.call")
        ),
        (16, 12, 4, 40)
    );
    // Every ending follows its own request in the chain.
    for (i, r) in recs.iter().enumerate() {
        if r.kind == "llm.response" || r.kind == "llm.error" {
            let parent = r.parent_event_id.expect("a parent");
            assert!(
                recs[..i]
                    .iter()
                    .any(|p| p.event_id == parent && p.kind == "llm.request"),
                "{} at seq {} does not follow its request",
                r.kind,
                r.seq
            );
        }
    }
    assert_eq!(open_reservations(&db).await, 0);
    assert_spent(&gov, 12 * 48).await;
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
}

#[tokio::test]
async fn an_llm_call_event_can_be_due_for_an_automatic_checkpoint() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .signing_key("ephemeral", "agent-1")
        .checkpoint_every(2)
        .connect()
        .await
        .expect("connect");
    gov.scope()
        .register(ScopePolicy::new(AGENT.parse().expect("agent id")).allow_apis(["openai"]))
        .await
        .expect("scope policy");
    gov.cost()
        .register(
            BudgetPolicy::new(AGENT.parse().expect("agent id")).per_session(MicroUsd(1_000_000)),
        )
        .await
        .expect("budget policy");
    let client = gov.llm().client("openai").build().await.expect("client");
    let call = LlmCall::new(AGENT, SESSION, "gpt-4o-mini").max_tokens(100);
    client
        .guard(call, || async {
            Ok::<_, std::io::Error>(Completion::new(()).usage(TokenUsage {
                input_tokens: 10,
                output_tokens: 20,
                cached_input_tokens: 0,
            }))
        })
        .await
        .expect("governed");
    // llm.request is seq 1 and llm.response seq 2, both committed with the budget change.
    gov.llm().settled().await;
    let pool = db.admin_pool().await;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM checkpoints ORDER BY seq")
        .fetch_all(&pool)
        .await
        .expect("checkpoints");
    pool.close().await;
    assert_eq!(seqs, [2]);
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
}

#[tokio::test]
async fn a_call_without_max_tokens_is_refused_unless_a_default_is_configured() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let an = anthropic_server(ResponseTemplate::new(200)).await;
    let client = anthropic_client(&gov, &an.uri()).await;
    let mut req = message();
    req.max_tokens = None;
    let err = client
        .messages(AGENT, SESSION, req.clone())
        .await
        .expect_err("no max_tokens");
    assert!(err.to_string().contains("declares no max_tokens"), "{err}");
    assert!(requests(&an).await.is_empty());
    let events = chain(&gov).await;
    assert_eq!(kinds(&events), ["budget.denied"]);
    assert_eq!(events[0].1["reason"], "no_max_tokens");

    // With a default, the call is projected from it and the default is sent to the provider.
    let db = TestDb::new().await;
    let gov = setup_with(&db, Some(100), MicroUsd(1_000_000)).await;
    let an = anthropic_server(event_stream(anthropic_stream(true))).await;
    let (_, receipt) = anthropic_client(&gov, &an.uri())
        .await
        .messages_stream(AGENT, SESSION, req)
        .await
        .expect("projected from the default")
        .collect()
        .await
        .expect("whole stream");
    assert_eq!(receipt.reserved, MicroUsd(RESERVED));
    let body: Value = requests(&an).await[0].body_json().expect("json body");
    assert_eq!(body["max_tokens"], 100);
    let events = chain(&gov).await;
    assert_eq!(events[0].1["max_tokens_declared"], false);
    assert_eq!(events[0].1["max_tokens"], 100);
}

#[tokio::test]
async fn a_halted_agent_never_reaches_the_provider() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let oa = openai_server(ResponseTemplate::new(200)).await;
    let an = anthropic_server(ResponseTemplate::new(200)).await;
    gov.presence()
        .halt_self(AGENT, "runaway spend")
        .await
        .expect("halt");
    let e1 = openai_client(&gov, &oa.uri())
        .await
        .chat(AGENT, SESSION, chat())
        .await
        .expect_err("halted");
    let e2 = anthropic_client(&gov, &an.uri())
        .await
        .messages_stream(AGENT, SESSION, message())
        .await
        .expect_err("halted");
    for e in [&e1, &e2] {
        assert!(
            matches!(e, Error::Halted { by: Some(b), .. } if b == "governance:service"),
            "{e}"
        );
    }
    assert!(requests(&oa).await.is_empty());
    assert!(requests(&an).await.is_empty());
    assert_eq!(kinds(&chain(&gov).await), ["agent.halted"]);
    assert_spent(&gov, 0).await;
}

#[tokio::test]
async fn a_model_outside_scope_never_reaches_the_provider() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    // The agent may use the whole of Anthropic but of OpenAI only gpt-test.
    let oa = openai_server(ResponseTemplate::new(200)).await;
    let err = openai_client(&gov, &oa.uri())
        .await
        .chat(
            AGENT,
            SESSION,
            ChatRequest::new("gpt-4o", vec![ChatMessage::user(PROMPT)]).max_tokens(100),
        )
        .await
        .expect_err("out of scope");
    assert!(matches!(err, Error::ScopeViolation { .. }), "{err}");
    // An OpenAI-compatible service governed under another provider name is out of scope too.
    let other = gov
        .llm()
        .openai(oa.uri())
        .provider("deepseek")
        .build()
        .await
        .expect("client");
    let err = other
        .chat(AGENT, SESSION, chat())
        .await
        .expect_err("out of scope");
    assert!(matches!(err, Error::ScopeViolation { .. }), "{err}");
    assert!(requests(&oa).await.is_empty());
    let events = chain(&gov).await;
    assert_eq!(kinds(&events), ["scope.denied", "scope.denied"]);
    assert_eq!(events[0].1["api"], "openai:gpt-4o");
    assert_eq!(events[0].1["reason"], "api_not_allowed");
    assert_eq!(events[1].1["api"], "deepseek:gpt-test");
    assert_spent(&gov, 0).await;

    // An agent with no scope policy at all is refused before Anthropic sees anything.
    let an = anthropic_server(ResponseTemplate::new(200)).await;
    let err = anthropic_client(&gov, &an.uri())
        .await
        .messages("agent-2", SESSION, message())
        .await
        .expect_err("no policy");
    assert!(matches!(err, Error::ScopeViolation { .. }), "{err}");
    assert!(requests(&an).await.is_empty());
}

/// A chunk type of some other client library.
struct Piece {
    text: &'static str,
    usage: Option<TokenUsage>,
}

impl StreamChunk for Piece {
    fn usage(&self) -> Option<PartialUsage> {
        self.usage.map(PartialUsage::from)
    }
}

#[tokio::test]
async fn the_generic_guard_governs_any_client() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let client = gov
        .llm()
        .client("openai")
        .host("llm.internal.example")
        .build()
        .await
        .expect("client");
    let call = || {
        LlmCall::new(AGENT, SESSION, "gpt-test")
            .max_tokens(100)
            .input_tokens(3)
    };
    let usage = TokenUsage {
        input_tokens: 10,
        output_tokens: 20,
        cached_input_tokens: 4,
    };

    // A plain call.
    let out = client
        .guard(call(), || async {
            Ok::<_, std::io::Error>(Completion::new("hello").usage(usage).finish_reason("stop"))
        })
        .await
        .expect("governed");
    assert_eq!(out.output, "hello");
    assert_eq!(out.receipt.cost, MicroUsd(48));
    // Its llm.response commits before the next call's llm.request, for an exact chain below.
    gov.llm().settled().await;

    // The client's own error.
    let err = client
        .guard(call(), || async {
            Err::<Completion<()>, _>(std::io::Error::other("connection reset"))
        })
        .await
        .expect_err("failed");
    assert!(
        matches!(&err, Error::Provider { kind: "client_error", error_type: Some(t), .. } if t == "connection reset"),
        "{err}"
    );

    // A stream of another library's chunks.
    let s = client
        .guard_stream(call(), || async {
            Ok::<_, std::io::Error>(futures_util::stream::iter(vec![
                Ok(Piece {
                    text: "a",
                    usage: None,
                }),
                Ok(Piece {
                    text: "b",
                    usage: Some(usage),
                }),
            ]))
        })
        .await
        .expect("stream opens");
    let (pieces, receipt) = s.collect().await.expect("whole stream");
    assert_eq!(pieces.iter().map(|p| p.text).collect::<String>(), "ab");
    assert_eq!(receipt.cost, MicroUsd(48));
    gov.llm().settled().await;

    // Refused: the call is never made.
    let made = AtomicUsize::new(0);
    let err = client
        .guard(LlmCall::new(AGENT, SESSION, "gpt-test"), || async {
            made.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Completion::new(()))
        })
        .await
        .expect_err("no max_tokens");
    assert!(matches!(err, Error::BudgetExceeded { .. }), "{err}");
    assert_eq!(made.load(Ordering::SeqCst), 0);

    // A call whose task is aborted mid-call.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let client = client.clone();
        let call = call();
        tokio::spawn(async move {
            client
                .guard(call, || async move {
                    let _ = started_tx.send(());
                    std::future::pending::<Result<Completion<()>, std::io::Error>>().await
                })
                .await
        })
    };
    started_rx.await.expect("the call started");
    task.abort();
    let events = wait_for(&gov, "llm.cancelled").await;
    assert_eq!(
        kinds(&events),
        [
            "llm.request",
            "llm.response",
            "llm.request",
            "llm.error",
            "llm.request",
            "llm.response",
            "budget.denied",
            "llm.request",
            "llm.cancelled"
        ]
    );
    assert_eq!(events[3].1["kind"], "client_error");
    assert_eq!(events[8].1["stream"], false);
    assert_spent(&gov, 96).await;
}

#[tokio::test]
async fn wrapped_clients_are_registered_with_a_host_digest_only() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    assert!(gov.llm().no_wrapper_warning().is_some());
    assert!(gov.llm().clients().await.expect("registry").is_empty());
    let server = MockServer::start().await;
    openai_client(&gov, &server.uri()).await;
    openai_client(&gov, &server.uri()).await;
    gov.llm()
        .anthropic(server.uri())
        .model_family("claude-sonnet-4")
        .build()
        .await
        .expect("client");
    gov.llm()
        .client("bedrock")
        .build()
        .await
        .expect("generic client");
    assert_eq!(gov.llm().wrapped_here(), 4);
    assert!(gov.llm().no_wrapper_warning().is_none());

    let clients = gov.llm().clients().await.expect("registry");
    let digest = gov.llm().host_digest("127.0.0.1");
    assert!(digest.starts_with("hh1_") && digest.len() == 36, "{digest}");
    let mut rows: Vec<(String, String, Option<String>, Option<String>)> = clients
        .iter()
        .map(|c| {
            (
                c.provider.clone(),
                c.wrapper.clone(),
                c.model_family.clone(),
                c.host_digest.clone(),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (
                "anthropic".into(),
                "anthropic-http".into(),
                Some("claude-sonnet-4".into()),
                Some(digest.clone())
            ),
            ("bedrock".into(), "guard".into(), None, None),
            (
                "openai".into(),
                "openai-http".into(),
                None,
                Some(digest.clone())
            ),
        ],
        "the same client twice is one row"
    );
    // The digest is keyed by the audit secret: another secret gives another digest.
    let other = Governance::builder()
        .database_url(db.url())
        .audit_secret(OTHER_SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    assert_ne!(other.llm().host_digest("127.0.0.1"), digest);
    assert!(other.llm().no_wrapper_warning().is_none(), "turned off");
    assert_eq!(
        gov.llm().host_digest("LLM.example.com."),
        gov.llm().host_digest("llm.example.com")
    );
}

/// Spans as a `tracing` layer sees them: name and fields, by span id.
#[derive(Clone, Default)]
struct Spans(Arc<std::sync::Mutex<Vec<SpanSeen>>>);

/// Span id, name, fields.
type SpanSeen = (u64, String, std::collections::BTreeMap<String, String>);

struct Fields<'a>(&'a mut std::collections::BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = std::collections::BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().expect("spans").push((
            id.into_u64(),
            attrs.metadata().name().to_owned(),
            fields,
        ));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut spans = self.0.lock().expect("spans");
        if let Some((_, _, fields)) = spans.iter_mut().rev().find(|(i, _, _)| *i == id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

#[tokio::test]
async fn each_call_and_gate_decision_is_a_span_with_genai_attributes() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let spans = Spans::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let server = anthropic_server(event_stream(anthropic_stream(true))).await;
    anthropic_client(&gov, &server.uri())
        .await
        .messages_stream(AGENT, SESSION, message())
        .await
        .expect("stream opens")
        .collect()
        .await
        .expect("whole stream");
    let openai = openai_client(&gov, &server.uri()).await;
    openai
        .chat(
            AGENT,
            SESSION,
            ChatRequest::new("gpt-4o", vec![ChatMessage::user(PROMPT)]).max_tokens(100),
        )
        .await
        .expect_err("out of scope");

    let spans = spans.0.lock().expect("spans").clone();
    let calls: Vec<_> = spans.iter().filter(|(_, n, _)| n == "gen_ai").collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let f = &calls[0].2;
    for (k, v) in [
        ("otel.name", "chat claude-test"),
        ("otel.kind", "client"),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "anthropic"),
        ("gen_ai.request.model", "claude-test"),
        ("gen_ai.request.max_tokens", "100"),
        ("gen_ai.response.model", "claude-test-2026"),
        ("gen_ai.response.finish_reasons", "end_turn"),
        ("gen_ai.usage.input_tokens", "14"),
        ("gen_ai.usage.output_tokens", "20"),
        ("governance.cost.micros", "52"),
        ("governance.usage.estimated", "false"),
        ("governance.outcome", "response"),
    ] {
        assert_eq!(f.get(k).map(String::as_str), Some(v), "{k} in {f:#?}");
    }
    let refused = &calls[1].2;
    assert_eq!(
        refused.get("governance.outcome").map(String::as_str),
        Some("refused")
    );
    assert_eq!(
        refused.get("error.type").map(String::as_str),
        Some("scope_violation")
    );
    let gates: Vec<(&str, &str)> = spans
        .iter()
        .filter(|(_, n, _)| n == "governance.gate")
        .map(|(_, _, f)| {
            (
                f.get("governance.gate.name").map_or("", String::as_str),
                f.get("governance.gate.decision").map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(
        gates,
        [
            ("halt", "allow"),
            ("scope", "allow"),
            ("budget", "allow"),
            ("halt", "allow"),
            ("scope", "deny")
        ]
    );
}

/// Counts the events whose message mentions unwrapped LLM clients.
#[derive(Clone, Default)]
struct Warnings(Arc<AtomicUsize>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = String::new();
        event.record(&mut Message(&mut text));
        if *event.metadata().level() == tracing::Level::WARN
            && text.contains("no LLM client is wrapped")
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn a_handle_that_wraps_no_client_warns_after_its_grace_period() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let warnings = Warnings::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let db = TestDb::new().await;
    let bare = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .no_wrapper_grace(Duration::ZERO)
        .connect()
        .await
        .expect("connect");
    for _ in 0..500 {
        if warnings.0.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(warnings.0.load(Ordering::SeqCst), 1, "one warning");
    assert!(bare.llm().no_wrapper_warning().is_some());
    // Once the handle wraps a client, there is nothing to warn about.
    bare.llm().client("openai").build().await.expect("client");
    assert!(bare.llm().no_wrapper_warning().is_none());
}

/// The generic call of the settlement tests: 3 input tokens estimated, 100 out at most, so 203
/// micro-USD reserved; it reports 10 in (4 cached) and 20 out, which cost 48.
fn guarded_call() -> LlmCall {
    LlmCall::new(AGENT, SESSION, "gpt-test")
        .max_tokens(100)
        .input_tokens(3)
}

const USAGE: TokenUsage = TokenUsage {
    input_tokens: 10,
    output_tokens: 20,
    cached_input_tokens: 4,
};

#[tokio::test]
async fn a_call_returns_before_it_settles_and_its_reservation_caps_the_next_call_meanwhile() {
    let db = TestDb::new().await;
    // A cap of 300: a call reserves 203 and costs 48, so a second call fits once the first is
    // settled (48 + 203), but not while the first's reservation is held (203 + 203).
    let gov = setup_with(&db, None, MicroUsd(300)).await;
    let client = gov.llm().client("openai").build().await.expect("client");
    // Another session locks the call's reservation row while the provider answers, so the
    // settlement waits in the database until that session lets go.
    let pool = db.admin_pool().await;
    let mut blocker = pool.begin().await.expect("begin");
    let lock = &mut blocker;
    let out = client
        .guard(guarded_call(), move || async move {
            sqlx::query("SELECT 1 FROM budget_reservations WHERE closed_at IS NULL FOR UPDATE")
                .fetch_one(&mut **lock)
                .await
                .expect("lock the reservation");
            Ok::<_, std::io::Error>(Completion::new("hi").usage(USAGE))
        })
        .await
        .expect("the answer is returned while the settlement waits");
    assert_eq!(out.receipt.cost, MicroUsd(48));
    assert_eq!(gov.llm().settling(), 1);
    let held = gov
        .cost()
        .snapshot(AGENT, SESSION)
        .await
        .expect("snapshot")
        .status
        .session;
    assert_eq!(
        (held.spent, held.reserved),
        (MicroUsd(0), MicroUsd(RESERVED)),
        "the whole reservation is held until the settlement commits"
    );

    // A second call meanwhile is capped by what is held, never by what the first will cost.
    let made = AtomicUsize::new(0);
    let err = client
        .guard(guarded_call(), || async {
            made.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Completion::new("no").usage(USAGE))
        })
        .await
        .expect_err("capped by the held reservation");
    assert!(
        matches!(
            err,
            Error::BudgetExceeded {
                denial: BudgetDenial::SessionUsd,
                cap: Some(300),
                used: Some(RESERVED),
                requested: RESERVED,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(made.load(Ordering::SeqCst), 0);

    // Let go: the settlement commits (after resealing: the refusal moved the head meanwhile)
    // and the counters hold the exact spend.
    blocker.rollback().await.expect("let go");
    gov.llm().settled().await;
    assert_eq!(gov.llm().settling(), 0);
    assert_spent(&gov, 48).await;
    assert_eq!(open_reservations(&db).await, 0);

    // Now the second call fits.
    client
        .guard(guarded_call(), || async {
            Ok::<_, std::io::Error>(Completion::new("hi").usage(USAGE))
        })
        .await
        .expect("fits once the first is settled");
    assert_spent(&gov, 96).await;
    let events = chain(&gov).await;
    assert_eq!(
        kinds(&events),
        [
            "llm.request",
            "budget.denied",
            "llm.response",
            "llm.request",
            "llm.response"
        ]
    );
    assert_eq!(events[2].1["cost_micros"], 48);
    assert_eq!(events[4].1["cost_micros"], 48);
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
    pool.close().await;
    gov.close().await;
}

#[tokio::test]
async fn settling_before_returning_is_an_option() {
    let db = TestDb::new().await;
    let gov = builder(db.url(), None)
        .settle_in_background(false)
        .connect()
        .await
        .expect("connect");
    policies(&gov, MicroUsd(1_000_000)).await;
    let client = gov.llm().client("openai").build().await.expect("client");
    for n in 1..=3 {
        client
            .guard(guarded_call(), || async {
                Ok::<_, std::io::Error>(Completion::new(()).usage(USAGE))
            })
            .await
            .expect("governed");
        // Read at once, without waiting for anything: the call settled before it returned.
        assert_eq!(gov.llm().settling(), 0);
        let c = gov
            .cost()
            .snapshot(AGENT, SESSION)
            .await
            .expect("snapshot")
            .status
            .session;
        assert_eq!((c.spent, c.reserved), (MicroUsd(48 * n), MicroUsd(0)));
    }
    let kinds: Vec<String> = gov
        .audit()
        .events(&EventFilter::default())
        .await
        .expect("events")
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["llm.request", "llm.response"].repeat(3));
}

#[tokio::test]
async fn close_waits_for_the_calls_still_settling() {
    let db = TestDb::new().await;
    let gov = setup(&db).await;
    let client = gov.llm().client("openai").build().await.expect("client");
    for _ in 0..5 {
        client
            .guard(guarded_call(), || async {
                Ok::<_, std::io::Error>(Completion::new(()).usage(USAGE))
            })
            .await
            .expect("governed");
    }
    gov.close().await;
    assert_eq!(gov.llm().settling(), 0);
    // Another handle finds every settlement committed.
    let other = setup(&db).await;
    assert_spent(&other, 5 * 48).await;
    // A response may follow the next call's request: each follows its own.
    let recs = records(&other).await;
    let requests: Vec<_> = recs.iter().filter(|r| r.kind == "llm.request").collect();
    let responses: Vec<_> = recs.iter().filter(|r| r.kind == "llm.response").collect();
    assert_eq!((requests.len(), responses.len(), recs.len()), (5, 5, 10));
    for resp in responses {
        let request = requests
            .iter()
            .find(|r| Some(r.event_id) == resp.parent_event_id)
            .expect("its request");
        assert!(request.seq < resp.seq);
    }
    assert_eq!(open_reservations(&db).await, 0);
}

#[tokio::test]
async fn two_handles_calling_at_once_share_the_chain_without_deadlock_or_loss() {
    let db = TestDb::new().await;
    // Two handles are two processes: each seals against the head it last saw, which the other
    // keeps moving, so calls are resealed and retried, or fall back to locking the head.
    let handles = [setup(&db).await, setup(&db).await];
    let clients = [
        handles[0]
            .llm()
            .client("openai")
            .build()
            .await
            .expect("client"),
        handles[1]
            .llm()
            .client("openai")
            .build()
            .await
            .expect("client"),
    ];
    // Taking turns: every call after the first finds its handle's head stale.
    for _ in 0..3 {
        for c in &clients {
            c.guard(guarded_call(), || async {
                Ok::<_, std::io::Error>(Completion::new(()).usage(USAGE))
            })
            .await
            .expect("governed");
        }
    }
    // All at once, in two sessions, with failures and plain events on the same chain.
    let mut tasks = Vec::new();
    for n in 0..24u64 {
        let client = clients[usize::from(n % 2 == 1)].clone();
        tasks.push(tokio::spawn(async move {
            let session = if n % 3 == 0 { "s-2" } else { SESSION };
            let call = LlmCall::new(AGENT, session, "gpt-test")
                .max_tokens(100)
                .input_tokens(3);
            client
                .guard(call, || async move {
                    tokio::task::yield_now().await;
                    if n % 4 == 3 {
                        Err(std::io::Error::other("connection reset"))
                    } else {
                        Ok(Completion::new(n).usage(USAGE))
                    }
                })
                .await
                .map(|g| g.output)
        }));
    }
    for n in 0..20 {
        handles[n % 2]
            .audit()
            .log(crate::support::event(AGENT, "tool.call", n as u64))
            .await
            .expect("log");
    }
    let mut answered = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => answered += 1,
            Err(e) => assert!(matches!(e, Error::Provider { .. }), "{e}"),
        }
    }
    assert_eq!(answered, 18);
    for h in &handles {
        h.llm().settled().await;
    }
    let recs = records(&handles[0]).await;
    let count = |kind: &str| recs.iter().filter(|r| r.kind == kind).count();
    assert_eq!(
        (
            count("llm.request"),
            count("llm.response"),
            count("llm.error"),
            count("tool.call")
        ),
        (30, 24, 6, 20)
    );
    assert_eq!(open_reservations(&db).await, 0);
    // Sessions: s-2 took n = 0, 3, 6, ..., 21 (8 calls, of which n = 3, 15 failed).
    let spent = |session: &'static str| {
        let gov = handles[1].clone();
        async move {
            gov.cost()
                .snapshot(AGENT, session)
                .await
                .expect("snapshot")
                .status
                .session
        }
    };
    let (s1, s2) = (spent(SESSION).await, spent("s-2").await);
    assert_eq!((s2.spent, s2.reserved), (MicroUsd(6 * 48), MicroUsd(0)));
    assert_eq!((s1.spent, s1.reserved), (MicroUsd(18 * 48), MicroUsd(0)));
    assert!(
        handles[1]
            .audit()
            .verify_chain()
            .await
            .expect("verify")
            .is_clean()
    );
}

/// A 32-byte value standing for a seal (these rows are written by hand, not verified).
fn fake_hmac(b: u8) -> Vec<u8> {
    vec![b; 32]
}

/// `governance_reserve_logged` of 203 micro-USD for the agent's session, with a made-up row
/// sealed as `hmac` after the head `expect`: (outcome, reason, cur_seq).
async fn reserve_logged_sql(
    pool: &sqlx::PgPool,
    chain: &str,
    expect: (i64, &[u8]),
    hmac: &[u8],
) -> (String, Option<String>, Option<i64>) {
    sqlx::query_as(
        "SELECT outcome, reason, cur_seq FROM governance_reserve_logged(gen_random_uuid(), $1, \
             $2, 'gpt-test', 203, 103, 600000000, false, $3, $4, $5, gen_random_uuid(), now(), $1, $2, \
             'llm.request', NULL, NULL, '{}', 'k1', $6, NULL, NULL, 'unsigned', now())",
    )
    .bind(AGENT)
    .bind(SESSION)
    .bind(chain)
    .bind(expect.0)
    .bind(expect.1)
    .bind(hmac)
    .fetch_one(pool)
    .await
    .expect("governance_reserve_logged")
}

/// What the functions may have changed: (rows in the chain, its head seq, reservations, the
/// session's reserved micro-USD).
async fn state(pool: &sqlx::PgPool, chain: &str) -> (i64, Option<i64>, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events WHERE chain_id = $1), \
                (SELECT seq FROM chain_heads WHERE chain_id = $1), \
                (SELECT count(*) FROM budget_reservations), \
                (SELECT coalesce(sum(reserved_micros), 0)::bigint FROM budget_counters \
                 WHERE period = 's:' || $2)",
    )
    .bind(chain)
    .bind(SESSION)
    .fetch_one(pool)
    .await
    .expect("state")
}

#[tokio::test]
async fn the_one_statement_functions_change_nothing_on_a_stale_head_or_a_refusal() {
    let db = TestDb::new().await;
    let gov = setup_with(&db, None, MicroUsd(300)).await;
    gov.close().await;
    // As the application role: it may call them.
    let pool = sqlx::PgPool::connect(&db.app_url())
        .await
        .expect("connect as the app role");
    let zero = fake_hmac(0);
    let (h1, h2) = (fake_hmac(1), fake_hmac(2));

    // A stale head caught only under the head's lock (a chain with no head row yet, expected
    // at seq 5): the reservation made before the check, and the head row, are rolled back.
    let out = reserve_logged_sql(&pool, "d", (5, &h1), &h2).await;
    assert_eq!(out, ("stale".into(), None, Some(0)));
    assert_eq!(state(&pool, "d").await, (0, None, 0, 0));

    // A new chain: reserved, appended at seq 1, the head moved.
    let out = reserve_logged_sql(&pool, "c", (0, &zero), &h1).await;
    assert_eq!(out, ("ok".into(), None, Some(1)));
    assert_eq!(state(&pool, "c").await, (1, Some(1), 1, 203));

    // A stale head (caught before reserving): nothing changes; the current head comes back.
    let row: (String, Option<i64>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT outcome, cur_seq, cur_hmac FROM governance_reserve_logged(gen_random_uuid(), \
         $1, $2, 'gpt-test', 1, 1, 600000000, false, 'c', 0, $3, gen_random_uuid(), now(), $1, \
         $2, 'llm.request', NULL, NULL, '{}', 'k1', $4, NULL, NULL, 'unsigned', now())",
    )
    .bind(AGENT)
    .bind(SESSION)
    .bind(&zero)
    .bind(&h2)
    .fetch_one(&pool)
    .await
    .expect("stale");
    assert_eq!(row, ("stale".into(), Some(1), Some(h1.clone())));
    assert_eq!(state(&pool, "c").await, (1, Some(1), 1, 203));

    // Refused (203 + 203 > 300): nothing appended, nothing reserved.
    let out = reserve_logged_sql(&pool, "c", (1, &h1), &h2).await;
    assert_eq!(out, ("refused".into(), Some("session_usd".into()), None));
    assert_eq!(state(&pool, "c").await, (1, Some(1), 1, 203));

    // Settling against a stale head changes nothing either; against the head it settles and
    // appends.
    let id: String = sqlx::query_scalar("SELECT id::text FROM budget_reservations")
        .fetch_one(&pool)
        .await
        .expect("reservation");
    let settle = |expect: i64, prev: Vec<u8>, hmac: Vec<u8>| {
        let (pool, id) = (pool.clone(), id.clone());
        async move {
            let row: (Option<String>, Option<i64>) = sqlx::query_as(
                "SELECT outcome, cur_seq FROM governance_settle_logged($1::uuid, 48, 10, 20, 4, \
                 false, 'c', $2, $3, gen_random_uuid(), now(), $4, $5, 'llm.response', NULL, \
                 NULL, '{}', 'k1', $6, NULL, NULL, 'unsigned', now())",
            )
            .bind(&id)
            .bind(expect)
            .bind(prev)
            .bind(AGENT)
            .bind(SESSION)
            .bind(hmac)
            .fetch_one(&pool)
            .await
            .expect("governance_settle_logged");
            row
        }
    };
    assert_eq!(settle(0, zero.clone(), h2.clone()).await, (None, Some(1)));
    assert_eq!(state(&pool, "c").await, (1, Some(1), 1, 203));
    assert_eq!(
        settle(1, h1.clone(), h2.clone()).await,
        (Some("settled".into()), Some(2))
    );
    assert_eq!(state(&pool, "c").await, (2, Some(2), 1, 0));
    pool.close().await;
}

#[tokio::test]
async fn an_llm_call_works_as_the_application_role() {
    let db = TestDb::new().await;
    let gov = builder(&db.app_url(), None)
        .connect()
        .await
        .expect("connect as the app role");
    policies(&gov, MicroUsd(1_000_000)).await;
    let client = gov.llm().client("openai").build().await.expect("client");
    for _ in 0..2 {
        client
            .guard(guarded_call(), || async {
                Ok::<_, std::io::Error>(Completion::new(()).usage(USAGE))
            })
            .await
            .expect("governed");
        gov.llm().settled().await;
    }
    assert_spent(&gov, 96).await;
    assert_eq!(
        kinds(&chain(&gov).await),
        ["llm.request", "llm.response"].repeat(2)
    );
}
