//! Retention through the library: a chain's oldest rows archived to a file and removed, what
//! remains verifying from the cut (Merkle proofs included), archives importing in order into
//! another database and verifying there; and the attacker's side: the application role can
//! neither remove rows nor record a cut, the owner cannot remove rows no cut covers, and a cut
//! recorded without its sealed `chain.archived` event makes the chain read tampered.

use gov_sdk::admin::Admin;
use gov_sdk::admin::retention::{self, CUT_ALIGN, CutRecord, Segment};
use gov_sdk::admin::transfer::{self, Export, ImportFile, TransferError};
use gov_sdk::{AuditEvent, Governance, Reason};
use gov_testdb::{APP_ROLE, TestBackend, TestStore};
use sha2::{Digest as _, Sha256};

use crate::support::SECRET;

async fn connect(url: &str) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect")
}

async fn log(gov: &Governance, n: u64) {
    for i in 0..n {
        let ev = AuditEvent::builder("agent-1", "tool.call")
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
}

/// Every row up to now counts as old enough.
fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::seconds(5)
}

/// Archives what `plan` finds on `default` of `url`; the archive's bytes and the segment.
async fn archive(url: &str, gov: &Governance) -> (Vec<u8>, Segment) {
    let admin = Admin::connect(url).await.expect("admin");
    let segment = retention::plan(&admin, "default", now(), None)
        .await
        .expect("plan");
    let export = Export::prepare(&admin, &["default".to_owned()])
        .await
        .expect("prepare")
        .through(&admin, segment.through_seq)
        .await
        .expect("through");
    let row_hmac = export.chains()[0].head_hmac.clone();
    let mut file = Vec::new();
    export.write(&admin, &mut file, &()).await.expect("write");
    let sha = hex::encode(Sha256::digest(&file));
    let (removed, record_seq) = retention::cut(
        gov,
        &segment,
        &CutRecord {
            row_hmac: &row_hmac,
            archive_sha256: &sha,
            operator: "alice",
            reason: "retention test",
        },
    )
    .await
    .expect("cut");
    assert_eq!(removed, segment.rows());
    assert!(record_seq > segment.head_seq);
    admin.close().await;
    (file, segment)
}

async fn import(url: &str, bytes: &[u8]) -> Result<transfer::ImportReport, TransferError> {
    let dir = crate::support::TempDir::new("retention");
    let path = dir.0.join("archive.jsonl");
    std::fs::write(&path, bytes).expect("write the archive");
    let file = ImportFile::open(&path).expect("open");
    let admin = Admin::connect(url).await.expect("admin");
    let r = transfer::import(&admin, &file, &()).await;
    admin.close().await;
    r
}

async fn cuts_archive_old_rows_and_the_rest_verifies(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = connect(db.url()).await;
    log(&gov, 600).await;

    let (first, seg) = archive(db.url(), &gov).await;
    assert_eq!((seg.starts_after, seg.through_seq), (0, 512));
    let report = gov.audit().verify_named("default").await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.archived_through, Some(512));
    // 88 old rows after the cut and the chain.archived event.
    assert_eq!(report.events_checked, 89);
    let admin = Admin::connect(db.url()).await.expect("admin");
    assert_eq!(
        admin.retention_cuts("default").await.expect("cuts")[0].rows_removed,
        512
    );
    // Proofs of remaining rows still build (the removed part of the tree comes from tiles).
    let proof = admin
        .prove_inclusion("default", 590, None)
        .await
        .expect("a proof after the cut");
    assert_eq!(proof.tree_size, 601);
    proof.verify().expect("the proof holds");
    let (size, root) = admin.tree_root("default", None).await.expect("root");
    assert_eq!((size, root), (601, proof.root));
    // Appends go on; nothing old enough is left to archive.
    log(&gov, 300).await;
    assert!(
        gov.audit()
            .verify_named("default")
            .await
            .expect("verify")
            .is_clean()
    );

    // A second cut: its archive continues the first one.
    let (second, seg2) = archive(db.url(), &gov).await;
    assert_eq!((seg2.starts_after, seg2.through_seq), (512, 768));
    let report = gov.audit().verify_named("default").await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.archived_through, Some(768));
    let err = retention::plan(&admin, "default", now(), None)
        .await
        .expect_err("fewer than 256 rows left");
    assert!(err.is_config(), "{err}");
    admin.close().await;

    // The archives rebuild the history elsewhere, in order; the second alone is refused.
    let target = TestStore::new(b).await;
    match import(target.url(), &second).await {
        Err(TransferError::EarlierArchiveFirst {
            starts_after: 512, ..
        }) => {}
        other => panic!("the second archive alone must be refused: {other:?}"),
    }
    import(target.url(), &first).await.expect("first archive");
    import(target.url(), &second).await.expect("second archive");
    let there = connect(target.url()).await;
    let report = there.audit().verify_named("default").await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.events_checked, report.head_seq), (768, 768));
    there.close().await;

    // A row changed after the cut is still caught.
    db.tamper(&["UPDATE audit_events SET payload = '{\"n\":1}' WHERE seq = 800"])
        .await;
    let report = gov.audit().verify_named("default").await.expect("verify");
    assert_eq!(
        report.finding.as_ref().map(|f| (f.seq, f.reason)),
        Some((800, Reason::ModifiedRow))
    );
    gov.close().await;
}

#[tokio::test]
async fn postgres_cuts_archive_old_rows_and_the_rest_verifies() {
    cuts_archive_old_rows_and_the_rest_verifies(TestBackend::Postgres).await;
}

#[tokio::test]
async fn sqlite_cuts_archive_old_rows_and_the_rest_verifies() {
    cuts_archive_old_rows_and_the_rest_verifies(TestBackend::Sqlite).await;
}

/// Whoever removes rows must go through a recorded cut, and a cut only counts with its sealed
/// event: the owner cannot delete uncovered rows, the application role can do neither, and a
/// cut forged by someone without the audit secret reads as tampering.
async fn rows_go_only_through_a_recorded_cut(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = connect(db.url()).await;
    log(&gov, 2 * CUT_ALIGN as u64).await;
    // The owner, guards in force: no cut covers seq 1.
    let err = db
        .exec("DELETE FROM audit_events WHERE seq = 1")
        .await
        .expect_err("an uncovered row cannot go");
    assert!(err.contains("append-only"), "{err}");

    // Forged: rows removed and a cut recorded behind the chain's back (no sealed event).
    db.tamper(&[
        "DELETE FROM audit_events WHERE seq <= 256",
        &format!(
            "INSERT INTO chain_retention (chain_id, through_seq, row_hmac, tree_frontier, \
             rows_removed, archive_sha256, operator, reason, cut_at, record_seq) \
             SELECT 'default', 256, prev_hmac, {}, 256, '{}', 'mallory', 'forged', {}, 400 \
             FROM audit_events WHERE seq = 257",
            db.bytes_sql(&[0u8; 32]),
            "0".repeat(64),
            match b {
                TestBackend::Sqlite => "0",
                _ => "now()",
            },
        ),
    ])
    .await;
    let report = gov.audit().verify_named("default").await.expect("verify");
    assert_eq!(
        report.finding.as_ref().map(|f| (f.seq, f.reason)),
        Some((256, Reason::MissingRow)),
        "{report:?}"
    );
    gov.close().await;
}

#[tokio::test]
async fn postgres_rows_go_only_through_a_recorded_cut() {
    rows_go_only_through_a_recorded_cut(TestBackend::Postgres).await;
}

#[tokio::test]
async fn sqlite_rows_go_only_through_a_recorded_cut() {
    rows_go_only_through_a_recorded_cut(TestBackend::Sqlite).await;
}

/// The application role (a service's credentials) can neither remove rows nor record a cut,
/// through SQL or through the library, and nothing changes when it tries.
#[tokio::test]
async fn the_application_role_can_neither_cut_nor_delete() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let pg = db.postgres().expect("postgres");
    let gov = connect(db.url()).await;
    log(&gov, 300).await;
    let app = connect(&db.app_url()).await;
    let admin = Admin::connect(&db.app_url())
        .await
        .expect("admin as the app role");
    let segment = retention::plan(&admin, "default", now(), None)
        .await
        .expect("the app role may read what a cut would be");
    let err = retention::cut(
        &app,
        &segment,
        &CutRecord {
            row_hmac: &[0u8; 32],
            archive_sha256: &"0".repeat(64),
            operator: "mallory",
            reason: "cover tracks",
        },
    )
    .await
    .expect_err("the app role may not cut");
    assert!(
        err.to_string().to_lowercase().contains("permission") || err.is_config(),
        "{err}"
    );
    let pool = pg.admin_pool().await;
    for sql in [
        "DELETE FROM audit_events WHERE seq <= 256",
        "INSERT INTO chain_retention (chain_id, through_seq, row_hmac, tree_frontier, rows_removed, \
         archive_sha256, operator, reason, record_seq) VALUES ('default', 256, \
         decode(repeat('00', 32), 'hex'), '', 256, repeat('0', 64), 'mallory', 'x', 300)",
    ] {
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {APP_ROLE}")))
            .execute(&mut *tx)
            .await
            .expect("set role");
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *tx)
            .await
            .expect_err(sql);
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    pool.close().await;
    let report = gov.audit().verify_named("default").await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        (report.events_checked, report.archived_through),
        (300, None)
    );
    admin.close().await;
    app.close().await;
    gov.close().await;
}
