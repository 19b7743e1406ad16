//! The audit and budget figures of both backends side by side (`backends` in the JSON;
//! `gov-bench backends` runs it alone): the same workload on a Postgres test database and on a
//! SQLite file (WAL, `synchronous=FULL`), each through the SDK exactly as a service would use it.

use std::time::Instant;

use anyhow::Result;
use gov_sdk::admin::Admin;
use gov_sdk::{BudgetPolicy, Governance, MicroUsd, TokenUsage};
use gov_testdb::TestDb;

use crate::{SECRET, append, check_latencies, percentile, reserve_settle_latencies, round};

/// Events in the chain each backend verifies.
const VERIFY_EVENTS: usize = 100_000;

async fn figures(url: &str) -> Result<serde_json::Value> {
    let admin = Admin::connect_or_create(url).await?;
    admin.migrate().await?;
    admin.close().await;
    let gov = Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .max_connections(16)
        .warn_on_no_wrappers(false)
        .connect()
        .await?;
    append(&gov, "warmup", 8, 50).await?;
    let one = append(&gov, "one", 1, 2_000).await?;
    let many = append(&gov, "many", 64, 100).await?;
    append(&gov, "verify", 64, VERIFY_EVENTS / 64 + 1).await?;
    let warm = gov.audit().verify_named("verify").await?;
    anyhow::ensure!(warm.is_clean(), "the benchmark chain did not verify clean");
    let start = Instant::now();
    let report = gov.audit().verify_named("verify").await?;
    let verify_per_s = report.events_checked as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.is_clean(),
        "the benchmark chain did not verify clean"
    );

    gov.cost()
        .register(BudgetPolicy::new("agent-0".parse()?).per_day(MicroUsd(i64::MAX / 4)))
        .await?;
    let check = check_latencies(&gov, 2_000).await?;
    let reserve_settle = reserve_settle_latencies(&gov, 1_000).await?;
    // Contended: 16 callers reserving and settling at once on one agent's counters.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let gov = gov.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let r = gov
                    .cost()
                    .reserve("agent-0", &format!("s-{t}"), "gpt-4o-mini", 500, Some(256))
                    .await?;
                r.settle(TokenUsage {
                    input_tokens: 500,
                    output_tokens: 100,
                    cached_input_tokens: 0,
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let contended = 800.0 / start.elapsed().as_secs_f64();
    gov.close().await;
    Ok(serde_json::json!({
        "audit_append_1_caller_events_per_s": one.round(),
        "audit_append_64_callers_events_per_s": many.round(),
        "verify_events": report.events_checked,
        "verify_events_per_s": verify_per_s.round(),
        "check_or_raise_p50_us": round(percentile(&check, 0.50)),
        "check_or_raise_p99_us": round(percentile(&check, 0.99)),
        "reserve_settle_p50_us": round(percentile(&reserve_settle, 0.50)),
        "reserve_settle_p99_us": round(percentile(&reserve_settle, 0.99)),
        "reserve_settle_16_callers_per_s": contended.round(),
    }))
}

/// Both backends' figures.
pub(crate) async fn bench() -> Result<serde_json::Value> {
    eprintln!("bench: backends, postgres");
    let db = TestDb::new().await;
    let postgres = figures(db.url()).await?;
    eprintln!("bench: backends, sqlite");
    let dir = std::env::temp_dir().join(format!("gov-bench-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = figures(&format!("sqlite://{}/bench.db", dir.display())).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(serde_json::json!({
        "postgres": postgres,
        "sqlite": result?,
        "sqlite_settings": "WAL journal, synchronous=FULL (durable commits), one file on the same disk",
    }))
}
