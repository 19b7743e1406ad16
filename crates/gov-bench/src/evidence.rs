//! The offline evidence bundle's figures (`gov-bench evidence` runs them alone): exporting a
//! bundle of 100,000 events (the pass over the rows, the Article 12 report with its verification
//! of the chain, sealing) and verifying it offline, with no database (best and median of five).

use std::time::Instant;

use anyhow::Result;
use gov_sdk::Governance;
use gov_sdk::bundle::{self, Bundle, Period, Pins};

use crate::{append, round};

/// Bundle figures over every event of `chain` (at least 100,000).
pub(crate) async fn figures(gov: &Governance, chain: &str) -> Result<serde_json::Value> {
    let signer = gov_sdk::Signer::load("ephemeral", "bench")?;
    let now = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let period = Period {
        from: None,
        to: now,
    };
    eprintln!("bench: exporting an evidence bundle of chain {chain}");
    let start = Instant::now();
    let evidence = gov
        .audit()
        .evidence(chain, &period, &signer, "bench.example/gov")
        .await?;
    let rows_secs = start.elapsed().as_secs_f64();
    let req = gov_report::ReportRequest {
        from: None,
        to: now,
        chain: Some(chain.to_owned()),
        generated_at: now,
        generator: "gov-bench".into(),
    };
    let report = gov_report::collect(gov, &req, &|_| {}).await?;
    let report = serde_json::to_value(&report)?;
    let file = Bundle::assemble(&evidence, period, report, "gov-bench", now).seal(&signer)?;
    let export_secs = start.elapsed().as_secs_f64();
    let events = evidence.rows.len();
    anyhow::ensure!(events >= 100_000, "the evidence bench needs 100,000 events");
    let pins = Pins {
        log: Some(evidence.log.clone()),
        witnesses: vec![],
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let v = bundle::verify(&file, &pins).map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(v.events as usize == events, "the bundle lost events");
    }
    times.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "bundle_events": events,
        "bundle_bytes": file.len(),
        "export_rows_and_proof_seconds": round(rows_secs * 1000.0) / 1000.0,
        "export_total_seconds": round(export_secs * 1000.0) / 1000.0,
        "verify_offline_best_seconds": round(times[0] * 1000.0) / 1000.0,
        "verify_offline_median_seconds": round(times[2] * 1000.0) / 1000.0,
    }))
}

/// `gov-bench evidence`: a fresh database, 100,000 events on one chain, then [`figures`].
pub(crate) async fn bench_alone() -> Result<serde_json::Value> {
    let db = gov_testdb::TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(crate::SECRET)
        .max_connections(16)
        .connect()
        .await?;
    eprintln!("bench: filling 100,000 events");
    append(&gov, "evidence", 64, 100_000 / 64 + 1).await?;
    let out = figures(&gov, "evidence").await?;
    gov.close().await;
    Ok(out)
}
