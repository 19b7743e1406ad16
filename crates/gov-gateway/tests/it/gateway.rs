//! The gateway over real HTTP against a mock provider on loopback: authentication, the gates
//! before the provider, faithful pass-through (plain and streamed), settlement from usage, tool
//! governance, two gateways on one budget, and a graceful shutdown.

use std::sync::atomic::Ordering;

use gov_sdk::MicroUsd;
use serde_json::{Value, json};

use crate::support::{
    AGENT, COMPLETION_TOKENS, PROMPT_TOKENS, PROVIDER_KEY, Served, World, mock_provider,
};

/// What a settled call of the mock costs: 1 µ$ per prompt token, 2 per completion token.
const COST: i64 = (PROMPT_TOKENS + 2 * COMPLETION_TOKENS) as i64;

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "Hello"}]})
}

async fn post(url: &str, key: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-governance-session", "s-1")
        .json(body)
        .send()
        .await
        .expect("send")
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn a_call_passes_through_and_settles_from_its_usage() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;

    let resp = post(&gw.url, &world.key, &chat("gpt-test")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-mock-1");
    assert_eq!(resp.headers()["openai-processing-ms"], "3");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(body["usage"]["completion_tokens"], COMPLETION_TOKENS);

    // The provider got the gateway's key, never the agent's.
    assert_eq!(seen.count(), 1);
    let auth = seen.auth.lock().expect("lock").clone();
    assert_eq!(auth, vec![format!("Bearer {PROVIDER_KEY}")]);

    gw.gov.llm().settled().await;
    assert_eq!(world.spent("s-1").await, COST);
    let events = world.events().await;
    assert_eq!(kinds(&events), ["llm.request", "llm.response"]);
    assert_eq!(events[1].1["estimated"], false);
    // Coverage: the upstream is a wrapped client.
    let clients = world.gov.llm().clients().await.expect("clients");
    assert!(
        clients.iter().any(|c| c.provider == "openai"),
        "{clients:?}"
    );
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn bad_missing_and_revoked_keys_are_refused_before_the_provider() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;

    // No key, a made-up key, the provider's own key, a key with its secret changed.
    let mut forged = world.key.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for key in [
        "",
        "gk1_00000000000000000000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        PROVIDER_KEY,
        &forged,
    ] {
        let resp = post(&gw.url, key, &chat("gpt-test")).await;
        assert_eq!(resp.status(), 401, "{key}");
        assert_eq!(resp.headers()["x-should-retry"], "false");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    // Revoked: refused from the next request on (the test gateway caches no key).
    assert_eq!(
        post(&gw.url, &world.key, &chat("gpt-test")).await.status(),
        200
    );
    let admin = gov_sdk::admin::Admin::connect(world.db.url())
        .await
        .expect("admin");
    assert!(
        admin
            .revoke_gateway_key(&world.key_id)
            .await
            .expect("revoke")
    );
    admin.close().await;
    assert_eq!(
        post(&gw.url, &world.key, &chat("gpt-test")).await.status(),
        401
    );
    // Anthropic's header too.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &world.key)
        .json(&json!({"model": "claude-test", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(
        seen.count(),
        1,
        "only the call before the revocation reached the provider"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_halted_agent_and_an_out_of_scope_model_never_reach_the_provider() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;

    let resp = post(&gw.url, &world.key, &chat("gpt-4o")).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "scope_violation");

    world
        .gov
        .presence()
        .halt_self(AGENT, "test halt")
        .await
        .expect("halt");
    crate::support::until_halted(&gw.gov, AGENT).await;
    let resp = post(&gw.url, &world.key, &chat("gpt-test")).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "agent_halted");
    assert_eq!(seen.count(), 0);
    assert!(kinds(&world.events().await).contains(&"scope.denied"));
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn the_budget_refuses_at_the_cap_with_nothing_sent_upstream() {
    let (up, seen) = mock_provider().await;
    // 100 µ$: a call with max_tokens 100 reserves about 200 µ$.
    let world = World::new(MicroUsd(100)).await;
    let gw = Served::start(&world, &up, "").await;
    let resp = post(&gw.url, &world.key, &chat("gpt-test")).await;
    assert_eq!(resp.status(), 402);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    // With no max_tokens and no default, the call cannot be priced: refused too.
    let resp = post(
        &gw.url,
        &world.key,
        &json!({"model": "gpt-test", "messages": []}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "max_tokens_required");
    assert_eq!(seen.count(), 0);
    assert_eq!(world.spent("s-1").await, 0);
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn the_default_max_tokens_is_reserved_for_and_sent_upstream() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "default_max_tokens = 64").await;
    let client = reqwest::Client::new();
    let undeclared =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "Hello"}]});

    // OpenAI, plain and streamed: the default goes up as `max_completion_tokens`.
    assert_eq!(post(&gw.url, &world.key, &undeclared).await.status(), 200);
    let sent = seen.last_body();
    assert_eq!(sent["max_completion_tokens"], 64, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    let mut streamed = undeclared.clone();
    streamed["stream"] = json!(true);
    let resp = post(&gw.url, &world.key, &streamed).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("text");
    assert_eq!(seen.last_body()["max_completion_tokens"], 64);

    // A declared limit, in either field, goes up as it was, with nothing added.
    assert_eq!(
        post(&gw.url, &world.key, &chat("gpt-test")).await.status(),
        200
    );
    let sent = seen.last_body();
    assert_eq!(sent["max_tokens"], 100);
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    let mut declared = undeclared.clone();
    declared["max_completion_tokens"] = json!(30);
    assert_eq!(post(&gw.url, &world.key, &declared).await.status(), 200);
    let sent = seen.last_body();
    assert_eq!(sent["max_completion_tokens"], 30);
    assert!(sent.get("max_tokens").is_none(), "{sent}");

    // Anthropic: the default goes up as `max_tokens` (which its API requires).
    let resp = client
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &world.key)
        .header("x-governance-session", "s-1")
        .json(&json!({"model": "claude-test", "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(seen.last_body()["max_tokens"], 64);

    // The reservations were for the default, and say it was not declared.
    gw.gov.llm().settled().await;
    let requests: Vec<(u64, bool)> = world
        .events()
        .await
        .into_iter()
        .filter(|(k, _)| k == "llm.request")
        .map(|(_, p)| {
            (
                p["max_tokens"].as_u64().expect("max_tokens"),
                p["max_tokens_declared"].as_bool().expect("declared"),
            )
        })
        .collect();
    assert_eq!(
        requests,
        [
            (64, false),
            (64, false),
            (100, true),
            (30, true),
            (64, false)
        ]
    );
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn a_stream_passes_through_and_settles_from_the_streams_usage() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    let mut body = chat("gpt-test");
    body["stream"] = json!(true);
    let resp = post(&gw.url, &world.key, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-request-id"], "req-mock-stream");
    let text = resp.text().await.expect("text");
    // The gateway asked for usage; the agent did not, so the usage chunk is not forwarded.
    assert_eq!(seen.last_body()["stream_options"]["include_usage"], true);
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(
        text.contains("Hel") && text.contains("lo!") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );

    // Asked for by the agent: forwarded.
    body["stream_options"] = json!({"include_usage": true});
    let text = post(&gw.url, &world.key, &body)
        .await
        .text()
        .await
        .expect("text");
    assert!(text.contains("\"usage\""), "{text}");

    gw.gov.llm().settled().await;
    assert_eq!(
        world.spent("s-1").await,
        2 * COST,
        "settled from the streams' usage"
    );
    let events = world.events().await;
    assert_eq!(
        kinds(&events),
        ["llm.request", "llm.response", "llm.request", "llm.response"]
    );
    assert_eq!(events[1].1["estimated"], false);
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn anthropic_messages_plain_and_streamed() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    let client = reqwest::Client::new();
    let body = json!({"model": "claude-test", "max_tokens": 100, "messages": [{"role": "user", "content": "Hello"}]});
    let resp = client
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &world.key)
        .header("anthropic-version", "2023-06-01")
        .header("x-governance-session", "s-1")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["request-id"], "req-mock-a1");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["content"][0]["text"], "Hello!");
    assert_eq!(seen.auth.lock().expect("lock")[0], PROVIDER_KEY);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = client
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", &world.key)
        .header("x-governance-session", "s-1")
        .json(&streamed)
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(
        text.contains("event: ping\n")
            && text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );
    gw.gov.llm().settled().await;
    assert_eq!(world.spent("s-1").await, 2 * COST);
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn upstream_errors_come_back_as_the_provider_sent_them() {
    let (up, _seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    let resp = post(&gw.url, &world.key, &chat("gpt-429")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["x-request-id"], "req-mock-429");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["message"], "Rate limit reached");
    gw.gov.llm().settled().await;
    let events = world.events().await;
    assert_eq!(kinds(&events), ["llm.request", "llm.error"]);
    assert_eq!(world.spent("s-1").await, 0, "the reservation was released");
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn tools_outside_scope_are_removed_and_out_of_scope_calls_flagged() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    let tool = |n: &str| json!({"type": "function", "function": {"name": n, "parameters": {"type": "object"}}});
    let mut body = chat("gpt-test");
    body["tools"] = json!([tool("lookup"), tool("delete_db")]);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "delete_db"}});
    assert_eq!(post(&gw.url, &world.key, &body).await.status(), 200);
    let sent = seen.last_body();
    let names: Vec<&str> = sent["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(names, ["lookup"]);
    assert!(sent.get("tool_choice").is_none(), "{sent}");

    // Only hidden tools: the list goes.
    body["tools"] = json!([tool("delete_db")]);
    assert_eq!(post(&gw.url, &world.key, &body).await.status(), 200);
    assert!(seen.last_body().get("tools").is_none());

    // The answer calls delete_db: flagged (scope.denied), passed through.
    let resp = post(&gw.url, &world.key, &chat("gpt-tool")).await;
    assert_eq!(resp.status(), 200);
    let denied: Vec<Value> = world
        .events()
        .await
        .into_iter()
        .filter(|(k, _)| k == "scope.denied")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["tool"], "delete_db");
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn out_of_scope_tool_calls_are_blocked_when_configured() {
    let (up, _seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "tool_calls = \"block\"").await;
    let resp = post(&gw.url, &world.key, &chat("gpt-tool")).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "scope_violation");
    let mut streamed = chat("gpt-tool");
    streamed["stream"] = json!(true);
    let text = post(&gw.url, &world.key, &streamed)
        .await
        .text()
        .await
        .expect("text");
    assert!(!text.contains("delete_db\",\"arguments"), "{text}");
    assert!(
        text.contains("scope_violation") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    gw.gov.llm().settled().await;
    // Both calls were made and paid for; neither answer reached the agent.
    assert_eq!(world.spent("s-1").await, 2 * COST);
    gw.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn models_are_listed_as_far_as_scope_allows() {
    let (up, _seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    let v: Value = reqwest::Client::new()
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&world.key)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["gpt-test"]);
    let health = reqwest::get(format!("{}/healthz", gw.url))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn two_gateways_on_one_database_never_overspend_one_cap() {
    let (up, seen) = mock_provider().await;
    seen.delay_ms.store(20, Ordering::SeqCst);
    const CAP: i64 = 1_000_000;
    let world = World::new(MicroUsd(CAP)).await;
    let a = Served::start(&world, &up, "").await;
    let b = Served::start(&world, &up, "").await;
    // Each call reserves about 100 000 µ$ (max_tokens 50 000 at 2 µ$): at most 9 or 10 fit.
    let body = json!({"model": "gpt-test", "max_tokens": 50_000, "messages": [{"role": "user", "content": "Hello"}]});
    let mut tasks = Vec::new();
    for i in 0..64 {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let key = world.key.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            post(&url, &key, &body).await.status().as_u16()
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("join") {
            200 => ok += 1,
            402 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    a.gov.llm().settled().await;
    b.gov.llm().settled().await;
    assert_eq!(ok + refused, 64);
    assert!(refused > 0 && ok > 0, "ok {ok}, refused {refused}");
    assert_eq!(seen.count(), ok, "only accepted calls reached the provider");
    let spent = world.spent("s-1").await;
    assert!(spent <= CAP, "spent {spent} over the cap {CAP}");
    assert_eq!(spent, ok as i64 * COST);
    a.shutdown().await;
    b.shutdown().await;
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn shutdown_lets_a_call_in_flight_finish_and_settles_it() {
    let (up, seen) = mock_provider().await;
    seen.delay_ms.store(300, Ordering::SeqCst);
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    let url = gw.url.clone();
    let key = world.key.clone();
    let call = tokio::spawn(async move { post(&url, &key, &chat("gpt-test")).await.status() });
    // Shut down once the provider holds the call.
    seen.arrived.notified().await;
    assert_eq!(seen.count(), 1);
    gw.shutdown().await;
    assert_eq!(call.await.expect("join"), 200);
    assert_eq!(
        world.spent("s-1").await,
        COST,
        "settled before the gateway stopped"
    );
    world.assert_chain_clean().await;
}

#[tokio::test]
async fn identical_requests_repeated_are_a_loop_audited_or_refused() {
    let (up, seen) = mock_provider().await;
    let world = World::new(MicroUsd(1_000_000)).await;
    let gw = Served::start(&world, &up, "").await;
    // Three identical requests in one session: the third trips the detector (warn: it passes).
    for _ in 0..3 {
        assert_eq!(
            post(&gw.url, &world.key, &chat("gpt-test")).await.status(),
            200
        );
    }
    let loops: Vec<Value> = world
        .events()
        .await
        .into_iter()
        .filter(|(k, _)| k == "loop.detected")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(loops.len(), 1, "{loops:?}");
    assert_eq!(loops[0]["tool"], "llm:openai");
    assert_eq!(loops[0]["action"], "warn");
    gw.shutdown().await;

    // A gateway whose detector halts: the third identical request is refused (429) and never
    // reaches the provider, and the agent is halted.
    let gov = gov_sdk::Governance::builder()
        .database_url(world.db.app_url())
        .audit_secret(crate::support::SECRET)
        .warn_on_no_wrappers(false)
        .spool(false)
        .cost(gov_sdk::CostConfig {
            prices: crate::support::prices(),
            ..gov_sdk::CostConfig::default()
        })
        .loop_detection(gov_sdk::LoopConfig {
            action: gov_sdk::LoopAction::Halt,
            ..gov_sdk::LoopConfig::default()
        })
        .connect()
        .await
        .expect("connect");
    let gw = Served::start_on(gov, &up, "", &|_| None).await;
    let other = json!({"model": "gpt-test", "max_tokens": 100, "messages": [{"role": "user", "content": "Again"}]});
    let before = seen.count();
    for _ in 0..2 {
        assert_eq!(post(&gw.url, &world.key, &other).await.status(), 200);
    }
    let resp = post(&gw.url, &world.key, &other).await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "loop_detected");
    assert_eq!(seen.count(), before + 2);
    assert!(
        gw.gov.presence().is_halted(AGENT).await.expect("halted?"),
        "the detector halted the agent"
    );
    gw.shutdown().await;
    world.assert_chain_clean().await;
}
