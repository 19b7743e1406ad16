//! Personal fields and crypto-shredding on both backends: no plaintext is stored, fields read
//! back while the subject's key exists and as erased after `erase_subject`, the rows and their
//! seals are unchanged by an erasure, an erased subject never gets a key again, and a ciphertext
//! moved to another event reads as an integrity problem, not as erased.

use gov_sdk::{AuditEvent, AuditRecord, ERASED, EventFilter, Governance, UNREADABLE};
use gov_testdb::{TestBackend, TestStore};
use serde_json::{Value, json};

use crate::support::SECRET;

macro_rules! both {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(gov_testdb::TestBackend::Postgres).await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(gov_testdb::TestBackend::Sqlite).await;
                }
            )+
        }
    };
}

both! {
    personal_fields_are_stored_encrypted_read_back_and_erased,
    a_moved_ciphertext_reads_unreadable_not_erased,
}

async fn connect(db: &TestStore) -> Governance {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .spool(false)
        .connect()
        .await
        .expect("connect")
}

fn signup(subject: &str, email: &str, name: &str) -> AuditEvent {
    AuditEvent::builder("signup-agent", "user.signup")
        .payload(json!({ "email": email, "name": name, "plan": "pro" }))
        .personal(subject, &["email", "name"])
        .build()
        .expect("event")
}

fn payload(r: &AuditRecord) -> Value {
    serde_json::from_str(&r.payload).expect("JSON payload")
}

async fn all(gov: &Governance) -> Vec<AuditRecord> {
    gov.audit()
        .events(&EventFilter::default())
        .await
        .expect("read")
}

async fn sealed(gov: &Governance) -> Vec<AuditRecord> {
    gov.audit()
        .events_sealed(&EventFilter::default())
        .await
        .expect("read")
}

/// Every byte the database holds, as a superuser sees it: the rows of `audit_events` (Postgres),
/// or the database file and its write-ahead log (SQLite).
async fn raw_bytes(db: &TestStore) -> Vec<u8> {
    if let Some(pg) = db.postgres() {
        let pool = pg.admin_pool().await;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT payload || agent_id || kind || coalesce(session_id, '') FROM audit_events",
        )
        .fetch_all(&pool)
        .await
        .expect("raw rows");
        let keys: Vec<Vec<u8>> = sqlx::query_scalar("SELECT wrapped FROM subject_keys")
            .fetch_all(&pool)
            .await
            .expect("raw keys");
        pool.close().await;
        let mut out = rows.join("\n").into_bytes();
        keys.iter().for_each(|k| out.extend_from_slice(k));
        out
    } else {
        let path = db.sqlite_path().expect("a SQLite file");
        let mut out = std::fs::read(path).expect("read the database file");
        let wal = path.with_extension("db-wal");
        let wal = if wal.exists() {
            wal
        } else {
            std::path::PathBuf::from(format!("{}-wal", path.display()))
        };
        if let Ok(w) = std::fs::read(&wal) {
            out.extend_from_slice(&w);
        }
        out
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn personal_fields_are_stored_encrypted_read_back_and_erased(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = connect(&db).await;
    gov.audit()
        .log(signup("u-1", "ada@example.org", "Ada Lovelace"))
        .await
        .expect("log");
    gov.audit()
        .log(signup("u-2", "alan@example.org", "Alan Turing"))
        .await
        .expect("log");
    gov.audit()
        .log(signup("u-1", "ada@example.net", "Ada King"))
        .await
        .expect("log");

    // Nothing personal is stored in the clear.
    let raw = raw_bytes(&db).await;
    for secret in [
        "ada@example",
        "Lovelace",
        "Ada King",
        "alan@example",
        "Turing",
    ] {
        assert!(!contains(&raw, secret), "{secret} is stored in the clear");
    }
    let stored = sealed(&gov).await;
    assert!(
        stored[0].payload.contains("\"$gov.enc\":\"v1\""),
        "{}",
        stored[0].payload
    );
    assert!(stored[0].payload.contains("\"plan\":\"pro\""));

    // Read back opened.
    let read = all(&gov).await;
    assert_eq!(
        payload(&read[0]),
        json!({"email": "ada@example.org", "name": "Ada Lovelace", "plan": "pro"})
    );
    assert_eq!(payload(&read[1])["name"], "Alan Turing");
    assert_eq!(payload(&read[2])["email"], "ada@example.net");

    // Erase u-1: one key (one handle made one).
    let destroyed = gov
        .audit()
        .erase_subject("u-1", "alice", "GDPR Art. 17 request 1234")
        .await
        .expect("erase");
    assert_eq!(destroyed, 1);
    let read = all(&gov).await;
    assert_eq!(
        payload(&read[0]),
        json!({"email": ERASED, "name": ERASED, "plan": "pro"})
    );
    assert_eq!(payload(&read[2])["email"], ERASED);
    assert_eq!(
        payload(&read[1])["email"],
        "alan@example.org",
        "u-2 untouched"
    );
    let erased = read.last().expect("the erasure event");
    assert_eq!(erased.kind, "subject.erased");
    assert_eq!(
        payload(erased),
        json!({"subject": "u-1", "keys_destroyed": 1, "reason": "GDPR Art. 17 request 1234", "operator": "alice"})
    );

    // The rows are the ones sealed before; the chain verifies clean.
    let after = sealed(&gov).await;
    for (x, y) in stored.iter().zip(&after) {
        assert_eq!((&x.payload, &x.row_hmac), (&y.payload, &y.row_hmac));
    }
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 4);

    // Another process (a fresh handle) sees the erasure too, and an erased subject's later
    // events are recorded with their personal fields erased: no key is stored again.
    let other = connect(&db).await;
    other
        .audit()
        .log(signup("u-1", "ada@example.com", "Ada"))
        .await
        .expect("log after erasure");
    gov.audit()
        .log(signup("u-1", "ada@example.com", "Ada"))
        .await
        .expect("log after erasure, from the handle that had cached the key");
    let read = all(&other).await;
    assert_eq!(payload(&read[4])["email"], ERASED);
    assert_eq!(payload(&read[5])["email"], ERASED);
    assert_eq!(
        gov.audit()
            .erase_subject("u-1", "alice", "again")
            .await
            .expect("erase again"),
        0,
        "no key was stored for an erased subject"
    );
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
    // A host cannot log a value shaped like an envelope.
    let forged = AuditEvent::builder("a", "user.signup")
        .payload(json!({"email": {"$gov.enc": "v1"}}))
        .build()
        .expect("event");
    assert!(gov.audit().log(forged).await.is_err());
    gov.close().await;
    other.close().await;
}

async fn a_moved_ciphertext_reads_unreadable_not_erased(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = connect(&db).await;
    gov.audit()
        .log(signup("u-1", "ada@example.org", "Ada Lovelace"))
        .await
        .expect("log");
    gov.audit()
        .log(signup("u-1", "ada@example.net", "Ada King"))
        .await
        .expect("log");
    let stored = sealed(&gov).await;
    // Row 2's fields replaced by row 1's ciphertexts, as someone with database access could.
    let moved = stored[0].payload.replace('\'', "''");
    db.tamper(&[&format!(
        "UPDATE audit_events SET payload = '{moved}' WHERE seq = 2"
    )])
    .await;
    let read = all(&gov).await;
    assert_eq!(payload(&read[0])["email"], "ada@example.org");
    assert_eq!(payload(&read[1])["email"], UNREADABLE);
    assert_eq!(payload(&read[1])["name"], UNREADABLE);
    // And the seal says the row was changed.
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(!report.is_clean());
    gov.close().await;
}

/// The application role stores and reads keys, never deletes or changes them, and cannot
/// erase; the owner can.
#[tokio::test]
async fn the_app_role_cannot_remove_or_change_keys_nor_erase() {
    let db = gov_testdb::TestDb::new().await;
    let app = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .spool(false)
        .connect()
        .await
        .expect("connect as the app role");
    app.audit()
        .log(signup("u-1", "ada@example.org", "Ada"))
        .await
        .expect("the app role stores a key and logs");
    assert_eq!(payload(&all(&app).await[0])["email"], "ada@example.org");
    let err = app
        .audit()
        .erase_subject("u-1", "mallory", "x")
        .await
        .expect_err("the app role may not erase");
    assert!(err.to_string().contains("schema owner"), "{err}");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.app_url())
        .await
        .expect("connect as the app role");
    for sql in [
        "DELETE FROM subject_keys",
        "UPDATE subject_keys SET wrapped = wrapped",
        "TRUNCATE subject_keys",
        "DELETE FROM erased_subjects",
        "INSERT INTO erased_subjects (subject) VALUES ('u-9')",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM subject_keys")
        .fetch_one(&mut conn)
        .await
        .expect("the app role reads keys");
    assert_eq!(n, 1);
    // The owner erases; afterwards even the app role's direct insert is refused.
    let owner = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .spool(false)
        .connect()
        .await
        .expect("connect as the owner");
    assert_eq!(
        owner
            .audit()
            .erase_subject("u-1", "alice", "request")
            .await
            .expect("erase"),
        1
    );
    let err = sqlx::query(
        "INSERT INTO subject_keys (subject, kid, wrapped) VALUES ('u-1', 'k', decode(repeat('00', 72), 'hex'))",
    )
    .execute(&mut conn)
    .await
    .expect_err("no key for an erased subject")
    .to_string();
    assert!(err.contains("erased"), "{err}");
    assert_eq!(payload(&all(&app).await[0])["email"], ERASED);
    app.close().await;
    owner.close().await;
}
