//! The guarded LLM path's overhead: the same chat completion against a mock provider on
//! loopback, sent directly with reqwest and then through `gov.llm().openai(..).chat(..)` (halt,
//! scope, the reservation committed with `llm.request` in one statement, the call, the
//! settlement committed with `llm.response`), p50 and p99 of each and of the difference.
//!
//! Three ways, each against its own direct calls: the default (the settlement runs after the
//! answer is returned, so it overlaps the next iteration: calls back to back, one agent and
//! session, as a tight agent loop makes them), `settle_inline` (`settle_in_background(false)`:
//! the settlement is waited for) and `isolated` (the default, waiting for the settlement
//! between iterations outside the timing: what one call adds when the previous one has
//! settled, as when calls are seconds apart).

use std::time::Instant;

use anyhow::{Context, Result};
use gov_sdk::llm::openai::{ChatMessage, ChatRequest, ChatResponse};
use gov_sdk::{BudgetPolicy, Governance, MicroUsd, ScopePolicy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{percentile, round};

const AGENT: &str = "bench-llm";
const CALLS: usize = 1_000;
const WARMUP: usize = 100;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;

/// A provider that answers every request at once with [`ANSWER`], keeping connections alive.
async fn mock_provider() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("could not bind the mock provider")?;
    let uri = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                    ANSWER.len()
                );
                loop {
                    // One whole request (head and content-length body), then the answer.
                    let request_end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break end + 4 + len;
                            }
                        }
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    buf.drain(..request_end);
                    if sock.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(uri)
}

fn request() -> ChatRequest {
    ChatRequest::new(
        "gpt-4o-mini",
        vec![ChatMessage::user("Say hi to the benchmark.")],
    )
    .max_tokens(64)
}

/// Runs the comparison on fresh test databases.
pub(crate) async fn bench_alone() -> Result<serde_json::Value> {
    let db = gov_testdb::TestDb::new().await;
    let gov = handle(db.url(), true).await?;
    let figures = bench(&gov).await?;
    gov.close().await;
    Ok(figures)
}

async fn handle(url: &str, settle_in_background: bool) -> Result<Governance> {
    Ok(Governance::builder()
        .database_url(url)
        .audit_secret(crate::SECRET)
        .max_connections(16)
        .settle_in_background(settle_in_background)
        .connect()
        .await?)
}

/// Runs the comparison on `gov` (whose database it writes to; it must settle in the background,
/// the default) and on a fresh database with a handle that settles inline, and returns the
/// figures.
pub(crate) async fn bench(gov: &Governance) -> Result<serde_json::Value> {
    let uri = mock_provider().await?;
    let mut out = measure(gov, &uri, Pace::BackToBack).await?;
    let isolated = measure(gov, &uri, Pace::Isolated).await?;
    let db = gov_testdb::TestDb::new().await;
    let inline = handle(db.url(), false).await?;
    let settle_inline = measure(&inline, &uri, Pace::BackToBack).await;
    inline.close().await;
    let settle_inline = settle_inline?;
    if let Some(o) = out.as_object_mut() {
        o.insert("settle_inline".into(), settle_inline);
        o.insert("isolated".into(), isolated);
        o.insert(
            "note".into(),
            "guarded = halt check (cached) + scope check (cached) + one statement committing the \
             reservation with llm.request + the call; the settlement, one statement committing \
             llm.response, runs after the answer is returned (default, back to back: it overlaps \
             the next iteration), is waited for (settle_inline), or is waited for between \
             iterations outside the timing (isolated)"
                .into(),
        );
    }
    Ok(out)
}

/// How calls follow each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Each call right after the previous one returned.
    BackToBack,
    /// Each call after the previous one's settlement (waited for outside the timing).
    Isolated,
}

/// One series of direct and guarded calls, interleaved, against the mock provider at `uri`.
async fn measure(gov: &Governance, uri: &str, pace: Pace) -> Result<serde_json::Value> {
    let session = match pace {
        Pace::BackToBack => "bench",
        Pace::Isolated => "bench-isolated",
    };
    gov.scope()
        .register(ScopePolicy::new(AGENT.parse()?).allow_apis(["openai:gpt-4o-mini"]))
        .await?;
    gov.cost()
        .register(BudgetPolicy::new(AGENT.parse()?).per_session(MicroUsd::from_cents(100_000)))
        .await?;
    let http = reqwest::Client::builder()
        .build()
        .context("could not build the HTTP client")?;
    let client = gov
        .llm()
        .openai(uri)
        .api_key("sk-bench")
        .http_client(http.clone())
        .build()
        .await?;
    let endpoint = format!("{uri}/v1/chat/completions");

    let direct_call = || async {
        let resp = http
            .post(&endpoint)
            .bearer_auth("sk-bench")
            .json(&request())
            .send()
            .await?
            .error_for_status()?;
        let body: ChatResponse = resp.json().await?;
        anyhow::ensure!(body.text() == "Hi there", "unexpected answer");
        Ok::<_, anyhow::Error>(())
    };
    let guarded_call = || async {
        let out = client.chat(AGENT, session, request()).await?;
        anyhow::ensure!(out.output.text() == "Hi there", "unexpected answer");
        Ok::<_, anyhow::Error>(())
    };

    for _ in 0..WARMUP {
        direct_call().await?;
        guarded_call().await?;
    }
    gov.llm().settled().await;
    // Interleaved, so that both see the same machine load.
    let mut direct = Vec::with_capacity(CALLS);
    let mut guarded = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        direct_call().await?;
        direct.push(t.elapsed());
        let t = Instant::now();
        guarded_call().await?;
        guarded.push(t.elapsed());
        if pace == Pace::Isolated {
            gov.llm().settled().await;
        }
    }
    direct.sort_unstable();
    guarded.sort_unstable();
    let added = |p: f64| round(percentile(&guarded, p) - percentile(&direct, p));
    gov.llm().settled().await;
    let spent = gov.cost().snapshot(AGENT, session).await?.status.session;
    anyhow::ensure!(
        spent.reserved.0 == 0,
        "a reservation was left open: {:?}",
        spent.reserved
    );
    Ok(serde_json::json!({
        "calls": CALLS,
        "direct_p50_us": round(percentile(&direct, 0.50)),
        "direct_p99_us": round(percentile(&direct, 0.99)),
        "guarded_p50_us": round(percentile(&guarded, 0.50)),
        "guarded_p99_us": round(percentile(&guarded, 0.99)),
        "added_p50_us": added(0.50),
        "added_p99_us": added(0.99),
        "settled_micros": spent.spent.0,
    }))
}
