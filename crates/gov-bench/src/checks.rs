//! `gov-bench checks`: the in-memory enforcement checks alone (scope and halt, cached), on an
//! in-memory SQLite database so that nothing but the check is measured, from one task and from
//! one task per core at once.

use std::time::Instant;

use anyhow::Result;
use gov_sdk::{Governance, ScopePolicy};
use serde_json::{Value, json};

use crate::{SECRET, round};

const N: u32 = 2_000_000;

/// Nanoseconds per scope check (`halt`: per cached halt check), `n` calls from one task.
async fn ns_per_op(gov: &Governance, n: u32, halt: bool) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..n {
        if halt {
            gov.presence().assert_not_halted("agent-0").await?;
        } else {
            gov.scope().check("agent-0", "send_email").await?;
        }
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(n))
}

/// The figures.
pub(crate) async fn bench() -> Result<Value> {
    let gov = Governance::builder()
        .database_url("sqlite::memory:")
        .audit_secret(SECRET)
        .migrate_on_connect(true)
        .connect()
        .await?;
    gov.scope()
        .register(ScopePolicy::new("agent-0".parse()?).allow_tools([
            "read_invoice",
            "send_email",
            "search_docs",
            "update_crm",
        ]))
        .await?;
    // Warm both caches.
    gov.scope().check("agent-0", "send_email").await?;
    let scope = ns_per_op(&gov, N, false).await?;
    let halt = ns_per_op(&gov, N, true).await?;
    // One task per core, all checking at once: what sharing the caches costs.
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cores {
        let gov = gov.clone();
        tasks.push(tokio::spawn(async move { ns_per_op(&gov, N, false).await }));
    }
    for t in tasks {
        t.await??;
    }
    let parallel = start.elapsed().as_nanos() as f64 / (f64::from(N) * cores as f64);
    gov.close().await;
    Ok(json!({
        "checks": {
            "scope_check_ns_per_op": round(scope),
            "assert_not_halted_cached_ns_per_op": round(halt),
            "scope_check_parallel_ns_per_op": round(parallel),
            "parallel_tasks": cores,
            "aim_scope_check_ns_per_op": 40,
        }
    }))
}
