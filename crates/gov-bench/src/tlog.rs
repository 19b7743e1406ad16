//! The Merkle tree's figures (`gov-bench tlog` runs them alone): building the tiles of a
//! 100,000-event chain the first time a proof is asked for, inclusion and consistency proof
//! generation p50/p99 once they exist (each call brings the tree up to the head first, as
//! `governance prove` does), and append throughput on 64 callers before and after the tree
//! exists, which should not differ: appends never touch the tiles.

use std::time::{Duration, Instant};

use anyhow::Result;
use gov_sdk::Governance;
use gov_sdk::admin::Admin;

use crate::{append, percentile, round};

/// Deterministic spread of seqs over `1..=n` (no RNG dependency).
fn spread(i: u64, n: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % n + 1
}

/// Tree figures on `chain`, which must hold at least 100,000 rows.
pub(crate) async fn figures(gov: &Governance, url: &str, chain: &str) -> Result<serde_json::Value> {
    let admin = Admin::connect(url).await?;
    let head = gov
        .audit()
        .head(chain)
        .await?
        .map(|h| h.seq)
        .unwrap_or(0)
        .unsigned_abs();
    anyhow::ensure!(head >= 100_000, "the tree bench needs 100,000 events");

    let before = append(gov, "tlog-before", 64, 200).await?;

    eprintln!("bench: building the tree of {head} events");
    let start = Instant::now();
    let (_, root) = admin.tree_root(chain, Some(head)).await?;
    let build_secs = start.elapsed().as_secs_f64();

    let mut inclusion: Vec<Duration> = Vec::with_capacity(300);
    for i in 0..300u64 {
        let seq = i64::try_from(spread(i, head))?;
        let t = Instant::now();
        let p = admin.prove_inclusion(chain, seq, Some(head)).await?;
        inclusion.push(t.elapsed());
        anyhow::ensure!(p.root == root, "an inclusion proof led to another root");
        p.verify()
            .map_err(|e| anyhow::anyhow!("an inclusion proof failed: {e}"))?;
    }
    inclusion.sort_unstable();
    let mut consistency: Vec<Duration> = Vec::with_capacity(100);
    for i in 0..100u64 {
        let from = spread(i, head);
        let t = Instant::now();
        let p = admin.prove_consistency(chain, from, head).await?;
        consistency.push(t.elapsed());
        p.verify()
            .map_err(|e| anyhow::anyhow!("a consistency proof failed: {e}"))?;
    }
    consistency.sort_unstable();
    // Offline verification of one inclusion proof (no database).
    let p = admin.prove_inclusion(chain, 1, Some(head)).await?;
    let n = 10_000u32;
    let start = Instant::now();
    for _ in 0..n {
        p.verify().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let verify_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);

    let after = append(gov, "tlog-after", 64, 200).await?;
    admin.close().await;
    Ok(serde_json::json!({
        "tree_events": head,
        "tree_first_build_seconds": round(build_secs * 1000.0) / 1000.0,
        "prove_inclusion_p50_us": round(percentile(&inclusion, 0.50)),
        "prove_inclusion_p99_us": round(percentile(&inclusion, 0.99)),
        "prove_consistency_p50_us": round(percentile(&consistency, 0.50)),
        "prove_consistency_p99_us": round(percentile(&consistency, 0.99)),
        "verify_inclusion_offline_us": round(verify_us),
        "append_64_callers_events_per_s_before_tree": before.round(),
        "append_64_callers_events_per_s_after_tree": after.round(),
    }))
}

/// `gov-bench tlog`: a fresh database, 100,000 events on one chain, then [`figures`].
pub(crate) async fn bench_alone() -> Result<serde_json::Value> {
    let db = gov_testdb::TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(crate::SECRET)
        .max_connections(16)
        .connect()
        .await?;
    append(&gov, "warmup", 8, 50).await?;
    eprintln!("bench: filling 100,000 events");
    append(&gov, "tlog", 64, 100_000 / 64 + 1).await?;
    let out = figures(&gov, db.url(), "tlog").await?;
    gov.close().await;
    Ok(out)
}
