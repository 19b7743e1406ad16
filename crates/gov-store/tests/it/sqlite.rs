//! The SQLite backend, exercised through `Store` on a file in a temporary directory.

use std::time::Duration;

use gov_core::{AuditEvent, AuditRecord};
use gov_store::{AUDIT_CHANNEL, HALT_CHANNEL, Notice, Store, StoreError, StoreOptions};

struct TempDb {
    dir: std::path::PathBuf,
}

impl TempDb {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "gov-store-it-{}-{nanos}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self { dir }
    }

    fn url(&self) -> String {
        format!("sqlite://{}/governance.db", self.dir.display())
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn store(url: &str) -> Store {
    let opts = StoreOptions {
        create_if_missing: true,
        ..StoreOptions::default()
    };
    let s = Store::connect(url, &opts).await.expect("connect");
    s.migrate().await.expect("migrate");
    s
}

/// A stand-in seal (the real one lives in gov-audit): any deterministic 32 bytes.
fn seal(r: &mut AuditRecord) {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&r.seq.to_be_bytes());
    h[8] = r.prev_hmac[0].wrapping_add(1);
    r.row_hmac = h.to_vec();
}

fn event(agent: &str, n: u32) -> AuditEvent {
    AuditEvent::builder(agent, "tool.call")
        .session("s1")
        .payload(serde_json::json!({ "n": n }))
        .build()
        .expect("event")
}

#[tokio::test]
async fn rows_round_trip_exactly_and_heads_move() {
    let db = TempDb::new();
    let s = store(&db.url()).await;
    let events: Vec<AuditEvent> = (0..5).map(|n| event("a1", n)).collect();
    let seqs = s
        .append_batch("default", "k1", &events, &seal)
        .await
        .expect("append");
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let rows = s.read_chain_page("default", 0, 100).await.expect("read");
    assert_eq!(rows.len(), 5);
    for (row, ev) in rows.iter().zip(&events) {
        assert_eq!(row.event_id, ev.event_id);
        assert_eq!(row.occurred_at, ev.occurred_at, "microseconds survive");
        assert_eq!(row.payload, ev.payload);
        assert_eq!(row.session_id.as_deref(), Some("s1"));
    }
    assert_eq!(rows[1].prev_hmac, rows[0].row_hmac);
    let head = s
        .chain_head("default")
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(
        (head.seq, head.head_hmac.clone()),
        (5, rows[4].row_hmac.clone())
    );
    assert_eq!(s.chain_ids_with_rows().await.expect("ids"), vec!["default"]);
    let window = s.read_chain_window("default", 1, 3).await.expect("window");
    assert_eq!(window.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    let counts = s.event_counts(None, None, None).await.expect("counts");
    assert_eq!(counts.len(), 2, "a total and one kind: {counts:?}");
    assert!(counts[0].kind.is_none() && counts[0].events == 5 && counts[0].sessions == 1);
    let known = s
        .existing_event_ids(&[events[0].event_id.as_uuid(), uuid::Uuid::nil()])
        .await
        .expect("existing");
    assert_eq!(known, vec![events[0].event_id.as_uuid()]);
}

#[tokio::test]
async fn the_schema_refuses_updates_and_deletes_of_the_chain() {
    let db = TempDb::new();
    let s = store(&db.url()).await;
    s.append_batch("default", "k1", &[event("a1", 1)], &seal)
        .await
        .expect("append");
    let Store::Sqlite(inner) = &s else {
        panic!("a sqlite URL gives the SQLite backend")
    };
    for sql in [
        "UPDATE audit_events SET payload = '{}'",
        "DELETE FROM audit_events",
        "DELETE FROM chain_heads",
        "UPDATE chain_heads SET seq = 0",
    ] {
        let err = sqlx::query(sql).execute(inner.pool()).await.expect_err(sql);
        assert!(
            matches!(StoreError::from(err), StoreError::PermissionDenied(_)),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn listeners_are_woken_by_this_process_and_find_other_writers_by_polling() {
    let db = TempDb::new();
    let writer = store(&db.url()).await;
    // A second handle on the same file, as a second SDK handle in the same process would be.
    let reader = store(&db.url()).await;
    let mut l = reader
        .listen(&[AUDIT_CHANNEL, HALT_CHANNEL])
        .await
        .expect("listen");
    writer
        .append_batch("default", "k1", &[event("a1", 1), event("a1", 2)], &seal)
        .await
        .expect("append");
    let n = tokio::time::timeout(Duration::from_secs(5), l.recv())
        .await
        .expect("in time")
        .expect("notice");
    assert_eq!(
        n,
        Notice::Message {
            channel: AUDIT_CHANNEL.into(),
            payload: "default:2".into()
        }
    );
    // A write the store did not make (as from another process) wakes nobody: the poll finds it.
    let Store::Sqlite(raw) = &writer else {
        panic!("sqlite")
    };
    sqlx::query("INSERT INTO agent_presence (agent_id, halted, updated_at) VALUES ('a9', 1, 0)")
        .execute(raw.pool())
        .await
        .expect("raw insert");
    let n = tokio::time::timeout(Duration::from_secs(5), l.recv())
        .await
        .expect("polled in time")
        .expect("notice");
    assert_eq!(
        n,
        Notice::Message {
            channel: HALT_CHANNEL.into(),
            payload: "a9".into()
        }
    );
}

#[tokio::test]
async fn a_listener_behind_the_pruning_is_told_it_lost_messages() {
    let db = TempDb::new();
    let s = store(&db.url()).await;
    s.append_batch("default", "k1", &[event("a1", 1)], &seal)
        .await
        .expect("append");
    let mut l = s.listen(&[AUDIT_CHANNEL]).await.expect("listen");
    s.append_batch("default", "k1", &[event("a1", 2)], &seal)
        .await
        .expect("append");
    s.append_batch("default", "k1", &[event("a1", 3)], &seal)
        .await
        .expect("append");
    let Store::Sqlite(raw) = &s else {
        panic!("sqlite")
    };
    // Prune the first one before the listener read it.
    sqlx::query("DELETE FROM notifications WHERE payload = 'default:2'")
        .execute(raw.pool())
        .await
        .expect("prune");
    let first = l.recv().await.expect("notice");
    assert_eq!(first, Notice::Lost);
    let next = l.recv().await.expect("notice");
    assert_eq!(
        next,
        Notice::Message {
            channel: AUDIT_CHANNEL.into(),
            payload: "default:3".into()
        }
    );
}

#[tokio::test]
async fn imports_must_continue_the_chain() {
    let db = TempDb::new();
    let src = store(&db.url()).await;
    let events: Vec<AuditEvent> = (0..4).map(|n| event("a1", n)).collect();
    src.append_batch("default", "k1", &events, &seal)
        .await
        .expect("append");
    let rows = src.read_chain_page("default", 0, 10).await.expect("rows");
    let target = store("sqlite::memory:").await;
    // Starting in the middle is refused and writes nothing.
    let err = target
        .import_rows("default", &rows[1..])
        .await
        .expect_err("gap");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(
        target
            .read_chain_page("default", 0, 10)
            .await
            .expect("read")
            .is_empty()
    );
    target
        .import_rows("default", &rows[..2])
        .await
        .expect("first half");
    target
        .import_rows("default", &rows[2..])
        .await
        .expect("second half");
    let copied = target
        .read_chain_page("default", 0, 10)
        .await
        .expect("read");
    assert_eq!(copied, rows);
    let head = target
        .chain_head("default")
        .await
        .expect("head")
        .expect("some");
    assert_eq!(head.seq, 4);
    // Importing the same rows again would fork the chain: refused.
    let again = target
        .import_rows("default", &rows[..1])
        .await
        .expect_err("again");
    assert!(matches!(again, StoreError::Conflict(_)), "{again}");
}

#[tokio::test]
async fn a_missing_file_is_an_error_unless_creation_is_asked_for() {
    let db = TempDb::new();
    let err = Store::connect(&db.url(), &StoreOptions::default())
        .await
        .expect_err("a mistyped path must not become a new empty database");
    assert!(matches!(err, StoreError::NoSuchDatabase), "{err}");
    assert!(err.to_string().contains("governance migrate"), "{err}");
    assert!(
        !db.dir.join("governance.db").exists(),
        "nothing was created"
    );
    store(&db.url()).await;
    assert!(db.dir.join("governance.db").exists());
}

#[tokio::test]
async fn urls_name_their_backend_or_say_what_is_expected() {
    for bad in ["sqlite://", "mysql://h/db", "governance.db"] {
        let err = Store::connect(bad, &StoreOptions::default())
            .await
            .expect_err(bad);
        let text = err.to_string();
        assert!(
            text.contains("sqlite:///path/to/governance.db"),
            "{bad}: {text}"
        );
    }
}
