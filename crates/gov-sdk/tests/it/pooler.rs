//! Behind a connection pooler (the Debian package's PgBouncer): in session mode the SDK runs
//! as on a direct connection (the conformance suite runs through it: `conformance::pgbouncer::`);
//! what a pooler cannot carry is named as the pooler's doing, never as "the database is
//! unreachable" or an anonymous database error.

use std::time::Duration;

use gov_sdk::{AuditEvent, ErrorKind, Governance};
use gov_testdb::{Bouncer, PoolMode, Proxy, TestBackend, TestDb, TestStore};

use crate::support::{SECRET, connect, eventually, operator};

fn event(n: u64) -> AuditEvent {
    AuditEvent::builder("pool-bot", "tool.call")
        .payload(serde_json::json!({ "n": n }))
        .build()
        .expect("helper")
}

/// A URL carrying a startup parameter PgBouncer does not pass on (here the role switch of the
/// application role's test URL, `options=-c role=…`): the error names the pooler and the
/// parameter and says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_parameter_the_pooler_refuses_is_named() {
    let db = TestStore::new(TestBackend::PgBouncer).await;
    let err = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect_err("PgBouncer refuses the options parameter");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Config, "{text}");
    assert!(
        text.contains("pooler") && text.contains("`options`"),
        "{text}"
    );
    assert!(text.contains("ignore_startup_parameters"), "{text}");
    assert!(!text.contains("unreachable"), "{text}");
    assert!(!text.contains("127.0.0.1"), "no URL in errors: {text}");
}

/// Transaction pooling (PgBouncer before 1.21, or without `max_prepared_statements`) hands a
/// connection's statements to whichever server session is free, so the driver's prepared
/// statements collide or vanish. Every call that meets that fails as a configuration error
/// naming transaction mode and the ways out; none succeeds wrongly or reads as an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_that_loses_prepared_statements_is_named() {
    let db = TestDb::new().await;
    let server = gov_testdb::server_url();
    // One server session for every client connection: the second client's first statement
    // meets the first client's.
    let bouncer =
        tokio::task::spawn_blocking(move || Bouncer::start(&server, PoolMode::Transaction, 1))
            .await
            .expect("helper");
    let url = bouncer.url_for(db.url());
    let mut errors = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        match Governance::builder()
            .database_url(&url)
            .audit_secret(SECRET)
            .spool(false)
            .warn_on_no_wrappers(false)
            .connect()
            .await
        {
            Ok(h) => handles.push(h),
            Err(e) => errors.push(e),
        }
    }
    for n in 0..4 {
        for h in &handles {
            if let Err(e) = h.audit().log(event(n)).await {
                errors.push(e);
            }
        }
    }
    assert!(
        !errors.is_empty(),
        "two handles on one server session through transaction pooling meet each other's statements"
    );
    for e in &errors {
        let text = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Config, "{text}");
        assert!(
            text.contains("transaction mode") && text.contains("session mode"),
            "{text}"
        );
    }
    for h in handles {
        h.close().await;
    }
}

/// A listen URL (`listen_url`, `GOVERNANCE_LISTEN_DATABASE_URL`) carries the notification
/// listener and nothing else: the pool's statements never use it, and a halt made by another
/// process is heard through it at once (the halt cache's TTL is an hour here, so nothing but the
/// notification can deliver it in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_takes_its_own_url_and_hears_halts_through_it() {
    let db = TestDb::new().await;
    let (proxy, listen_url) = Proxy::for_url(db.url()).await;
    let agent_side = Governance::builder()
        .database_url(db.url())
        .listen_url(&listen_url)
        .audit_secret(SECRET)
        .halt_cache_ttl(Duration::from_secs(3600))
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect with a listen URL");
    agent_side
        .presence()
        .heartbeat("billing")
        .await
        .expect("heartbeat");
    agent_side
        .presence()
        .assert_not_halted("billing")
        .await
        .expect("not halted yet");
    // The connect-time check and the listener went through the proxy; nothing else will.
    let listening = proxy.accepted();
    assert!(listening >= 1, "the listener connects through its own URL");
    for n in 0..20 {
        agent_side.audit().log(event(n)).await.expect("log");
    }
    assert_eq!(
        proxy.accepted(),
        listening,
        "the pool's statements never use the listen URL"
    );

    let operator_side = connect(&db).await;
    let alice = operator(&operator_side, "alice").await;
    operator_side
        .presence()
        .halt(&alice, "billing", "runaway spend")
        .await
        .expect("halt");
    eventually("the halt is heard", Duration::from_secs(5), || async {
        agent_side
            .presence()
            .assert_not_halted("billing")
            .await
            .is_err()
    })
    .await;
    agent_side.close().await;
    operator_side.close().await;
}

/// A listen URL that reaches another database would leave the listener deaf for ever (halts
/// never heard until a TTL): refused when the handle connects, naming the variable's purpose and
/// never the URL. On SQLite a listen URL is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_url_to_another_database_is_refused_up_front() {
    let db = TestDb::new().await;
    let other = TestDb::new().await;
    let err = Governance::builder()
        .database_url(db.url())
        .listen_url(other.url())
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect_err("another database");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Config, "{text}");
    assert!(
        text.contains("listen URL reaches another database"),
        "{text}"
    );
    assert!(!text.contains("127.0.0.1"), "no URL in errors: {text}");

    let err = Governance::builder()
        .database_url("sqlite::memory:")
        .listen_url(db.url())
        .audit_secret(SECRET)
        .migrate_on_connect(true)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect_err("SQLite has no listener");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains("GOVERNANCE_LISTEN_DATABASE_URL"),
        "{err}"
    );
}
