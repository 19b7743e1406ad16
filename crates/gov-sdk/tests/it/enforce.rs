//! Scope, presence and halts, loop detection: on real Postgres, across handles.

use std::time::Duration;

use gov_sdk::{
    Error, EventFilter, Governance, LoopAction, LoopConfig, LoopVerdict, PresenceState,
    ScopeDenial, ScopePolicy,
};
use gov_testdb::TestDb;

use crate::support::{SECRET, connect, eventually, operator};

fn policy() -> ScopePolicy {
    ScopePolicy::new("billing".parse().expect("agent id"))
        .allow_tools(["read_invoice", "send_email", "admin_panel"])
        .allow_apis(["openai"])
        .hide_tools(["admin_panel"])
}

async fn kinds(gov: &Governance, kind: &str) -> Vec<gov_sdk::AuditRecord> {
    gov.audit()
        .events(&EventFilter {
            kind: Some(kind.into()),
            ..EventFilter::default()
        })
        .await
        .expect("read events")
}

#[tokio::test]
async fn scope_denies_by_default_and_audits_every_denial() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    match gov.scope().check("billing", "read_invoice").await {
        Err(Error::ScopeViolation {
            denial: ScopeDenial::NoPolicy,
            ..
        }) => {}
        other => panic!("unknown agent must be denied, got {other:?}"),
    }
    gov.scope().register(policy()).await.unwrap();
    gov.scope().check("billing", "read_invoice").await.unwrap();
    gov.scope().check_api("billing", "openai").await.unwrap();
    let hidden = gov
        .scope()
        .check("billing", "admin_panel")
        .await
        .unwrap_err();
    assert!(
        matches!(
            hidden,
            Error::ScopeViolation {
                denial: ScopeDenial::ToolHidden,
                ..
            }
        ),
        "{hidden}"
    );
    let other = gov.scope().check("billing", "delete_db").await.unwrap_err();
    assert!(other.to_string().contains("delete_db"), "{other}");
    assert!(gov.scope().check_api("billing", "anthropic").await.is_err());
    let shown = gov
        .scope()
        .filter_tools(
            "billing",
            &["admin_panel", "send_email", "delete_db", "read_invoice"],
        )
        .await
        .unwrap();
    assert_eq!(shown, ["send_email", "read_invoice"]);
    assert!(
        gov.scope()
            .filter_tools("stranger", &["send_email"])
            .await
            .unwrap()
            .is_empty()
    );

    let denials = kinds(&gov, "scope.denied").await;
    assert_eq!(denials.len(), 4);
    assert_eq!(
        denials[0].payload,
        r#"{"reason":"no_policy","tool":"read_invoice"}"#
    );
    assert_eq!(
        denials[3].payload,
        r#"{"api":"anthropic","reason":"api_not_allowed"}"#
    );

    assert!(gov.scope().unregister("billing").await.unwrap());
    assert!(gov.scope().check("billing", "read_invoice").await.is_err());
}

#[tokio::test]
async fn a_policy_changed_elsewhere_is_reloaded_without_restart() {
    let db = TestDb::new().await;
    let a = connect(&db).await;
    let b = connect(&db).await;
    assert!(a.scope().check("billing", "send_email").await.is_err());
    b.scope().register(policy()).await.unwrap();
    let took = eventually("the change is seen", Duration::from_secs(5), || async {
        a.scope().check("billing", "send_email").await.is_ok()
    })
    .await;
    eprintln!("policy reload seen after {took:?}");
    b.scope()
        .register(ScopePolicy::new("billing".parse().unwrap()).allow_tools(["read_invoice"]))
        .await
        .unwrap();
    eventually("the change is seen", Duration::from_secs(5), || async {
        a.scope().check("billing", "send_email").await.is_err()
    })
    .await;
}

#[tokio::test]
async fn a_halt_from_another_handle_blocks_within_the_cache_bound_and_survives_heartbeats() {
    let db = TestDb::new().await;
    let agent_side = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .halt_cache_ttl(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let operator_side = connect(&db).await;
    agent_side.presence().heartbeat("billing").await.unwrap();
    agent_side
        .presence()
        .assert_not_halted("billing")
        .await
        .unwrap(); // warms the cache

    let alice = operator(&operator_side, "alice@example.com").await;
    let bob = operator(&operator_side, "bob").await;
    assert!(
        operator_side
            .presence()
            .halt(&alice, "billing", "runaway spend")
            .await
            .unwrap()
    );
    let took = eventually("the change is seen", Duration::from_millis(500), || async {
        agent_side
            .presence()
            .assert_not_halted("billing")
            .await
            .is_err()
    })
    .await;
    eprintln!("halt seen after {took:?}");
    match agent_side.presence().assert_not_halted("billing").await {
        Err(Error::Halted { by, reason, .. }) => {
            assert_eq!(by.as_deref(), Some("alice@example.com"));
            assert_eq!(reason.as_deref(), Some("runaway spend"));
        }
        other => panic!("expected halted, got {other:?}"),
    }
    // Heartbeats never clear a halt.
    for _ in 0..3 {
        agent_side.presence().heartbeat("billing").await.unwrap();
        assert!(
            agent_side
                .presence()
                .assert_not_halted("billing")
                .await
                .is_err()
        );
    }
    assert_eq!(
        agent_side.presence().status("billing").await.unwrap().state,
        PresenceState::Halted
    );

    // The agent's own connection (the application role) can never clear its halt.
    let app_side = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    let err = app_side
        .presence()
        .resume(&bob, "billing", "let me out")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only an operator connection may halt for an operator or resume"),
        "{err}"
    );
    assert!(
        app_side
            .presence()
            .assert_not_halted("billing")
            .await
            .is_err()
    );

    assert!(
        operator_side
            .presence()
            .resume(&bob, "billing", "spend reviewed")
            .await
            .unwrap()
    );
    eventually("the change is seen", Duration::from_millis(500), || async {
        agent_side
            .presence()
            .assert_not_halted("billing")
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        agent_side.presence().status("billing").await.unwrap().state,
        PresenceState::Live
    );

    // A halt made by another process (psql, calling the same database function the console
    // uses) is seen within the cache bound too, and every gate refuses.
    let out = std::process::Command::new("psql")
        .arg(db.url())
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            "SELECT governance_halt('billing', 'carol', 'from another process')",
        ])
        .output()
        .expect("psql, from the PostgreSQL client, is needed for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the change is seen", Duration::from_millis(500), || async {
        agent_side
            .presence()
            .assert_not_halted("billing")
            .await
            .is_err()
    })
    .await;
    assert!(matches!(
        agent_side.scope().check("billing", "x").await,
        Err(Error::Halted { .. })
    ));
    assert!(matches!(
        agent_side.cost().check_or_raise("billing", "s").await,
        Err(Error::Halted { .. })
    ));
    operator_side
        .presence()
        .resume(&bob, "billing", "done")
        .await
        .unwrap();

    let halted = kinds(&operator_side, "agent.halted").await;
    assert_eq!(halted.len(), 1);
    assert_eq!(halted[0].actor.as_deref(), Some("alice@example.com"));
    let resumed = kinds(&operator_side, "agent.resumed").await;
    assert_eq!(resumed[0].actor.as_deref(), Some("bob"));
    // Halting needs a reason.
    assert!(
        operator_side
            .presence()
            .halt(&alice, "billing", "  ")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn halt_checks_fail_closed_when_storage_is_out_of_reach() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .acquire_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    gov.presence().assert_not_halted("billing").await.unwrap();
    // Take the database away: refuse new connections and end the existing ones.
    let admin = sqlx::PgPool::connect(&gov_testdb::server_url())
        .await
        .unwrap();
    let stmt = format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name());
    sqlx::query(sqlx::AssertSqlSafe(stmt))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(db.name())
        .execute(&admin)
        .await
        .unwrap();
    eventually("the change is seen", Duration::from_secs(5), || async {
        matches!(
            gov.presence().assert_not_halted("billing").await,
            Err(Error::HaltStateUnknown { .. })
        )
    })
    .await;
    // Scope fails closed as well: the policy cannot be read, so nothing is allowed.
    assert!(gov.scope().check("billing", "read_invoice").await.is_err());
    let stmt = format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name());
    sqlx::query(sqlx::AssertSqlSafe(stmt))
        .execute(&admin)
        .await
        .unwrap();
    eventually("the change is seen", Duration::from_secs(10), || async {
        gov.presence().assert_not_halted("billing").await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn loop_detection_trips_at_exactly_the_configured_count() {
    let db = TestDb::new().await;
    let cfg = LoopConfig {
        max_repeats: 4,
        window_size: 10,
        ..LoopConfig::default()
    };
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .loop_detection(cfg)
        .connect()
        .await
        .unwrap();
    let args = serde_json::json!({ "id": 7, "q": "x" });
    let same_args_reordered = serde_json::json!({ "q": "x", "id": 7 });
    for n in 1..=3 {
        let a = if n % 2 == 0 {
            &same_args_reordered
        } else {
            &args
        };
        assert_eq!(
            gov.loops().record("bot", "s1", "search", a).await.unwrap(),
            LoopVerdict::Ok { repeats: n }
        );
    }
    // Other tools, arguments and sessions do not count.
    gov.loops()
        .record("bot", "s1", "search", &serde_json::json!({ "id": 8 }))
        .await
        .unwrap();
    gov.loops()
        .record("bot", "s2", "search", &args)
        .await
        .unwrap();
    assert_eq!(
        gov.loops()
            .record("bot", "s1", "search", &args)
            .await
            .unwrap(),
        LoopVerdict::Warned { repeats: 4 }
    );
    assert_eq!(kinds(&gov, "loop.detected").await.len(), 1);

    let halting = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .loop_detection(LoopConfig {
            max_repeats: 2,
            action: LoopAction::Halt,
            ..LoopConfig::default()
        })
        .connect()
        .await
        .unwrap();
    halting
        .loops()
        .record("runaway", "s", "fetch", &args)
        .await
        .unwrap();
    match halting.loops().record("runaway", "s", "fetch", &args).await {
        Err(Error::LoopDetected { repeats: 2, .. }) => {}
        other => panic!("expected a loop halt, got {other:?}"),
    }
    assert!(matches!(
        halting.presence().assert_not_halted("runaway").await,
        Err(Error::Halted { .. })
    ));
    let halted = kinds(&halting, "agent.halted").await;
    assert_eq!(halted[0].actor.as_deref(), Some("governance:loop-detector"));
}

#[tokio::test]
async fn modules_turned_off_stop_enforcing_but_keep_recording() {
    let db = TestDb::new().await;
    let off = gov_sdk::Modules {
        scope: false,
        budgets: false,
        halts: false,
        loops: false,
    };
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .modules(off)
        .loop_detection(LoopConfig {
            max_repeats: 2,
            action: LoopAction::Halt,
            ..LoopConfig::default()
        })
        .connect()
        .await
        .unwrap();
    gov.scope().check("stranger", "anything").await.unwrap();
    assert_eq!(
        gov.scope()
            .filter_tools("stranger", &["a", "b"])
            .await
            .unwrap(),
        ["a", "b"]
    );
    gov.presence().halt_self("stranger", "test").await.unwrap();
    gov.presence().assert_not_halted("stranger").await.unwrap();
    assert!(
        gov.presence().is_halted("stranger").await.unwrap(),
        "the halt is still recorded"
    );
    for _ in 0..5 {
        gov.loops()
            .record("stranger", "s", "t", &serde_json::json!({}))
            .await
            .unwrap();
    }
    gov.cost().check_or_raise("stranger", "s").await.unwrap();
    let r = gov
        .cost()
        .reserve("stranger", "s", "gpt-4o-mini", 1_000, Some(10))
        .await
        .unwrap();
    let usage = gov_sdk::TokenUsage {
        input_tokens: 1_000,
        output_tokens: 0,
        cached_input_tokens: 0,
    };
    assert_eq!(r.settle(usage).await.unwrap().cost, gov_sdk::MicroUsd(150));
    let snap = gov.cost().snapshot("stranger", "s").await.unwrap();
    assert_eq!(
        snap.status.day.spent,
        gov_sdk::MicroUsd(150),
        "spend is still recorded"
    );
    assert!(kinds(&gov, "scope.denied").await.is_empty());
}
