//! Console figures: dashboard and `/api` requests per second under concurrent load over real
//! HTTP on loopback, the delivery latency of live events to 1,000 SSE subscribers (from the
//! moment `audit().log()` is called to the moment each subscriber has read the event), and
//! signed-in `/health/governance` requests per second with the chain status cached (the
//! default) against verifying every chain on each request (`chain_check_interval` zero); and
//! the server latency of the dashboard and the events page with a large chain (1,000,000
//! events by default) written by 500 agents (`pages_at_scale`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gov_sdk::{AuditEvent, Governance, OperatorRole};
use gov_testdb::TestDb;
use tokio::sync::Mutex;

use crate::{SECRET, percentile, round};

const PW: &str = "correct horse battery staple";
const SUBSCRIBERS: usize = 1_000;
const MARKS: usize = 20;
/// Rows in the chain while health is measured.
const HEALTH_EVENTS: usize = 5_000;

/// Signs in and returns the `gov_session=…` cookie.
async fn sign_in(client: &reqwest::Client, base: &str) -> Result<String> {
    let res = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=bench&password={}", PW.replace(' ', "+")))
        .send()
        .await?;
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie: sign-in failed")?;
    Ok(cookie.to_owned())
}

/// `tasks` concurrent clients request `path` for `secs`; returns (requests/s, latencies).
async fn load(
    client: &reqwest::Client,
    url: String,
    cookie: &str,
    tasks: usize,
    secs: u64,
) -> Result<(f64, Vec<Duration>)> {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, url, cookie) = (client.clone(), url.clone(), cookie.to_owned());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let res = client.get(&url).header("cookie", &cookie).send().await?;
                anyhow::ensure!(res.status().is_success(), "{url}: {}", res.status());
                res.bytes().await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    Ok((rate, all))
}

/// Agents in [`pages_at_scale`].
const SCALE_AGENTS: usize = 500;
/// Requests per page measured in [`pages_at_scale`].
const SCALE_REQUESTS: usize = 200;

/// The dashboard's and the events page's latency, one signed-in client at a time (so the figure
/// is the server's work, not queueing), over a `default` chain of `events` rows written by
/// [`SCALE_AGENTS`] agents with a heartbeat each. Rows are written through the SDK by 64
/// concurrent callers, as the main benchmark fills its chain to verify. The first dashboard
/// view and the first signed-in health request start the chain verification and the coverage
/// count; they are awaited before measuring (the console reuses both: 5 minutes, 1 minute).
pub(crate) async fn pages_at_scale(events: usize) -> Result<serde_json::Value> {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .max_connections(20)
        .connect()
        .await?;
    gov.operators()
        .add("bench", OperatorRole::Admin, PW)
        .await?;
    for a in 0..SCALE_AGENTS {
        gov.presence().heartbeat(&format!("agent-{a}")).await?;
    }
    eprintln!("bench: writing {events} events by {SCALE_AGENTS} agents");
    let start = Instant::now();
    let tasks = 64;
    let mut writers = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let gov = gov.clone();
        writers.push(tokio::spawn(async move {
            for i in (t..events).step_by(tasks) {
                let agent = format!("agent-{}", i % SCALE_AGENTS);
                let ev = AuditEvent::builder(&agent, "tool.call")
                    .session(format!("s-{}", i / 1_000))
                    .payload(serde_json::json!({ "tool": "read_invoice", "args": { "id": i }, "ok": true }))
                    .build()?;
                gov.audit().log(ev).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let fill_secs = start.elapsed().as_secs_f64();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let config = gov_console::ConsoleConfig {
        sign_ins_per_minute: 10_000,
        ..gov_console::ConsoleConfig::default()
    };
    let server = tokio::spawn(gov_console::serve_on(gov.clone(), config, listener));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&client, &base).await?;
    // Warm: the health request verifies and waits; the dashboard counts coverage.
    let t = Instant::now();
    client
        .get(format!("{base}/health/governance"))
        .header("cookie", &cookie)
        .send()
        .await?
        .error_for_status()?;
    let first_verify_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    client
        .get(format!("{base}/"))
        .header("cookie", &cookie)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let first_dashboard_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut figures = serde_json::Map::new();
    for (name, path) in [
        ("dashboard", "/".to_owned()),
        ("events", "/events".to_owned()),
        ("events_one_agent", "/events?agent=agent-7".to_owned()),
        ("session_trace", "/agents/agent-7/sessions/s-7".to_owned()),
    ] {
        eprintln!("bench: {path} with {events} events, one client");
        let mut lat = Vec::with_capacity(SCALE_REQUESTS);
        for _ in 0..SCALE_REQUESTS {
            let t = Instant::now();
            let res = client
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send()
                .await?;
            anyhow::ensure!(res.status().is_success(), "{path}: {}", res.status());
            res.bytes().await?;
            lat.push(t.elapsed());
        }
        lat.sort();
        figures.insert(
            format!("{name}_p50_us"),
            serde_json::json!(round(percentile(&lat, 0.50))),
        );
        figures.insert(
            format!("{name}_p99_us"),
            serde_json::json!(round(percentile(&lat, 0.99))),
        );
    }
    server.abort();
    gov.close().await;
    figures.insert("events".into(), serde_json::json!(events));
    figures.insert("agents".into(), serde_json::json!(SCALE_AGENTS));
    figures.insert(
        "requests_per_page".into(),
        serde_json::json!(SCALE_REQUESTS),
    );
    figures.insert(
        "fill_secs".into(),
        serde_json::json!((fill_secs * 10.0).round() / 10.0),
    );
    figures.insert(
        "first_health_verify_ms".into(),
        serde_json::json!(first_verify_ms.round()),
    );
    figures.insert(
        "first_dashboard_ms".into(),
        serde_json::json!(first_dashboard_ms.round()),
    );
    figures.insert("aim_dashboard_p50_us".into(), serde_json::json!(50_000));
    Ok(serde_json::Value::Object(figures))
}

pub(crate) async fn bench() -> Result<serde_json::Value> {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .max_connections(20)
        .connect()
        .await?;
    gov.operators()
        .add("bench", OperatorRole::Admin, PW)
        .await?;
    for i in 0..20 {
        gov.presence().heartbeat(&format!("agent-{i}")).await?;
    }
    for i in 0..5 {
        gov.gates()
            .request(
                "agent-1",
                Some("s-1"),
                "wire_money",
                &serde_json::json!({ "i": i }),
            )
            .await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let config = gov_console::ConsoleConfig {
        sign_ins_per_minute: 10_000,
        ..gov_console::ConsoleConfig::default()
    };
    let server = tokio::spawn(gov_console::serve_on(gov.clone(), config, listener));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(128)
        .build()?;
    let cookie = sign_in(&client, &base).await?;

    eprintln!("bench: console dashboard and /api under load (32 clients, 5 s each)");
    let (dash_rate, dash) = load(&client, format!("{base}/"), &cookie, 32, 5).await?;
    let (api_rate, api) = load(&client, format!("{base}/api/agents"), &cookie, 32, 5).await?;

    eprintln!("bench: live events to {SUBSCRIBERS} SSE subscribers");
    let received: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut subs = Vec::with_capacity(SUBSCRIBERS);
    let sse_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for _ in 0..SUBSCRIBERS {
        let (client, url, cookie, received) = (
            sse_client.clone(),
            format!("{base}/events/stream?kind=bench.mark"),
            cookie.clone(),
            Arc::clone(&received),
        );
        subs.push(tokio::spawn(async move {
            let mut res = client.get(&url).header("cookie", &cookie).send().await?;
            anyhow::ensure!(res.status().is_success(), "subscribe: {}", res.status());
            let mut seen = 0;
            let mut text = String::new();
            while seen < MARKS {
                let Some(chunk) = res.chunk().await? else {
                    break;
                };
                let now = Instant::now();
                text.push_str(&String::from_utf8_lossy(&chunk));
                // The row's payload is a JSON string inside the row's JSON: `{\"mark\":N}`.
                while let Some(i) = text.find("mark\\\":") {
                    let rest = &text[i + 7..];
                    let end = rest
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(rest.len());
                    if end == rest.len() {
                        break;
                    }
                    let mark: usize = rest[..end].parse().unwrap_or(usize::MAX);
                    received.lock().await.push((mark, now));
                    seen += 1;
                    text = rest[end..].to_owned();
                }
            }
            anyhow::Ok(())
        }));
    }
    // Every subscriber is connected once the broadcast counts them.
    let health = client
        .get(format!("{base}/health/governance"))
        .header("cookie", &cookie);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: serde_json::Value = health
            .try_clone()
            .context("clone")?
            .send()
            .await?
            .json()
            .await?;
        if v["live_subscribers"].as_u64().unwrap_or(0) >= SUBSCRIBERS as u64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscribers did not connect: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sent = Vec::with_capacity(MARKS);
    for mark in 0..MARKS {
        let ev = AuditEvent::builder("bench", "bench.mark")
            .payload(serde_json::json!({ "mark": mark }))
            .build()?;
        sent.push(Instant::now());
        gov.audit().log(ev).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in subs {
        tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .context("a subscriber did not get every event")???;
    }
    let mut lat: Vec<Duration> = received
        .lock()
        .await
        .iter()
        .filter_map(|(mark, at)| Some(at.duration_since(*sent.get(*mark)?)))
        .collect();
    lat.sort();
    server.abort();
    let health_figures = health_figures(&gov, &client).await?;
    gov.close().await;
    Ok(serde_json::json!({
        "health": health_figures,
        "dashboard_requests_per_s_32_clients": dash_rate.round(),
        "dashboard_p50_us": round(percentile(&dash, 0.50)),
        "dashboard_p99_us": round(percentile(&dash, 0.99)),
        "api_agents_requests_per_s_32_clients": api_rate.round(),
        "api_agents_p50_us": round(percentile(&api, 0.50)),
        "api_agents_p99_us": round(percentile(&api, 0.99)),
        "sse_subscribers": SUBSCRIBERS,
        "sse_deliveries": lat.len(),
        "sse_delivery_p50_us": round(percentile(&lat, 0.50)),
        "sse_delivery_p99_us": round(percentile(&lat, 0.99)),
    }))
}

/// What one SSE client of [`sse_load`] saw.
#[derive(Debug, Default)]
struct Seen {
    audit: u64,
    lagged: u64,
    /// Events whose seq was not the one after the previous (a gap or a repeat).
    out_of_order: u64,
    last_seq: i64,
}

/// `clients` SSE subscribers while events are written at `rate` per second for `secs`: every
/// client must see every event once, in seq order (told `lagged` and caught up from the
/// database when it falls behind). Returns the figures.
pub(crate) async fn sse_load(clients: usize, rate: u64, secs: u64) -> Result<serde_json::Value> {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .max_connections(20)
        .connect()
        .await?;
    gov.operators()
        .add("bench", OperatorRole::Admin, PW)
        .await?;
    // The follower starts at the head: one row first, so every client's seq count starts at 1.
    gov.audit()
        .log(AuditEvent::builder("bench", "bench.start").build()?)
        .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let config = gov_console::ConsoleConfig {
        sign_ins_per_minute: 10_000,
        ..gov_console::ConsoleConfig::default()
    };
    let server = tokio::spawn(gov_console::serve_on(gov.clone(), config, listener));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = sign_in(&client, &base).await?;
    let sse_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let total = rate * secs;
    let start_seq = 1;
    let end_seq = start_seq + i64::try_from(total).unwrap_or(i64::MAX);
    let mut subs = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (client, url, cookie) = (
            sse_client.clone(),
            format!("{base}/events/stream"),
            cookie.clone(),
        );
        subs.push(tokio::spawn(async move {
            let mut res = client.get(&url).header("cookie", &cookie).send().await?;
            anyhow::ensure!(res.status().is_success(), "subscribe: {}", res.status());
            let mut seen = Seen {
                last_seq: start_seq,
                ..Seen::default()
            };
            let mut text = String::new();
            while seen.last_seq < end_seq {
                let Some(chunk) = res.chunk().await? else {
                    break;
                };
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    if block.contains("event: lagged") {
                        seen.lagged += 1;
                    }
                    let seq = block
                        .lines()
                        .find_map(|l| l.strip_prefix("id: default:"))
                        .and_then(|s| s.parse::<i64>().ok());
                    // The start row (seq 1) comes or not, as the client connected before or
                    // after the follower broadcast it.
                    if let Some(seq) = seq.filter(|s| *s > start_seq) {
                        seen.audit += 1;
                        if seq != seen.last_seq + 1 {
                            seen.out_of_order += 1;
                        }
                        seen.last_seq = seq;
                    }
                }
            }
            anyhow::Ok(seen)
        }));
    }
    let health = client
        .get(format!("{base}/health/governance"))
        .header("cookie", &cookie);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: serde_json::Value = health
            .try_clone()
            .context("clone")?
            .send()
            .await?
            .json()
            .await?;
        if v["live_subscribers"].as_u64().unwrap_or(0) >= clients as u64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscribers did not connect: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writers at a fixed rate: 20 tasks, each on its own tick.
    const WRITERS: u64 = 20;
    let began = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let gov = gov.clone();
        let per = total / WRITERS + u64::from(w < total % WRITERS);
        let every = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..per {
                tick.tick().await;
                let ev = AuditEvent::builder(format!("agent-{w}"), "bench.sse")
                    .payload(serde_json::json!({ "i": i }))
                    .build()?;
                gov.audit().log(ev).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let written_in = began.elapsed();
    let mut seen = Vec::with_capacity(clients);
    for s in subs {
        seen.push(
            tokio::time::timeout(Duration::from_secs(120), s)
                .await
                .context("an SSE client did not get every event within 2 minutes")???,
        );
    }
    let caught_up_in = began.elapsed();
    server.abort();
    gov.close().await;
    let min_delivered = seen.iter().map(|s| s.audit).min().unwrap_or(0);
    let out_of_order: u64 = seen.iter().map(|s| s.out_of_order).sum();
    anyhow::ensure!(
        out_of_order == 0 && min_delivered >= total,
        "SSE clients missed or repeated events: {out_of_order} out of order, fewest delivered {min_delivered} of {total}"
    );
    Ok(serde_json::json!({
        "clients": clients,
        "events": total,
        "target_events_per_s": rate,
        "written_events_per_s": (total as f64 / written_in.as_secs_f64()).round(),
        "deliveries": seen.iter().map(|s| s.audit).sum::<u64>(),
        "deliveries_per_s": (seen.iter().map(|s| s.audit).sum::<u64>() as f64 / caught_up_in.as_secs_f64()).round(),
        "every_client_caught_up_s": round(caught_up_in.as_secs_f64()),
        "clients_told_lagged": seen.iter().filter(|s| s.lagged > 0).count(),
        "lagged_notices": seen.iter().map(|s| s.lagged).sum::<u64>(),
        "missed_or_repeated": out_of_order,
    }))
}

/// Signed-in `/health/governance` under load (8 clients, 5 s each) over a chain of
/// [`HEALTH_EVENTS`] rows: served from the cached chain status, then by a console that verifies
/// every chain on each request.
async fn health_figures(gov: &Governance, client: &reqwest::Client) -> Result<serde_json::Value> {
    eprintln!("bench: /health/governance over {HEALTH_EVENTS} events, cached and verifying");
    let mut writers = Vec::new();
    for w in 0..16 {
        let gov = gov.clone();
        writers.push(tokio::spawn(async move {
            for i in (w..HEALTH_EVENTS).step_by(16) {
                let ev = AuditEvent::builder("bench", "bench.health")
                    .payload(serde_json::json!({ "i": i }))
                    .build()?;
                gov.audit().log(ev).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let mut figures = serde_json::Map::new();
    figures.insert(
        "chain_events".into(),
        serde_json::json!(gov.audit().verify_all().await?.events_checked),
    );
    for (name, interval) in [
        ("cached", gov_console::DEFAULT_CHAIN_CHECK_INTERVAL),
        ("verifying", Duration::ZERO),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let config = gov_console::ConsoleConfig {
            sign_ins_per_minute: 10_000,
            chain_check_interval: interval,
            ..gov_console::ConsoleConfig::default()
        };
        let server = tokio::spawn(gov_console::serve_on(gov.clone(), config, listener));
        let cookie = sign_in(client, &base).await?;
        // The first request fills the cache (cached) or verifies like every other (verifying).
        let first: serde_json::Value = client
            .get(format!("{base}/health/governance"))
            .header("cookie", &cookie)
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(
            first["chain_integrity"]["status"] == "clean",
            "health did not report a clean chain: {first}"
        );
        let (rate, lat) = load(client, format!("{base}/health/governance"), &cookie, 8, 5).await?;
        server.abort();
        figures.insert(
            format!("{name}_requests_per_s_8_clients"),
            serde_json::json!(rate.round()),
        );
        figures.insert(
            format!("{name}_p50_us"),
            serde_json::json!(round(percentile(&lat, 0.50))),
        );
        figures.insert(
            format!("{name}_p99_us"),
            serde_json::json!(round(percentile(&lat, 0.99))),
        );
    }
    Ok(serde_json::Value::Object(figures))
}
