//! The failover drill: a primary with a synchronous standby built by `pg_basebackup -R`, one
//! service (64 tasks on one handle) logging through a URL that names both servers with
//! `target_session_attrs=read-write`, the primary killed (`pg_ctl stop -m immediate`) mid-load
//! and the standby promoted (`pg_ctl promote`), as a failover manager (Patroni,
//! pg_auto_failover) does. The service is not restarted.
//!
//! Checked: every acknowledged event (`Durable` or `Spooled`) is stored on the new primary
//! exactly once, each task's events in the order it logged them, the chain verifies, the spool
//! drains, and each task's last answer is `Durable`. Measured (written to the fault report):
//! the time from the promotion to the first `Durable` answer and to `Durable` for good.
//! `cargo xtask faults` reports that figure beside its aim; the suite asserts no timing.
//!
//! The drill runs under `cargo xtask faults` (it sets [`crate::crash::DRILL`]); without it the
//! test says so and returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gov_sdk::admin::Admin;
use gov_sdk::{AuditEvent, Governance};
use gov_testdb::Cluster;
use serde_json::json;

use crate::support::{SECRET, all_rows};

const TASKS: usize = 64;
/// How long the load runs before the primary is killed, and after the promotion.
const BEFORE: Duration = Duration::from_secs(1);
const AFTER: Duration = Duration::from_secs(4);
/// How long the failover manager takes to notice the dead primary before promoting.
const DETECTION: Duration = Duration::from_millis(500);

/// One answer a task got.
#[derive(Debug, Clone)]
struct Ack {
    task: usize,
    n: u64,
    id: gov_sdk::EventId,
    durable: bool,
    at: Instant,
}

fn event(agent: &str, n: u64) -> AuditEvent {
    AuditEvent::builder(agent, "tool.call")
        .session("s")
        .payload(json!({ "n": n }))
        .build()
        .expect("helper")
}

/// Runs `f` (a blocking Postgres tool) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("helper")
}

/// Polls `sql` (one boolean) on `url` until it is true; fails after a minute.
async fn until_true(url: &str, sql: &'static str, what: &str) {
    use sqlx::Connection as _;
    let start = Instant::now();
    loop {
        if let Ok(mut conn) = sqlx::PgConnection::connect(url).await {
            let ok: Option<bool> = sqlx::query_scalar(sql)
                .fetch_optional(&mut conn)
                .await
                .ok()
                .flatten();
            let _ = conn.close().await;
            if ok == Some(true) {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_over_without_losing_or_doubling_an_event() {
    if std::env::var_os(crate::crash::DRILL).is_none() {
        eprintln!(
            "skipped: the failover drill (two private clusters, a primary killed and its synchronous standby promoted under load) runs under `cargo xtask faults`, which sets {}",
            crate::crash::DRILL
        );
        return;
    }
    // The store's and the spool's own account is printed if the drill fails (`RUST_LOG` to
    // choose).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("gov_sdk=info,gov_store=info,gov_audit=warn")
            }),
        )
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let primary = Arc::new(blocking(Cluster::start).await);
    let standby = {
        let p = primary.clone();
        Arc::new(blocking(move || p.standby("standby")).await)
    };
    // Synchronous once the standby exists (set before the base backup, the standby would copy
    // the setting and, once promoted, wait for a standby of its own for ever).
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&primary.url())
            .await
            .expect("connect");
        for stmt in [
            "ALTER SYSTEM SET synchronous_standby_names = 'standby'",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::query(stmt).execute(&mut conn).await.expect("helper");
        }
        let _ = conn.close().await;
    }
    until_true(
        &primary.url(),
        "SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = 'standby' AND sync_state = 'sync')",
        "the standby never became synchronous",
    )
    .await;
    let admin = Admin::connect(&primary.url()).await.expect("connect");
    admin.migrate().await.expect("migrate");
    admin.close().await;

    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let spool = std::env::temp_dir().join(format!("gov-promote-{}", uuid::Uuid::now_v7()));
    let gov = Governance::builder()
        .database_url(&url)
        .audit_secret(SECRET)
        .spool_dir(&spool)
        .acquire_timeout(Duration::from_secs(1))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(std::sync::Mutex::new(Vec::<Ack>::new()));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (gov, stop, acks, errors) =
                (gov.clone(), stop.clone(), acks.clone(), errors.clone());
            tokio::spawn(async move {
                let agent = format!("t{t}");
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    match gov.audit().log(event(&agent, n)).await {
                        Ok(at) => acks.lock().expect("helper").push(Ack {
                            task: t,
                            n,
                            id: at.event_id(),
                            durable: at.seq().is_some(),
                            at: Instant::now(),
                        }),
                        Err(e) => errors.lock().expect("helper").push(e.to_string()),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // Under load: every task has answers…
    let start = Instant::now();
    while {
        let a = acks.lock().expect("helper");
        (0..TASKS).any(|t| !a.iter().any(|x| x.task == t && x.durable))
    } {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the load never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(BEFORE).await;
    let killed_at = Instant::now();
    {
        let p = primary.clone();
        blocking(move || p.crash()).await;
    }
    tokio::time::sleep(DETECTION).await;
    {
        let s = standby.clone();
        blocking(move || s.promote()).await;
    }
    let promoted_at = Instant::now();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.expect("helper");
    }
    let start = Instant::now();
    while gov.audit().spooled() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the spool did not drain: {} left",
            gov.audit().spooled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gov.close().await;

    // What the new primary holds.
    let reader = Governance::builder()
        .database_url(standby.url())
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    let rows = all_rows(&reader).await;
    let mut stored: HashMap<gov_sdk::EventId, usize> = HashMap::new();
    for r in &rows {
        *stored.entry(r.event_id).or_default() += 1;
    }
    let duplicates = stored.values().filter(|c| **c > 1).count();
    let mut last_n: HashMap<String, u64> = HashMap::new();
    let mut out_of_order = 0usize;
    for r in &rows {
        let n = r.payload_json().expect("helper")["n"]
            .as_u64()
            .expect("helper");
        if let Some(prev) = last_n.insert(r.agent_id.as_str().to_owned(), n)
            && n <= prev
        {
            out_of_order += 1;
        }
    }
    let report = reader.audit().verify_all().await.expect("verify");
    reader.close().await;
    let _ = std::fs::remove_dir_all(&spool);

    let acks = acks.lock().expect("helper").clone();
    let errors = errors.lock().expect("helper").clone();
    let lost: Vec<&Ack> = acks
        .iter()
        .filter(|a| stored.get(&a.id).copied().unwrap_or(0) == 0)
        .collect();
    let ms = |from: Instant, to: Instant| {
        i64::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(i64::MAX)
    };
    let last_spooled = acks.iter().filter(|a| !a.durable).map(|a| a.at).max();
    let first_durable = acks
        .iter()
        .filter(|a| a.durable && a.at >= promoted_at)
        .map(|a| a.at)
        .min();
    let back_for_good = acks
        .iter()
        .filter(|a| a.durable && a.at >= promoted_at && last_spooled.is_none_or(|s| a.at >= s))
        .map(|a| a.at)
        .min();
    let every_task_ends_durable = (0..TASKS).all(|t| {
        acks.iter()
            .rfind(|a| a.task == t)
            .is_some_and(|a| a.durable)
    });
    let figures = json!({
        "tasks": TASKS,
        "acknowledged_durable": acks.iter().filter(|a| a.durable).count(),
        "acknowledged_spooled": acks.iter().filter(|a| !a.durable).count(),
        "stored_events": rows.len(),
        "lost": lost.len(),
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "errors": errors.len(),
        "verify_clean": report.is_clean(),
        "kill_to_promoted_ms": ms(killed_at, promoted_at),
        "first_durable_after_promotion_ms": first_durable.map(|t| ms(promoted_at, t)),
        "back_to_durable_after_promotion_ms": back_for_good.map(|t| ms(promoted_at, t)),
        "every_task_ends_durable": every_task_ends_durable,
        "took_s": started.elapsed().as_secs_f64(),
    });
    eprintln!("failover drill: {figures:#}");
    crate::support::report("promote", &figures);

    for a in lost.iter().take(5) {
        eprintln!(
            "task {} event {} ({}) acknowledged {} but not stored",
            a.task,
            a.n,
            a.id,
            if a.durable { "Durable" } else { "Spooled" }
        );
    }
    for e in errors.iter().take(5) {
        eprintln!("{e}");
    }
    assert!(errors.is_empty(), "log() never fails during a failover");
    assert!(lost.is_empty(), "every acknowledged event is stored");
    assert_eq!(duplicates, 0, "no event is stored twice");
    assert_eq!(out_of_order, 0, "each task's events are stored in order");
    assert!(report.is_clean(), "the chain verifies: {report:?}");
    assert!(
        every_task_ends_durable,
        "back on Durable writes after the promotion, without a restart"
    );
}
