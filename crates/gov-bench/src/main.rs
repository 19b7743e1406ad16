//! Benchmarks behind `cargo xtask bench`: audit append throughput (1 and 64 concurrent callers
//! on one chain), verification throughput over 100,000 events, and the `SELECT 1` round trip on
//! the same pool as the reference. Prints one JSON object on stdout.

use std::time::{Duration, Instant};

use anyhow::Result;
use gov_sdk::{AuditEvent, Governance};
use gov_testdb::TestDb;

const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";

fn event(chain: &str, task: usize, i: usize) -> Result<AuditEvent> {
    Ok(AuditEvent::builder(format!("agent-{}", task % 8), "tool.call")
        .chain(chain)
        .session(format!("s-{task}"))
        .payload(serde_json::json!({ "tool": "read_invoice", "args": { "id": i, "task": task }, "ok": true }))
        .build()?)
}

/// Logs `per_task` events from each of `tasks` concurrent callers; returns events/s.
async fn append(gov: &Governance, chain: &str, tasks: usize, per_task: usize) -> Result<f64> {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let gov = gov.clone();
        let chain = chain.to_owned();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                gov.audit().log(event(&chain, t, i)?).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok((tasks * per_task) as f64 / start.elapsed().as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1e6)
        .unwrap_or(f64::NAN)
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[tokio::main]
async fn main() -> Result<()> {
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

    eprintln!("bench: SELECT 1 round trips");
    let mut rtt = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let t = Instant::now();
        gov.ping().await?;
        rtt.push(t.elapsed());
    }
    rtt.sort_unstable();

    eprintln!("bench: append, 1 caller");
    let one = append(&gov, "one", 1, 2_000).await?;
    eprintln!("bench: append, 64 callers");
    let many = append(&gov, "many", 64, 500).await?;

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
    let n = 1_000_000u32;
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
    let mut check = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let t = Instant::now();
        gov.cost().check_or_raise("agent-0", "s-bench").await?;
        check.push(t.elapsed());
    }
    check.sort_unstable();
    let mut reserve_settle = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
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

    // Gate round trip: request, approve (with its audit event), wait_for, consume.
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
    for i in 0..300 {
        let args = serde_json::json!({ "i": i });
        let t = Instant::now();
        let req = gov
            .gates()
            .request("agent-0", Some("s-bench"), "send_email", &args)
            .await?;
        gov.gates().approve(&op, req.id, "bench").await?;
        let approval = gov.gates().wait_for(req.id, Duration::from_secs(5)).await?;
        gov.gates().consume(&approval, "send_email", &args).await?;
        gate.push(t.elapsed());
    }
    gate.sort_unstable();

    let out = serde_json::json!({
        "gate_round_trip_p50_us": round(percentile(&gate, 0.50)),
        "gate_round_trip_p99_us": round(percentile(&gate, 0.99)),
        "check_or_raise_p50_us": round(percentile(&check, 0.50)),
        "check_or_raise_p99_us": round(percentile(&check, 0.99)),
        "check_or_raise_p50_over_select1": round(percentile(&check, 0.50) / percentile(&rtt, 0.50) * 100.0) / 100.0,
        "reserve_settle_p50_us": round(percentile(&reserve_settle, 0.50)),
        "reserve_settle_p99_us": round(percentile(&reserve_settle, 0.99)),
        "scope_check_ns_per_op": round(scope_ns),
        "assert_not_halted_cached_ns_per_op": round(halt_ns),
        "read_events_per_s": read_per_s.round(),
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) },
        "select1_p50_us": round(percentile(&rtt, 0.50)),
        "select1_p99_us": round(percentile(&rtt, 0.99)),
        "audit_append_1_caller_events_per_s": one.round(),
        "audit_append_64_callers_events_per_s": many.round(),
        "verify_events": head,
        "verify_events_per_s": (report.events_checked as f64 / verify_secs).round(),
        "verify_first_pass_events_per_s": (first.events_checked as f64 / first_secs).round(),
        "verify_seconds": round(verify_secs * 1000.0) / 1000.0,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    gov.close().await;
    Ok(())
}
