//! Observation through a database outage: events/s that `log()` acknowledges while the
//! database answers (`Durable`) and while it does not (`Spooled`, synced to the local spool), the
//! same callers both times, through a TCP proxy the benchmark cuts; then how long the spool
//! takes to drain once the database answers again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gov_sdk::{Governance, Logged};
use gov_testdb::{Proxy, TestDb};

use crate::{SECRET, event, round};

/// `callers` tasks logging for `span`; returns (events/s, durable, spooled).
async fn run(gov: &Governance, callers: usize, span: Duration) -> Result<(f64, u64, u64)> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for t in 0..callers {
        let gov = gov.clone();
        tasks.push(tokio::spawn(async move {
            let (mut durable, mut spooled) = (0u64, 0u64);
            let mut i = 0;
            while start.elapsed() < span {
                match gov.audit().log(event("spool", t, i)?).await? {
                    Logged::Durable(_) => durable += 1,
                    Logged::Spooled { .. } => spooled += 1,
                }
                i += 1;
            }
            anyhow::Ok((durable, spooled))
        }));
    }
    let (mut durable, mut spooled) = (0, 0);
    for t in tasks {
        let (d, s) = t.await??;
        durable += d;
        spooled += s;
    }
    Ok((
        (durable + spooled) as f64 / start.elapsed().as_secs_f64(),
        durable,
        spooled,
    ))
}

pub(crate) async fn bench(span: Duration) -> Result<serde_json::Value> {
    let db = TestDb::new().await;
    let (proxy, url) = Proxy::for_url(db.url()).await;
    let dir = tempfile::tempdir().context("could not create the spool's directory")?;
    let gov = Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .spool_dir(dir.path())
        .acquire_timeout(Duration::from_millis(500))
        .warn_on_no_wrappers(false)
        .connect()
        .await?;
    let callers = 8;
    run(&gov, callers, Duration::from_millis(300)).await?;
    let (normal, _, _) = run(&gov, callers, span).await?;
    proxy.cut();
    let (spooling, durable_during, spooled) = run(&gov, callers, span).await?;
    proxy.restore();
    let start = Instant::now();
    while gov.audit().spooled() > 0 && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = start.elapsed();
    anyhow::ensure!(
        gov.audit().spooled() == 0,
        "the spool did not drain within two minutes"
    );
    let report = gov.audit().verify_named("spool").await?;
    anyhow::ensure!(report.is_clean(), "the spooled chain did not verify clean");
    gov.close().await;
    Ok(serde_json::json!({
        "callers": callers,
        "seconds_each": span.as_secs_f64(),
        "normal_events_per_s": normal.round(),
        "spooling_events_per_s": spooling.round(),
        "spooling_over_normal": round(spooling / normal * 100.0) / 100.0,
        "aim_spooling_over_normal": 0.5,
        "spooled_events": spooled,
        "durable_during_outage": durable_during,
        "drain_seconds": round(drained.as_secs_f64() * 10.0) / 10.0,
        "events_verified_after_drain": report.events_checked,
    }))
}
