//! HMAC key rotation on real Postgres: markers provable under both keys, a chain across three
//! rotations, and each way a rotation can be faked or ignored, reported with its reason.

use gov_sdk::{
    AuditEvent, AuditRecord, AuditSecret, Error, Governance, NotWritable, Reason, Verdict,
};
use gov_testdb::{TestBackend, TestDb, TestStore};

use crate::support::{SECRET, event};

/// Four strong secrets: A (the support SECRET), B, C, D.
const B: &str = "3b8f1d2c9a4e7f60b5c1d8e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2";
const C: &str = "c4d1e8f2a9b3c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2";
const D: &str = "5e9a2b7c1d4f8e3a6b0c9d2e5f1a4b7c3d6e9f2a5b8c1d4e7f0a3b6c9d2e5f81";

/// A handle sealing with `current`, verifying also with `previous`.
async fn handle(db: &TestDb, current: &str, previous: &[&str]) -> Governance {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(current)
        .previous_audit_secrets(&previous.join(","))
        .connect()
        .await
        .expect("connect")
}

/// A handle that only verifies: it checks no chain's head at connect.
async fn verifier(url: &str, current: &str, previous: &[&str]) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(current)
        .previous_audit_secrets(&previous.join(","))
        .check_chains_on_connect(Vec::<String>::new())
        .connect()
        .await
        .expect("connect")
}

/// Appends a row sealed with `secret`'s key to the default chain behind the SDK's back, as a
/// writer that skips the SDK's checks would (SQL as a superuser; the SDK refuses to).
async fn seal_behind_the_sdks_back(db: &TestStore, secret: &str) {
    let key = AuditSecret::parse(secret).expect("secret").chain_key();
    let gov = verifier(db.url(), SECRET, &[]).await;
    let head = gov
        .audit()
        .head("default")
        .await
        .expect("head")
        .expect("a chain");
    gov.close().await;
    let at = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time");
    let ev = AuditEvent::builder("agent-1", "tool.call")
        .occurred_at(at)
        .payload(serde_json::json!({ "n": 99 }))
        .build()
        .expect("event");
    let mut r = AuditRecord::unsealed(&ev, head.seq + 1, &head.head_hmac, key.key_id());
    r.row_hmac = key.seal(&r).to_vec();
    db.tamper(&[
        &format!(
            "INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, kind, payload, prev_hmac, key_id, row_hmac) \
             VALUES ('default', {}, '{}', '2026-09-21T14:13:20Z', 'agent-1', 'tool.call', '{}', {}, '{}', {})",
            r.seq,
            r.event_id.as_uuid(),
            r.payload,
            db.bytes_sql(&r.prev_hmac),
            r.key_id,
            db.bytes_sql(&r.row_hmac)
        ),
        &format!(
            "UPDATE chain_heads SET seq = {}, head_hmac = {} WHERE chain_id = 'default'",
            r.seq,
            db.bytes_sql(&r.row_hmac)
        ),
    ])
    .await;
}

fn not_writable(e: &Error) -> &NotWritable {
    match e {
        Error::NotWritable(n) => n,
        other => panic!("expected a refusal to append, got {other:?}"),
    }
}

async fn log(gov: &Governance, n: u64) {
    for i in 0..n {
        gov.audit()
            .log(event("agent-1", "tool.call", i))
            .await
            .expect("log");
    }
}

fn secret(s: &str) -> AuditSecret {
    AuditSecret::parse(s).expect("secret")
}

#[tokio::test]
async fn a_chain_across_three_rotations_verifies_clean_with_the_keyring() {
    let db = TestDb::new().await;
    let keys = [SECRET, B, C, D];
    for (i, pair) in keys.windows(2).enumerate() {
        let gov = handle(&db, pair[0], &keys[..i]).await;
        log(&gov, 5).await;
        let at = gov
            .audit()
            .rotate_key("default", &secret(pair[1]), "alice", "yearly")
            .await
            .expect("rotate");
        assert_eq!(at.seq, (i as i64 + 1) * 6, "the marker follows the 5 rows");
        gov.close().await;
    }
    let gov = handle(&db, D, &[SECRET, B, C]).await;
    log(&gov, 5).await;
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{:?}", report.finding);
    assert_eq!(report.events_checked, 23);
    assert_eq!(report.key_ids.len(), 4, "four keys sealed rows");
    // Without the earlier keys the rows before the last rotation cannot be checked: a
    // configuration problem (not tampering), and the advice says what to set.
    let bare = handle(&db, D, &[]).await;
    let report = bare.audit().verify_chain().await.expect("verify");
    assert_eq!(report.verdict(), Verdict::Unverifiable, "{report:?}");
    let u = report.unverifiable.as_ref().expect("rows 1 to 18");
    assert_eq!(u.seqs, vec![(1, 18)]);
    assert_eq!(u.key_ids.len(), 3, "{u:?}");
    assert!(
        u.advice.contains("GOVERNANCE_AUDIT_SECRET_PREVIOUS"),
        "{}",
        u.advice
    );
    assert_eq!(report.events_checked, 5, "the rows after the last rotation");
    bare.close().await;
    gov.close().await;
}

#[tokio::test]
async fn a_row_sealed_with_the_retired_key_after_a_rotation_is_reported() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let old = verifier(db.url(), SECRET, &[]).await;
    log(&old, 3).await;
    old.audit()
        .rotate_key("default", &secret(B), "alice", "leak")
        .await
        .expect("rotate");
    // A writer that was never restarted is refused by the SDK ...
    let err = old
        .audit()
        .log(event("agent-1", "tool.call", 9))
        .await
        .expect_err("the key was retired");
    assert!(
        matches!(not_writable(&err), NotWritable::RotatedAway { seq: 4, .. }),
        "{err:?}"
    );
    old.close().await;
    // ... and a row sealed with the old key behind its back is caught.
    seal_behind_the_sdks_back(&db, SECRET).await;
    let gov = verifier(db.url(), B, &[SECRET]).await;
    let f = gov
        .audit()
        .verify_chain()
        .await
        .expect("verify")
        .finding
        .expect("finding");
    assert_eq!((f.seq, f.reason), (5, Reason::RetiredKey), "{}", f.detail);
    assert!(f.detail.contains("rotation at seq 4"), "{}", f.detail);
    gov.close().await;
}

#[tokio::test]
async fn a_key_change_without_a_marker_is_reported() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let a = verifier(db.url(), SECRET, &[]).await;
    log(&a, 2).await;
    a.close().await;
    // Someone restarts a writer with another secret and no rotation: the SDK refuses ...
    let err = Governance::builder()
        .database_url(db.url())
        .audit_secret(B)
        .previous_audit_secrets(SECRET)
        .connect()
        .await
        .expect_err("no marker moved the chain to this key");
    assert!(
        matches!(not_writable(&err), NotWritable::EarlierKey { .. }),
        "{err:?}"
    );
    // ... and a row sealed with the new key behind its back is caught.
    seal_behind_the_sdks_back(&db, B).await;
    let b = verifier(db.url(), B, &[SECRET]).await;
    let f = b
        .audit()
        .verify_chain()
        .await
        .expect("verify")
        .finding
        .expect("finding");
    assert_eq!(
        (f.seq, f.reason),
        (3, Reason::UnmarkedKeyChange),
        "{}",
        f.detail
    );
    b.close().await;
}

#[tokio::test]
async fn a_forged_rotation_marker_is_reported() {
    let db = TestDb::new().await;
    let a = handle(&db, SECRET, &[]).await;
    log(&a, 2).await;
    // Someone who holds the old key but not the new one writes a marker naming the new key,
    // with a proof made under another key.
    let (new, attacker) = (secret(B).chain_key(), secret(C).chain_key());
    let honest = gov_audit::rotation::marker_event(
        "default",
        &secret(SECRET).chain_key(),
        &attacker,
        "mallory",
        "x",
    )
    .expect("marker");
    let mut payload: serde_json::Value = serde_json::from_str(&honest.payload).expect("json");
    payload["to_key_id"] = new.key_id().into();
    let forged = AuditEvent::builder("governance", "chain.key_rotated")
        .event_id(honest.event_id)
        .actor("mallory")
        .payload(payload)
        .build()
        .expect("event");
    // The SDK refuses a reserved kind; an attacker holding the secret appends it anyway.
    assert!(matches!(
        a.audit().log(forged.clone()).await,
        Err(gov_sdk::Error::ReservedKind { .. })
    ));
    gov_testdb::forge::append_unchecked(db.url(), SECRET, vec![forged]).await;
    a.close().await;
    // The marker is the head: no handle may seal after it, so this one only verifies.
    let gov = verifier(db.url(), B, &[SECRET]).await;
    let f = gov
        .audit()
        .verify_chain()
        .await
        .expect("verify")
        .finding
        .expect("finding");
    assert_eq!(
        (f.seq, f.reason),
        (3, Reason::ForgedRotation),
        "{}",
        f.detail
    );
    // A marker to a key the verifier does not hold cannot be checked: the rows from it on
    // need that key (a configuration problem), and no handle without it may append.
    let db2 = TestDb::new().await;
    let a = handle(&db2, SECRET, &[]).await;
    a.audit()
        .rotate_key("default", &secret(C), "mallory", "x")
        .await
        .expect("rotate");
    a.close().await;
    let report = verifier(db2.url(), B, &[SECRET])
        .await
        .audit()
        .verify_chain()
        .await
        .expect("verify");
    assert_eq!(report.verdict(), Verdict::Unverifiable, "{report:?}");
    let u = report.unverifiable.expect("from the marker");
    assert_eq!(u.seqs, vec![(1, 1)]);
    assert!(u.key_ids.contains(secret(C).chain_key().key_id()), "{u:?}");
    let err = Governance::builder()
        .database_url(db2.url())
        .audit_secret(B)
        .previous_audit_secrets(SECRET)
        .connect()
        .await
        .expect_err("rotated to C");
    assert!(
        matches!(not_writable(&err), NotWritable::RotatedAway { .. }),
        "{err:?}"
    );
    gov.close().await;
}

#[tokio::test]
async fn rotating_to_the_same_secret_or_a_weak_one_is_refused() {
    let db = TestDb::new().await;
    let a = handle(&db, SECRET, &[]).await;
    log(&a, 1).await;
    let err = a
        .audit()
        .rotate_key("default", &secret(SECRET), "alice", "x")
        .await
        .expect_err("same key");
    assert!(err.to_string().contains("is the current one"), "{err}");
    assert!(AuditSecret::parse("changeme-changeme-changeme-changeme").is_err());
    a.close().await;
}
