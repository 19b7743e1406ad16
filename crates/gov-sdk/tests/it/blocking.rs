//! The blocking facade, used from plain threads with no async runtime.

use gov_sdk::{AuditEvent, BudgetPolicy, Error, Governance, MicroUsd, ScopePolicy, TokenUsage};
use gov_testdb::TestDb;

use crate::support::SECRET;

#[test]
fn plain_threads_can_check_reserve_and_log() {
    let setup = tokio::runtime::Runtime::new().unwrap();
    let db = setup.block_on(TestDb::new());
    drop(setup);
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect_blocking()
        .unwrap();
    gov.block_on(
        gov.handle()
            .scope()
            .register(ScopePolicy::new("w".parse().unwrap()).allow_tools(["send"])),
    )
    .unwrap()
    .unwrap();
    gov.block_on(
        gov.handle()
            .cost()
            .register(BudgetPolicy::new("w".parse().unwrap()).per_session(MicroUsd(10_000))),
    )
    .unwrap()
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let gov = gov.clone();
            std::thread::spawn(move || {
                gov.check_scope("w", "send").unwrap();
                assert!(gov.check_scope("w", "delete").is_err());
                gov.check_or_raise("w", "s").unwrap();
                let r = gov
                    .reserve("w", "s", "gpt-4o-mini", 100, Some(100))
                    .unwrap();
                gov.settle(
                    r,
                    TokenUsage {
                        input_tokens: 100,
                        output_tokens: 10,
                        cached_input_tokens: 0,
                    },
                )
                .unwrap();
                gov.heartbeat("w").unwrap();
                gov.assert_not_halted("w").unwrap();
                let ev = AuditEvent::builder("w", "tool.call")
                    .payload(t)
                    .build()
                    .unwrap();
                gov.log(ev).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let report = gov.verify_chain().unwrap();
    assert!(report.is_clean());
    // 4 logged + 4 scope denials.
    assert_eq!(report.events_checked, 8);
}

#[tokio::test]
async fn the_facade_refuses_to_block_inside_a_runtime() {
    let err = Governance::builder()
        .database_url("postgres://x@127.0.0.1/x")
        .audit_secret(SECRET)
        .connect_blocking()
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("inside an async runtime")),
        "{err}"
    );
}
