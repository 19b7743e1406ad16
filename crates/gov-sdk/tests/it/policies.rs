//! Cedar policy sets through the SDK: decisions from the fixture files enforced beside scope
//! with their events, hot reload in another handle, shadow differences logged and not
//! enforced, and the application role unable to write a policy set.

use std::path::PathBuf;
use std::time::Duration;

use gov_sdk::events::{PolicyApplied, PolicyApprovalRequired, PolicyDenied, PolicyShadowDiff};
use gov_sdk::policies::{Effect, PolicyCheck, PolicySet, Resource, Slot, cases};
use gov_sdk::{Error, Governance, ScopePolicy};
use gov_testdb::{APP_ROLE, TestDb};
use sqlx::Connection as _;

use crate::support::{SECRET, all_rows, connect, eventually};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gov-policy/tests/fixtures/billing")
}

fn fixture() -> (PolicySet, Vec<cases::Case>) {
    let read = |f: &str| std::fs::read_to_string(fixture_dir().join(f)).expect("fixture");
    let set = PolicySet::parse(&read("policies.cedar"), &read("settings.json")).expect("valid");
    let cases = cases::parse(&read("cases.json"), "cases.json").expect("cases");
    (set, cases)
}

/// Scope lets every agent of the fixture use everything its cases ask for, so that Cedar
/// decides.
async fn open_scope(gov: &Governance, agents: &[&str]) {
    for agent in agents {
        gov.scope()
            .register(ScopePolicy {
                agent_id: agent.parse().expect("agent id"),
                allowed_tools: [
                    "read_invoice",
                    "send_email",
                    "refund",
                    "github/list_issues",
                    "github/create_issue",
                ]
                .map(String::from)
                .into(),
                allowed_apis: ["openai", "anthropic"].map(String::from).into(),
                hidden_tools: Default::default(),
            })
            .await
            .expect("register scope");
    }
}

fn resource(c: &cases::Case) -> Resource<'_> {
    match (&c.tool, &c.model, &c.mcp_tool) {
        (Some(t), _, _) => Resource::Tool(t),
        (_, Some(m), _) => {
            let (provider, model) = m.split_once(':').expect("provider:model");
            Resource::Model { provider, model }
        }
        (_, _, Some(m)) => {
            let (server, tool) = m.split_once('/').expect("server/tool");
            Resource::McpTool { server, tool }
        }
        _ => unreachable!("the case file is validated"),
    }
}

/// What a guarded check said, as an effect and the determining policies.
fn outcome(r: Result<(), Error>) -> (Effect, Vec<String>) {
    match r {
        Ok(()) => (Effect::Permit, Vec::new()),
        Err(Error::PolicyForbidden { policies, .. }) => (Effect::Forbid, policies.into_vec()),
        Err(Error::PolicyApprovalRequired { policies, .. }) => {
            (Effect::Approval, policies.into_vec())
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn the_fixture_cases_are_enforced_beside_scope_with_hash_and_policies_in_the_events() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    let (set, cases) = fixture();
    open_scope(
        &gov,
        &[
            "billing-agent",
            "billing-staging",
            "support-agent",
            "stranger",
        ],
    )
    .await;
    // No set applied: scope alone decides.
    gov.scope()
        .check("support-agent", "refund")
        .await
        .expect("scope allows");
    let version = gov
        .policies()
        .apply(Slot::Enforced, Some(&set), "alice")
        .await
        .expect("apply");
    assert_eq!(version, 1);

    let mut forbidden = 0;
    let mut approvals = 0;
    for c in cases.iter().filter(|c| c.now.is_none()) {
        let check = PolicyCheck {
            agent: &c.agent,
            session: &c.session,
            resource: resource(c),
            arguments: c.arguments.as_ref(),
            estimated_cost_micros: c.estimated_cost_micros,
            session_spend_micros: c.session_spend_micros,
        };
        let (effect, mut policies) = outcome(gov.policies().check(&check).await);
        assert_eq!(effect, c.expect, "{}", c.name);
        if effect != Effect::Permit
            && let Some(want) = &c.policies
        {
            let mut want = want.clone();
            want.sort();
            policies.sort();
            assert_eq!(policies, want, "{}", c.name);
        }
        forbidden += usize::from(effect == Effect::Forbid);
        approvals += usize::from(effect == Effect::Approval);
    }
    assert!(forbidden >= 4 && approvals >= 1);

    // Both must allow: scope refuses what Cedar would permit.
    gov.scope().unregister("billing-agent").await.unwrap();
    let refused = gov.scope().check("billing-agent", "read_invoice").await;
    assert!(
        matches!(refused, Err(Error::ScopeViolation { .. })),
        "{refused:?}"
    );
    // The plain scope check evaluates the set too (no arguments, no cost).
    let refused = gov.scope().check("support-agent", "refund").await;
    assert!(
        matches!(refused, Err(Error::PolicyForbidden { .. })),
        "{refused:?}"
    );

    let rows = all_rows(&gov).await;
    let applied: Vec<PolicyApplied> = rows.iter().filter_map(|r| r.decode().ok()).collect();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].policy_set_hash.as_deref(), Some(set.hash()));
    assert_eq!(applied[0].operator, "alice");
    let denied: Vec<PolicyDenied> = rows.iter().filter_map(|r| r.decode().ok()).collect();
    assert_eq!(denied.len(), forbidden + 1);
    assert!(denied.iter().all(|d| d.0.policy_set_hash == set.hash()));
    let approval: Vec<PolicyApprovalRequired> =
        rows.iter().filter_map(|r| r.decode().ok()).collect();
    assert_eq!(approval.len(), approvals);
    assert_eq!(
        approval[0].0.determining_policies,
        ["large-refund-needs-approval"]
    );
    assert_eq!(
        approval[0].0.approval.as_deref(),
        Some("refunds over 1,000 USD need a second person")
    );
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
}

#[tokio::test]
async fn a_set_applied_through_one_handle_is_enforced_by_another_without_restart() {
    let db = TestDb::new().await;
    let agent_side = connect(&db).await;
    let operator_side = connect(&db).await;
    open_scope(&agent_side, &["support-agent"]).await;
    agent_side
        .scope()
        .check("support-agent", "refund")
        .await
        .expect("no set yet: scope decides");
    let (set, _) = fixture();
    operator_side
        .policies()
        .apply(Slot::Enforced, Some(&set), "alice")
        .await
        .unwrap();
    let took = eventually(
        "the applied set is enforced",
        Duration::from_secs(5),
        || async {
            matches!(
                agent_side.scope().check("support-agent", "refund").await,
                Err(Error::PolicyForbidden { .. })
            )
        },
    )
    .await;
    eprintln!("policy set reload seen after {took:?}");
    // Turning the slot off is a version too, and reloads the same way.
    assert_eq!(
        operator_side
            .policies()
            .apply(Slot::Enforced, None, "alice")
            .await
            .unwrap(),
        2
    );
    eventually("the set is off", Duration::from_secs(5), || async {
        agent_side
            .scope()
            .check("support-agent", "refund")
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn shadow_differences_are_logged_and_never_enforced() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    open_scope(&gov, &["support-agent"]).await;
    let permit_all =
        PolicySet::parse(r#"@id("all") permit (principal, action, resource);"#, "").unwrap();
    let (candidate, _) = fixture();
    gov.policies()
        .apply(Slot::Enforced, Some(&permit_all), "alice")
        .await
        .unwrap();
    gov.policies()
        .apply(Slot::Shadow, Some(&candidate), "alice")
        .await
        .unwrap();
    // The candidate forbids support refunds; the enforced set permits: allowed.
    gov.scope()
        .check("support-agent", "refund")
        .await
        .expect("the shadow set is never enforced");
    // Where both agree, nothing is logged.
    gov.policies()
        .check(&PolicyCheck::new(
            "support-agent",
            Resource::Model {
                provider: "openai",
                model: "gpt-4o-mini",
            },
        ))
        .await
        .unwrap();
    let rows = all_rows(&gov).await;
    let diffs: Vec<PolicyShadowDiff> = rows.iter().filter_map(|r| r.decode().ok()).collect();
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    let d = &diffs[0];
    assert_eq!(
        (d.enforced.as_str(), d.shadow.as_str()),
        ("permit", "forbid")
    );
    assert_eq!(d.enforced_hash.as_deref(), Some(permit_all.hash()));
    assert_eq!(d.enforced_policies, ["all"]);
    assert_eq!(d.shadow_hash, candidate.hash());
    assert_eq!(d.resource, r#"Governance::Tool::"refund""#);
    assert!(rows.iter().all(|r| r.kind != "policy.denied"));
}

/// Runs `sql` as the application role; the error text, if any.
async fn as_app_role(db: &TestDb, sql: &str) -> Result<(), String> {
    let mut conn = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {APP_ROLE}")))
        .execute(&mut conn)
        .await
        .expect("set role");
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_app_role_cannot_write_policy_sets_and_nobody_rewrites_a_version() {
    let db = TestDb::new().await;
    let owner = connect(&db).await;
    let (set, _) = fixture();
    owner
        .policies()
        .apply(Slot::Enforced, Some(&set), "alice")
        .await
        .unwrap();
    as_app_role(&db, "SELECT count(*) FROM policy_sets")
        .await
        .expect("the app role reads the sets");
    let hash = "0".repeat(64);
    for sql in [
        format!(
            "INSERT INTO policy_sets (slot, version, policies, hash, applied_by) VALUES \
             ('enforced', 2, '@id(\"all\") permit (principal, action, resource);', '{hash}', 'agent')"
        ),
        "UPDATE policy_sets SET policies = NULL".to_owned(),
        "DELETE FROM policy_sets".to_owned(),
        "TRUNCATE policy_sets".to_owned(),
        "DROP TRIGGER policy_sets_no_update ON policy_sets".to_owned(),
    ] {
        let err = as_app_role(&db, &sql).await.expect_err(&sql);
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{sql}: {err}"
        );
    }
    // Through the SDK, as the application role: refused, naming who may.
    let app = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    let permit_all =
        PolicySet::parse(r#"@id("all") permit (principal, action, resource);"#, "").unwrap();
    let err = app
        .policies()
        .apply(Slot::Enforced, Some(&permit_all), "agent")
        .await
        .expect_err("the app role may not apply");
    assert!(err.to_string().contains("only the schema owner"), "{err}");
    // Even the owner cannot rewrite or remove a version.
    let admin = db.admin_pool().await;
    for sql in [
        "UPDATE policy_sets SET policies = NULL",
        "DELETE FROM policy_sets",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect_err(sql);
        assert!(err.to_string().contains("not allowed"), "{sql}: {err}");
    }
    // The set in force is still the owner's.
    let snapshot = app.policies().current().await.unwrap();
    match snapshot.enforced.as_ref() {
        Some(gov_sdk::policies::Loaded::Set { set: s, version }) => {
            assert_eq!((s.hash(), *version), (set.hash(), 1));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stored_set_that_does_not_verify_refuses_every_action() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    open_scope(&gov, &["support-agent"]).await;
    let permit_all =
        PolicySet::parse(r#"@id("all") permit (principal, action, resource);"#, "").unwrap();
    gov.policies()
        .apply(Slot::Enforced, Some(&permit_all), "alice")
        .await
        .unwrap();
    gov.scope().check("support-agent", "refund").await.unwrap();
    // A superuser edits the stored policies behind the triggers' back: the hash no longer
    // matches, so the set is not trusted and everything is refused (fail closed).
    db.tamper(&[
        "UPDATE policy_sets SET policies = '@id(\"all\") permit (principal, action, resource); @id(\"x\") permit (principal, action, resource);'",
        "SELECT pg_notify('gov_policy_set', 'enforced')",
    ])
    .await;
    eventually(
        "the tampered set refuses",
        Duration::from_secs(5),
        || async {
            matches!(
                gov.scope().check("support-agent", "refund").await,
                Err(Error::PolicyForbidden { .. })
            )
        },
    )
    .await;
}
