//! Approval workflows: quorum (four-eyes), approver groups, escalation after a timeout on the
//! store's clock, denial at expiry, approvals for the session and saved as rules, on Postgres
//! (an agent handle as the application role, an operator handle as the owner) and on SQLite;
//! and what an agent's own credentials cannot do to any of it.

use std::time::Duration;

use gov_sdk::{
    ApprovalScope, Clock, Error, EventFilter, GateConfig, Governance, Operator, OperatorRole,
    WorkflowSpec,
};
use gov_testdb::TestDb;
use serde_json::json;

use crate::support::{OPERATOR_PW, SECRET};

/// An agent handle and an operator handle on one database, on one manual clock.
struct Setup {
    /// Kept alive for the test (Postgres).
    db: Option<TestDb>,
    agent: Governance,
    ops: Governance,
    clock: Clock,
}

async fn postgres() -> Setup {
    let db = TestDb::new().await;
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    let agent = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .clock(clock.clone())
        .connect()
        .await
        .expect("agent handle");
    let ops = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .clock(clock.clone())
        .connect()
        .await
        .expect("operator handle");
    Setup {
        db: Some(db),
        agent,
        ops,
        clock,
    }
}

async fn sqlite() -> Setup {
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    let gov = Governance::builder()
        .database_url("sqlite::memory:")
        .audit_secret(SECRET)
        .clock(clock.clone())
        .migrate_on_connect(true)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("an in-memory database");
    Setup {
        db: None,
        agent: gov.clone(),
        ops: gov,
        clock,
    }
}

impl Setup {
    /// Adds an operator (role operator unless named admin-…) in `groups`, signed in.
    async fn operator(&self, name: &str, groups: &[&str]) -> Operator {
        let role = if name.starts_with("admin") {
            OperatorRole::Admin
        } else {
            OperatorRole::Operator
        };
        self.ops
            .operators()
            .add(name, role, OPERATOR_PW)
            .await
            .expect("add operator");
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        self.ops
            .workflows()
            .set_groups(name, &groups)
            .await
            .expect("groups");
        self.ops
            .operators()
            .authenticate(name, OPERATOR_PW)
            .await
            .expect("sign in")
    }

    async fn workflow(&self, w: WorkflowSpec, agent: &str, tool: &str) {
        let name = w.name.clone();
        self.ops
            .workflows()
            .put(&w, "admin")
            .await
            .expect("workflow");
        self.ops
            .workflows()
            .route(agent, tool, &name)
            .await
            .expect("route");
    }

    async fn kinds(&self) -> Vec<String> {
        self.ops
            .audit()
            .events(&EventFilter::default())
            .await
            .expect("events")
            .into_iter()
            .filter(|r| r.kind.starts_with("gate."))
            .map(|r| format!("{}:{}", r.kind, r.actor.unwrap_or_default()))
            .collect()
    }
}

fn four_eyes() -> WorkflowSpec {
    WorkflowSpec {
        name: "four-eyes".into(),
        quorum: 2,
        approver_group: Some("finance".into()),
        escalate_to: None,
        escalate_after_secs: None,
        timeout_secs: None,
    }
}

fn reason(e: &Error) -> String {
    match e {
        Error::ApprovalRefused { reason, .. } => reason.clone(),
        other => format!("not a refusal: {other}"),
    }
}

async fn a_quorum_of_two_needs_two_distinct_operators(s: Setup) {
    s.workflow(four_eyes(), "billing", "send_payment").await;
    let alice = s.operator("alice", &["finance"]).await;
    let bob = s.operator("bob", &["finance"]).await;
    let mallory = s.operator("mallory", &["support"]).await;
    let args = json!({ "to": "cfo@example.com", "amount": 1200 });
    let req = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "send_payment", &args)
        .await
        .expect("succeeds");
    let stored = s.ops.gates().get(req.id).await.expect("succeeds");
    assert_eq!(stored.workflow.quorum, 2);
    assert_eq!(stored.workflow.name.as_deref(), Some("four-eyes"));

    // One approval is a vote, not a decision.
    let first = s
        .ops
        .gates()
        .approve(&alice, req.id, "looks right")
        .await
        .expect("succeeds");
    assert!(!first.decided);
    assert_eq!((first.approvals, first.quorum), (1, 2));
    assert!(matches!(
        s.agent.gates().poll(req.id).await,
        Err(Error::ApprovalPending { .. })
    ));
    // The same operator twice does not make two.
    let again = s
        .ops
        .gates()
        .approve(&alice, req.id, "really")
        .await
        .expect_err("refused");
    assert!(reason(&again).contains("already voted"), "{again}");
    // Outside the approver group: refused.
    let err = s
        .ops
        .gates()
        .approve(&mallory, req.id, "me too")
        .await
        .expect_err("refused");
    assert!(reason(&err).contains("approver group"), "{err}");
    assert!(matches!(
        s.agent.gates().poll(req.id).await,
        Err(Error::ApprovalPending { .. })
    ));
    // A second, distinct approver decides.
    let second = s
        .ops
        .gates()
        .approve(&bob, req.id, "agreed")
        .await
        .expect("succeeds");
    assert!(second.decided);
    assert_eq!(second.approvals, 2);
    let approval = s.agent.gates().poll(req.id).await.expect("succeeds");
    assert_eq!(approval.approved_by, "bob");
    s.agent
        .gates()
        .consume(&approval, "billing", Some("s-1"), "send_payment", &args)
        .await
        .expect("succeeds");
    let votes = s.ops.gates().votes(req.id).await.expect("succeeds");
    let names: Vec<&str> = votes.iter().map(|v| v.operator.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(
        s.kinds().await,
        [
            "gate.requested:",
            "gate.voted:alice",
            "gate.approved:bob",
            "gate.consumed:"
        ]
    );
    // Each vote is an audit event with where the quorum stood.
    let voted = s
        .ops
        .audit()
        .events(&EventFilter::default())
        .await
        .expect("succeeds")
        .into_iter()
        .find(|r| r.kind == "gate.voted")
        .expect("succeeds");
    let v = voted
        .decode::<gov_sdk::events::GateVoted>()
        .expect("succeeds")
        .0;
    assert_eq!((v.approvals, v.quorum), (Some(1), Some(2)));

    // One denial decides, whatever the quorum.
    let other = s
        .agent
        .gates()
        .request(
            "billing",
            Some("s-1"),
            "send_payment",
            &json!({ "amount": 9 }),
        )
        .await
        .expect("succeeds");
    s.ops
        .gates()
        .approve(&alice, other.id, "fine")
        .await
        .expect("succeeds");
    let denied = s
        .ops
        .gates()
        .deny(&bob, other.id, "no")
        .await
        .expect("succeeds");
    assert!(denied.decided);
    assert!(matches!(
        s.agent.gates().poll(other.id).await,
        Err(Error::ApprovalDenied { .. })
    ));
    assert!(
        s.ops
            .audit()
            .verify_chain()
            .await
            .expect("succeeds")
            .is_clean()
    );
    drop(s.db);
}

#[tokio::test]
async fn quorum_postgres() {
    a_quorum_of_two_needs_two_distinct_operators(postgres().await).await;
}

#[tokio::test]
async fn quorum_sqlite() {
    a_quorum_of_two_needs_two_distinct_operators(sqlite().await).await;
}

async fn escalation_fires_after_its_timeout_and_expiry_denies(s: Setup) {
    s.workflow(
        WorkflowSpec {
            name: "refunds".into(),
            quorum: 1,
            approver_group: Some("support".into()),
            escalate_to: Some("managers".into()),
            escalate_after_secs: Some(15 * 60),
            timeout_secs: Some(60 * 60),
        },
        "*",
        "refund",
    )
    .await;
    let _sam = s.operator("sam", &["support"]).await;
    let maria = s.operator("maria", &["managers"]).await;
    let req = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "refund", &json!({ "amount": 5 }))
        .await
        .expect("succeeds");
    // Before the escalation: the managers may not approve, and a sweep does nothing.
    let err = s
        .ops
        .gates()
        .approve(&maria, req.id, "ok")
        .await
        .expect_err("refused");
    assert!(reason(&err).contains("approver group"), "{err}");
    s.clock.advance(Duration::from_secs(14 * 60));
    let sweep = s.ops.workflows().sweep().await.expect("succeeds");
    assert!(sweep.escalated.is_empty() && sweep.expired.is_empty());
    // After its timeout: escalated once, recorded, and the managers may approve.
    s.clock.advance(Duration::from_secs(2 * 60));
    let sweep = s.ops.workflows().sweep().await.expect("succeeds");
    assert_eq!(sweep.escalated.len(), 1);
    assert!(
        s.ops
            .workflows()
            .sweep()
            .await
            .expect("succeeds")
            .escalated
            .is_empty()
    );
    let r = s.ops.gates().get(req.id).await.expect("succeeds");
    assert!(r.workflow.escalated_at.is_some());
    s.ops
        .gates()
        .approve(&maria, req.id, "escalated to me")
        .await
        .expect("succeeds");
    s.agent.gates().poll(req.id).await.expect("succeeds");

    // Nobody decides the next one: at its expiry it is denied, and that is recorded.
    let lapsing = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "refund", &json!({ "amount": 6 }))
        .await
        .expect("succeeds");
    s.clock.advance(Duration::from_secs(61 * 60));
    let sweep = s.ops.workflows().sweep().await.expect("succeeds");
    assert_eq!(sweep.expired.len(), 1);
    assert_eq!(sweep.expired[0].id, lapsing.id);
    match s.agent.gates().poll(lapsing.id).await {
        Err(Error::ApprovalDenied { by, .. }) => assert_eq!(by, "governance"),
        other => panic!("expected a denial, got {other:?}"),
    }
    let err = s
        .ops
        .gates()
        .approve(&maria, lapsing.id, "late")
        .await
        .expect_err("refused");
    assert!(reason(&err).contains("already decided"), "{err}");
    assert!(
        s.ops
            .workflows()
            .sweep()
            .await
            .expect("succeeds")
            .expired
            .is_empty()
    );
    assert_eq!(
        s.kinds().await,
        [
            "gate.requested:",
            "gate.escalated:",
            "gate.approved:maria",
            "gate.requested:",
            "gate.expired:",
        ]
    );
    assert!(
        s.ops
            .audit()
            .verify_chain()
            .await
            .expect("succeeds")
            .is_clean()
    );
    drop(s.db);
}

#[tokio::test]
async fn escalation_and_expiry_postgres() {
    escalation_fires_after_its_timeout_and_expiry_denies(postgres().await).await;
}

#[tokio::test]
async fn escalation_and_expiry_sqlite() {
    escalation_fires_after_its_timeout_and_expiry_denies(sqlite().await).await;
}

async fn an_approval_for_the_session_covers_its_later_requests_for_that_tool(s: Setup) {
    let alice = s.operator("alice", &[]).await;
    let first = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "read_invoice", &json!({ "n": 1 }))
        .await
        .expect("succeeds");
    s.ops
        .gates()
        .approve_with(&alice, first.id, "routine", ApprovalScope::Session)
        .await
        .expect("succeeds");
    // Later in the session, the same tool with other arguments: approved when asked.
    let args = json!({ "n": 2 });
    let later = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "read_invoice", &args)
        .await
        .expect("succeeds");
    let approval = s.agent.gates().poll(later.id).await.expect("succeeds");
    assert_eq!(approval.approved_by, "alice");
    s.agent
        .gates()
        .consume(&approval, "billing", Some("s-1"), "read_invoice", &args)
        .await
        .expect("succeeds");
    // Another session, another tool: asked as usual.
    for (session, tool) in [("s-2", "read_invoice"), ("s-1", "refund")] {
        let r = s
            .agent
            .gates()
            .request("billing", Some(session), tool, &json!({}))
            .await
            .expect("succeeds");
        assert!(matches!(
            s.agent.gates().poll(r.id).await,
            Err(Error::ApprovalPending { .. })
        ));
    }
    // Once the grant's time is over, asked as usual again.
    s.clock
        .advance(GateConfig::default().session_grant_ttl + Duration::from_secs(1));
    let r = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "read_invoice", &json!({ "n": 3 }))
        .await
        .expect("succeeds");
    assert!(matches!(
        s.agent.gates().poll(r.id).await,
        Err(Error::ApprovalPending { .. })
    ));
    drop(s.db);
}

#[tokio::test]
async fn session_grant_postgres() {
    an_approval_for_the_session_covers_its_later_requests_for_that_tool(postgres().await).await;
}

#[tokio::test]
async fn session_grant_sqlite() {
    an_approval_for_the_session_covers_its_later_requests_for_that_tool(sqlite().await).await;
}

const POLICIES: &str = r#"
@id("billing-tools")
permit (principal, action == Governance::Action::"tool_call", resource);

@id("large-refund-needs-approval")
@approval("refunds over 1,000 USD need a second person")
permit (principal, action == Governance::Action::"tool_call", resource == Governance::Tool::"refund")
when { context.arguments has amount && context.arguments.amount > 1000 };
"#;

/// "Save as a rule" proposes a reviewable Cedar policy (the next shadow version), admins only.
#[tokio::test]
async fn an_approval_saved_as_a_rule_proposes_a_preapproval_for_admins_only() {
    use gov_sdk::policies::{Effect, PolicyCheck, PolicySet, Resource, Slot};
    let s = postgres().await;
    let set = PolicySet::parse(POLICIES, r#"{"arguments": {"amount": "long"}}"#).expect("succeeds");
    s.ops
        .policies()
        .apply(Slot::Enforced, Some(&set), "admin")
        .await
        .expect("succeeds");
    let alice = s.operator("alice", &[]).await;
    let admin = s.operator("admin-ann", &[]).await;
    let args = json!({ "amount": 5000 });
    let req = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "refund", &args)
        .await
        .expect("succeeds");
    let err = s
        .ops
        .gates()
        .approve_with(&alice, req.id, "ok", ApprovalScope::Rule)
        .await
        .expect_err("refused");
    assert!(reason(&err).contains("admin"), "{err}");
    let vote = s
        .ops
        .gates()
        .approve_with(&admin, req.id, "monthly refund", ApprovalScope::Rule)
        .await
        .expect("succeeds");
    let (version, id) = vote.proposed_rule.expect("a proposed rule");
    assert_eq!(version, 1);
    let snapshot = s.ops.policies().current().await.expect("succeeds");
    let Some(gov_sdk::policies::Loaded::Set { set: shadow, .. }) = &snapshot.shadow else {
        panic!("no shadow set: {snapshot:?}");
    };
    let text = shadow.policy_text(&id).expect("the rule");
    assert!(text.contains("@preapproved"), "{text}");
    // The proposal permits exactly that action; the enforced set still asks.
    let check = |amount: i64| json!({ "amount": amount });
    let decide = |set: &PolicySet, amount: i64| {
        let a = check(amount);
        set.decide(&gov_sdk::policies::Request {
            agent: "billing",
            resource: Resource::Tool("refund"),
            session: "s-1",
            arguments: Some(&a),
            estimated_cost_micros: 0,
            session_spend_micros: 0,
            now: time::OffsetDateTime::now_utc(),
        })
        .effect
    };
    assert_eq!(decide(shadow, 5000), Effect::Permit);
    assert_eq!(decide(shadow, 6000), Effect::Approval);
    assert_eq!(decide(&set, 5000), Effect::Approval);
    let _ = PolicyCheck::new("billing", Resource::Tool("refund"));
    s.agent.gates().poll(req.id).await.expect("succeeds");
}

/// The agent's credentials (the application role) cannot vote, cannot weaken a pending
/// request's workflow, and cannot escalate or expire one.
#[tokio::test]
async fn the_app_role_cannot_vote_weaken_a_workflow_or_escalate() {
    use sqlx::Connection as _;
    let s = postgres().await;
    let db = s.db.as_ref().expect("postgres");
    s.workflow(
        WorkflowSpec {
            escalate_to: Some("managers".into()),
            escalate_after_secs: Some(60),
            ..four_eyes()
        },
        "billing",
        "*",
    )
    .await;
    let alice = s.operator("alice", &["finance"]).await;
    let req = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "wire", &json!({}))
        .await
        .expect("succeeds");
    // Through the SDK, with a real operator in hand: refused.
    let err = s
        .agent
        .gates()
        .approve(&alice, req.id, "x")
        .await
        .expect_err("refused");
    assert!(reason(&err).contains("can never approve"), "{err}");
    // Its escalation is due: the agent's handle cannot mark it.
    s.clock.advance(Duration::from_secs(120));
    let err = s.agent.workflows().sweep().await.expect_err("refused");
    assert!(err.to_string().contains("may not"), "{err}");
    assert!(
        s.agent
            .workflows()
            .put(
                &WorkflowSpec {
                    quorum: 1,
                    approver_group: None,
                    ..four_eyes()
                },
                "agent"
            )
            .await
            .is_err()
    );
    // Straight SQL as the application role.
    let mut app = sqlx::PgConnection::connect(&db.app_url())
        .await
        .expect("succeeds");
    let id = req.id;
    for sql in [
        format!(
            "SELECT governance_vote('{id}', 'alice', true, 'x', NULL, NULL, now(), false, \
             gen_random_uuid(), NULL, NULL)"
        ),
        format!("SELECT governance_decide('{id}', 'alice', true, 'x', NULL, NULL, now())"),
        format!(
            "INSERT INTO approval_votes (request_id, operator, approve, reason, voted_at) \
             VALUES ('{id}', 'alice', true, 'x', now())"
        ),
        format!("UPDATE gate_requests SET quorum = 1 WHERE id = '{id}'"),
        format!("UPDATE gate_requests SET approver_group = NULL WHERE id = '{id}'"),
        format!("UPDATE gate_requests SET approvals = 5 WHERE id = '{id}'"),
        format!("UPDATE gate_requests SET escalated_at = now() WHERE id = '{id}'"),
        format!("SELECT governance_escalate('{id}', now() + interval '1 day')"),
        format!("SELECT governance_expire_gate('{id}', 'x', now() + interval '1 day')"),
        "UPDATE approval_workflows SET quorum = 1".to_owned(),
        "INSERT INTO approval_workflows (name, quorum, updated_by) VALUES ('weak', 1, 'x')"
            .to_owned(),
        "INSERT INTO approval_routes (agent_id, tool, workflow) VALUES ('billing', 'wire', 'x')"
            .to_owned(),
        "DELETE FROM approval_routes".to_owned(),
        "INSERT INTO operator_groups (group_name, username) VALUES ('finance', 'billing')"
            .to_owned(),
        "SELECT * FROM approval_grants".to_owned(),
        "INSERT INTO approval_grants (id, agent_id, session_id, tool, request_id, granted_by, \
             granted_at, expires_at) VALUES (gen_random_uuid(), 'billing', 's-1', 'wire', \
             gen_random_uuid(), 'alice', now(), now() + interval '1 day')"
            .to_owned(),
        "UPDATE approval_notifications SET status = 'delivered'".to_owned(),
        // A request asked with its own (weaker) workflow: the columns are not the asker's.
        "INSERT INTO gate_requests (id, agent_id, tool, action_hash, args, expires_at, quorum) \
             VALUES (gen_random_uuid(), 'billing', 'wire', sha256('x'), '{}', \
             now() + interval '1 hour', 1)"
            .to_owned(),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut app)
            .await
            .expect_err(&sql);
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    // Nothing moved: still pending, quorum 2, one group, not escalated, no votes.
    let r = s.ops.gates().get(req.id).await.expect("succeeds");
    assert_eq!(r.status, gov_sdk::GateStatus::Pending);
    assert_eq!(
        (
            r.workflow.quorum,
            r.workflow.approvals,
            r.workflow.approver_group.as_deref()
        ),
        (2, 0, Some("finance"))
    );
    assert!(r.workflow.escalated_at.is_none());
    assert!(
        s.ops
            .gates()
            .votes(req.id)
            .await
            .expect("succeeds")
            .is_empty()
    );
    // A backdated request does not escalate sooner: timers start when it reaches the database.
    let backdated = sqlx::query_scalar::<_, uuid::Uuid>(
        "INSERT INTO gate_requests (id, agent_id, tool, action_hash, args, requested_at, \
         expires_at) VALUES (gen_random_uuid(), 'billing', 'wire', sha256('y'), '{}', \
         now() - interval '1 day', now() + interval '1 hour') RETURNING id",
    )
    .fetch_one(&mut app)
    .await;
    // (RETURNING needs SELECT, which the role has.)
    let backdated = backdated.expect("succeeds");
    let r = s.ops.gates().get(backdated).await.expect("succeeds");
    assert!(
        r.workflow.escalates_at.expect("succeeds") > time::OffsetDateTime::now_utc(),
        "{r:?}"
    );
    assert_eq!(r.workflow.quorum, 2);
}
