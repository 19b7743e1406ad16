//! `cargo xtask faults`: the fault suite. Runs every fault test of the SDK (the spool under
//! kills at each step of adoption and torn files, settlement replies cut by a proxy, a full
//! SQLite disk freed again, Postgres outages) and the Postgres crash drill (4 writer processes
//! × 64 tasks, the server crashed and restarted mid-load, a writer killed), the failover drill
//! (a primary killed under load and its synchronous standby promoted), collects the
//! figures each scenario writes, checks the acceptance bounds, and prints a JSON summary, also
//! written to `target/faults/faults.json`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{FEATURES, Hermetic, cargo, has_nextest, pg, run};

/// The fault tests, as a nextest filter: the spool's unit and integration tests (kills at each
/// step of adoption, tears at every byte offset, a loaded process after an outage), the fault
/// tests (lost settlement replies, a full disk, fenced imports) and the Postgres outages.
const FILTER: &str =
    "package(gov-sdk) & (test(/^spool::/) | test(/^faults::/) | test(/^resilience::/))";
/// The same, as `cargo test` name filters (when nextest is not installed).
const NAMES: [&str; 3] = ["spool::", "faults::", "resilience::"];
/// The crash and failover drills, run on their own afterwards so that no other test competes
/// with their load (nextest runs them one after the other: `test-threads` is 1 for them).
const DRILL_FILTER: &str = "package(gov-sdk) & (test(/^crash::/) | test(/^promote::/))";
const DRILL_NAMES: [&str; 2] = ["crash::", "promote::"];
/// Makes the crash drill run (it skips without).
const DRILL: &str = "GOV_TEST_FAULTS_DRILL";
/// The folder the scenarios write their figures to.
const REPORT: &str = "GOV_TEST_FAULTS_REPORT";
/// The aim: each writer back to `Durable` for good within this long of the database's return.
/// A speed figure, so it is reported beside the measurement, never a failure (a writer that
/// never returns to `Durable` is one).
const BACK_TO_DURABLE_AIM_MS: i64 = 2_000;
/// The aim: `Durable` again for good within this long of the standby's promotion.
const PROMOTION_TO_DURABLE_AIM_MS: i64 = 5_000;

fn out_dir() -> Result<PathBuf> {
    Ok(std::env::current_dir()
        .context("no current folder")?
        .join("target")
        .join("faults"))
}

/// Runs the fault suite in a private home of its own.
pub(crate) fn run_all() -> Result<()> {
    run_in(&Hermetic::new()?)
}

/// Runs the fault suite with `home` as its HOME.
pub(crate) fn run_in(home: &Hermetic) -> Result<()> {
    let started = Instant::now();
    let out = out_dir()?;
    let figures = out.join("scenarios");
    if figures.exists() {
        std::fs::remove_dir_all(&figures).context("could not clear target/faults/scenarios")?;
    }
    std::fs::create_dir_all(&figures).context("could not create target/faults/scenarios")?;
    let server = pg::Server::find_or_start()?;
    eprintln!(
        "xtask: the fault suite uses Postgres at {}",
        server.display()
    );
    let nextest = has_nextest();
    let phase = |filter: &str, names: &[&str], drill: bool| -> Result<()> {
        let mut cmd = cargo();
        if nextest {
            cmd.args([
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "--features",
                FEATURES,
                "-E",
                filter,
            ]);
        } else {
            cmd.args([
                "test",
                "-p",
                "gov-sdk",
                "--no-fail-fast",
                "--features",
                FEATURES,
                "--",
            ])
            .args(names);
            if !drill {
                for name in DRILL_NAMES {
                    cmd.args(["--skip", name]);
                }
            }
        }
        cmd.env(pg::ENV_TEST_URL, server.url());
        home.apply(&mut cmd)?;
        cmd.env(REPORT, &figures);
        if drill {
            cmd.env(DRILL, "1");
            // One drill at a time: each loads both cores on its own.
            cmd.arg("--test-threads=1");
        }
        run(&mut cmd)
    };
    let tests = phase(FILTER, &NAMES, false);
    let drill = phase(DRILL_FILTER, &DRILL_NAMES, true);
    drop(server);
    let tests_list = if nextest {
        listed(&format!("({FILTER}) | ({DRILL_FILTER})"))
    } else {
        Vec::new()
    };

    let mut scenarios = serde_json::Map::new();
    if let Ok(entries) = std::fs::read_dir(&figures) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("could not read {}", p.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            scenarios.insert(name, v);
        }
    }
    let (checks, failed) = acceptance(&scenarios);
    let aims = aims(&scenarios);
    let summary = json!({
        "tests": {
            "filter": if nextest {
                format!("({FILTER}) | ({DRILL_FILTER})")
            } else {
                format!("{} {}", NAMES.join(" "), DRILL_NAMES.join(" "))
            },
            "count": if nextest { Some(tests_list.len()) } else { None },
            "passed": tests.is_ok() && drill.is_ok(),
        },
        "acceptance": checks,
        "aims": aims,
        "scenarios": scenarios,
        "took_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    let text = serde_json::to_string_pretty(&summary).context("the summary is JSON")?;
    println!("{text}");
    std::fs::write(out.join("faults.json"), format!("{text}\n"))
        .context("could not write target/faults/faults.json")?;
    eprintln!(
        "xtask: the fault suite took {:.1} s; summary in target/faults/faults.json",
        started.elapsed().as_secs_f64()
    );
    tests.context("a fault test failed")?;
    drill.context("the crash or failover drill failed")?;
    if !failed.is_empty() {
        bail!("the fault suite's acceptance failed: {}", failed.join("; "));
    }
    Ok(())
}

/// The fault tests nextest runs (for the summary's count).
fn listed(filter: &str) -> Vec<String> {
    let out = cargo()
        .args([
            "nextest",
            "list",
            "--workspace",
            "-E",
            filter,
            "--message-format",
            "oneline",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The writers that lived through the drill.
fn live_writers(crash: &Value) -> Vec<&Value> {
    crash
        .get("per_writer")
        .and_then(Value::as_array)
        .map(|w| {
            w.iter()
                .filter(|w| !w.get("killed").and_then(Value::as_bool).unwrap_or(true))
                .collect()
        })
        .unwrap_or_default()
}

fn back_to_durable(live: &[&Value]) -> Vec<Option<i64>> {
    live.iter()
        .map(|w| int(w, "back_to_durable_after_return_ms"))
        .collect()
}

/// Speed figures beside the aims the acceptance names (reported, never failing).
fn aims(s: &serde_json::Map<String, Value>) -> Value {
    let mut out = Vec::new();
    if let Some(c) = s.get("crash") {
        let back = back_to_durable(&live_writers(c));
        let worst = back.iter().flatten().max().copied();
        out.push(json!({
            "figure": "crash: slowest live writer back to Durable after the database's return (ms)",
            "measured": worst,
            "aim": BACK_TO_DURABLE_AIM_MS,
            "met": worst.is_some_and(|w| w <= BACK_TO_DURABLE_AIM_MS),
            "build": "the test profile (unoptimised)",
        }));
    }
    if let Some(p) = s.get("promote") {
        let back = int(p, "back_to_durable_after_promotion_ms");
        out.push(json!({
            "figure": "failover: back to Durable for good after the standby's promotion (ms)",
            "measured": back,
            "aim": PROMOTION_TO_DURABLE_AIM_MS,
            "met": back.is_some_and(|b| b <= PROMOTION_TO_DURABLE_AIM_MS),
            "build": "the test profile (unoptimised)",
        }));
    }
    Value::Array(out)
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// The acceptance checks over the scenarios' figures, and those that failed.
fn acceptance(s: &serde_json::Map<String, Value>) -> (Value, Vec<String>) {
    let mut failed = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        if !ok {
            failed.push(format!("{name}: {detail}"));
        }
        json!({ "check": name, "ok": ok, "detail": detail })
    };
    let mut checks = Vec::new();
    for scenario in [
        "crash",
        "promote",
        "full_disk",
        "settlement",
        "tears_last_line",
        "tears_header",
    ] {
        checks.push(check(
            &format!("{scenario} ran"),
            s.contains_key(scenario),
            format!("figures of scenario {scenario:?}"),
        ));
    }
    for (name, v) in s {
        for key in ["lost", "duplicates", "out_of_order", "earlier_records_lost"] {
            if let Some(n) = int(v, key) {
                checks.push(check(&format!("{name}: {key}"), n == 0, format!("{n}")));
            }
        }
        if let Some(clean) = v.get("verify_clean").and_then(Value::as_bool) {
            checks.push(check(
                &format!("{name}: verify clean"),
                clean,
                clean.to_string(),
            ));
        }
    }
    if let Some(c) = s.get("crash") {
        let live = live_writers(c);
        let back = back_to_durable(&live);
        checks.push(check(
            "crash: every live writer back to Durable after the database's return",
            !back.is_empty() && back.iter().all(Option::is_some),
            format!("per writer (ms): {back:?}"),
        ));
    }
    if let Some(p) = s.get("promote") {
        let errors = int(p, "errors");
        checks.push(check(
            "promote: log() never failed during the failover",
            errors == Some(0),
            format!("{errors:?} errors"),
        ));
        let ends = p.get("every_task_ends_durable").and_then(Value::as_bool);
        checks.push(check(
            "promote: Durable again after the promotion, without a restart",
            ends == Some(true),
            format!("every task's last answer Durable: {ends:?}"),
        ));
    }
    if let Some(v) = s.get("settlement") {
        let (r, sp) = (int(v, "receipts_micro_usd"), int(v, "spent_micro_usd"));
        checks.push(check(
            "settlement: spend equals receipts",
            r.is_some() && r == sp,
            format!("receipts {r:?}, spent {sp:?}"),
        ));
    }
    (Value::Array(checks), failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_or_a_writer_that_never_returns_fails_the_acceptance_a_slow_one_misses_the_aim() {
        let good = json!({
            "crash": {"lost": 0, "duplicates": 0, "out_of_order": 0, "verify_clean": true,
                "per_writer": [
                    {"killed": true, "back_to_durable_after_return_ms": null},
                    {"killed": false, "back_to_durable_after_return_ms": 300}]},
            "promote": {"lost": 0, "duplicates": 0, "out_of_order": 0, "verify_clean": true,
                "errors": 0, "every_task_ends_durable": true,
                "back_to_durable_after_promotion_ms": 1_900},
            "full_disk": {"lost": 0, "duplicates": 0, "verify_clean": true},
            "settlement": {"receipts_micro_usd": 250, "spent_micro_usd": 250},
            "tears_last_line": {"earlier_records_lost": 0},
            "tears_header": {"earlier_records_lost": 0},
        });
        let map = good.as_object().unwrap().clone();
        assert!(acceptance(&map).1.is_empty(), "{:?}", acceptance(&map).1);
        let mut slow = map.clone();
        slow["crash"]["per_writer"][1]["back_to_durable_after_return_ms"] = json!(2_500);
        assert!(
            acceptance(&slow).1.is_empty(),
            "speed is an aim, not a check"
        );
        assert_eq!(aims(&slow)[0]["met"], json!(false));
        assert_eq!(aims(&map)[0]["met"], json!(true));
        let mut never = map.clone();
        never["crash"]["per_writer"][1]["back_to_durable_after_return_ms"] = Value::Null;
        assert_eq!(acceptance(&never).1.len(), 1);
        let mut lost = map.clone();
        lost["full_disk"]["lost"] = json!(1);
        lost["settlement"]["spent_micro_usd"] = json!(300);
        assert_eq!(acceptance(&lost).1.len(), 2);
        let mut missing = map;
        missing.remove("tears_header");
        assert_eq!(acceptance(&missing).1.len(), 1);
    }
}
