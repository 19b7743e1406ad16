//! Moving chains between databases with `gov_sdk::admin::transfer`, through the library alone:
//! a round trip both ways between Postgres and SQLite that verifies clean on the target and
//! resumes idempotently, a damaged file refused with the precise damage before anything is
//! written, and a source chain that does not link up refused by the export.

use gov_sdk::admin::Admin;
use gov_sdk::admin::transfer::{
    self, Damage, Export, ImportFile, ImportReport, TransferError, VERSION,
};
use gov_sdk::{AuditEvent, ErrorKind, Governance, Reason};
use gov_testdb::{TestBackend, TestStore};

use crate::support::SECRET;

async fn connect(db: &TestStore) -> Governance {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect")
}

fn event(chain: &str, i: u64) -> AuditEvent {
    AuditEvent::builder("agent-1", "tool.call")
        .chain(chain)
        .session("s-1")
        .payload(serde_json::json!({ "n": i, "text": "é\u{0}\"" }))
        .build()
        .expect("valid event")
}

/// A store with `rows` events on `default` and 3 on `billing`.
async fn seeded(b: TestBackend, rows: u64) -> TestStore {
    let db = TestStore::new(b).await;
    let gov = connect(&db).await;
    for i in 0..rows {
        gov.audit().log(event("default", i)).await.expect("log");
    }
    for i in 0..3 {
        gov.audit().log(event("billing", i)).await.expect("log");
    }
    gov.close().await;
    db
}

/// The file `Export` writes for every chain of `db`.
async fn export(db: &TestStore) -> (Vec<u8>, transfer::ExportReport) {
    let admin = Admin::connect(db.url()).await.expect("admin");
    let export = Export::prepare(&admin, &[]).await.expect("prepare");
    let mut file = Vec::new();
    let report = export.write(&admin, &mut file, &()).await.expect("export");
    admin.close().await;
    (file, report)
}

/// A temporary file holding `bytes`, removed when dropped.
fn file_of(bytes: &[u8]) -> tempfile_path::Temp {
    tempfile_path::Temp::new(bytes)
}

/// A file in a directory of its own under the system's temporary directory (no extra crate).
mod tempfile_path {
    pub(crate) struct Temp {
        dir: std::path::PathBuf,
        pub(crate) path: std::path::PathBuf,
    }

    impl Temp {
        pub(crate) fn new(bytes: &[u8]) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "gov-transfer-{}-{}",
                std::process::id(),
                uuid::Uuid::now_v7()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join("chains.jsonl");
            std::fs::write(&path, bytes).expect("write");
            Self { dir, path }
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn import(db: &TestStore, bytes: &[u8]) -> Result<ImportReport, TransferError> {
    let temp = file_of(bytes);
    let file = ImportFile::open(&temp.path).expect("open");
    let admin = Admin::connect(db.url()).await.expect("admin");
    let result = transfer::import(&admin, &file, &()).await;
    admin.close().await;
    result
}

async fn heads(db: &TestStore) -> Vec<gov_sdk::ChainHead> {
    let admin = Admin::connect(db.url()).await.expect("admin");
    let heads = admin.chain_heads().await.expect("heads");
    admin.close().await;
    heads
}

async fn round_trip(from: TestBackend, to: TestBackend) {
    let source = seeded(from, 2_100).await;
    let (file, exported) = export(&source).await;
    assert_eq!(exported.rows, 2_103);
    assert_eq!(
        exported
            .chains
            .iter()
            .map(|c| (c.chain_id.as_str(), c.seq))
            .collect::<Vec<_>>(),
        [("billing", 3), ("default", 2_100)]
    );
    let text = std::str::from_utf8(&file).expect("utf-8");
    let header: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("header")).expect("json");
    assert_eq!(header["format"], transfer::FORMAT);
    assert_eq!(header["version"], VERSION);
    assert_eq!(header["source"], from.as_str());

    let target = TestStore::new(to).await;
    let report = import(&target, &file).await.expect("import");
    assert_eq!(report.target, to.as_str());
    assert_eq!(report.rows(), 2_103);
    assert_eq!(report.skipped(), 0);
    // Rows, seals and heads arrive exactly: the chains verify on the target under the secret
    // that sealed them, and end where the source's end.
    assert_eq!(heads(&target).await, exported.chains);
    let gov = connect(&target).await;
    let verified = transfer::verify_imported(&gov, &report)
        .await
        .expect("verify");
    assert_eq!(verified.len(), 2);
    assert!(verified.iter().all(|c| c.is_clean()), "{verified:?}");
    // The target goes on appending where the source stopped.
    let logged = gov.audit().log(event("default", 9)).await.expect("log");
    assert_eq!(logged.seq(), Some(2_101));
    gov.close().await;

    // Imported again: everything the file holds is already there and skipped.
    let again = import(&target, &file).await.expect("import again");
    assert_eq!(again.rows(), 0);
    assert_eq!(again.skipped(), 2_103);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_from_sqlite_to_postgres_verifies_clean_and_resumes() {
    round_trip(TestBackend::Sqlite, TestBackend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_from_postgres_to_sqlite_verifies_clean_and_resumes() {
    round_trip(TestBackend::Postgres, TestBackend::Sqlite).await;
}

/// `file` with the row lines for which `drop` holds taken out and the end line's row count
/// kept right, so only the links give the damage away.
fn without_rows(file: &[u8], drop: impl Fn(&serde_json::Value) -> bool) -> Vec<u8> {
    let text = std::str::from_utf8(file).expect("utf-8");
    let mut removed = 0;
    let mut kept: Vec<serde_json::Value> = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        if v["type"] == "row" && drop(&v) {
            removed += 1;
            continue;
        }
        kept.push(v);
    }
    if let Some(end) = kept.last_mut() {
        let rows = end["rows"].as_u64().expect("count");
        end["rows"] = serde_json::Value::from(rows - removed);
    }
    let mut out = String::new();
    for v in kept {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// Applies `f` to every line of `file`.
fn edited(file: &[u8], f: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let text = std::str::from_utf8(file).expect("utf-8");
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("json");
        f(&mut v);
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

fn is_row(v: &serde_json::Value, chain: &str, seq: i64) -> bool {
    v["type"] == "row" && v["chain_id"] == chain && v["seq"] == seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_file_is_refused_with_the_precise_damage_and_nothing_written() {
    let source = seeded(TestBackend::Sqlite, 12).await;
    let (file, _) = export(&source).await;
    let target = TestStore::new(TestBackend::Postgres).await;

    // Row 4 of default taken out: row 5 follows row 3. Line numbers: the header, no signer,
    // billing's 3 rows (lines 2-4), then default's rows from line 5: row 5 is line 8 once
    // row 4 is gone.
    let gap = without_rows(&file, |v| is_row(v, "default", 4));
    let err = import(&target, &gap).await.expect_err("a gap");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(
        err.damage(),
        Some(&Damage::Gap {
            line: 8,
            chain: "default".into(),
            seq: 5,
            after: 3
        }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("row 5 of chain default follows row 3"),
        "{text}"
    );
    assert!(text.contains("nothing was imported"), "{text}");

    // Row 7's predecessor rewritten: the row no longer names row 6's seal.
    let fork = edited(&file, |v| {
        if is_row(v, "default", 7) {
            v["prev_hmac"] = serde_json::Value::from("ab".repeat(32));
        }
    });
    let err = import(&target, &fork).await.expect_err("a fork");
    assert_eq!(
        err.damage(),
        Some(&Damage::Fork {
            line: 11,
            chain: "default".into(),
            seq: 7,
            after: 6
        }),
        "{err}"
    );

    // The last row taken out: the rows link up but end short of the header's head.
    let short = without_rows(&file, |v| is_row(v, "default", 12));
    let err = import(&target, &short).await.expect_err("short");
    assert_eq!(
        err.damage(),
        Some(&Damage::HeadMismatch {
            chain: "default".into(),
            head: 12,
            ends_at: 11
        }),
        "{err}"
    );

    // Cut off before its end line.
    let text = std::str::from_utf8(&file).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[..lines.len() - 1].join("\n") + "\n";
    let err = import(&target, cut.as_bytes()).await.expect_err("cut off");
    assert!(
        matches!(&err, TransferError::CutOff { lines, .. } if *lines == 16),
        "{err:?}"
    );

    // Nothing of any of them reached the target; the whole file still imports.
    assert!(heads(&target).await.is_empty());
    let report = import(&target, &file).await.expect("the whole file");
    assert_eq!(report.rows(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_chain_that_does_not_link_up_is_refused_by_the_export() {
    let source = seeded(TestBackend::Postgres, 12).await;
    source
        .tamper(&["DELETE FROM audit_events WHERE chain_id = 'default' AND seq = 6"])
        .await;
    let admin = Admin::connect(source.url()).await.expect("admin");
    let export = Export::prepare(&admin, &["default".to_owned()])
        .await
        .expect("prepare");
    let mut file = Vec::new();
    let err = export
        .write(&admin, &mut file, &())
        .await
        .expect_err("a missing row");
    admin.close().await;
    assert_eq!(err.kind(), ErrorKind::Tampered);
    let TransferError::Broken { chain, finding } = &err else {
        panic!("not a broken chain: {err:?}");
    };
    assert_eq!(chain, "default");
    assert_eq!((finding.seq, finding.reason), (6, Reason::MissingRow));
    // What was written has no end line, so no import would take it.
    let written = String::from_utf8(file).expect("utf-8");
    assert!(!written.contains("\"type\":\"end\""), "{written}");

    let admin = Admin::connect(source.url()).await.expect("admin");
    let err = Export::prepare(&admin, &["nope".to_owned()])
        .await
        .expect_err("no such chain");
    admin.close().await;
    assert!(
        matches!(&err, TransferError::NoSuchChain { chain } if chain == "nope"),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Config);
}

/// An export does not carry subject keys or erasures yet: it refuses up front instead of moving
/// chains whose personal fields would read as erased on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_keys_refuse_the_export_up_front() {
    for b in [TestBackend::Sqlite, TestBackend::Postgres] {
        let source = seeded(b, 3).await;
        let admin = Admin::connect(source.url()).await.expect("admin");
        assert!(
            Export::prepare(&admin, &[]).await.is_ok(),
            "{b:?}: no keys yet"
        );
        let gov = connect(&source).await;
        gov.audit()
            .log(
                AuditEvent::builder("signup-agent", "user.signup")
                    .payload(serde_json::json!({ "email": "ada@example.com", "plan": "pro" }))
                    .personal("subject-1", &["email"])
                    .build()
                    .expect("event"),
            )
            .await
            .expect("log");
        gov.close().await;
        let err = Export::prepare(&admin, &[])
            .await
            .expect_err("personal-data keys are not carried");
        admin.close().await;
        assert!(
            matches!(err, TransferError::SubjectKeysNotCarried),
            "{b:?}: {err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("would read as erased"), "{err}");
    }
}
