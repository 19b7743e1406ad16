//! Ed25519 row signatures and signed checkpoints on real Postgres: signed rows verify and are
//! counted apart from unsigned ones; a stripped, unregistered, revoked or bad signature, a cut
//! tail and a chain rebuilt without the signing key are each reported with their reason.

use gov_sdk::admin::Admin;
use gov_sdk::{Governance, Reason, Signer};
use gov_testdb::TestDb;

use crate::support::{SECRET, event};

async fn signed(db: &TestDb, url: &str) -> Governance {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .signing_key(url, "agent-1")
        .connect()
        .await
        .expect("connect")
}

async fn plain(db: &TestDb) -> Governance {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect")
}

async fn log(gov: &Governance, n: u64) {
    for i in 0..n {
        gov.audit()
            .log(event("agent-1", "tool.call", i))
            .await
            .expect("log");
    }
}

async fn finding(gov: &Governance) -> (i64, Reason, String) {
    let f = gov
        .audit()
        .verify_chain()
        .await
        .expect("verify")
        .finding
        .expect("a finding");
    (f.seq, f.reason, f.detail)
}

#[tokio::test]
async fn signed_rows_verify_and_unsigned_ones_are_counted_apart() {
    let db = TestDb::new().await;
    let gov = signed(&db, "ephemeral").await;
    log(&gov, 10).await;
    // A writer whose key file is missing still writes, unsigned, and says why.
    let broken = signed(&db, "file:///nonexistent/agent.key").await;
    log(&broken, 2).await;
    let unsigned = plain(&db).await;
    log(&unsigned, 3).await;
    let report = unsigned.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{:?}", report.finding);
    let s = report.signatures;
    assert_eq!((s.signed, s.unsigned_local_failure, s.unsigned), (10, 2, 3));
    for g in [gov, broken, unsigned] {
        g.close().await;
    }
}

#[tokio::test]
async fn a_stripped_signature_is_reported_even_when_the_status_is_rewritten() {
    let db = TestDb::new().await;
    let gov = signed(&db, "ephemeral").await;
    log(&gov, 6).await;
    db.tamper(&["UPDATE audit_events SET signature = NULL WHERE seq = 3"])
        .await;
    assert_eq!(finding(&gov).await.1, Reason::StrippedSignature);
    // Every trace removed: no signature, no signer, status "unsigned". The signer id is sealed,
    // so the row only verifies with it put back.
    db.tamper(&["UPDATE audit_events SET signature = NULL, signer_key_id = NULL, signature_status = 'unsigned' WHERE seq = 3"],
    )
    .await;
    let (seq, reason, detail) = finding(&gov).await;
    assert_eq!((seq, reason), (3, Reason::StrippedSignature), "{detail}");
    gov.close().await;
}

#[tokio::test]
async fn unregistered_revoked_and_bad_signatures_are_reported() {
    let db = TestDb::new().await;
    let gov = signed(&db, "ephemeral").await;
    log(&gov, 4).await;
    db.tamper(&[
        "UPDATE audit_events SET signature = decode(repeat('ab', 64), 'hex') WHERE seq = 2",
    ])
    .await;
    assert_eq!(finding(&gov).await.1, Reason::BadSignature);
    db.tamper(&[
            "UPDATE audit_events a SET signature = b.signature FROM audit_events b WHERE a.seq = 2 AND b.seq = 1",
        ],
    )
    .await;
    assert_eq!(
        finding(&gov).await.1,
        Reason::BadSignature,
        "another row's signature"
    );

    // A signature by a key that is not registered.
    let db = TestDb::new().await;
    let gov = signed(&db, "ephemeral").await;
    log(&gov, 3).await;
    db.tamper(&["DELETE FROM signer_keys"]).await;
    let (seq, reason, _) = finding(&gov).await;
    assert_eq!((seq, reason), (1, Reason::UnregisteredSigner));
    gov.close().await;

    // A revoked key: rows signed before the revocation stay good, later ones fail.
    let db = TestDb::new().await;
    let gov = signed(&db, "ephemeral").await;
    log(&gov, 3).await;
    let admin = Admin::connect(db.url()).await.expect("admin");
    let pool = db.admin_pool().await;
    let id: String = sqlx::query_scalar("SELECT signer_key_id FROM signer_keys")
        .fetch_one(&pool)
        .await
        .expect("one signer");
    pool.close().await;
    admin.revoke_signer(&id).await.expect("revoke");
    assert!(admin.revoke_signer(&id).await.is_err(), "only once");
    admin.close().await;
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
    log(&gov, 1).await;
    let (seq, reason, _) = finding(&gov).await;
    assert_eq!((seq, reason), (4, Reason::RevokedSigner));
    gov.close().await;
}

#[tokio::test]
async fn a_checkpoint_catches_a_cut_tail_and_a_chain_rebuilt_without_the_signing_key() {
    let db = TestDb::new().await;
    let gov = signed(&db, "ephemeral").await;
    log(&gov, 10).await;
    let operator = Signer::load("ephemeral", "operator").expect("key");
    let cp = gov
        .audit()
        .checkpoint_with("default", &operator)
        .await
        .expect("checkpoint");
    assert_eq!(cp.seq, 10);
    assert!(cp.signature_is_valid());
    assert_eq!(
        gov.audit().check_checkpoint(&cp).await.expect("check"),
        None
    );

    // Cut the tail, move the head back and remove the stored checkpoints: the chain alone
    // verifies clean, the checkpoint held elsewhere does not.
    db.tamper(&[
            "DELETE FROM audit_events WHERE seq > 7",
            "UPDATE chain_heads h SET seq = 7, head_hmac = e.row_hmac FROM audit_events e WHERE e.seq = 7",
            "DELETE FROM checkpoints",
        ],
    )
    .await;
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
    let f = gov
        .audit()
        .check_checkpoint(&cp)
        .await
        .expect("check")
        .expect("cut tail");
    assert_eq!((f.seq, f.reason), (10, Reason::MissingRow), "{}", f.detail);
    assert!(f.detail.contains("tail was cut off"), "{}", f.detail);
    gov.close().await;

    // Rebuilt wholesale with the HMAC secret but without the signing key: rows unsigned and
    // consistent, head moved, checkpoints gone.
    let db = TestDb::new().await;
    let gov = signed(&db, "ephemeral").await;
    log(&gov, 5).await;
    let cp = gov
        .audit()
        .checkpoint_with("default", &operator)
        .await
        .expect("checkpoint");
    gov.close().await;
    db.tamper(&[
        "DELETE FROM audit_events",
        "DELETE FROM chain_heads",
        "DELETE FROM checkpoints",
    ])
    .await;
    let forger = plain(&db).await;
    log(&forger, 5).await;
    assert!(
        forger
            .audit()
            .verify_chain()
            .await
            .expect("verify")
            .is_clean()
    );
    let f = forger
        .audit()
        .check_checkpoint(&cp)
        .await
        .expect("check")
        .expect("rebuilt");
    assert_eq!(
        (f.seq, f.reason),
        (5, Reason::CheckpointMismatch),
        "{}",
        f.detail
    );
    // A checkpoint whose own signature was altered proves nothing.
    let mut forged = cp.clone();
    forged.seq = 4;
    let f = forger
        .audit()
        .check_checkpoint(&forged)
        .await
        .expect("check")
        .expect("bad");
    assert_eq!(f.reason, Reason::BadCheckpoint);
    forger.close().await;
}

#[tokio::test]
async fn automatic_checkpoints_are_stored_and_checked_by_every_verification() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .signing_key("ephemeral", "agent-1")
        .checkpoint_every(5)
        .connect()
        .await
        .expect("connect");
    log(&gov, 12).await;
    let pool = db.admin_pool().await;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM checkpoints ORDER BY seq")
        .fetch_all(&pool)
        .await
        .expect("checkpoints");
    pool.close().await;
    assert_eq!(seqs, [5, 10]);
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
    // Cut the tail below the last checkpoint: the stored checkpoint reports it.
    db.tamper(&[
            "DELETE FROM audit_events WHERE seq > 8",
            "UPDATE chain_heads h SET seq = 8, head_hmac = e.row_hmac FROM audit_events e WHERE e.seq = 8",
        ],
    )
    .await;
    let (seq, reason, detail) = finding(&gov).await;
    assert_eq!((seq, reason), (10, Reason::MissingRow), "{detail}");
    // A stored checkpoint with a forged signature is reported as such.
    db.tamper(&[
        "DELETE FROM checkpoints WHERE seq = 10",
        "UPDATE checkpoints SET signature = decode(repeat('cd', 64), 'hex')",
    ])
    .await;
    assert_eq!(finding(&gov).await.1, Reason::BadCheckpoint);
    gov.close().await;
}
