//! Each tampering done by a superuser who bypasses the triggers makes `governance verify`
//! exit 1 and name the right seq and reason.

use gov_core::AuditRecord;
use gov_sdk::{EventFilter, Governance};
use gov_testdb::TestDb;

use crate::support::{OTHER_SECRET, SECRET, seed, verify};

async fn assert_tampered(db: &TestDb, seq: i64, reason: &str) {
    let (code, stdout, stderr) = verify(db, &[]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(&format!("seq {seq}: {reason}")),
        "expected seq {seq} ({reason}) in stderr: {stderr}"
    );
    assert!(stdout.contains("TAMPERED"), "{stdout}");
    // The JSON form carries the same finding.
    let (code, stdout, _) = verify(db, &["--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(v["status"], "tampered");
    let finding = &v["chains"][0]["finding"];
    assert_eq!(finding["seq"], seq, "{v}");
    assert_eq!(finding["reason"], reason.replace(' ', "_"), "{v}");
}

async fn fresh(n: u64) -> TestDb {
    let db = TestDb::new().await;
    seed(&db, n).await;
    let (code, stdout, stderr) = verify(&db, &[]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains(&format!("verified {n} events")), "{stdout}");
    db
}

async fn row(db: &TestDb, seq: i64) -> AuditRecord {
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("read the row");
    let rows = gov
        .audit()
        .events(&EventFilter {
            after_seq: Some(seq - 1),
            limit: Some(1),
            ..EventFilter::default()
        })
        .await
        .expect("read the row");
    gov.close().await;
    rows.into_iter().next().expect("row exists")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn an_edited_payload_is_a_modified_row() {
    let db = fresh(20).await;
    db.tamper(&["UPDATE audit_events SET payload = '{\"n\":700}' WHERE seq = 7"])
        .await;
    assert_tampered(&db, 7, "modified row").await;
}

#[tokio::test]
async fn an_edited_agent_is_a_modified_row() {
    let db = fresh(20).await;
    db.tamper(&["UPDATE audit_events SET agent_id = 'someone-else' WHERE seq = 3"])
        .await;
    assert_tampered(&db, 3, "modified row").await;
}

#[tokio::test]
async fn a_deleted_middle_row_is_a_missing_row() {
    let db = fresh(20).await;
    db.tamper(&["DELETE FROM audit_events WHERE seq = 10"])
        .await;
    assert_tampered(&db, 10, "missing row").await;
}

#[tokio::test]
async fn a_cut_tail_is_missing_rows_against_the_head() {
    let db = fresh(20).await;
    db.tamper(&["DELETE FROM audit_events WHERE seq > 17"])
        .await;
    assert_tampered(&db, 18, "missing row").await;
}

#[tokio::test]
async fn two_swapped_rows_are_reordered_rows() {
    let db = fresh(20).await;
    db.tamper(&[
        "UPDATE audit_events SET seq = 1000005 WHERE seq = 5",
        "UPDATE audit_events SET seq = 5 WHERE seq = 6",
        "UPDATE audit_events SET seq = 6 WHERE seq = 1000005",
    ])
    .await;
    assert_tampered(&db, 5, "reordered rows").await;
}

#[tokio::test]
async fn a_row_inserted_mid_chain_is_an_inserted_row() {
    let db = fresh(20).await;
    let r11 = row(&db, 11).await;
    let insert = format!(
        "INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, kind, payload, prev_hmac, key_id, row_hmac) \
         VALUES ('default', 12, gen_random_uuid(), now(), 'agent-1', 's-1', 'tool.call', '{{\"n\":\"forged\"}}', \
                 decode('{}', 'hex'), '{}', decode(repeat('ab', 32), 'hex'))",
        hex(&[7u8; 32]),
        r11.key_id
    );
    db.tamper(&[
        "UPDATE audit_events SET seq = seq + 1000000 WHERE seq >= 12",
        "UPDATE audit_events SET seq = seq - 1000000 + 1 WHERE seq >= 1000000",
        &insert,
        "UPDATE chain_heads SET seq = 21",
    ])
    .await;
    assert_tampered(&db, 12, "inserted row").await;
}

#[tokio::test]
async fn a_row_appended_past_the_head_is_an_inserted_row() {
    let db = fresh(20).await;
    let r20 = row(&db, 20).await;
    let insert = format!(
        "INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, kind, payload, prev_hmac, key_id, row_hmac) \
         VALUES ('default', 21, gen_random_uuid(), now(), 'agent-1', 'tool.call', '{{}}', decode('{}', 'hex'), '{}', decode(repeat('cd', 32), 'hex'))",
        hex(&r20.row_hmac),
        r20.key_id
    );
    db.tamper(&[&insert]).await;
    assert_tampered(&db, 21, "inserted row").await;
}

#[tokio::test]
async fn a_row_resealed_with_another_key_is_an_unknown_key() {
    let db = fresh(20).await;
    let mut r9 = row(&db, 9).await;
    let other = gov_audit::AuditSecret::parse(OTHER_SECRET)
        .unwrap()
        .chain_key();
    r9.payload = "{\"n\":900}".into();
    r9.key_id = other.key_id().to_owned();
    let hmac = other.seal(&r9);
    let update = format!(
        "UPDATE audit_events SET payload = '{}', key_id = '{}', row_hmac = decode('{}', 'hex') WHERE seq = 9",
        r9.payload,
        r9.key_id,
        hex(&hmac)
    );
    db.tamper(&[&update]).await;
    assert_tampered(&db, 9, "unknown key").await;
}

#[tokio::test]
async fn a_row_resealed_with_another_key_under_our_key_id_is_a_modified_row() {
    let db = fresh(20).await;
    let mut r4 = row(&db, 4).await;
    let other = gov_audit::AuditSecret::parse(OTHER_SECRET)
        .unwrap()
        .chain_key();
    r4.payload = "{\"n\":400}".into();
    let hmac = other.seal(&r4); // key_id still claims our key
    let update = format!(
        "UPDATE audit_events SET payload = '{}', row_hmac = decode('{}', 'hex') WHERE seq = 4",
        r4.payload,
        hex(&hmac)
    );
    db.tamper(&[&update]).await;
    assert_tampered(&db, 4, "modified row").await;
}

#[tokio::test]
async fn an_authentic_row_on_another_branch_is_a_fork() {
    // Someone holding the key rewrites row 10 to follow a different predecessor.
    let db = fresh(20).await;
    let mut r10 = row(&db, 10).await;
    let ours = gov_audit::AuditSecret::parse(SECRET).unwrap().chain_key();
    r10.prev_hmac = vec![9u8; 32];
    let hmac = ours.seal(&r10);
    let update = format!(
        "UPDATE audit_events SET prev_hmac = decode('{}', 'hex'), row_hmac = decode('{}', 'hex') WHERE seq = 10",
        hex(&r10.prev_hmac),
        hex(&hmac)
    );
    db.tamper(&[&update]).await;
    assert_tampered(&db, 10, "fork").await;
}

#[tokio::test]
async fn a_removed_head_row_is_reported_not_skipped() {
    let db = fresh(5).await;
    db.tamper(&["DELETE FROM chain_heads WHERE chain_id = 'default'"])
        .await;
    assert_tampered(&db, 1, "head mismatch").await;
    // Naming the chain gives the same answer, not "no such chain".
    let (code, _, stderr) = verify(&db, &["--chain", "default"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("seq 1: head mismatch"), "{stderr}");
}
