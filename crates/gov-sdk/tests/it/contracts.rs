//! Contracts and the governed tool runner on real Postgres.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gov_sdk::{
    BudgetPolicy, CallContext, Contract, Error, EventFilter, Governance, MicroUsd, OperatorRole,
    Pre, ScopePolicy,
};
use gov_testdb::TestDb;
use serde_json::{Value, json};

use crate::support::connect;

async fn ready(db: &TestDb) -> Governance {
    let gov = connect(db).await;
    gov.scope()
        .register(ScopePolicy::new("bot".parse().expect("setup")).allow_tools(["lookup", "refund"]))
        .await
        .expect("setup");
    gov.cost()
        .register(
            BudgetPolicy::new("bot".parse().expect("setup")).per_day(MicroUsd::from_cents(100)),
        )
        .await
        .expect("setup");
    gov
}

async fn kinds(gov: &Governance) -> Vec<String> {
    gov.audit()
        .events(&EventFilter {
            limit: Some(1_000),
            ..EventFilter::default()
        })
        .await
        .expect("events")
        .into_iter()
        .map(|r| r.kind)
        .filter(|k| k.starts_with("tool.") || k.starts_with("contract."))
        .collect()
}

fn condition(e: &Error) -> (&'static str, String) {
    match e {
        Error::ContractViolation {
            phase, condition, ..
        } => (phase, condition.clone()),
        other => panic!("expected a contract violation, got {other}"),
    }
}

#[tokio::test]
async fn a_governed_call_runs_between_its_conditions_and_is_audited() {
    let db = TestDb::new().await;
    let gov = ready(&db).await;
    let contract = Contract::new()
        .require(Pre::ScopeAllowed)
        .require(Pre::BudgetAvailable)
        .require_that("has_id", |c| {
            c.args.get("id").map(|_| ()).ok_or_else(|| "no id".into())
        })
        .ensure_that("found", |_, out| {
            if out["found"] == json!(true) {
                Ok(())
            } else {
                Err("not found".into())
            }
        });
    let args = json!({ "id": 7 });
    let ctx = CallContext {
        agent: "bot",
        session: "s",
        tool: "lookup",
        args: &args,
    };
    let out = gov
        .contracts()
        .run(&contract, ctx, None, |a: Value| async move {
            Ok::<_, String>(json!({ "found": true, "id": a["id"] }))
        })
        .await
        .unwrap();
    assert_eq!(out["id"], 7);
    assert_eq!(kinds(&gov).await, ["tool.started", "tool.finished"]);
    // `tool.started` carries the call's hash: the one an approval of this call is bound to.
    let started = gov
        .audit()
        .events(&EventFilter {
            kind: Some("tool.started".into()),
            ..EventFilter::default()
        })
        .await
        .expect("events");
    let hash = gov_sdk::action_hash("lookup", &args).expect("hash");
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        started[0].payload_json().expect("payload")["args_sha256"],
        hex.as_str()
    );

    // A failed postcondition: the tool ran, its output is refused.
    let missing = json!({ "id": 8 });
    let ctx = CallContext {
        args: &missing,
        ..ctx
    };
    let err = gov
        .contracts()
        .run(&contract, ctx, None, |_| async {
            Ok::<_, String>(json!({ "found": false }))
        })
        .await
        .unwrap_err();
    assert_eq!(condition(&err), ("post", "found".into()));

    // A failing tool is audited and reported.
    let err = gov
        .contracts()
        .run(&contract, ctx, None, |_| async {
            Err::<Value, _>("upstream 503")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ToolFailed { message, .. } if message == "upstream 503"),
        "{err}"
    );
    assert_eq!(
        kinds(&gov).await,
        [
            "tool.started",
            "tool.finished",
            "tool.started",
            "tool.finished",
            "contract.violated",
            "tool.started",
            "tool.finished"
        ]
    );
}

#[tokio::test]
async fn failed_preconditions_stop_the_tool_before_it_runs() {
    let db = TestDb::new().await;
    let gov = ready(&db).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let tool = |ran: Arc<AtomicUsize>| {
        move |_: Value| async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(json!({}))
        }
    };
    let args = json!({});
    let scoped = Contract::new().require(Pre::ScopeAllowed);
    let ctx = CallContext {
        agent: "bot",
        session: "s",
        tool: "delete_everything",
        args: &args,
    };
    let err = gov
        .contracts()
        .run(&scoped, ctx, None, tool(ran.clone()))
        .await
        .unwrap_err();
    assert_eq!(condition(&err), ("pre", "scope_allowed".into()));

    let custom = Contract::new().require_that("business_hours", |_| Err("closed".into()));
    let ctx = CallContext {
        tool: "lookup",
        ..ctx
    };
    let err = gov
        .contracts()
        .run(&custom, ctx, None, tool(ran.clone()))
        .await
        .unwrap_err();
    assert_eq!(condition(&err), ("pre", "business_hours".into()));
    assert!(err.to_string().contains("closed"), "{err}");

    // Budget exhausted: spend the whole day cap first.
    gov.cost()
        .track(
            "bot",
            "s",
            "gpt-4o",
            gov_sdk::TokenUsage {
                input_tokens: 400_000,
                output_tokens: 0,
                cached_input_tokens: 0,
            },
        )
        .await
        .unwrap();
    let budget = Contract::new().require(Pre::BudgetAvailable);
    let err = gov
        .contracts()
        .run(&budget, ctx, None, tool(ran.clone()))
        .await
        .unwrap_err();
    assert_eq!(condition(&err), ("pre", "budget_available".into()));

    gov.presence()
        .halt_self("bot", "investigating")
        .await
        .unwrap();
    let err = gov
        .contracts()
        .run(&Contract::new(), ctx, None, tool(ran.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Halted { .. }), "{err}");

    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "no tool may run after a failed precondition"
    );
    assert_eq!(
        kinds(&gov).await,
        [
            "contract.violated",
            "contract.violated",
            "contract.violated"
        ]
    );
}

#[tokio::test]
async fn hitl_approved_needs_an_approval_for_exactly_this_call_and_spends_it() {
    let db = TestDb::new().await;
    let gov = ready(&db).await;
    gov.operators()
        .add(
            "alice",
            OperatorRole::Operator,
            "correct horse battery staple",
        )
        .await
        .unwrap();
    let alice = gov
        .operators()
        .authenticate("alice", "correct horse battery staple")
        .await
        .unwrap();
    let contract = Contract::new()
        .require(Pre::ScopeAllowed)
        .require(Pre::HitlApproved);
    let args = json!({ "order": 42, "amount": 30 });
    let ctx = CallContext {
        agent: "bot",
        session: "s",
        tool: "refund",
        args: &args,
    };
    let ok = |_: Value| async { Ok::<_, String>(json!({ "refunded": true })) };

    let err = gov
        .contracts()
        .run(&contract, ctx, None, ok)
        .await
        .unwrap_err();
    assert_eq!(condition(&err), ("pre", "hitl_approved".into()));

    let req = gov
        .gates()
        .request("bot", Some("s"), "refund", &args)
        .await
        .unwrap();
    gov.gates()
        .approve(&alice, req.id, "customer is right")
        .await
        .unwrap();
    let approval = gov
        .gates()
        .wait_for(req.id, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    // Not for a bigger refund.
    let bigger = json!({ "order": 42, "amount": 3000 });
    let err = gov
        .contracts()
        .run(
            &contract,
            CallContext {
                args: &bigger,
                ..ctx
            },
            Some(&approval),
            ok,
        )
        .await
        .unwrap_err();
    assert_eq!(condition(&err), ("pre", "hitl_approved".into()));
    assert!(err.to_string().contains("different action"), "{err}");
    // Once for the approved one, then never again.
    gov.contracts()
        .run(&contract, ctx, Some(&approval), ok)
        .await
        .unwrap();
    let err = gov
        .contracts()
        .run(&contract, ctx, Some(&approval), ok)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
}
