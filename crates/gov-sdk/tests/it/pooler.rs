//! Behind a connection pooler (the Debian package's PgBouncer): in session mode the SDK runs
//! as on a direct connection (the conformance suite runs through it: `conformance::pgbouncer::`);
//! what a pooler cannot carry is named as the pooler's doing, never as "the database is
//! unreachable" or an anonymous database error.

use gov_sdk::{AuditEvent, ErrorKind, Governance};
use gov_testdb::{Bouncer, PoolMode, TestBackend, TestDb, TestStore};

use crate::support::SECRET;

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
