//! Keys and the chain, on both backends: a handle never seals onto a chain whose head another
//! key sealed (a misconfigured secret would break the chain for good: it is append-only), and
//! verification tells a chain written with another secret from a tampered one.
//!
//! Each test plays the misconfiguration or the attacker through the SDK's public API (and, for
//! the attacker, SQL as a superuser who bypasses the triggers).

use gov_sdk::{
    AuditSecret, Error, EventFilter, Governance, GovernanceBuilder, NotWritable, OperatorRole,
    Reason, Verdict,
};
use gov_testdb::{TestBackend, TestStore};

use crate::support::{OPERATOR_PW, SECRET};

/// Expands each behaviour into one `#[tokio::test]` per backend.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        both_backends!(@backend postgres, Postgres; $($name),+);
        both_backends!(@backend sqlite, Sqlite; $($name),+);
    };
    (@backend $module:ident, $backend:ident; $($name:ident),+) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(gov_testdb::TestBackend::$backend).await;
                }
            )+
        }
    };
}

both_backends! {
    a_handle_with_another_secret_is_refused_at_connect_and_the_chain_is_untouched,
    a_chain_first_written_after_connect_is_checked_before_the_first_append,
    a_gate_decision_is_not_sealed_onto_a_chain_another_key_sealed,
    a_head_relabelled_with_our_key_id_is_not_trusted,
    a_rotated_chain_takes_rows_only_under_the_new_key,
    two_secrets_share_a_database_on_separate_chains,
}

/// Another strong secret: a wrong configuration, or another service's.
const OTHER: &str = "3b8f1d2c9a4e7f60b5c1d8e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2";

fn key_id(secret: &str) -> String {
    AuditSecret::parse(secret)
        .expect("secret")
        .chain_key()
        .key_id()
        .to_owned()
}

fn builder(db: &TestStore, secret: &str) -> GovernanceBuilder {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(secret)
        .warn_on_no_wrappers(false)
}

/// A handle that checks no chain at connect (it only reads, verifies, or writes elsewhere).
async fn unchecked(db: &TestStore, secret: &str) -> Governance {
    builder(db, secret)
        .check_chains_on_connect(Vec::<String>::new())
        .connect()
        .await
        .expect("connect")
}

async fn log_to(gov: &Governance, chain: &str, n: u64) -> Result<(), Error> {
    for i in 0..n {
        let ev = gov_sdk::AuditEvent::builder("agent-1", "tool.call")
            .chain(chain)
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await?;
    }
    Ok(())
}

/// The head seq of `chain` and the number of its rows, read by a handle that writes nothing.
async fn extent(db: &TestStore, chain: &str) -> (i64, usize) {
    let gov = unchecked(db, SECRET).await;
    let head = gov
        .audit()
        .head(chain)
        .await
        .expect("head")
        .map_or(0, |h| h.seq);
    let rows = gov
        .audit()
        .events(&EventFilter {
            chain_id: Some(chain.parse().expect("chain id")),
            limit: Some(10_000),
            ..EventFilter::default()
        })
        .await
        .expect("rows")
        .len();
    gov.close().await;
    (head, rows)
}

fn not_writable(e: &Error) -> &NotWritable {
    match e {
        Error::NotWritable(n) => n,
        other => panic!("expected a refusal to append, got {other:?}"),
    }
}

async fn a_handle_with_another_secret_is_refused_at_connect_and_the_chain_is_untouched(
    b: TestBackend,
) {
    let db = TestStore::new(b).await;
    let gov = builder(&db, SECRET).connect().await.expect("connect");
    log_to(&gov, "default", 5).await.expect("log");
    gov.close().await;

    // A service restarted with another secret: `connect` refuses, naming both fingerprints and
    // what to set, never a secret.
    let err = builder(&db, OTHER)
        .connect()
        .await
        .expect_err("another key sealed the chain");
    assert!(
        matches!(not_writable(&err), NotWritable::ForeignKey { chain, .. } if chain == "default"),
        "{err:?}"
    );
    assert!(err.is_config(), "a configuration error: {err}");
    let m = err.to_string();
    assert!(
        m.contains(&key_id(SECRET)) && m.contains(&key_id(OTHER)),
        "{m}"
    );
    assert!(m.contains("GOVERNANCE_AUDIT_SECRET"), "{m}");
    assert!(!m.contains(SECRET) && !m.contains(OTHER), "{m}");

    // The chain is as it was, and verifies clean with its own secret.
    assert_eq!(extent(&db, "default").await, (5, 5));
    let gov = builder(&db, SECRET).connect().await.expect("connect");
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 5);
    gov.close().await;
}

async fn a_chain_first_written_after_connect_is_checked_before_the_first_append(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = builder(&db, SECRET).connect().await.expect("connect");
    log_to(&gov, "billing", 3).await.expect("log");
    gov.close().await;

    // The default chain is new, so the handle connects; `billing` is checked at its first
    // append, and every append after a refusal is refused again.
    let other = builder(&db, OTHER).connect().await.expect("connect");
    for _ in 0..2 {
        let err = log_to(&other, "billing", 1)
            .await
            .expect_err("billing was sealed by another key");
        assert!(
            matches!(not_writable(&err), NotWritable::ForeignKey { sealed_with, .. } if *sealed_with == key_id(SECRET)),
            "{err:?}"
        );
    }
    assert_eq!(other.audit().spooled(), 0, "a refusal is not spooled");
    // A chain nobody has written may be started.
    log_to(&other, "default", 2).await.expect("a new chain");
    other.close().await;

    assert_eq!(extent(&db, "billing").await, (3, 3));
    let gov = builder(&db, SECRET)
        .check_chains_on_connect(["billing"])
        .connect()
        .await
        .expect("connect");
    let report = gov.audit().verify_named("billing").await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    gov.close().await;
}

async fn a_gate_decision_is_not_sealed_onto_a_chain_another_key_sealed(b: TestBackend) {
    let db = TestStore::new(b).await;
    let agent = builder(&db, SECRET).connect().await.expect("agent handle");
    let req = agent
        .gates()
        .request(
            "agent-1",
            Some("s-1"),
            "send_payment",
            &serde_json::json!({"n": 1}),
        )
        .await
        .expect("request");
    let (head, _) = extent(&db, "default").await;
    assert!(head >= 1, "the request is on the chain");

    // An operator console started with another secret: its decision would be sealed in the
    // store's own transaction, so it is checked there too.
    let ops = unchecked(&db, OTHER).await;
    ops.operators()
        .add("alice", OperatorRole::Operator, OPERATOR_PW)
        .await
        .expect("add operator");
    let alice = ops
        .operators()
        .authenticate("alice", OPERATOR_PW)
        .await
        .expect("alice");
    let err = ops
        .gates()
        .approve(&alice, req.id, "looks fine")
        .await
        .expect_err("refused");
    not_writable(&err);
    // Nothing was decided and nothing was appended.
    assert!(matches!(
        agent.gates().poll(req.id).await,
        Err(Error::ApprovalPending { .. })
    ));
    assert_eq!(extent(&db, "default").await.0, head);
    let report = agent.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    ops.close().await;
    agent.close().await;
}

async fn a_head_relabelled_with_our_key_id_is_not_trusted(b: TestBackend) {
    let db = TestStore::new(b).await;
    let theirs = builder(&db, OTHER).connect().await.expect("connect");
    log_to(&theirs, "default", 3).await.expect("log");
    theirs.close().await;
    // An attacker makes the foreign chain's head name our key, so that a handle with our
    // secret would take the chain for its own and seal onto it.
    db.tamper(&[&format!(
        "UPDATE audit_events SET key_id = '{}' WHERE chain_id = 'default' AND seq = 3",
        key_id(SECRET)
    )])
    .await;
    let err = builder(&db, SECRET)
        .connect()
        .await
        .expect_err("a key_id alone proves nothing");
    let Error::ChainBroken(f) = &err else {
        panic!("expected a broken head, got {err:?}")
    };
    assert_eq!((f.seq, f.reason), (3, Reason::ModifiedRow), "{f}");
    assert!(f.detail.contains("governance verify"), "{f}");
    assert_eq!(extent(&db, "default").await, (3, 3));
}

async fn a_rotated_chain_takes_rows_only_under_the_new_key(b: TestBackend) {
    let db = TestStore::new(b).await;
    let old = builder(&db, SECRET).connect().await.expect("connect");
    log_to(&old, "default", 2).await.expect("log");
    let new = AuditSecret::parse(OTHER).expect("secret");
    let at = old
        .audit()
        .rotate_key("default", &new, "alice", "yearly")
        .await
        .expect("rotate");
    assert_eq!(at.seq, 3);
    // The handle that rotated still holds the old key: it may no longer seal here.
    let err = log_to(&old, "default", 1).await.expect_err("retired key");
    assert!(
        matches!(not_writable(&err), NotWritable::RotatedAway { seq: 3, to, .. } if *to == key_id(OTHER)),
        "{err:?}"
    );
    old.close().await;
    // Nor may a handle started with the old secret.
    let err = builder(&db, SECRET)
        .connect()
        .await
        .expect_err("retired key");
    assert!(
        matches!(not_writable(&err), NotWritable::RotatedAway { .. }),
        "{err:?}"
    );
    // The new key's holder may, with the old key as a previous one or without it.
    let with_old = builder(&db, OTHER)
        .previous_audit_secrets(SECRET)
        .connect()
        .await
        .expect("the chain was rotated to this key");
    log_to(&with_old, "default", 1).await.expect("log");
    with_old.close().await;
    let alone = builder(&db, OTHER).connect().await.expect("connect");
    log_to(&alone, "default", 1).await.expect("log");
    // Verified without the old key, the rows before the rotation need it: a configuration
    // problem, not tampering.
    let report = alone.audit().verify_chain().await.expect("verify");
    assert_eq!(report.verdict(), Verdict::Unverifiable, "{report:?}");
    let u = report.unverifiable.as_ref().expect("rows 1 to 3");
    assert_eq!(u.seqs, vec![(1, 3)]);
    assert!(u.key_ids.contains(&key_id(SECRET)), "{u:?}");
    alone.close().await;
    // With both keys the chain is clean.
    let both = builder(&db, OTHER)
        .previous_audit_secrets(SECRET)
        .connect()
        .await
        .expect("connect");
    let report = both.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 5);
    both.close().await;
}

async fn two_secrets_share_a_database_on_separate_chains(b: TestBackend) {
    let db = TestStore::new(b).await;
    // Service A writes `alpha`; service B, with its own secret, only `beta`.
    let a = builder(&db, SECRET)
        .check_chains_on_connect(["alpha"])
        .connect()
        .await
        .expect("service A");
    let b_ = builder(&db, OTHER)
        .check_chains_on_connect(["beta"])
        .connect()
        .await
        .expect("service B");
    log_to(&a, "alpha", 3).await.expect("log");
    log_to(&b_, "beta", 2).await.expect("log");
    // Neither seals onto the other's chain.
    not_writable(&log_to(&a, "beta", 1).await.expect_err("B's chain"));
    not_writable(&log_to(&b_, "alpha", 1).await.expect_err("A's chain"));
    // Each chain is judged on its own: A's keys check alpha, and cannot check beta.
    let report = a.audit().verify_all().await.expect("verify");
    assert_eq!(report.verdict(), Verdict::Unverifiable, "{report:?}");
    let by_chain: Vec<(&str, Verdict)> = report
        .chains
        .iter()
        .map(|c| (c.chain_id.as_str(), c.verdict()))
        .collect();
    assert_eq!(
        by_chain,
        vec![("alpha", Verdict::Clean), ("beta", Verdict::Unverifiable)]
    );
    let (chain, u) = report.unverifiable().next().expect("beta");
    assert_eq!(chain, "beta");
    assert!(u.key_ids.contains(&key_id(OTHER)), "{u:?}");
    assert!(
        u.advice.contains(&key_id(SECRET)),
        "names the configured key: {u:?}"
    );
    a.close().await;
    b_.close().await;
    // A verifier holding both keys checks both.
    let auditor = builder(&db, SECRET)
        .previous_audit_secrets(OTHER)
        .check_chains_on_connect(Vec::<String>::new())
        .connect()
        .await
        .expect("auditor");
    let report = auditor.audit().verify_all().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 5);
    auditor.close().await;
}
