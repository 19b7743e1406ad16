//! A service's own tests with nothing installed: an in-memory SQLite database, migrated by the
//! handle that owns it.

use gov_sdk::{AuditEvent, BudgetPolicy, Governance, MicroUsd, TokenUsage};

use crate::support::SECRET;

#[tokio::test]
async fn an_in_memory_database_migrated_on_connect_runs_the_whole_sdk() {
    let gov = Governance::builder()
        .database_url("sqlite::memory:")
        .audit_secret(SECRET)
        .migrate_on_connect(true)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("an in-memory database needs nothing but this");
    for i in 0..20 {
        let ev = AuditEvent::builder("unit-agent", "tool.call")
            .session("s-1")
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
    gov.cost()
        .register(
            BudgetPolicy::new("unit-agent".parse().expect("id")).per_session(MicroUsd(10_000)),
        )
        .await
        .expect("policy");
    let hold = gov
        .cost()
        .reserve("unit-agent", "s-1", "gpt-4o-mini", 1_000, Some(200))
        .await
        .expect("within the cap");
    hold.settle(TokenUsage {
        input_tokens: 1_000,
        output_tokens: 150,
        cached_input_tokens: 0,
    })
    .await
    .expect("settle");
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 20);
    gov.close().await;
}

#[tokio::test]
async fn without_migrate_on_connect_an_empty_database_says_to_migrate() {
    let err = Governance::builder()
        .database_url("sqlite::memory:")
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect_err("nothing migrates implicitly");
    assert!(err.to_string().contains("governance migrate"), "{err}");
}
