//! Appends, concurrency, payload fidelity, reads and verification on real Postgres.

use gov_sdk::{AuditEvent, Error, EventFilter, Governance, Reason};
use gov_testdb::TestDb;

use crate::support::{SECRET, connect, event};

#[tokio::test]
async fn sixteen_tasks_times_500_events_give_contiguous_seqs_and_a_clean_chain() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let gov = gov.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(500);
            for i in 0..500u64 {
                let at = gov
                    .audit()
                    .log(event(&format!("agent-{t}"), "tool.call", i))
                    .await
                    .unwrap();
                seqs.push(at.seq().expect("durable"));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        // Each task's own events land in the order it logged them.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=8000).collect::<Vec<i64>>());
    let head = gov.audit().head("default").await.unwrap().unwrap();
    assert_eq!(head.seq, 8000);
    let report = gov.audit().verify_chain().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 8000);
}

#[tokio::test]
async fn any_json_payload_is_stored_byte_for_byte_and_verifies() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    let mut deep = serde_json::json!("bottom");
    for _ in 0..63 {
        deep = serde_json::json!({ "d": [deep] });
    }
    let payloads = vec![
        serde_json::json!(null),
        serde_json::json!([]),
        serde_json::json!({"unicode": "héllo wörld ✓ 😀 \u{0} \u{1f} \" \\ \u{2028} 中文 עברית", "é": 1}),
        serde_json::json!({"big": 9007199254740991_i64, "neg": -9007199254740991_i64, "huge": 1.7976931348623157e308, "tiny": 5e-324, "small": -2.2250738585072014e-308, "frac": 0.1, "zero": -0.0}),
        serde_json::json!({"z": 1, "a": {"y": [3, 2, 1], "b": false}}),
        serde_json::json!({"s": "x".repeat(60_000)}),
        deep,
    ];
    let mut expected = Vec::new();
    for p in payloads {
        let ev = AuditEvent::builder("agent", "payload.test")
            .payload(&p)
            .build()
            .unwrap();
        expected.push(ev.payload.clone());
        gov.audit().log(ev).await.unwrap();
    }
    let rows = gov.audit().events(&EventFilter::default()).await.unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(stored, expected);
    // The stored text parses back to the same JSON values that were logged.
    assert_eq!(
        rows[4].payload_json().unwrap(),
        serde_json::json!({"a": {"b": false, "y": [3, 2, 1]}, "z": 1})
    );
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
}

#[tokio::test]
async fn chains_are_independent_and_verify_all_counts_every_event() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    for i in 0..30 {
        let chain = if i % 3 == 0 { "billing" } else { "default" };
        let ev = AuditEvent::builder("a", "tool.call")
            .chain(chain)
            .payload(i)
            .build()
            .unwrap();
        gov.audit().log(ev).await.unwrap();
    }
    assert_eq!(gov.audit().head("billing").await.unwrap().unwrap().seq, 10);
    assert_eq!(gov.audit().head("default").await.unwrap().unwrap().seq, 20);
    let report = gov.audit().verify_all().await.unwrap();
    assert!(report.is_clean());
    assert_eq!(report.events_checked, 30);
    assert_eq!(report.chains.len(), 2);
}

#[tokio::test]
async fn verifying_an_empty_database_is_an_error_not_a_pass() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    let err = gov.audit().verify_all().await.unwrap_err();
    assert!(err.is_config(), "{err}");
    // The console's health check says `empty` for this kind, and only for it.
    assert_eq!(err.kind(), gov_sdk::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("nothing was verified"), "{err}");
    let err = gov.audit().verify_named("nope").await.unwrap_err();
    assert_eq!(err.kind(), gov_sdk::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn events_filter_and_page_by_seq() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    for i in 0..50u64 {
        let agent = if i % 2 == 0 { "even" } else { "odd" };
        let kind = if i % 5 == 0 {
            "tool.denied"
        } else {
            "tool.call"
        };
        gov.audit().log(event(agent, kind, i)).await.unwrap();
    }
    let mut filter = EventFilter {
        agent_id: Some("even".parse().unwrap()),
        limit: Some(10),
        ..EventFilter::default()
    };
    let first = gov.audit().events(&filter).await.unwrap();
    assert_eq!(first.len(), 10);
    assert!(first.iter().all(|r| r.agent_id == "even"));
    filter.after_seq = first.last().map(|r| r.seq);
    let second = gov.audit().events(&filter).await.unwrap();
    assert_eq!(second.len(), 10);
    assert!(second[0].seq > first[9].seq);
    let denied = gov
        .audit()
        .events(&EventFilter {
            kind: Some("tool.denied".into()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(denied.len(), 10);
}

#[tokio::test]
async fn verify_chain_on_read_fails_the_read_at_a_broken_link() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .verify_chain_on_read(true)
        .connect()
        .await
        .unwrap();
    for i in 0..20 {
        gov.audit().log(event("a", "tool.call", i)).await.unwrap();
    }
    let filter = EventFilter {
        after_seq: Some(5),
        limit: Some(5),
        ..EventFilter::default()
    };
    assert_eq!(gov.audit().events(&filter).await.unwrap().len(), 5);

    // A superuser edits row 8's payload behind the triggers' back.
    let admin = db.admin_pool().await;
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET payload = '{\"n\":999}' WHERE seq = 8")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    match gov.audit().events(&filter).await {
        Err(Error::ChainBroken(f)) => {
            assert_eq!(f.seq, 8);
            assert_eq!(f.reason, Reason::ModifiedRow);
        }
        other => panic!("expected a broken chain, got {other:?}"),
    }
    // Reading only row 9 also fails: its predecessor no longer matches.
    let only_nine = EventFilter {
        after_seq: Some(8),
        limit: Some(1),
        ..EventFilter::default()
    };
    assert!(
        matches!(gov.audit().events(&only_nine).await, Err(Error::ChainBroken(f)) if f.seq == 9)
    );
    // Rows before the edit still read.
    let early = EventFilter {
        limit: Some(7),
        ..EventFilter::default()
    };
    assert_eq!(gov.audit().events(&early).await.unwrap().len(), 7);
}

#[tokio::test]
async fn weak_secrets_and_bad_events_get_clear_errors() {
    let db = TestDb::new().await;
    for (secret, needle) in [
        ("", "no audit secret"),
        ("short", "neither hex nor base64"),
        ("abcdef0123", "at least 32"),
        (&"ab".repeat(32), "weak"),
    ] {
        let err = Governance::builder()
            .database_url(db.url())
            .audit_secret(secret)
            .connect()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(needle) && msg.contains("openssl rand -hex 32"),
            "{secret:?}: {msg}"
        );
    }
    let err = AuditEvent::builder("a", "tool.call")
        .payload(serde_json::json!({ "blob": "x".repeat(70_000) }))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("65536"), "{err}");
}

#[tokio::test]
async fn connection_errors_are_classified_and_leak_nothing() {
    let err = Governance::builder()
        .database_url("postgres://user:hunter2@127.0.0.1:1/db")
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(err.kind(), gov_sdk::ErrorKind::Unavailable, "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    for url in [
        "mysql://x@h/db",
        "not a url",
        "postgres://u:hunter2@h:notaport/db",
    ] {
        let err = Governance::builder()
            .database_url(url)
            .audit_secret(SECRET)
            .connect()
            .await
            .unwrap_err();
        assert!(err.is_config(), "{url}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    let empty = TestDb::empty().await;
    let err = Governance::builder()
        .database_url(empty.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("governance migrate"), "{err}");
}
