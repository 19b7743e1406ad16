//! Gates on real Postgres: an agent handle (application role) asks, an operator handle decides.

use std::time::{Duration, Instant};

use gov_sdk::{Approval, Clock, Error, EventFilter, GateConfig, Governance, OperatorRole};
use gov_testdb::TestDb;
use serde_json::json;

use crate::support::{OPERATOR_PW, SECRET};

struct Setup {
    db: TestDb,
    agent: Governance,
    ops: Governance,
    /// The clock both handles decide expiry on: it stands still until a test moves it.
    clock: Clock,
}

async fn setup(gates: GateConfig) -> Setup {
    let db = TestDb::new().await;
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    // The agent connects as the least-privilege application role, as in production.
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
        .gate_config(gates)
        .clock(clock.clone())
        .connect()
        .await
        .expect("operator handle");
    for (name, role) in [
        ("alice", OperatorRole::Operator),
        ("victor", OperatorRole::Viewer),
        ("billing", OperatorRole::Admin),
    ] {
        ops.operators()
            .add(name, role, OPERATOR_PW)
            .await
            .expect("add operator");
    }
    Setup {
        db,
        agent,
        ops,
        clock,
    }
}

fn reason(e: &Error) -> String {
    match e {
        Error::ApprovalRefused { reason, .. } => reason.clone(),
        other => format!("not a refusal: {other}"),
    }
}

#[tokio::test]
async fn an_approval_wakes_the_waiter_and_unlocks_that_action_once() {
    let s = setup(GateConfig::default()).await;
    let args = json!({ "to": "cfo@example.com", "amount": 1200 });
    let req = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "send_payment", &args)
        .await
        .unwrap();
    assert!(matches!(
        s.agent.gates().poll(req.id).await,
        Err(Error::ApprovalPending { .. })
    ));
    assert_eq!(s.ops.gates().pending().await.unwrap().len(), 1);

    let waiter = {
        let agent = s.agent.clone();
        tokio::spawn(async move {
            let r = agent
                .gates()
                .wait_for(req.id, Duration::from_secs(20))
                .await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alice = s
        .ops
        .operators()
        .authenticate("alice", OPERATOR_PW)
        .await
        .unwrap();
    s.ops
        .gates()
        .approve(&alice, req.id, "expected invoice")
        .await
        .unwrap();
    let approved_at = Instant::now();
    let (approval, woke_at) = waiter.await.unwrap();
    let approval = approval.unwrap();
    eprintln!(
        "wait_for returned {:?} after the approval committed",
        woke_at.saturating_duration_since(approved_at)
    );
    assert_eq!(approval.approved_by, "alice");
    // Woken by the notification, not by reaching its 20 s deadline (a loose bound: a broken
    // notification path would take the full 20 s).
    assert!(
        woke_at.saturating_duration_since(approved_at) < Duration::from_secs(10),
        "wait_for was not woken by the decision"
    );

    // Not for another action, not twice.
    let other = json!({ "to": "cfo@example.com", "amount": 12000 });
    let err = s
        .agent
        .gates()
        .consume(&approval, "billing", Some("s-1"), "send_payment", &other)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "the approval is for a different action");
    let err = s
        .agent
        .gates()
        .consume(&approval, "billing", Some("s-1"), "delete_account", &args)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "the approval is for a different action");
    // Key order does not change the action.
    s.agent
        .gates()
        .consume(
            &approval,
            "billing",
            Some("s-1"),
            "send_payment",
            &json!({ "amount": 1200, "to": "cfo@example.com" }),
        )
        .await
        .unwrap();
    let err = s
        .agent
        .gates()
        .consume(&approval, "billing", Some("s-1"), "send_payment", &args)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "the approval was already used");

    let kinds: Vec<String> = s
        .ops
        .audit()
        .events(&EventFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind.starts_with("gate."))
        .map(|r| format!("{}:{}", r.kind, r.actor.unwrap_or_default()))
        .collect();
    assert_eq!(
        kinds,
        ["gate.requested:", "gate.approved:alice", "gate.consumed:"]
    );
    assert!(s.ops.audit().verify_chain().await.unwrap().is_clean());
}

#[tokio::test]
async fn self_approval_the_agents_own_handle_viewers_and_unknown_approvers_are_refused() {
    let s = setup(GateConfig::default()).await;
    let req = s
        .agent
        .gates()
        .request("billing", None, "wire", &json!({}))
        .await
        .unwrap();
    // An operator account named like the agent is the requester.
    let same = s
        .ops
        .operators()
        .authenticate("billing", OPERATOR_PW)
        .await
        .unwrap();
    assert_eq!(
        reason(
            &s.ops
                .gates()
                .approve(&same, req.id, "mine")
                .await
                .unwrap_err()
        ),
        "a requester cannot approve its own request"
    );
    // The agent's own connection cannot decide, even holding a real operator.
    let alice = s
        .ops
        .operators()
        .authenticate("alice", OPERATOR_PW)
        .await
        .unwrap();
    let err = s
        .agent
        .gates()
        .approve(&alice, req.id, "sneaky")
        .await
        .unwrap_err();
    assert!(reason(&err).contains("can never approve"), "{err}");
    // Viewers read, never decide.
    let victor = s
        .ops
        .operators()
        .authenticate("victor", OPERATOR_PW)
        .await
        .unwrap();
    assert_eq!(
        reason(
            &s.ops
                .gates()
                .approve(&victor, req.id, "ok")
                .await
                .unwrap_err()
        ),
        "a viewer cannot decide"
    );
    // Unknown users and wrong passwords get the same answer.
    for (u, p) in [("mallory", OPERATOR_PW), ("alice", "wrong password!!")] {
        assert!(matches!(
            s.ops.operators().authenticate(u, p).await,
            Err(Error::AuthenticationFailed)
        ));
    }
    // Nothing was decided by any of that.
    assert!(matches!(
        s.agent.gates().poll(req.id).await,
        Err(Error::ApprovalPending { .. })
    ));
    // A forged token is refused even for an approved request.
    s.ops.gates().approve(&alice, req.id, "fine").await.unwrap();
    let real = s.agent.gates().poll(req.id).await.unwrap();
    let forged = Approval::from_token(
        req.id,
        "alice",
        real.expires_at,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    assert_eq!(
        reason(
            &s.agent
                .gates()
                .consume(&forged, "billing", None, "wire", &json!({}))
                .await
                .unwrap_err()
        ),
        "the token is not the one issued for this approval"
    );
    // Deciding twice is refused.
    assert_eq!(
        reason(
            &s.ops
                .gates()
                .deny(&alice, req.id, "changed my mind")
                .await
                .unwrap_err()
        ),
        "the request was already decided"
    );
    drop(s.db);
}

#[tokio::test]
async fn expired_approvals_denials_and_halted_agents() {
    let s = setup(GateConfig {
        approval_ttl: Duration::from_secs(1),
        ..GateConfig::default()
    })
    .await;
    let alice = s
        .ops
        .operators()
        .authenticate("alice", OPERATOR_PW)
        .await
        .unwrap();
    let req = s
        .agent
        .gates()
        .request("billing", None, "wire", &json!({ "n": 1 }))
        .await
        .unwrap();
    s.ops.gates().approve(&alice, req.id, "ok").await.unwrap();
    let approval = s
        .agent
        .gates()
        .wait_for(req.id, Duration::from_secs(5))
        .await
        .unwrap();
    s.clock.advance(Duration::from_secs(2));
    let err = s
        .agent
        .gates()
        .consume(&approval, "billing", None, "wire", &json!({ "n": 1 }))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "the request or approval has expired");

    let denied = s
        .agent
        .gates()
        .request("billing", None, "wire", &json!({ "n": 2 }))
        .await
        .unwrap();
    s.ops
        .gates()
        .deny(&alice, denied.id, "not today")
        .await
        .unwrap();
    match s
        .agent
        .gates()
        .wait_for(denied.id, Duration::from_secs(5))
        .await
    {
        Err(Error::ApprovalDenied { by, reason, .. }) => {
            assert_eq!((by.as_str(), reason.as_str()), ("alice", "not today"))
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // Waiting on an undecided request times out as pending.
    let open = s
        .agent
        .gates()
        .request("billing", None, "wire", &json!({ "n": 3 }))
        .await
        .unwrap();
    assert!(matches!(
        s.agent
            .gates()
            .wait_for(open.id, Duration::from_millis(200))
            .await,
        Err(Error::ApprovalPending { .. })
    ));

    s.ops
        .presence()
        .halt(&alice, "billing", "incident")
        .await
        .unwrap();
    // The agent's handle learns of the halt by notification, within its cache bound (1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match s
            .agent
            .gates()
            .request("billing", None, "wire", &json!({}))
            .await
        {
            Err(Error::Halted { .. }) => break,
            other if std::time::Instant::now() > deadline => {
                panic!("the halt never reached the agent: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
