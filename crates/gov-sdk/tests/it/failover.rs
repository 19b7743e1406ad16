//! Production Postgres through the real path: a URL naming several servers skips one that
//! does not answer and moves to the next when the one in use stops answering, without
//! restarting the service; `target_session_attrs=read-write` refuses a read-only server; and
//! a read-only server (a standby, a demoted primary) is storage out of reach for writes
//! (observation spools), never a data error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gov_sdk::{AuditEvent, Governance};
use gov_testdb::{Proxy, TestBackend, TestStore};

use crate::support::SECRET;

fn event(agent: &str, n: u64) -> AuditEvent {
    AuditEvent::builder(agent, "tool.call")
        .payload(serde_json::json!({ "n": n }))
        .build()
        .expect("helper")
}

/// `url` with its `host:port` replaced by `hosts`, and `extra` query parameters added.
fn with_hosts(url: &str, hosts: &str, extra: &str) -> String {
    let after_at = url.find('@').map_or(0, |i| i + 1);
    let rest = &url[after_at..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let mut out = format!("{}{hosts}{}", &url[..after_at], &rest[end..]);
    if !extra.is_empty() {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(extra);
    }
    out
}

fn host_of(url: &str) -> String {
    let after_at = url.find('@').map_or(0, |i| i + 1);
    let rest = &url[after_at..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    rest[..end].to_owned()
}

fn root(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gov-failover-{tag}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&d).expect("helper");
    d
}

async fn handle(url: &str, spool_root: &std::path::Path) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .spool_dir(spool_root)
        .acquire_timeout(Duration::from_millis(800))
        .observation_deadline(Duration::from_secs(2))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect")
}

/// Sets the database read-only (or back) for new sessions, and ends the sessions open on it,
/// as a failover manager fencing or demoting a primary does.
async fn set_read_only(db: &TestStore, on: bool) {
    let pg = db.postgres().expect("a Postgres test database");
    let admin = pg.admin_pool().await;
    let stmt = format!(
        "ALTER DATABASE {} SET default_transaction_read_only = {}",
        pg.name(),
        if on { "on" } else { "off" }
    );
    let mut conn = admin.acquire().await.expect("an admin connection");
    // The admin's own session may have started read-only already.
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await
        .expect("a read-write admin session");
    sqlx::query(sqlx::AssertSqlSafe(stmt))
        .execute(&mut *conn)
        .await
        .expect("alter database");
    drop(conn);
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&admin)
    .await
    .expect("end the other sessions");
    admin.close().await;
}

async fn drained(gov: &Governance) {
    let start = Instant::now();
    while gov.audit().spooled() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the spool did not drain: {} left",
            gov.audit().spooled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_list_skips_a_server_that_does_not_answer() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let app = db.app_url();
    // Port 1 refuses at once; the second server is the real one.
    let url = with_hosts(
        &app,
        &format!("127.0.0.1:1,{}", host_of(&app)),
        "target_session_attrs=read-write",
    );
    let dir = root("skip");
    let gov = handle(&url, &dir).await;
    let at = gov.audit().log(event("a", 0)).await.unwrap();
    assert!(at.seq().is_some(), "durable on the second server");
    gov.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_target_refuses_a_read_only_server_naming_why() {
    let db = TestStore::new(TestBackend::Postgres).await;
    set_read_only(&db, true).await;
    let url = with_hosts(
        &db.app_url(),
        &host_of(&db.app_url()),
        "target_session_attrs=read-write",
    );
    let err = Governance::builder()
        .database_url(&url)
        .audit_secret(SECRET)
        .spool(false)
        .acquire_timeout(Duration::from_secs(2))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect_err("a read-only server is not read-write");
    let msg = err.to_string();
    assert!(err.is_unavailable(), "{msg}");
    assert!(
        msg.contains("read-write") && msg.contains("read-only"),
        "{msg}"
    );
    assert!(
        !msg.contains("127.0.0.1") && !msg.contains("postgres://"),
        "{msg}"
    );
    // Without the attribute, the read-only server is taken, and a write to it is storage out
    // of reach (SQLSTATE 25006), not a data error.
    let gov = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect to a read-only server");
    let err = gov
        .audit()
        .log(event("a", 0))
        .await
        .expect_err("no write on a read-only server");
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    gov.close().await;
}

/// A standby or a demoted primary: observation spools instead of failing, and everything is
/// written once the server takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_becomes_read_only_spools_observation_until_it_takes_writes() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let dir = root("ro");
    let gov = handle(&db.app_url(), &dir).await;
    let mut acked = Vec::new();
    let first = gov.audit().log(event("a", 0)).await.unwrap();
    assert!(first.seq().is_some());
    acked.push(first.event_id());
    set_read_only(&db, true).await;
    let mut spooled = 0;
    for n in 1..=5 {
        let at = gov
            .audit()
            .log(event("a", n))
            .await
            .expect("log never fails");
        spooled += usize::from(at.seq().is_none());
        acked.push(at.event_id());
    }
    assert_eq!(spooled, 5, "nothing is durable on a read-only server");
    set_read_only(&db, false).await;
    drained(&gov).await;
    // Read back through a handle of its own: the writer's pool may still hold a connection the
    // demotion ended (its next use fails as out of reach, once).
    let reader = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    let rows = reader
        .audit()
        .events(&gov_sdk::EventFilter::default())
        .await
        .unwrap();
    let mut seen: HashMap<gov_sdk::EventId, usize> = HashMap::new();
    for r in &rows {
        *seen.entry(r.event_id).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged event {id} stored once"
        );
    }
    assert!(reader.audit().verify_chain().await.unwrap().is_clean());
    reader.close().await;
    gov.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server in use stops answering; the handle moves to the next server of its URL by
/// itself and writes are durable again, nothing lost or doubled, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_moves_to_the_next_server_when_the_one_in_use_stops_answering() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let (first, through_first) = Proxy::for_url(&db.app_url()).await;
    let (_second, through_second) = Proxy::for_url(&db.app_url()).await;
    let url = with_hosts(
        &db.app_url(),
        &format!("{},{}", host_of(&through_first), host_of(&through_second)),
        "target_session_attrs=read-write",
    );
    let dir = root("move");
    let gov = handle(&url, &dir).await;
    let mut acked = Vec::new();
    let at = gov.audit().log(event("a", 0)).await.unwrap();
    assert!(at.seq().is_some());
    acked.push(at.event_id());
    first.cut();
    // Log until writes are durable again: a liveness bound, not a timing check.
    let start = Instant::now();
    let mut n = 1;
    loop {
        let at = gov
            .audit()
            .log(event("a", n))
            .await
            .expect("log never fails");
        acked.push(at.event_id());
        n += 1;
        if at.seq().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never durable again on the second server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drained(&gov).await;
    let rows = gov
        .audit()
        .events(&gov_sdk::EventFilter::default())
        .await
        .unwrap();
    let mut seen: HashMap<gov_sdk::EventId, usize> = HashMap::new();
    for r in &rows {
        *seen.entry(r.event_id).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged event {id} stored once"
        );
    }
    let ns: Vec<u64> = rows
        .iter()
        .map(|r| r.payload_json().unwrap()["n"].as_u64().unwrap())
        .collect();
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order: {ns:?}");
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
    gov.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that stops answering without closing anything: a read never holds its caller past
/// the store's call timeout (storage out of reach: enforcement refuses), and the listener's
/// watchdog notices it no longer hears, so the scope cache stops being trusted and checks
/// read storage (and refuse while it is silent) instead of answering from a stale cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_bounds_every_call_and_the_caches_stop_trusting_a_deaf_listener() {
    let db = TestStore::new(TestBackend::Postgres).await;
    // The policy is there before the handle connects (no notification of it in flight).
    let direct = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    direct
        .scope()
        .register(
            gov_sdk::ScopePolicy::new("billing".parse().expect("agent")).allow_tools(["search"]),
        )
        .await
        .unwrap();
    direct.close().await;
    let (proxy, through) = Proxy::for_url(&db.app_url()).await;
    let gov = Governance::builder()
        .database_url(&through)
        .audit_secret(SECRET)
        .spool(false)
        .acquire_timeout(Duration::from_millis(500))
        .storage_call_timeout(Some(Duration::from_millis(400)))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    gov.scope().check("billing", "search").await.unwrap();

    proxy.stall();
    // A read: out of reach once the timeout passes, never a wait for ever (liveness bound).
    let read = tokio::time::timeout(Duration::from_secs(60), gov.audit().chain_ids())
        .await
        .expect("a read on a silent server returns");
    let err = read.expect_err("nothing can be read from a silent server");
    assert!(err.is_unavailable(), "{err}");
    // The scope cache: trusted while the listener hears; refused (read from storage, which
    // is silent) once the watchdog finds the listener deaf.
    let start = Instant::now();
    let refusal = loop {
        match gov.scope().policy("billing").await {
            Ok(_) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the scope cache was trusted for a minute on a listener that hears nothing"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    assert!(refusal.is_unavailable(), "{refusal}");

    proxy.resume();
    // Back: the listener connects again and the cache is rebuilt.
    let start = Instant::now();
    while gov.scope().check("billing", "search").await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "never back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gov.close().await;
}

/// Connections that go silent for ever (a frozen node, a partition that never heals for them)
/// while the server takes new ones: each call on one costs its deadline once, then the handle
/// opens new connections and is `Durable` again without a restart. The driver checks every
/// connection handed back to its pool with a round trip that has no time limit, so without the
/// store retiring the pool a call timed out on, the silent connections would hold every slot
/// for ever and the handle would spool until the operating system gave up on them (hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_go_silent_for_ever_cost_a_deadline_not_the_pool() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let (proxy, through) = Proxy::for_url(&db.app_url()).await;
    let dir = root("silent");
    let gov = Governance::builder()
        .database_url(&through)
        .audit_secret(SECRET)
        .spool_dir(&dir)
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(800))
        .storage_call_timeout(Some(Duration::from_millis(500)))
        .observation_deadline(Duration::from_secs(1))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    // Both of the pool's connections open and in use.
    let mut acked = Vec::new();
    let audit = gov.audit();
    let (a, b) = tokio::join!(audit.log(event("a", 0)), audit.log(event("a", 1)));
    for at in [a.unwrap(), b.unwrap()] {
        assert!(at.seq().is_some(), "durable before the silence");
        acked.push(at.event_id());
    }
    proxy.silence();
    let start = Instant::now();
    let mut n = 2;
    let mut spooled = 0;
    loop {
        let at = tokio::time::timeout(Duration::from_secs(60), gov.audit().log(event("a", n)))
            .await
            .expect("a log() on silent connections returns")
            .expect("log never fails");
        acked.push(at.event_id());
        n += 1;
        if at.seq().is_some() {
            break;
        }
        spooled += 1;
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never durable again: {spooled} records spooled on connections that stay silent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(spooled > 0, "the silence was noticed");
    drained(&gov).await;
    let rows = gov
        .audit()
        .events(&gov_sdk::EventFilter::default())
        .await
        .unwrap();
    let mut seen: HashMap<gov_sdk::EventId, usize> = HashMap::new();
    for r in &rows {
        *seen.entry(r.event_id).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged event {id} stored once"
        );
    }
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
    gov.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
