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

/// A decision is one statement sealed against the head this handle last saw; when another
/// process moved the head meanwhile, it is resealed (or the head locked), never appended at a
/// wrong place, never decided twice, and each decision keeps its one oversight record.
#[tokio::test]
async fn decisions_sealed_against_a_moved_head_are_resealed_not_lost_or_doubled() {
    let s = setup(GateConfig::default()).await;
    let op = s
        .ops
        .operators()
        .authenticate("alice", OPERATOR_PW)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let req = s
            .agent
            .gates()
            .request("billing", Some("s-1"), "send_payment", &json!({ "i": i }))
            .await
            .unwrap();
        // The agent's handle moves the head after the operator's handle last saw it.
        s.agent
            .audit()
            .log(crate::support::event("billing", "tool.call", i))
            .await
            .unwrap();
        if i % 2 == 0 {
            s.ops.gates().approve(&op, req.id, "fine").await.unwrap();
        } else {
            s.ops.gates().deny(&op, req.id, "no").await.unwrap();
        }
        ids.push(req.id);
    }
    // Decided once each: a second decision is refused.
    let again = s
        .ops
        .gates()
        .approve(&op, ids[1], "again")
        .await
        .unwrap_err();
    assert!(format!("{again}").contains("already decided"), "{again}");
    for (i, id) in ids.iter().enumerate() {
        let r = s.agent.gates().poll(*id).await;
        if i % 2 == 0 {
            assert!(r.is_ok(), "{r:?}");
        } else {
            assert!(matches!(r, Err(Error::ApprovalDenied { .. })), "{r:?}");
        }
    }
    let rows = crate::support::all_rows(&s.ops).await;
    let decisions = rows
        .iter()
        .filter(|r| r.kind == "gate.approved" || r.kind == "gate.denied")
        .count();
    assert_eq!(decisions, 6);
    let pool = s.db.admin_pool().await;
    let oversight: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM oversight_decisions o JOIN audit_events e USING (event_id) \
         WHERE o.kind IN ('gate.approved', 'gate.denied')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(oversight, 6);
    assert!(s.ops.audit().verify_chain().await.unwrap().is_clean());
}

/// The one-statement decision changes nothing on a stale head, and the application role (the
/// agent's credentials) cannot call it at all.
#[tokio::test]
async fn the_one_statement_decision_is_all_or_nothing_and_for_operators_only() {
    let s = setup(GateConfig::default()).await;
    let req = s
        .agent
        .gates()
        .request("billing", Some("s-1"), "send_payment", &json!({ "n": 1 }))
        .await
        .unwrap();
    let call = "SELECT outcome, cur_seq FROM governance_decide_logged($1, 'alice', true, 'ok', \
                '\\x00'::bytea, now() + interval '1 hour', now(), gen_random_uuid(), \
                'gate.approved', 'billing', 'default', $2, $3, now(), 's-1', 'alice', NULL, \
                '{}', 'k1', '\\x01'::bytea, NULL, NULL, 'unsigned')";
    let head = s.ops.audit().head("default").await.unwrap().unwrap();
    // Stale: expected one row behind the head.
    let pool = s.db.admin_pool().await;
    let row: (String, Option<i64>) = sqlx::query_as(call)
        .bind(req.id)
        .bind(head.seq - 1)
        .bind(&head.head_hmac)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(row, ("stale".to_owned(), Some(head.seq)));
    let pending: String = sqlx::query_scalar("SELECT status FROM gate_requests WHERE id = $1")
        .bind(req.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, "pending");
    let oversight: i64 = sqlx::query_scalar("SELECT count(*) FROM oversight_decisions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(oversight, 0);
    assert_eq!(
        s.ops.audit().head("default").await.unwrap().unwrap().seq,
        head.seq
    );
    // The agent's credentials: refused outright.
    let app = sqlx::PgPool::connect(&s.db.app_url()).await.unwrap();
    let err = sqlx::query_as::<_, (String, Option<i64>)>(call)
        .bind(req.id)
        .bind(head.seq)
        .bind(&head.head_hmac)
        .fetch_one(&app)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(matches!(
        s.agent.gates().poll(req.id).await,
        Err(Error::ApprovalPending { .. })
    ));
}
