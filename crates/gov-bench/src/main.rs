//! Benchmarks behind `cargo xtask bench`: audit append throughput (1 and 64 concurrent callers
//! on one chain), verification throughput over 100,000 and 1,000,000 events on one core and on
//! all cores with the verifier's peak memory, and the `SELECT 1` round trip on the same pool as
//! the reference, and the console's figures (`console`: dashboard and `/api` requests per second
//! under load, SSE delivery latency to 1,000 subscribers, 200 SSE clients at 2,000 events/s
//! each checked for every event once and in order; `gov-bench console` runs the first two
//! alone, `gov-bench sse [SECONDS]` the last),
//! and the time a governed LLM call adds over a direct one (`llm_guarded_path`, `llm.rs`;
//! `gov-bench llm` runs it alone), and the audit and budget figures of the Postgres and SQLite
//! backends side by side (`backends`, `backends.rs`; `gov-bench backends` runs it alone), and
//! the Merkle tree's (`tlog`, `tlog.rs`: proof generation over 100,000 events, append
//! throughput with and without the tree; `gov-bench tlog` runs it alone), and the offline
//! evidence bundle's (`evidence_bundle`, `evidence.rs`: exporting and verifying a bundle of
//! those 100,000 events; `gov-bench evidence` runs it alone), and the time the MCP gateway adds to
//! a tool call (`mcp_gateway`, `mcp.rs`; `gov-bench mcp` runs it alone), and the LLM gateway's
//! added latency and requests/s, plain and streamed, with 1 and 64 clients, side by side with
//! LiteLLM's proxy on the same mock provider (`gateway`, `gateway.rs` and `litellm.rs`;
//! `gov-bench gateway` runs it alone).
//! Every hot path is also reported next to the physical limit it is compared against, measured
//! in the same run (`hot_paths` and `limits`, `limits.rs`), and logging through a database outage
//! next to logging without one (`spooling`, `spooling.rs`; `gov-bench spooling` runs it alone).
//! `gov-bench --quick` (`cargo xtask bench --quick`) measures the hot paths, their limits and
//! spooling in about a minute, leaving out the million-event verification and the rest.
//! Prints one JSON object on stdout.
//!
//! Peak memory is measured in a child process (this binary again, with the hidden subcommand
//! `verify-child`) that only connects and verifies (twice: on fresh connections, then on warm
//! ones), then reports its `VmHWM`: a process's own high-water mark never goes down, so the
//! parent's would include the fill. The one-core child
//! is pinned to one CPU with `taskset` where that works, and runs one async thread and one
//! verification thread.

mod backends;
mod checks;
mod console;
mod evidence;
mod gateway;
mod limits;
mod litellm;
mod llm;
mod mcp;
mod policies;
mod spooling;
mod tlog;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gov_sdk::{AuditEvent, Governance, VerifyOptions};
use gov_testdb::TestDb;

pub(crate) const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";

fn event(chain: &str, task: usize, i: usize) -> Result<AuditEvent> {
    Ok(AuditEvent::builder(format!("agent-{}", task % 8), "tool.call")
        .chain(chain)
        .session(format!("s-{task}"))
        .payload(serde_json::json!({ "tool": "read_invoice", "args": { "id": i, "task": task }, "ok": true }))
        .build()?)
}

/// Logs `per_task` events from each of `tasks` concurrent callers; returns events/s.
async fn append(gov: &Governance, chain: &str, tasks: usize, per_task: usize) -> Result<f64> {
    Ok(append_timed(gov, chain, tasks, per_task).await?.0)
}

/// [`append`], also returning every `log()`'s latency, sorted.
async fn append_timed(
    gov: &Governance,
    chain: &str,
    tasks: usize,
    per_task: usize,
) -> Result<(f64, Vec<Duration>)> {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let gov = gov.clone();
        let chain = chain.to_owned();
        handles.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let e = event(&chain, t, i)?;
                let t0 = Instant::now();
                gov.audit().log(e).await?;
                took.push(t0.elapsed());
            }
            anyhow::Ok(took)
        }));
    }
    let mut all = Vec::with_capacity(tasks * per_task);
    for h in handles {
        all.extend(h.await??);
    }
    let rate = (tasks * per_task) as f64 / start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok((rate, all))
}

/// `n` sequential `check_or_raise` calls for `agent-0`, sorted latencies.
pub(crate) async fn check_latencies(gov: &Governance, n: usize) -> Result<Vec<Duration>> {
    let mut check = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        gov.cost().check_or_raise("agent-0", "s-bench").await?;
        check.push(t.elapsed());
    }
    check.sort_unstable();
    Ok(check)
}

/// `n` sequential reserve + settle pairs for `agent-0`, sorted latencies.
pub(crate) async fn reserve_settle_latencies(gov: &Governance, n: usize) -> Result<Vec<Duration>> {
    let mut reserve_settle = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = gov
            .cost()
            .reserve("agent-0", "s-bench", "gpt-4o-mini", 500, Some(256))
            .await?;
        r.settle(gov_sdk::TokenUsage {
            input_tokens: 500,
            output_tokens: 100,
            cached_input_tokens: 0,
        })
        .await?;
        reserve_settle.push(t.elapsed());
    }
    reserve_settle.sort_unstable();
    Ok(reserve_settle)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1e6)
        .unwrap_or(f64::NAN)
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The hidden subcommand that verifies one chain in a process of its own.
const CHILD: &str = "verify-child";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD) {
        return verify_child(args.get(1..).unwrap_or_default());
    }
    // `gov-bench console-pages [EVENTS]`: only the pages at scale.
    if args.first().map(String::as_str) == Some("console-pages") {
        let events: usize = match args.get(1) {
            Some(n) => n.parse().context("EVENTS is a number of events")?,
            None => 1_000_000,
        };
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(console::pages_at_scale(events))?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench console [EVENTS]`: the console figures alone; `pages_at_scale` over EVENTS
    // rows (1,000,000 unless given; 0 leaves it out).
    if args.first().map(String::as_str) == Some("console") {
        let events: usize = match args.get(1) {
            Some(n) => n.parse().context("EVENTS is a number of events")?,
            None => 1_000_000,
        };
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(async {
                let mut figures = console::bench().await?;
                if events > 0 {
                    figures["pages_at_scale"] = console::pages_at_scale(events).await?;
                }
                anyhow::Ok(figures)
            })?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench sse [SECONDS]`: 200 SSE clients while events are written at 2,000 per second
    // (10 seconds unless given), every client checked for every event once, in order.
    if args.first().map(String::as_str) == Some("sse") {
        let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(console::sse_load(200, 2_000, secs))?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench backends`: the audit and budget figures of Postgres and SQLite side by side.
    if args.first().map(String::as_str) == Some("backends") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(backends::bench())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench tlog`: the Merkle tree's figures alone.
    if args.first().map(String::as_str) == Some("tlog") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(tlog::bench_alone())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench policies`: Cedar decision latency and the guarded path with a set enforced.
    if args.first().map(String::as_str) == Some("policies") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(policies::bench())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench checks`: the cached scope and halt checks alone.
    if args.first().map(String::as_str) == Some("checks") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(checks::bench())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench evidence`: the evidence bundle's figures alone.
    if args.first().map(String::as_str) == Some("evidence") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(evidence::bench_alone())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench mcp`: the MCP gateway's added latency alone.
    if args.first().map(String::as_str) == Some("mcp") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(mcp::bench())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench gateway`: the LLM gateway next to LiteLLM's proxy, alone.
    if args.first().map(String::as_str) == Some("gateway") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(gateway::bench())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench llm`: the guarded LLM path's figures alone.
    if args.first().map(String::as_str) == Some("llm") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(llm::bench_alone())?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench spooling`: logging through a database outage alone.
    if args.first().map(String::as_str) == Some("spooling") {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")?
            .block_on(spooling::bench(Duration::from_secs(5)))?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    // `gov-bench --quick`: the hot paths next to their limits, in about a minute.
    let quick = args.iter().any(|a| a == "--quick");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(bench(quick))
}

/// The peak resident set size of this process so far, in KiB (`VmHWM` in /proc/self/status).
fn peak_rss_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("could not read /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    line.trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("could not parse VmHWM")
}

/// `verify-child URL CHAIN THREADS`: connects, verifies CHAIN twice with THREADS (`1` or `all`)
/// verification threads, and prints `{events, first_seconds, seconds, peak_rss_kib}` as JSON.
///
/// The first pass runs on fresh connections. On a table that has not been analysed since it was
/// filled (as here, right after the fill), Postgres plans the first executions of the page query
/// on each connection without statistics, as a bitmap scan of every later row plus a sort, and
/// only then settles on the index scan; so the first pass measures mostly that. The second pass,
/// on the same connections, measures the verifier.
fn verify_child(args: &[String]) -> Result<()> {
    let [url, chain, threads] = args else {
        anyhow::bail!("usage: gov-bench {CHILD} URL CHAIN THREADS");
    };
    let threads = match threads.as_str() {
        "all" => None,
        n => Some(n.parse::<usize>().context("THREADS is a number or `all`")?),
    };
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .context("could not start the async runtime")?;
    runtime.block_on(async {
        let gov = Governance::builder()
            .database_url(url)
            .audit_secret(SECRET)
            .max_connections(4)
            .connect()
            .await?;
        let opts = VerifyOptions {
            threads,
            ..VerifyOptions::default()
        };
        let mut seconds = Vec::new();
        let mut events = 0;
        for _ in 0..2 {
            let start = Instant::now();
            let report = gov.audit().verify_with(Some(chain), &opts).await?;
            seconds.push(start.elapsed().as_secs_f64());
            anyhow::ensure!(
                report.is_clean(),
                "the benchmark chain did not verify clean"
            );
            events = report.events_checked;
        }
        gov.close().await;
        let out = serde_json::json!({
            "events": events,
            "first_seconds": seconds.first(),
            "seconds": seconds.last(),
            "peak_rss_kib": peak_rss_kib()?,
        });
        println!("{out}");
        Ok(())
    })
}

/// One child verification: events/s on fresh connections and then on warm ones, and peak RSS in
/// KiB over both.
struct ChildRun {
    first_events_per_s: f64,
    events_per_s: f64,
    peak_rss_kib: u64,
}

/// Whether `taskset` can pin a process to CPU 0 here.
fn can_pin() -> bool {
    Command::new("taskset")
        .args(["-c", "0", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Verifies `chain` in a child process with `threads` (`1`, pinned to one CPU when `pin`, or
/// `all`).
fn verify_in_child(url: &str, chain: &str, threads: &str, pin: bool) -> Result<ChildRun> {
    let exe = std::env::current_exe().context("could not find the benchmark binary")?;
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let out = cmd
        .args([CHILD, url, chain, threads])
        .output()
        .context("could not run the verification child")?;
    anyhow::ensure!(
        out.status.success(),
        "the verification child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the verification child printed no JSON")?;
    let events = v["events"].as_f64().context("no events")?;
    let first_seconds = v["first_seconds"].as_f64().context("no first_seconds")?;
    let seconds = v["seconds"].as_f64().context("no seconds")?;
    Ok(ChildRun {
        first_events_per_s: events / first_seconds,
        events_per_s: events / seconds,
        peak_rss_kib: v["peak_rss_kib"].as_u64().context("no peak_rss_kib")?,
    })
}

/// Verifies the `verify` chain on one core and on all, each in a child process (waited for off
/// the async threads).
async fn verify_in_children(url: &str, pin: bool) -> Result<(ChildRun, ChildRun)> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let one = verify_in_child(&url, "verify", "1", pin)?;
        let all = verify_in_child(&url, "verify", "all", false)?;
        Ok((one, all))
    })
    .await
    .context("the verification child runner stopped")?
}

async fn bench(quick: bool) -> Result<()> {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .max_connections(16)
        .connect()
        .await?;

    // Warm up the pool and statement caches.
    append(&gov, "warmup", 8, 50).await?;
    for _ in 0..200 {
        gov.ping().await?;
    }

    eprintln!("bench: the limits (bare connections, durable commits, 64 plain clients, fdatasync)");
    let limits = limits::measure(db.url(), quick).await?;

    let scale = if quick { 5 } else { 1 };
    eprintln!("bench: SELECT 1 round trips on the pool");
    let mut rtt = Vec::with_capacity(5_000);
    for _ in 0..5_000 / scale {
        let t = Instant::now();
        gov.ping().await?;
        rtt.push(t.elapsed());
    }
    rtt.sort_unstable();

    eprintln!("bench: append, 1 caller");
    let (one, one_lat) = append_timed(&gov, "one", 1, 2_000 / scale).await?;
    eprintln!("bench: append, 64 callers");
    let (many, many_lat) = append_timed(&gov, "many", 64, 500 / scale).await?;

    eprintln!("bench: filling 100,000 events to verify");
    append(&gov, "verify", 64, 100_000 / 64 + 1).await?;
    let head = gov
        .audit()
        .head("verify")
        .await?
        .map(|h| h.seq)
        .unwrap_or(0);
    // The first read of freshly written rows also sets their hint bits (a one-time write).
    let start = Instant::now();
    let first = gov.audit().verify_named("verify").await?;
    let first_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(first.is_clean(), "the benchmark chain did not verify clean");
    let start = Instant::now();
    let report = gov.audit().verify_named("verify").await?;
    let verify_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.is_clean(),
        "the benchmark chain did not verify clean"
    );

    // The read path alone (keyset pages of 2,000), to see what verification adds to it.
    let start = Instant::now();
    let mut after = 0;
    let mut read = 0usize;
    loop {
        let filter = gov_sdk::EventFilter {
            chain_id: Some("verify".parse()?),
            after_seq: Some(after),
            limit: Some(2_000),
            ..Default::default()
        };
        let rows = gov.audit().events(&filter).await?;
        match rows.last() {
            Some(r) => after = r.seq,
            None => break,
        }
        read += rows.len();
    }
    let read_per_s = read as f64 / start.elapsed().as_secs_f64();

    // Enforcement checks on the hot path (in-memory while the listener is healthy).
    gov.scope()
        .register(gov_sdk::ScopePolicy::new("agent-0".parse()?).allow_tools([
            "read_invoice",
            "send_email",
            "search_docs",
            "update_crm",
        ]))
        .await?;
    let n = 1_000_000u32 / scale as u32;
    let start = Instant::now();
    for _ in 0..n {
        gov.scope().check("agent-0", "send_email").await?;
    }
    let scope_ns = start.elapsed().as_nanos() as f64 / f64::from(n);
    gov.presence().assert_not_halted("agent-0").await?;
    let start = Instant::now();
    for _ in 0..n {
        gov.presence().assert_not_halted("agent-0").await?;
    }
    let halt_ns = start.elapsed().as_nanos() as f64 / f64::from(n);

    // Budget round trips next to the SELECT 1 reference.
    gov.cost()
        .register(
            gov_sdk::BudgetPolicy::new("agent-0".parse()?).per_day(gov_sdk::MicroUsd(i64::MAX / 4)),
        )
        .await?;
    let check = check_latencies(&gov, 5_000 / scale).await?;
    let reserve_settle = reserve_settle_latencies(&gov, 2_000 / scale).await?;

    // Gate round trip: request, approve (with its audit event), the waiting agent woken with its
    // approval; then spending it (consume), timed on its own.
    gov.operators()
        .add(
            "bench-op",
            gov_sdk::OperatorRole::Operator,
            "bench operator password",
        )
        .await?;
    let op = gov
        .operators()
        .authenticate("bench-op", "bench operator password")
        .await?;
    let mut gate = Vec::with_capacity(300);
    let mut consume = Vec::with_capacity(300);
    for i in 0..300 / scale {
        let args = serde_json::json!({ "i": i });
        let t = Instant::now();
        let req = gov
            .gates()
            .request("agent-0", Some("s-bench"), "send_email", &args)
            .await?;
        gov.gates().approve(&op, req.id, "bench").await?;
        let approval = gov.gates().wait_for(req.id, Duration::from_secs(5)).await?;
        gate.push(t.elapsed());
        let t = Instant::now();
        gov.gates()
            .consume(&approval, "agent-0", Some("s-bench"), "send_email", &args)
            .await?;
        consume.push(t.elapsed());
    }
    gate.sort_unstable();
    consume.sort_unstable();

    eprintln!("bench: logging through a database outage (spooling)");
    let spooling = spooling::bench(Duration::from_secs(if quick { 2 } else { 5 })).await?;

    let mut out = serde_json::json!({
        "quick": quick,
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
        "limits": limits.json(),
        "spooling": spooling,
        "gate_round_trip_p50_us": round(percentile(&gate, 0.50)),
        "gate_round_trip_p99_us": round(percentile(&gate, 0.99)),
        "gate_consume_p50_us": round(percentile(&consume, 0.50)),
        "check_or_raise_p50_us": round(percentile(&check, 0.50)),
        "check_or_raise_p99_us": round(percentile(&check, 0.99)),
        "check_or_raise_p50_over_select1": round(percentile(&check, 0.50) / percentile(&rtt, 0.50) * 100.0) / 100.0,
        "reserve_settle_p50_us": round(percentile(&reserve_settle, 0.50)),
        "reserve_settle_p99_us": round(percentile(&reserve_settle, 0.99)),
        "scope_check_ns_per_op": round(scope_ns),
        "assert_not_halted_cached_ns_per_op": round(halt_ns),
        "read_events_per_s": read_per_s.round(),
        "select1_p50_us": round(percentile(&rtt, 0.50)),
        "select1_p99_us": round(percentile(&rtt, 0.99)),
        "audit_append_1_caller_events_per_s": one.round(),
        "audit_append_64_callers_events_per_s": many.round(),
        "verify_events": head,
        "verify_events_per_s": (report.events_checked as f64 / verify_secs).round(),
        "verify_first_pass_events_per_s": (first.events_checked as f64 / first_secs).round(),
        "verify_seconds": round(verify_secs * 1000.0) / 1000.0,
    });
    let mut hot = limits::HotPaths {
        append_1: one_lat,
        append_64_per_s: many,
        append_64: many_lat,
        gate,
        budget_check: check,
        scope_ns,
        verify_events: report.events_checked,
        verify_per_s: report.events_checked as f64 / verify_secs,
        verify_peak_rss_kib: None,
    };
    if quick {
        out["hot_paths"] = limits::hot_paths(&limits, &hot);
        println!("{}", serde_json::to_string_pretty(&out)?);
        gov.close().await;
        return Ok(());
    }

    // The Merkle tree over the 100,000 events.
    let tlog = tlog::figures(&gov, db.url(), "verify").await?;
    // The offline evidence bundle of those events.
    let evidence = evidence::figures(&gov, "verify").await?;

    // One core against all, and peak memory, at 100,000 events and then at
    // 1,000,000 (last, so that the million rows weigh on no other figure).
    let pin = can_pin();
    eprintln!("bench: verify 100,000 events in child processes");
    let (v100k_one, v100k_all) = verify_in_children(db.url(), pin).await?;
    eprintln!("bench: filling 900,000 more events (to 1,000,000)");
    append(&gov, "verify", 64, 900_000 / 64 + 1).await?;
    let head_1m = gov
        .audit()
        .head("verify")
        .await?
        .map(|h| h.seq)
        .unwrap_or(0);
    // Set the hint bits of the new rows before timing.
    let warm = gov.audit().verify_named("verify").await?;
    anyhow::ensure!(warm.is_clean(), "the benchmark chain did not verify clean");
    eprintln!("bench: verify 1,000,000 events in child processes");
    let (v1m_one, v1m_all) = verify_in_children(db.url(), pin).await?;
    hot.verify_events = u64::try_from(head_1m).unwrap_or(0);
    hot.verify_per_s = v1m_all.events_per_s;
    hot.verify_peak_rss_kib = Some(v1m_all.peak_rss_kib);
    out["hot_paths"] = limits::hot_paths(&limits, &hot);

    eprintln!("bench: console");
    let mut console = console::bench().await?;
    eprintln!("bench: 200 SSE clients at 2,000 events/s for 10 s");
    console["sse_200_clients_2000_per_s"] = console::sse_load(200, 2_000, 10).await?;
    let backends = backends::bench().await?;
    eprintln!("bench: a guarded LLM call over a direct one, mock provider on loopback");
    let llm = llm::bench(&gov).await?;
    eprintln!("bench: Cedar decisions with 10, 100 and 1,000 policies; the guarded path with 100");
    let policies = policies::bench().await?;
    eprintln!("bench: an MCP tool call through the gateway over a direct one");
    let mcp = mcp::bench().await?;
    eprintln!("bench: the LLM gateway over direct calls, and LiteLLM's proxy");
    let gateway = gateway::bench().await?;
    let more = serde_json::json!({
        "gateway": gateway,
        "cedar_policies": policies["policies"],
        "mcp_gateway": mcp,
        "llm_guarded_path": llm,
        "tlog": tlog,
        "evidence_bundle": evidence,
        "backends": backends,
        "console": console,
        "verify_1core_pinned_with_taskset": pin,
        "verify_100k_events_per_s_1core": v100k_one.events_per_s.round(),
        "verify_100k_events_per_s_all_cores": v100k_all.events_per_s.round(),
        "verify_100k_peak_rss_kib": v100k_all.peak_rss_kib,
        "verify_100k_peak_rss_kib_1core": v100k_one.peak_rss_kib,
        "verify_1m_events": head_1m,
        "verify_1m_events_per_s_1core": v1m_one.events_per_s.round(),
        "verify_1m_events_per_s_all_cores": v1m_all.events_per_s.round(),
        "verify_1m_peak_rss_kib": v1m_all.peak_rss_kib,
        "verify_1m_peak_rss_kib_1core": v1m_one.peak_rss_kib,
        "verify_100k_fresh_connections_events_per_s_1core": v100k_one.first_events_per_s.round(),
        "verify_100k_fresh_connections_events_per_s_all_cores": v100k_all.first_events_per_s.round(),
        "verify_1m_fresh_connections_events_per_s_1core": v1m_one.first_events_per_s.round(),
        "verify_1m_fresh_connections_events_per_s_all_cores": v1m_all.first_events_per_s.round(),
    });
    if let (Some(o), serde_json::Value::Object(m)) = (out.as_object_mut(), more) {
        o.extend(m);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    gov.close().await;
    Ok(())
}
