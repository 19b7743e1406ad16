//! The hot paths next to the physical limits of this machine, measured in the same run
//! (`hot_paths` in the JSON): each path's figure, the limit it is compared against, their ratio
//! and the aim.
//!
//! The limits (`gov_testdb::limits`): a `SELECT 1` on one bare connection, a one-row durable
//! commit on one bare connection, the single-row commits per second of 64 plain clients, and an
//! 8 KiB `fdatasync` of the local disk.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{percentile, round};

/// The limits measured in this run.
pub(crate) struct Limits {
    pub(crate) select1: Vec<Duration>,
    pub(crate) commit: Vec<Duration>,
    pub(crate) plain_64_per_s: f64,
    pub(crate) fdatasync: Vec<Duration>,
}

pub(crate) async fn measure(url: &str, quick: bool) -> Result<Limits> {
    let n = if quick { 1_000 } else { 5_000 };
    let select1 = gov_testdb::limits::bare_select1(url, n)
        .await
        .context("the bare SELECT 1 probe failed")?;
    let commit = gov_testdb::limits::durable_commit(url, n / 5)
        .await
        .context("the durable commit probe failed")?;
    let span = Duration::from_secs(if quick { 2 } else { 4 });
    let plain_64_per_s = gov_testdb::limits::plain_commits_per_s(url, 64, span)
        .await
        .context("the 64 plain clients probe failed")?;
    let dir = tempfile::tempdir().context("could not create the fsync probe's directory")?;
    let fdatasync = gov_testdb::limits::fdatasync(dir.path(), if quick { 100 } else { 500 })
        .context("the fdatasync probe failed")?;
    Ok(Limits {
        select1,
        commit,
        plain_64_per_s,
        fdatasync,
    })
}

impl Limits {
    pub(crate) fn json(&self) -> Value {
        json!({
            "bare_select1_p50_us": round(percentile(&self.select1, 0.50)),
            "bare_select1_p99_us": round(percentile(&self.select1, 0.99)),
            "durable_commit_1_row_p50_us": round(percentile(&self.commit, 0.50)),
            "durable_commit_1_row_p99_us": round(percentile(&self.commit, 0.99)),
            "plain_64_clients_commits_per_s": self.plain_64_per_s.round(),
            "fdatasync_8k_p50_us": round(percentile(&self.fdatasync, 0.50)),
        })
    }
}

/// The hot paths' figures from this run.
pub(crate) struct HotPaths {
    pub(crate) append_1: Vec<Duration>,
    pub(crate) append_64_per_s: f64,
    pub(crate) append_64: Vec<Duration>,
    pub(crate) gate: Vec<Duration>,
    pub(crate) budget_check: Vec<Duration>,
    pub(crate) scope_ns: f64,
    pub(crate) verify_events: u64,
    pub(crate) verify_per_s: f64,
    pub(crate) verify_peak_rss_kib: Option<u64>,
}

fn ratio(x: f64, limit: f64) -> f64 {
    round(x / limit * 100.0) / 100.0
}

/// Each hot path with its limit, ratio and aim.
pub(crate) fn hot_paths(l: &Limits, h: &HotPaths) -> Value {
    let commit = percentile(&l.commit, 0.50);
    let select1 = percentile(&l.select1, 0.50);
    let append_1 = percentile(&h.append_1, 0.50);
    let gate = percentile(&h.gate, 0.50);
    let check = percentile(&h.budget_check, 0.50);
    json!({
        "durable_append_1_caller": {
            "p50_us": round(append_1),
            "p99_us": round(percentile(&h.append_1, 0.99)),
            "limit": "one-row durable commit, bare connection (p50)",
            "limit_us": round(commit),
            "ratio": ratio(append_1, commit),
            "aim_ratio": 1.5,
        },
        "gate_request_approve_wake": {
            "p50_us": round(gate),
            "p99_us": round(percentile(&h.gate, 0.99)),
            "limit": "one-row durable commit, bare connection (p50)",
            "limit_us": round(commit),
            "ratio": ratio(gate, commit),
            "aim_ratio": 3.5,
            "aim_p50_us": 1200,
        },
        "budget_check": {
            "p50_us": round(check),
            "p99_us": round(percentile(&h.budget_check, 0.99)),
            "limit": "SELECT 1, bare connection (p50)",
            "limit_us": round(select1),
            "ratio": ratio(check, select1),
            "aim_ratio": 3.0,
        },
        "verify": {
            "events": h.verify_events,
            "events_per_s": h.verify_per_s.round(),
            "peak_rss_kib": h.verify_peak_rss_kib,
            "aim_events_per_s": 1_000_000,
            "aim_peak_rss_kib": 32 * 1024,
        },
        "scope_check": {
            "ns_per_op": round(h.scope_ns),
            "aim_ns_per_op": 40,
        },
        "append_64_callers": {
            "events_per_s": h.append_64_per_s.round(),
            "p99_us": round(percentile(&h.append_64, 0.99)),
            "limit": "single-row commits/s of 64 plain clients",
            "limit_per_s": l.plain_64_per_s.round(),
            "ratio": ratio(h.append_64_per_s, l.plain_64_per_s),
            "aim_ratio": 1.5,
            "aim_p99_us": 10_000,
        },
    })
}
