//! `governance tail` follows events written by another process, live.

use std::process::Stdio;
use std::time::Duration;

use gov_sdk::{AuditEvent, Governance};
use gov_testdb::TestDb;
use predicates::prelude::*;

use crate::support::{SECRET, governance};

async fn log(gov: &Governance, agent: &str, n: u64) {
    let ev = AuditEvent::builder(agent, "tool.call")
        .payload(serde_json::json!({ "n": n }))
        .build()
        .expect("helper");
    gov.audit().log(ev).await.expect("helper");
}

fn spawn_tail(db: &TestDb, args: &[&str]) -> std::process::Child {
    crate::support::bare_governance()
        .env("GOVERNANCE_DATABASE_URL", db.url())
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .arg("--json")
        .arg("tail")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn governance tail")
}

/// Waits for the child, writing more events meanwhile via `more` until it exits (or 20 s).
async fn finish(
    mut child: std::process::Child,
    mut more: impl FnMut() -> bool,
) -> Vec<serde_json::Value> {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("helper").is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "tail did not finish"
        );
        let _ = more();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().expect("helper");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("helper"))
        .collect()
}

#[tokio::test]
async fn tail_replays_since_then_follows_new_events_with_filters() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    for n in 0..3 {
        log(&gov, "a", n).await;
        log(&gov, "b", n).await;
    }
    let child = spawn_tail(&db, &["--agent", "a", "--since", "1h", "--limit", "5"]);
    let writer = gov.clone();
    let mut n = 100;
    let handle = tokio::runtime::Handle::current();
    let lines = finish(child, move || {
        n += 1;
        let w = writer.clone();
        handle.spawn(async move {
            log(&w, "b", n).await;
            log(&w, "a", n).await;
        });
        true
    })
    .await;
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["agent_id"] == "a"), "{lines:?}");
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let ns: Vec<u64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l["payload"].as_str().unwrap()).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(&ns[..3], &[0, 1, 2], "the three earlier events come first");
    assert!(
        ns[3] > 100 && ns[4] > 100,
        "then events written while it followed: {ns:?}"
    );
}

#[tokio::test]
async fn without_since_only_new_events_are_shown() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    log(&gov, "a", 1).await;
    let child = spawn_tail(&db, &["--limit", "1"]);
    let handle = tokio::runtime::Handle::current();
    let writer = gov.clone();
    let lines = finish(child, move || {
        let w = writer.clone();
        handle.spawn(async move { log(&w, "a", 2).await });
        true
    })
    .await;
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]["payload"].as_str().unwrap().contains("2"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn bad_filters_are_usage_errors() {
    let db = TestDb::new().await;
    governance(&db)
        .args(["tail", "--since", "yesterday"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("RFC 3339"));
    governance(&db)
        .args(["tail", "--kind", "NotAKind"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("tool.call"));
    governance(&db)
        .args(["tail", "--agent", "a b"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("agent id"));
}
