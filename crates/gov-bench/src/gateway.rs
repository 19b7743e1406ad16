//! The LLM gateway's added latency and throughput (`gateway`; `gov-bench gateway` runs it
//! alone), side by side with LiteLLM's proxy in the same run (`litellm.rs`).
//!
//! A mock OpenAI-compatible provider on loopback answers chat completions at once, plain or
//! streamed (SSE, the first event at once, the rest 2 ms later, the usage chunk when asked for).
//! The gateway (`gov_gateway::serve`, what `governance gateway serve` runs, on a fresh test
//! database as the application role, with a gateway key and a budget cap) sits in front of it.
//! Each figure interleaves direct calls to the mock with calls through the proxy, so both see
//! the same load: the added latency of a whole plain answer and the added time to the first
//! streamed event, p50 and p99, with 1 and with 64 concurrent clients (each client its own
//! session), and requests per second with 64 clients. Every request is distinct (a counter in
//! the prompt), so the loop detector stays quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gov_sdk::admin::Admin;
use gov_sdk::{BudgetPolicy, Governance, MicroUsd, ScopePolicy};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{percentile, round};

const AGENT: &str = "bench-gateway";
/// A model with a built-in price, as the gateway needs and LiteLLM knows.
pub(crate) const MODEL: &str = "gpt-4o-mini";
/// The mock provider's key (what the gateway and LiteLLM send it).
pub(crate) const PROVIDER_KEY: &str = "sk-bench-provider";

/// The aims of issue 19, in µs.
const AIM_ADDED_P50_US: f64 = 1_000.0;
const AIM_ADDED_TTFT_P50_US: f64 = 500.0;

/// How many calls each figure takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Measured calls (each side) with one client.
    pub(crate) one: usize,
    /// Measured calls (each side) per client with 64 clients.
    pub(crate) per_client_64: usize,
    /// Calls (each side) per client before measuring.
    pub(crate) warmup: usize,
    /// How long each requests-per-second run lasts.
    pub(crate) rps_secs: f64,
}

/// The gateway's sizes.
const GATEWAY: Sizes = Sizes {
    one: 1_000,
    per_client_64: 40,
    warmup: 50,
    rps_secs: 5.0,
};

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;

fn chunk_event(delta: &str, finish: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

const USAGE_EVENT: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n";

/// One HTTP/1.1 chunk of a chunked body.
fn http_chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// Answers one request on `sock`: the whole answer, or a stream in two writes.
async fn answer(sock: &mut tokio::net::TcpStream, body: &[u8]) -> std::io::Result<()> {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if req["stream"].as_bool() != Some(true) {
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
            ANSWER.len()
        );
        return sock.write_all(response.as_bytes()).await;
    }
    let first = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{}",
        http_chunk(&chunk_event(
            r#"{"role":"assistant","content":"Hi"}"#,
            "null"
        ))
    );
    sock.write_all(first.as_bytes()).await?;
    // The next tokens a moment later, as a model generates them.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let mut rest = chunk_event(r#"{"content":" there"}"#, "null");
    rest.push_str(&chunk_event("{}", "\"stop\""));
    if req["stream_options"]["include_usage"].as_bool() == Some(true) {
        rest.push_str(USAGE_EVENT);
    }
    rest.push_str("data: [DONE]\n\n");
    let mut out = http_chunk(&rest);
    out.push_str("0\r\n\r\n");
    sock.write_all(out.as_bytes()).await
}

/// A provider on loopback answering every chat completion at once (keeping connections alive);
/// its base URL.
pub(crate) async fn mock_provider() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("could not bind the mock provider")?;
    let uri = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut buf = Vec::new();
                let mut tmp = [0u8; 16_384];
                loop {
                    // One whole request (head and content-length body), then the answer.
                    let (head_end, request_end) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break (end + 4, end + 4 + len);
                            }
                        }
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let body = buf[head_end..request_end].to_vec();
                    buf.drain(..request_end);
                    if answer(&mut sock, &body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(uri)
}

/// Where calls go: the mock directly, or a proxy in front of it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The chat-completions endpoint.
    pub(crate) endpoint: String,
    /// The bearer key.
    pub(crate) key: String,
    /// Whether to name a session (`x-governance-session`) per client.
    pub(crate) sessions: bool,
    pub(crate) http: reqwest::Client,
}

impl Target {
    pub(crate) fn new(endpoint: String, key: String, sessions: bool) -> Result<Self> {
        Ok(Self {
            endpoint,
            key,
            sessions,
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .context("could not build the HTTP client")?,
        })
    }

    fn request(&self, client: usize, stream: bool) -> reqwest::RequestBuilder {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut body = json!({
            "model": MODEL,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": format!("Say hi to request {n}.")}],
        });
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let mut req = self
            .http
            .post(&self.endpoint)
            .bearer_auth(&self.key)
            .json(&body);
        if self.sessions {
            req = req.header("x-governance-session", format!("c{client}"));
        }
        req
    }

    /// One plain call: the time to the whole answer.
    async fn unary(&self, client: usize) -> Result<Duration> {
        let t = Instant::now();
        let resp = self.request(client, false).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let took = t.elapsed();
        anyhow::ensure!(
            status.is_success() && body.windows(8).any(|w| w == b"Hi there"),
            "a call failed: {status} {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        Ok(took)
    }

    /// One streamed call: the time to the first event; the stream is then read to its end.
    async fn first_token(&self, client: usize) -> Result<Duration> {
        let t = Instant::now();
        let mut resp = self.request(client, true).send().await?;
        let status = resp.status();
        let mut seen = Vec::new();
        let mut first = None;
        while let Some(c) = resp.chunk().await? {
            seen.extend_from_slice(&c);
            if first.is_none() && seen.windows(5).any(|w| w == b"data:") {
                first = Some(t.elapsed());
            }
        }
        anyhow::ensure!(
            status.is_success() && seen.windows(6).any(|w| w == b"[DONE]"),
            "a stream failed: {status} {}",
            String::from_utf8_lossy(&seen[..seen.len().min(300)])
        );
        first.context("a stream sent no event")
    }

    async fn call(&self, client: usize, stream: bool) -> Result<Duration> {
        if stream {
            self.first_token(client).await
        } else {
            self.unary(client).await
        }
    }
}

/// Latencies of direct calls and of calls through `via`, interleaved (alternating which goes
/// first), from `clients` concurrent clients; both sorted.
async fn interleaved(
    direct: &Target,
    via: &Target,
    clients: usize,
    per_client: usize,
    warmup: usize,
    stream: bool,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (direct, via, barrier) = (direct.clone(), via.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..warmup {
                direct.call(c, stream).await?;
                via.call(c, stream).await?;
            }
            barrier.wait().await;
            let mut d = Vec::with_capacity(per_client);
            let mut v = Vec::with_capacity(per_client);
            for i in 0..per_client {
                if (i + c) % 2 == 0 {
                    d.push(direct.call(c, stream).await?);
                    v.push(via.call(c, stream).await?);
                } else {
                    v.push(via.call(c, stream).await?);
                    d.push(direct.call(c, stream).await?);
                }
            }
            anyhow::Ok((d, v))
        }));
    }
    let mut d = Vec::with_capacity(clients * per_client);
    let mut v = Vec::with_capacity(clients * per_client);
    for t in tasks {
        let (a, b) = t.await.context("a client stopped")??;
        d.extend(a);
        v.extend(b);
    }
    d.sort_unstable();
    v.sort_unstable();
    Ok((d, v))
}

/// Plain calls per second to `t` from `clients` concurrent clients over `secs` seconds.
pub(crate) async fn requests_per_s(t: &Target, clients: usize, secs: f64) -> Result<f64> {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                t.unary(c).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.context("a client stopped")??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn figure(direct: &[Duration], via: &[Duration]) -> Value {
    let (d50, d99) = (percentile(direct, 0.50), percentile(direct, 0.99));
    let (v50, v99) = (percentile(via, 0.50), percentile(via, 0.99));
    json!({
        "calls": via.len(),
        "direct_p50_us": round(d50),
        "direct_p99_us": round(d99),
        "proxy_p50_us": round(v50),
        "proxy_p99_us": round(v99),
        "added_p50_us": round(v50 - d50),
        "added_p99_us": round(v99 - d99),
    })
}

/// Every figure for one proxy (`via`) against direct calls: plain and streamed, 1 and 64
/// clients, and requests per second with 64.
pub(crate) async fn measure(
    name: &str,
    direct: &Target,
    via: &Target,
    sizes: Sizes,
) -> Result<Value> {
    let proxy = name;
    let mut out = json!({});
    for (stream, name) in [(false, "non_streaming"), (true, "time_to_first_token")] {
        eprintln!("bench: {proxy}: {name}, 1 client");
        let (d, v) = interleaved(direct, via, 1, sizes.one, sizes.warmup, stream).await?;
        out[name]["1_client"] = figure(&d, &v);
        eprintln!("bench: {proxy}: {name}, 64 clients");
        let (d, v) = interleaved(
            direct,
            via,
            64,
            sizes.per_client_64,
            sizes.warmup.min(5),
            stream,
        )
        .await?;
        out[name]["64_clients"] = figure(&d, &v);
    }
    eprintln!("bench: {proxy}: requests/s, 64 clients");
    out["requests_per_s_64_clients"] = round(requests_per_s(via, 64, sizes.rps_secs).await?).into();
    Ok(out)
}

/// The gateway served on a fresh test database in front of `mock`: its URL, the agent's key,
/// the owner's handle, the gateway's handle, and a sender that stops it.
struct Served {
    url: String,
    key: String,
    owner: Governance,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<gov_gateway::Result<()>>,
    _db: gov_testdb::TestDb,
}

async fn serve_gateway(mock: &str) -> Result<Served> {
    let db = gov_testdb::TestDb::new().await;
    let owner = Governance::builder()
        .database_url(db.url())
        .audit_secret(crate::SECRET)
        .connect()
        .await?;
    owner
        .scope()
        .register(ScopePolicy::new(AGENT.parse()?).allow_apis([format!("openai:{MODEL}")]))
        .await?;
    owner
        .cost()
        .register(BudgetPolicy::new(AGENT.parse()?).per_session(MicroUsd::from_cents(100_000)))
        .await?;
    let admin = Admin::connect(db.url()).await?;
    let key = admin.add_gateway_key(AGENT, "bench").await?;
    admin.close().await;
    // As `governance gateway serve` builds it: the application role, no spooling.
    let gov = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(crate::SECRET)
        .warn_on_no_wrappers(false)
        .spool(false)
        .connect()
        .await?;
    let config = gov_gateway::Config::from_toml(
        &format!("[openai]\nbase_url = \"{mock}/v1\"\napi_key_env = \"UP\"\n"),
        &|n| (n == "UP").then(|| PROVIDER_KEY.to_owned()),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("could not bind the gateway")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gov_gateway::serve(gov, config, listener, async move {
        let _ = stopped.await;
    }));
    Ok(Served {
        url,
        key: key.key.expose_secret().to_owned(),
        owner,
        stop,
        task,
        _db: db,
    })
}

/// Runs the gateway's figures, then LiteLLM's on the same mock, and returns them side by side.
pub(crate) async fn bench() -> Result<Value> {
    let mock = mock_provider().await?;
    let direct = Target::new(
        format!("{mock}/v1/chat/completions"),
        PROVIDER_KEY.into(),
        false,
    )?;

    let served = serve_gateway(&mock).await?;
    let via = Target::new(
        format!("{}/v1/chat/completions", served.url),
        served.key.clone(),
        true,
    )?;
    let mut gateway = measure("gateway", &direct, &via, GATEWAY).await?;
    eprintln!("bench: direct: requests/s, 64 clients");
    let direct_rps = requests_per_s(&direct, 64, GATEWAY.rps_secs).await?;
    let _ = served.stop.send(());
    served.task.await.context("the gateway stopped")??;
    // Every call settled, none left reserved, and the chain verifies.
    let mut spent = 0;
    for c in 0..64 {
        let s = served
            .owner
            .cost()
            .snapshot(AGENT, &format!("c{c}"))
            .await?;
        anyhow::ensure!(
            s.status.session.reserved.0 == 0,
            "a reservation was left open"
        );
        spent += s.status.session.spent.0;
    }
    let report = served.owner.audit().verify_chain().await?;
    anyhow::ensure!(
        report.is_clean(),
        "the gateway's chain did not verify clean"
    );
    served.owner.close().await;
    gateway["settled_micros"] = spent.into();
    gateway["events_verified"] = report.events_checked.into();
    gateway["setup"] = "gov_gateway::serve in process (as `governance gateway serve`), the \
        application role on a fresh Postgres test database, one agent with a gateway key, a \
        per-session budget cap and scope on openai:gpt-4o-mini; each client its own session"
        .into();

    eprintln!("bench: LiteLLM's proxy on the same mock");
    let litellm = match crate::litellm::start(&mock).await {
        Ok(proxy) => {
            let via = Target::new(
                format!("{}/v1/chat/completions", proxy.url),
                proxy.key.clone(),
                false,
            )?;
            let figures = measure("litellm", &direct, &via, crate::litellm::SIZES).await;
            let mut v = match figures {
                Ok(v) => v,
                Err(e) => json!({ "error": format!("{e:#}") }),
            };
            v["setup"] = proxy.setup.clone();
            proxy.stop();
            v
        }
        Err(e) => json!({ "not_run": format!("{e:#}") }),
    };

    let at = |v: &Value, path: [&str; 3]| v[path[0]][path[1]][path[2]].as_f64();
    let ratio = |path: [&str; 3]| match (at(&litellm, path), at(&gateway, path)) {
        (Some(l), Some(g)) if g > 0.0 => Value::from(round(l / g)),
        _ => Value::Null,
    };
    let p50 = |name: &str| at(&gateway, [name, "1_client", "added_p50_us"]);
    let out = json!({
        "mock_provider": "loopback; plain answers at once; streams send the first event at once and the rest 2 ms later",
        "direct_requests_per_s_64_clients": round(direct_rps),
        "gateway": gateway,
        "litellm": litellm,
        "aim": {
            "added_p50_us_non_streaming": AIM_ADDED_P50_US,
            "added_p50_us_time_to_first_token": AIM_ADDED_TTFT_P50_US,
            "met_non_streaming_1_client": p50("non_streaming").map(|x| x <= AIM_ADDED_P50_US),
            "met_time_to_first_token_1_client": p50("time_to_first_token").map(|x| x <= AIM_ADDED_TTFT_P50_US),
            "litellm_over_gateway_at_least": 10,
        },
        "litellm_over_gateway": {
            "note": "LiteLLM's figure divided by the gateway's (added latency: higher is LiteLLM slower; requests/s: the gateway's over LiteLLM's); null where a side is missing or the gateway's added figure is not above zero",
            "added_p50_non_streaming_1_client": ratio(["non_streaming", "1_client", "added_p50_us"]),
            "added_p99_non_streaming_1_client": ratio(["non_streaming", "1_client", "added_p99_us"]),
            "added_p50_non_streaming_64_clients": ratio(["non_streaming", "64_clients", "added_p50_us"]),
            "added_p50_time_to_first_token_1_client": ratio(["time_to_first_token", "1_client", "added_p50_us"]),
            "added_p50_time_to_first_token_64_clients": ratio(["time_to_first_token", "64_clients", "added_p50_us"]),
            "requests_per_s_64_clients": match (gateway["requests_per_s_64_clients"].as_f64(), litellm["requests_per_s_64_clients"].as_f64()) {
                (Some(g), Some(l)) if l > 0.0 => Value::from(round(g / l)),
                _ => Value::Null,
            },
        },
    });
    Ok(out)
}
