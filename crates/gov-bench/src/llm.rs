//! The guarded LLM path's overhead: the same chat completion against a mock provider on
//! loopback, sent directly with reqwest and then through `gov.llm().openai(..).chat(..)` (halt,
//! scope, the reservation committed with `llm.request`, the call, the settlement committed with
//! `llm.response`), p50 and p99 of each and of the difference.

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

/// Runs the comparison on a fresh test database.
pub(crate) async fn bench_alone() -> Result<serde_json::Value> {
    let db = gov_testdb::TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(crate::SECRET)
        .max_connections(16)
        .connect()
        .await?;
    let figures = bench(&gov).await?;
    gov.close().await;
    Ok(figures)
}

/// Runs the comparison on `gov` (whose database it writes to) and returns the figures.
pub(crate) async fn bench(gov: &Governance) -> Result<serde_json::Value> {
    let uri = mock_provider().await?;
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
        .openai(&uri)
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
        let out = client.chat(AGENT, "bench", request()).await?;
        anyhow::ensure!(out.output.text() == "Hi there", "unexpected answer");
        Ok::<_, anyhow::Error>(())
    };

    for _ in 0..WARMUP {
        direct_call().await?;
        guarded_call().await?;
    }
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
    }
    direct.sort_unstable();
    guarded.sort_unstable();
    let added = |p: f64| round(percentile(&guarded, p) - percentile(&direct, p));
    let spent = gov
        .cost()
        .snapshot(AGENT, "bench")
        .await?
        .status
        .session
        .spent;
    Ok(serde_json::json!({
        "calls": CALLS,
        "direct_p50_us": round(percentile(&direct, 0.50)),
        "direct_p99_us": round(percentile(&direct, 0.99)),
        "guarded_p50_us": round(percentile(&guarded, 0.50)),
        "guarded_p99_us": round(percentile(&guarded, 0.99)),
        "added_p50_us": added(0.50),
        "added_p99_us": added(0.99),
        "settled_micros": spent.0,
        "note": "guarded = halt check (cached) + scope check (cached) + one transaction committing the reservation with llm.request + the call + one transaction committing the settlement with llm.response",
    }))
}
