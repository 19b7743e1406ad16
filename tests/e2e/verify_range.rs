//! `governance verify --from/--to`: a range checks its rows and the link to the row before it,
//! names the first bad seq inside it, and runs the head checks only when it reaches the head;
//! bad ranges exit 2. Through the SDK: progress is reported page by page, and one thread finds
//! what every core finds.

use std::sync::{Arc, Mutex};

use gov_sdk::{AuditEvent, Governance, VerifyOptions, VerifyProgress};
use gov_testdb::TestDb;
use predicates::prelude::*;

use crate::support::{SECRET, governance, seed, verify};

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).expect("json on stdout")
}

#[tokio::test]
async fn a_range_that_excludes_a_modified_row_is_clean_and_one_that_includes_it_names_it() {
    let db = TestDb::new().await;
    seed(&db, 20).await;
    db.tamper(&["UPDATE audit_events SET payload = '{\"n\":700}' WHERE seq = 7"])
        .await;
    let (code, _, stderr) = verify(&db, &[]);
    assert_eq!(code, 1, "{stderr}");

    // Row 8 still links to row 7's stored HMAC, which the edit left alone.
    let (code, stdout, stderr) = verify(&db, &["--from", "8"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("ok chain default: 13 events, seq 8..20"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verified 13 events in 1 chain: clean"),
        "{stdout}"
    );

    let (code, stdout, stderr) = verify(&db, &["--to", "6"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("ok chain default: 6 events, seq 1..6"),
        "{stdout}"
    );

    let (code, stdout, stderr) = verify(&db, &["--from", "3", "--to", "12"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("seq 7: modified row"), "{stderr}");

    let (code, stdout, _) = verify(&db, &["--json", "--from", "5", "--to", "9"]);
    assert_eq!(code, 1);
    let v = json(&stdout);
    assert_eq!(v["status"], "tampered");
    let c = &v["chains"][0];
    assert_eq!(c["finding"]["seq"], 7, "{v}");
    assert_eq!(c["finding"]["reason"], "modified_row", "{v}");
    assert_eq!(c["range"], serde_json::json!([5, 9]), "{v}");
    assert_eq!(c["events_checked"], 3, "{v}");

    // A --to past the head stops at the head.
    let (code, stdout, _) = verify(
        &db,
        &["--json", "--chain", "default", "--from", "8", "--to", "30"],
    );
    assert_eq!(code, 0, "{stdout}");
    let v = json(&stdout);
    assert_eq!(v["status"], "clean");
    assert_eq!(v["events_checked"], 13);
    assert_eq!(v["chains"][0]["range"], serde_json::json!([8, 20]), "{v}");
    assert_eq!(v["chains"][0]["head_seq"], 20, "{v}");
}

#[tokio::test]
async fn the_first_row_of_a_range_must_follow_the_row_before_it() {
    let db = TestDb::new().await;
    seed(&db, 20).await;
    db.tamper(&["DELETE FROM audit_events WHERE seq = 10"])
        .await;
    let (code, _, stderr) = verify(&db, &["--from", "11"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("seq 10: missing row"), "{stderr}");
    assert!(stderr.contains("cannot be linked"), "{stderr}");
    let (code, _, stderr) = verify(&db, &["--from", "12"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = verify(&db, &["--to", "9"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = verify(&db, &["--from", "5", "--to", "15"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("seq 10: missing row"), "{stderr}");
}

#[tokio::test]
async fn the_head_is_checked_only_when_the_range_reaches_it() {
    let db = TestDb::new().await;
    seed(&db, 20).await;
    db.tamper(&["DELETE FROM audit_events WHERE seq > 17"])
        .await;
    let (code, _, stderr) = verify(&db, &["--to", "17"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = verify(&db, &["--to", "19"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("seq 18: missing row: the range ends at seq 19"),
        "{stderr}"
    );
    let (code, _, stderr) = verify(&db, &["--from", "10"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("seq 18: missing row"), "{stderr}");
    assert!(stderr.contains("the tail was cut off"), "{stderr}");
}

#[tokio::test]
async fn bad_ranges_exit_2_and_say_why() {
    let db = TestDb::new().await;
    seed(&db, 20).await;
    let cases: &[(&[&str], &str)] = &[
        (&["--from", "0"], "--from must be a seq of 1 or more, not 0"),
        (&["--to", "0"], "--to must be a seq of 1 or more, not 0"),
        (
            &["--from", "-4"],
            "--from must be a seq of 1 or more, not -4",
        ),
        (&["--from", "9", "--to", "3"], "--from 9 is after --to 3"),
        (
            &["--chain", "default", "--from", "21"],
            "the range starts at seq 21, beyond the head of chain \"default\" (seq 20)",
        ),
        (&["--from", "500"], "no chain has rows from seq 500"),
    ];
    for (args, message) in cases {
        let (code, stdout, stderr) = verify(&db, args);
        assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // A bad range is refused before anything is connected to.
    governance(&db)
        .env_remove("GOVERNANCE_DATABASE_URL")
        .args(["verify", "--from", "5", "--to", "4"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--from 5 is after --to 4"));
    governance(&db)
        .args(["verify", "--from", "seven"])
        .assert()
        .code(2);
    // With --json, the refusal is an object too.
    let (code, stdout, _) = verify(&db, &["--json", "--to", "0"]);
    assert_eq!(code, 2);
    assert_eq!(json(&stdout)["exit_code"], 2);
}

/// Logs `n` events to the `default` chain from 16 concurrent callers.
async fn seed_concurrently(gov: &Governance, n: u64) {
    let mut tasks = Vec::new();
    for t in 0..16 {
        let gov = gov.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(16) {
                let ev = AuditEvent::builder("agent-1", "tool.call")
                    .payload(serde_json::json!({ "n": i }))
                    .build()
                    .expect("event");
                gov.audit().log(ev).await.expect("log");
            }
        }));
    }
    for t in tasks {
        t.await.expect("seed task");
    }
}

fn options(threads: Option<usize>) -> (VerifyOptions, Arc<Mutex<Vec<VerifyProgress>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let opts = VerifyOptions {
        threads,
        progress: Some(Arc::new(move |p| sink.lock().expect("progress").push(p))),
        ..VerifyOptions::default()
    };
    (opts, seen)
}

#[tokio::test]
async fn progress_comes_page_by_page_and_one_thread_finds_what_all_find() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    // More than two pages of 2,000 rows.
    seed_concurrently(&gov, 4_500).await;

    for threads in [Some(1), None] {
        let (opts, seen) = options(threads);
        let report = gov.audit().verify_with(None, &opts).await.unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.events_checked, 4_500);
        let seen = seen.lock().unwrap();
        assert!(seen.len() >= 4, "{seen:?}");
        assert_eq!(seen[0].checked, 0);
        assert!(
            seen.iter()
                .all(|p| p.chain_id == "default" && p.total == 4_500)
        );
        assert!(seen.windows(2).all(|w| w[0].checked <= w[1].checked));
        assert_eq!(seen.last().map(|p| p.checked), Some(4_500));
    }

    let (mut opts, seen) = options(Some(1));
    opts.from_seq = Some(1_000);
    opts.to_seq = Some(3_000);
    let report = gov.audit().verify_with(None, &opts).await.unwrap();
    assert_eq!(report.events_checked, 2_001);
    assert_eq!(report.chains[0].range, Some((1_000, 3_000)));
    assert_eq!(seen.lock().unwrap().last().map(|p| p.total), Some(2_001));

    // A bad row where one page ends and the next begins is named alike on one thread and all.
    db.tamper(&["UPDATE audit_events SET agent_id = 'someone-else' WHERE seq = 2000"])
        .await;
    for threads in [Some(1), None] {
        let (opts, _) = options(threads);
        let report = gov.audit().verify_with(None, &opts).await.unwrap();
        let (_, f) = report.first_finding().expect("a finding");
        assert_eq!((f.seq, f.reason), (2_000, gov_sdk::Reason::ModifiedRow));
        assert_eq!(report.events_checked, 2_000);
    }
    gov.close().await;
}
