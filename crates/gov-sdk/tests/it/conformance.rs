//! The conformance suite: the store's behaviour, run against both backends.
//!
//! Each behaviour is one `async fn(TestBackend)` written once against the SDK's public API; the
//! `conformance!` list at the top expands every one into `conformance::postgres::<name>` and
//! `conformance::sqlite::<name>` tests (run one backend with a filter such as
//! `conformance::sqlite::`), and every behaviour that does not connect as the application role
//! into `conformance::pgbouncer::<name>`: Postgres through PgBouncer in session mode (the role
//! is switched with a startup parameter the pooler does not carry; `pooler::` tests that it
//! says so). Raw SQL appears only to tamper with the chain behind the guards'
//! back (`TestStore::tamper`) or to probe the guards (`TestStore::exec`), written in the SQL
//! both backends share wherever it can be.

use std::time::{Duration, Instant};

use gov_sdk::{
    AuditEvent, AuditRecord, AuditSecret, BudgetDenial, BudgetPolicy, Clock, CostConfig, Error,
    EventFilter, Finding, GateConfig, Governance, GovernanceBuilder, MicroUsd, ModelPrice,
    OperatorRole, PresenceState, PriceTable, Reason, ScopeDenial, ScopePolicy, Signer, TokenUsage,
};
use gov_testdb::{TestBackend, TestStore};
use serde_json::json;

use crate::support::{OPERATOR_PW, OTHER_SECRET, SECRET, event, eventually, operator};

/// Expands each behaviour into one `#[tokio::test]` per backend.
macro_rules! conformance {
    ($($name:ident),+ $(,)?; as the application role: $($app:ident),+ $(,)?) => {
        conformance!(@backend postgres, Postgres; $($name),+, $($app),+);
        conformance!(@backend sqlite, Sqlite; $($name),+, $($app),+);
        conformance!(@backend pgbouncer, PgBouncer; $($name),+);
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

conformance! {
    appends_read_back_exactly_and_verify_clean,
    event_fields_times_and_counts_round_trip,
    append_only_guards_refuse_update_and_delete,
    an_edited_payload_is_a_modified_row,
    a_deleted_row_is_a_missing_row,
    a_cut_tail_is_missing_rows_against_the_head,
    swapped_rows_are_reordered_rows,
    a_row_inserted_mid_chain_is_an_inserted_row,
    an_authentic_row_on_another_branch_is_a_fork,
    a_row_resealed_with_another_key_is_an_unknown_key,
    a_removed_head_row_is_a_head_mismatch,
    a_checkpoint_proves_a_cut_tail,
    concurrent_appends_from_separate_handles_form_one_chain,
    concurrent_reservations_never_overspend,
    settle_release_and_expiry_outcomes,
    day_and_token_caps_span_sessions,
    halts_hold_until_resume_and_heartbeats_never_clear_them,
    scope_allows_denies_hides_and_audits,
    a_policy_changed_by_another_handle_is_seen,
    a_follower_sees_events_another_handle_appends,
    an_agent_handle_cannot_log_governance_records;
    as the application role:
    gates_approve_once_deny_and_refuse_self_approval,
}

/// How long a change made through one handle may take to reach another (SQLite listeners in
/// another pool poll the notification table).
const PROPAGATION: Duration = Duration::from_secs(5);

fn builder(db: &TestStore) -> GovernanceBuilder {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
}

async fn connect(db: &TestStore) -> Governance {
    builder(db).connect().await.expect("connect")
}

/// A fresh store with `n` events (`agent-1`, `tool.call`, payload `{"n": i}`) on the default
/// chain, verified clean.
async fn seeded(b: TestBackend, n: u64) -> (TestStore, Governance) {
    let db = TestStore::new(b).await;
    let gov = connect(&db).await;
    for i in 0..n {
        gov.audit()
            .log(event("agent-1", "tool.call", i))
            .await
            .expect("log");
    }
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, n);
    (db, gov)
}

/// The first finding of verifying the default chain.
async fn finding(gov: &Governance) -> Finding {
    let report = gov.audit().verify_chain().await.expect("verify");
    report
        .finding
        .expect("a finding: the chain was tampered with")
}

fn assert_finding(f: &Finding, seq: i64, reason: Reason) {
    assert_eq!((f.seq, f.reason), (seq, reason), "{f}");
}

/// The stored row at `seq` of the default chain.
async fn row(gov: &Governance, seq: i64) -> AuditRecord {
    let rows = gov
        .audit()
        .events(&EventFilter {
            after_seq: Some(seq - 1),
            limit: Some(1),
            ..EventFilter::default()
        })
        .await
        .expect("read a row");
    rows.into_iter().next().expect("the row exists")
}

async fn kinds(gov: &Governance, kind: &str) -> Vec<AuditRecord> {
    gov.audit()
        .events(&EventFilter {
            kind: Some(kind.into()),
            limit: Some(10_000),
            ..EventFilter::default()
        })
        .await
        .expect("read events")
}

// ---------------------------------------------------------------------------------------------
// The audit chain

async fn appends_read_back_exactly_and_verify_clean(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = connect(&db).await;
    // An empty store never passes verification.
    let err = gov
        .audit()
        .verify_all()
        .await
        .expect_err("nothing to verify");
    assert!(err.to_string().contains("nothing was verified"), "{err}");

    let (mut billing_seq, mut default_seq) = (0, 0);
    for i in 0..30u64 {
        let (chain, seq) = if i % 3 == 0 {
            ("billing", &mut billing_seq)
        } else {
            ("default", &mut default_seq)
        };
        let ev = AuditEvent::builder("agent-1", "tool.call")
            .chain(chain)
            .session("s-1")
            .payload(json!({ "n": i }))
            .build()
            .expect("event");
        *seq += 1;
        // Each chain numbers its own rows from 1.
        assert_eq!(gov.audit().log(ev).await.expect("log").seq(), Some(*seq));
    }
    let tricky = AuditEvent::builder("agent-2", "payload.test")
        .payload(json!({
            "unicode": "héllo wörld ✓ 😀 \u{0} \u{1f} \" \\ \u{2028} 中文 עברית",
            "big": 9007199254740991_i64,
            "frac": 0.1,
            "zero": -0.0,
            "z": 1,
            "a": { "y": [3, 2, 1], "b": false },
        }))
        .build()
        .expect("event");
    let expected = tricky.payload.clone();
    assert_eq!(gov.audit().log(tricky).await.expect("log").seq(), Some(21));

    assert_eq!(
        gov.audit()
            .head("default")
            .await
            .expect("head")
            .expect("head")
            .seq,
        21
    );
    assert_eq!(
        gov.audit()
            .head("billing")
            .await
            .expect("head")
            .expect("head")
            .seq,
        10
    );
    let billing = gov
        .audit()
        .events(&EventFilter {
            chain_id: Some("billing".parse().expect("chain id")),
            ..EventFilter::default()
        })
        .await
        .expect("read");
    assert_eq!(
        billing.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<i64>>()
    );
    assert!(billing.windows(2).all(|w| w[1].prev_hmac == w[0].row_hmac));
    // The stored text is byte for byte what was hashed.
    let last = row(&gov, 21).await;
    assert_eq!(last.payload, expected);
    assert_eq!(last.agent_id, "agent-2");
    // Keyset paging by seq, filtered by kind.
    let page = gov
        .audit()
        .events(&EventFilter {
            kind: Some("tool.call".into()),
            after_seq: Some(5),
            limit: Some(4),
            ..EventFilter::default()
        })
        .await
        .expect("read");
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [6, 7, 8, 9]);

    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 21);
    let all = gov.audit().verify_all().await.expect("verify all");
    assert!(all.is_clean(), "{all:?}");
    assert_eq!(all.events_checked, 31);
    assert_eq!(all.chains.len(), 2);
}

async fn event_fields_times_and_counts_round_trip(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = connect(&db).await;
    let t0 = time::macros::datetime!(2026-01-01 00:00:00.123456 UTC);
    let hour = time::Duration::hours(1);
    let first = AuditEvent::builder("agent-t", "tool.call")
        .chain("timed")
        .session("s-1")
        .occurred_at(t0)
        .payload(json!({ "i": 0 }))
        .build()
        .expect("event");
    let second = AuditEvent::builder("agent-t", "tool.call")
        .chain("timed")
        .session("s-2")
        .actor("alice@example.com")
        .parent(first.event_id)
        .occurred_at(t0 + hour)
        .payload(json!({ "i": 1 }))
        .build()
        .expect("event");
    let third = AuditEvent::builder("agent-t", "tool.denied")
        .chain("timed")
        .session("s-1")
        .occurred_at(t0 + hour * 2)
        .payload(json!({ "i": 2 }))
        .build()
        .expect("event");
    let events = [first, second, third];
    // An actor is set only by operator paths; seed the row as it would be stored.
    gov_testdb::forge::append_unchecked(db.url(), crate::support::SECRET, events.to_vec()).await;
    let timed = |since, until| EventFilter {
        chain_id: Some("timed".parse().expect("chain id")),
        since,
        until,
        ..EventFilter::default()
    };
    let rows = gov.audit().events(&timed(None, None)).await.expect("read");
    assert_eq!(rows.len(), 3);
    for (r, ev) in rows.iter().zip(&events) {
        assert_eq!(r.event_id, ev.event_id);
        assert_eq!(r.occurred_at, ev.occurred_at);
        assert_eq!(r.agent_id, ev.agent_id.as_str());
        assert_eq!(
            r.session_id.as_deref(),
            ev.session_id.as_ref().map(|s| s.as_str())
        );
        assert_eq!(r.kind, ev.kind);
        assert_eq!(r.actor, ev.actor);
        assert_eq!(r.parent_event_id, ev.parent_event_id);
        assert_eq!(r.payload, ev.payload);
        assert_eq!(r.signature_status, "unsigned");
        assert_eq!(
            (r.signature.as_ref(), r.signer_key_id.as_ref()),
            (None, None)
        );
    }
    assert_eq!(
        rows[0].occurred_at, t0,
        "microseconds survive the round trip"
    );
    // `since` is inclusive, `until` exclusive.
    let middle = gov
        .audit()
        .events(&timed(Some(t0 + hour), Some(t0 + hour * 2)))
        .await
        .expect("read");
    assert_eq!(middle.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
    let counts = gov
        .audit()
        .event_counts(Some("timed"), Some(t0), Some(t0 + hour * 2))
        .await
        .expect("counts");
    let total = counts
        .iter()
        .find(|c| c.agent_id == "agent-t" && c.kind.is_none())
        .expect("the agent's total");
    assert_eq!((total.events, total.sessions), (2, 2));
    assert_eq!((total.first_at, total.last_at), (t0, t0 + hour));
    let calls = counts
        .iter()
        .find(|c| c.kind.as_deref() == Some("tool.call"))
        .expect("tool.call count");
    assert_eq!(calls.events, 2);
    assert!(
        counts
            .iter()
            .all(|c| c.kind.as_deref() != Some("tool.denied"))
    );
    let report = gov.audit().verify_named("timed").await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
}

async fn append_only_guards_refuse_update_and_delete(b: TestBackend) {
    let (db, gov) = seeded(b, 5).await;
    // A tampering session that changed nothing leaves the guards as they were (on SQLite,
    // `tamper` drops and recreates them inside its transaction).
    db.tamper(&["UPDATE audit_events SET payload = payload WHERE seq = 0"])
        .await;
    let refused = |r: Result<u64, String>, needle: &str| match r {
        Err(e) => assert!(e.contains(needle), "refused, but not by the guard: {e}"),
        Ok(n) => panic!("the statement went through ({n} rows)"),
    };
    refused(
        db.exec("UPDATE audit_events SET payload = '{\"n\":99}' WHERE seq = 3")
            .await,
        "append-only",
    );
    refused(
        db.exec("DELETE FROM audit_events WHERE seq = 5").await,
        "append-only",
    );
    refused(db.exec("DELETE FROM audit_events").await, "append-only");
    refused(
        db.exec("UPDATE chain_heads SET seq = 2 WHERE chain_id = 'default'")
            .await,
        "only moves forward",
    );
    refused(
        db.exec("DELETE FROM chain_heads").await,
        "cannot be removed",
    );
    // Nothing changed.
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 5);
    assert_eq!(row(&gov, 3).await.payload, r#"{"n":2}"#);
}

async fn an_edited_payload_is_a_modified_row(b: TestBackend) {
    let (db, gov) = seeded(b, 20).await;
    db.tamper(&["UPDATE audit_events SET payload = '{\"n\":700}' WHERE seq = 7"])
        .await;
    assert_finding(&finding(&gov).await, 7, Reason::ModifiedRow);
    // A handle that verifies what it reads refuses the read at the edit.
    let reader = builder(&db)
        .verify_chain_on_read(true)
        .connect()
        .await
        .expect("connect");
    let filter = EventFilter {
        after_seq: Some(4),
        limit: Some(5),
        ..EventFilter::default()
    };
    match reader.audit().events(&filter).await {
        Err(Error::ChainBroken(f)) => assert_finding(&f, 7, Reason::ModifiedRow),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

async fn a_deleted_row_is_a_missing_row(b: TestBackend) {
    let (db, gov) = seeded(b, 20).await;
    db.tamper(&["DELETE FROM audit_events WHERE seq = 10"])
        .await;
    assert_finding(&finding(&gov).await, 10, Reason::MissingRow);
}

async fn a_cut_tail_is_missing_rows_against_the_head(b: TestBackend) {
    let (db, gov) = seeded(b, 20).await;
    db.tamper(&["DELETE FROM audit_events WHERE seq > 17"])
        .await;
    assert_finding(&finding(&gov).await, 18, Reason::MissingRow);
}

async fn swapped_rows_are_reordered_rows(b: TestBackend) {
    let (db, gov) = seeded(b, 20).await;
    db.tamper(&[
        "UPDATE audit_events SET seq = 1000005 WHERE seq = 5",
        "UPDATE audit_events SET seq = 5 WHERE seq = 6",
        "UPDATE audit_events SET seq = 6 WHERE seq = 1000005",
    ])
    .await;
    assert_finding(&finding(&gov).await, 5, Reason::ReorderedRows);
}

/// An INSERT of a forged row at `seq`, in the backend's dialect.
fn forged_row_sql(db: &TestStore, seq: i64, prev: &[u8], key_id: &str, row_hmac: &[u8]) -> String {
    let (prev, hmac) = (db.bytes_sql(prev), db.bytes_sql(row_hmac));
    match db.backend() {
        TestBackend::Postgres | TestBackend::PgBouncer => format!(
            "INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, kind, payload, prev_hmac, key_id, row_hmac) \
             VALUES ('default', {seq}, gen_random_uuid(), now(), 'agent-1', 's-1', 'tool.call', '{{\"n\":\"forged\"}}', {prev}, '{key_id}', {hmac})"
        ),
        TestBackend::Sqlite => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
            format!(
                "INSERT INTO audit_events (chain_id, seq, event_id, occurred_at, agent_id, session_id, kind, payload, prev_hmac, key_id, row_hmac, recorded_at) \
                 VALUES ('default', {seq}, randomblob(16), {now}, 'agent-1', 's-1', 'tool.call', '{{\"n\":\"forged\"}}', {prev}, '{key_id}', {hmac}, {now})"
            )
        }
    }
}

async fn a_row_inserted_mid_chain_is_an_inserted_row(b: TestBackend) {
    let (db, gov) = seeded(b, 20).await;
    let r11 = row(&gov, 11).await;
    let insert = forged_row_sql(&db, 12, &[7u8; 32], &r11.key_id, &[0xab; 32]);
    db.tamper(&[
        "UPDATE audit_events SET seq = seq + 1000000 WHERE seq >= 12",
        "UPDATE audit_events SET seq = seq - 1000000 + 1 WHERE seq >= 1000000",
        &insert,
        "UPDATE chain_heads SET seq = 21",
    ])
    .await;
    assert_finding(&finding(&gov).await, 12, Reason::InsertedRow);
}

async fn an_authentic_row_on_another_branch_is_a_fork(b: TestBackend) {
    // Someone holding the key rewrites row 10 to follow a different predecessor.
    let (db, gov) = seeded(b, 20).await;
    let mut r10 = row(&gov, 10).await;
    let ours = AuditSecret::parse(SECRET).expect("secret").chain_key();
    r10.prev_hmac = vec![9u8; 32];
    let hmac = ours.seal(&r10);
    let update = format!(
        "UPDATE audit_events SET prev_hmac = {}, row_hmac = {} WHERE seq = 10",
        db.bytes_sql(&r10.prev_hmac),
        db.bytes_sql(&hmac)
    );
    db.tamper(&[&update]).await;
    assert_finding(&finding(&gov).await, 10, Reason::Fork);
}

async fn a_row_resealed_with_another_key_is_an_unknown_key(b: TestBackend) {
    let (db, gov) = seeded(b, 20).await;
    let mut r9 = row(&gov, 9).await;
    let other = AuditSecret::parse(OTHER_SECRET)
        .expect("secret")
        .chain_key();
    r9.payload = r#"{"n":900}"#.into();
    r9.key_id = other.key_id().to_owned();
    let hmac = other.seal(&r9);
    let update = format!(
        "UPDATE audit_events SET payload = '{}', key_id = '{}', row_hmac = {} WHERE seq = 9",
        r9.payload,
        r9.key_id,
        db.bytes_sql(&hmac)
    );
    db.tamper(&[&update]).await;
    assert_finding(&finding(&gov).await, 9, Reason::UnknownKey);
}

async fn a_removed_head_row_is_a_head_mismatch(b: TestBackend) {
    let (db, gov) = seeded(b, 5).await;
    db.tamper(&["DELETE FROM chain_heads WHERE chain_id = 'default'"])
        .await;
    assert_finding(&finding(&gov).await, 1, Reason::HeadMismatch);
    let all = gov.audit().verify_all().await.expect("verify all");
    let f = all.chains[0]
        .finding
        .as_ref()
        .expect("reported, not skipped");
    assert_finding(f, 1, Reason::HeadMismatch);
}

async fn a_checkpoint_proves_a_cut_tail(b: TestBackend) {
    let (db, gov) = seeded(b, 10).await;
    let operator = Signer::load("ephemeral", "operator").expect("key");
    let cp = gov
        .audit()
        .checkpoint_with("default", &operator)
        .await
        .expect("checkpoint");
    assert_eq!(cp.seq, 10);
    assert_eq!(
        gov.audit().check_checkpoint(&cp).await.expect("check"),
        None
    );
    // Cut the tail, move the head back and remove the stored checkpoints: the chain alone
    // verifies clean, the checkpoint held elsewhere does not.
    db.tamper(&[
        "DELETE FROM audit_events WHERE seq > 7",
        "UPDATE chain_heads SET seq = 7, head_hmac = (SELECT row_hmac FROM audit_events WHERE chain_id = 'default' AND seq = 7) WHERE chain_id = 'default'",
        "DELETE FROM checkpoints",
    ])
    .await;
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 7);
    let f = gov
        .audit()
        .check_checkpoint(&cp)
        .await
        .expect("check")
        .expect("the cut tail is found");
    assert_finding(&f, 10, Reason::MissingRow);
    assert!(f.detail.contains("tail was cut off"), "{}", f.detail);
}

async fn concurrent_appends_from_separate_handles_form_one_chain(b: TestBackend) {
    const HANDLES: u64 = 8;
    const EACH: u64 = 50;
    let db = TestStore::new(b).await;
    let mut handles = Vec::new();
    for _ in 0..HANDLES {
        handles.push(
            builder(&db)
                .max_connections(2)
                .connect()
                .await
                .expect("connect"),
        );
    }
    let mut tasks = Vec::new();
    for (t, gov) in handles.iter().cloned().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let at = gov
                    .audit()
                    .log(event(&format!("agent-{t}"), "tool.call", i))
                    .await
                    .expect("log");
                seqs.push(at.seq().expect("durable"));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.expect("task");
        // Each handle's events land in the order it logged them.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        all.extend(seqs);
    }
    all.sort_unstable();
    let total = i64::try_from(HANDLES * EACH).expect("count");
    assert_eq!(all, (1..=total).collect::<Vec<i64>>());
    let gov = &handles[0];
    assert_eq!(
        gov.audit()
            .head("default")
            .await
            .expect("head")
            .expect("head")
            .seq,
        total
    );
    let rows = gov
        .audit()
        .events(&EventFilter {
            limit: Some(10_000),
            ..EventFilter::default()
        })
        .await
        .expect("read");
    assert_eq!(rows.len(), all.len());
    assert!(
        rows.windows(2)
            .all(|w| w[1].seq == w[0].seq + 1 && w[1].prev_hmac == w[0].row_hmac)
    );
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, HANDLES * EACH);
}

// ---------------------------------------------------------------------------------------------
// Budgets

/// One micro-USD per token, in and out, so costs are easy to reason about.
fn unit_prices() -> PriceTable {
    let mut t = PriceTable::builtin();
    t.set(
        "test",
        "unit-model",
        ModelPrice {
            input: 1_000_000,
            output: 1_000_000,
            cached_input: 500_000,
        },
    );
    t
}

async fn budgeted(db: &TestStore, ttl: Duration) -> Governance {
    budgeted_on(db, ttl, Clock::system()).await
}

/// As [`budgeted`], deciding expiry on `clock`.
async fn budgeted_on(db: &TestStore, ttl: Duration, clock: Clock) -> Governance {
    builder(db)
        .clock(clock)
        .max_connections(6)
        .cost(CostConfig {
            prices: unit_prices(),
            reservation_ttl: ttl,
            ..CostConfig::default()
        })
        .connect()
        .await
        .expect("connect")
}

fn usage(input: u64, output: u64) -> TokenUsage {
    TokenUsage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: 0,
    }
}

fn denial(e: &Error) -> Option<BudgetDenial> {
    match e {
        Error::BudgetExceeded { denial, .. } => Some(*denial),
        _ => None,
    }
}

/// `n` concurrent reservations of 100 micro-USD each, alternating between two handles; the
/// ones that held, having checked that every other was refused on the session cap.
async fn race(handles: &[Governance; 2], n: usize) -> Vec<gov_sdk::Reservation> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let gov = handles[i % 2].clone();
        // Input 0, max_tokens 100: a projected cost of 100 micro-USD.
        tasks.push(tokio::spawn(async move {
            gov.cost()
                .reserve("racer", "s", "unit-model", 0, Some(100))
                .await
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => held.push(r),
            Err(e) => assert_eq!(denial(&e), Some(BudgetDenial::SessionUsd), "{e}"),
        }
    }
    held
}

async fn concurrent_reservations_never_overspend(b: TestBackend) {
    let db = TestStore::new(b).await;
    let ttl = Duration::from_secs(600);
    let handles = [budgeted(&db, ttl).await, budgeted(&db, ttl).await];
    let gov = &handles[0];
    gov.cost()
        .register(BudgetPolicy::new("racer".parse().expect("agent")).per_session(MicroUsd(1_000)))
        .await
        .expect("policy");

    // 40 callers want 100 each against a cap of 1000: exactly 10 hold.
    let held = race(&handles, 40).await;
    assert_eq!(held.len(), 10);
    let status = gov.cost().check_or_raise("racer", "s").await;
    assert_eq!(
        denial(&status.expect_err("no headroom left")),
        Some(BudgetDenial::SessionUsd)
    );
    let snap = gov.cost().snapshot("racer", "s").await.expect("snapshot");
    assert_eq!(snap.status.session.reserved, MicroUsd(1_000));
    assert_eq!(snap.status.session.reserved_tokens, 1_000);
    assert_eq!(snap.status.session.spent, MicroUsd(0));

    // Each settles 40 of its 100: 400 spent, the rest returned.
    for r in held {
        let s = r.settle(usage(0, 40)).await.expect("settle");
        assert_eq!(
            (s.cost, s.reserved, s.late),
            (MicroUsd(40), MicroUsd(100), false)
        );
    }
    let snap = gov.cost().snapshot("racer", "s").await.expect("snapshot");
    assert_eq!(snap.status.session.reserved, MicroUsd(0));
    assert_eq!(snap.status.session.reserved_tokens, 0);
    assert_eq!(snap.status.session.spent, MicroUsd(400));
    assert_eq!(snap.status.session.spent_tokens, 400);
    assert_eq!(snap.status.day.spent, MicroUsd(400));
    assert_eq!(snap.by_model.len(), 1);
    assert_eq!(
        (snap.by_model[0].calls, snap.by_model[0].cost),
        (10, MicroUsd(400))
    );

    // What was spent counts against the cap: 600 left, so 6 of 20 hold.
    let held = race(&handles, 20).await;
    assert_eq!(held.len(), 6);
    for r in held {
        r.release().await.expect("release");
    }
    let snap = gov.cost().snapshot("racer", "s").await.expect("snapshot");
    assert_eq!(snap.status.session.reserved, MicroUsd(0));
    assert_eq!(snap.status.session.spent, MicroUsd(400));
    // Every refusal was audited (30 and 14 racers, and the one `check_or_raise`), and the
    // chain holds.
    assert_eq!(kinds(gov, "budget.denied").await.len(), 30 + 14 + 1);
    assert!(gov.audit().verify_chain().await.expect("verify").is_clean());
}

async fn settle_release_and_expiry_outcomes(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = budgeted(&db, Duration::from_secs(600)).await;
    gov.cost()
        .register(BudgetPolicy::new("a".parse().expect("agent")).per_session(MicroUsd(1_000)))
        .await
        .expect("policy");
    let first = gov
        .cost()
        .reserve("a", "s", "unit-model", 100, Some(500))
        .await
        .expect("reserve");
    assert_eq!(first.reserved(), MicroUsd(600));
    let err = gov
        .cost()
        .reserve("a", "s", "unit-model", 100, Some(500))
        .await
        .expect_err("over the cap");
    assert_eq!(denial(&err), Some(BudgetDenial::SessionUsd), "{err}");
    assert!(
        err.to_string()
            .contains("cap 1000, used 600, requested 600"),
        "{err}"
    );
    // Settling records the real cost and returns the rest.
    let settled = first.settle(usage(100, 50)).await.expect("settle");
    assert_eq!(
        (settled.cost, settled.reserved, settled.late),
        (MicroUsd(150), MicroUsd(600), false)
    );
    let again = gov
        .cost()
        .reserve("a", "s", "unit-model", 100, Some(500))
        .await
        .expect("reserve");
    let status = gov.cost().check_or_raise("a", "s").await.expect("headroom");
    assert_eq!(
        (status.session.spent, status.session.reserved),
        (MicroUsd(150), MicroUsd(600))
    );
    // Releasing returns everything and records nothing.
    again.release().await.expect("release");
    let status = gov.cost().check_or_raise("a", "s").await.expect("headroom");
    assert_eq!(
        (status.session.spent, status.session.reserved),
        (MicroUsd(150), MicroUsd(0))
    );
    assert_eq!(status.day.spent, MicroUsd(150));
    // A reservation dropped unsettled is released in the background.
    drop(
        gov.cost()
            .reserve("a", "s", "unit-model", 0, Some(800))
            .await
            .expect("reserve"),
    );
    eventually("a dropped reservation is released", PROPAGATION, || async {
        let s = gov.cost().check_or_raise("a", "s").await.expect("status");
        s.session.reserved == MicroUsd(0)
    })
    .await;

    // An abandoned reservation expires and stops holding budget; settled late, its spend is
    // still recorded.
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    let short = budgeted_on(&db, Duration::from_secs(1), clock.clone()).await;
    short
        .cost()
        .register(BudgetPolicy::new("b".parse().expect("agent")).per_session(MicroUsd(100)))
        .await
        .expect("policy");
    let abandoned = short
        .cost()
        .reserve("b", "s", "unit-model", 0, Some(100))
        .await
        .expect("reserve");
    let err = short
        .cost()
        .reserve("b", "s", "unit-model", 0, Some(1))
        .await
        .expect_err("the cap is held");
    assert_eq!(denial(&err), Some(BudgetDenial::SessionUsd), "{err}");
    clock.advance(Duration::from_millis(1_001));
    let fresh = short
        .cost()
        .reserve("b", "s", "unit-model", 0, Some(100))
        .await
        .expect("the expired reservation no longer holds the cap");
    let late = abandoned.settle(usage(0, 30)).await.expect("settle late");
    assert_eq!((late.cost, late.late), (MicroUsd(30), true));
    let status = short
        .cost()
        .snapshot("b", "s")
        .await
        .expect("snapshot")
        .status;
    assert_eq!(
        (status.session.spent, status.session.reserved),
        (MicroUsd(30), MicroUsd(100))
    );
    fresh.release().await.expect("release");
    let status = short
        .cost()
        .snapshot("b", "s")
        .await
        .expect("snapshot")
        .status;
    assert_eq!(
        (status.session.spent, status.session.reserved),
        (MicroUsd(30), MicroUsd(0))
    );
}

async fn day_and_token_caps_span_sessions(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = budgeted(&db, Duration::from_secs(600)).await;
    gov.cost()
        .register(
            BudgetPolicy::new("a".parse().expect("agent"))
                .per_day(MicroUsd(1_000))
                .per_session_tokens(700),
        )
        .await
        .expect("policy");
    gov.cost()
        .reserve("a", "s1", "unit-model", 300, Some(300))
        .await
        .expect("reserve")
        .settle(usage(300, 300))
        .await
        .expect("settle");
    let err = gov
        .cost()
        .reserve("a", "s1", "unit-model", 100, Some(100))
        .await
        .expect_err("the session's tokens are spent");
    assert_eq!(denial(&err), Some(BudgetDenial::SessionTokens), "{err}");
    gov.cost()
        .reserve("a", "s2", "unit-model", 200, Some(200))
        .await
        .expect("another session has its own tokens")
        .settle(usage(200, 200))
        .await
        .expect("settle");
    let err = gov
        .cost()
        .reserve("a", "s3", "unit-model", 1, Some(1))
        .await
        .expect_err("the day is spent");
    assert_eq!(denial(&err), Some(BudgetDenial::DayUsd), "{err}");
    assert_eq!(
        denial(
            &gov.cost()
                .check_or_raise("a", "s3")
                .await
                .expect_err("the day is spent")
        ),
        Some(BudgetDenial::DayUsd)
    );
    let snap = gov.cost().snapshot("a", "s1").await.expect("snapshot");
    assert_eq!(snap.by_model.len(), 1);
    assert_eq!(
        (snap.by_model[0].calls, snap.by_model[0].cost),
        (2, MicroUsd(1_000))
    );
    assert_eq!(snap.status.day.spent, MicroUsd(1_000));
    assert_eq!(snap.status.day.spent_tokens, 1_000);
    assert_eq!(snap.status.session.spent_tokens, 600);
    let today = gov.cost().usage_today("a").await.expect("usage");
    assert_eq!(today, snap.by_model);
    // No policy, no spending: unknown agents are refused.
    let err = gov
        .cost()
        .reserve("nobody", "s", "unit-model", 1, Some(1))
        .await
        .expect_err("no policy");
    assert_eq!(denial(&err), Some(BudgetDenial::NoPolicy), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Gates

fn refusal(e: &Error) -> String {
    match e {
        Error::ApprovalRefused { reason, .. } => reason.clone(),
        other => format!("not a refusal: {other}"),
    }
}

async fn gates_approve_once_deny_and_refuse_self_approval(b: TestBackend) {
    let db = TestStore::new(b).await;
    // Every handle decides expiry on one clock, which stands still until the test moves it.
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    // The agent connects as the application role where the backend has roles.
    let agent = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .clock(clock.clone())
        .connect()
        .await
        .expect("agent handle");
    let ops = builder(&db)
        .clock(clock.clone())
        .gate_config(GateConfig::default())
        .connect()
        .await
        .expect("operator handle");
    for (name, role) in [
        ("alice", OperatorRole::Operator),
        ("billing", OperatorRole::Admin),
    ] {
        ops.operators()
            .add(name, role, OPERATOR_PW)
            .await
            .expect("add operator");
    }
    let alice = ops
        .operators()
        .authenticate("alice", OPERATOR_PW)
        .await
        .expect("alice");

    let args = json!({ "to": "cfo@example.com", "amount": 1200 });
    let req = agent
        .gates()
        .request("billing", Some("s-1"), "send_payment", &args)
        .await
        .expect("request");
    assert!(matches!(
        agent.gates().poll(req.id).await,
        Err(Error::ApprovalPending { .. })
    ));
    let pending = ops.gates().pending().await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].id,
            pending[0].agent_id.as_str(),
            pending[0].tool.as_str()
        ),
        (req.id, "billing", "send_payment")
    );
    // The requester can never approve its own request, even as an admin.
    let same = ops
        .operators()
        .authenticate("billing", OPERATOR_PW)
        .await
        .expect("billing");
    let err = ops
        .gates()
        .approve(&same, req.id, "mine")
        .await
        .expect_err("self-approval");
    assert_eq!(refusal(&err), "a requester cannot approve its own request");

    // The waiter wakes on the decision another handle commits.
    let waiter = {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .gates()
                .wait_for(req.id, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    ops.gates()
        .approve(&alice, req.id, "expected invoice")
        .await
        .expect("approve");
    let decided = Instant::now();
    let approval = waiter.await.expect("task").expect("approved");
    assert!(
        decided.elapsed() < Duration::from_secs(10),
        "wait_for was not woken by the decision"
    );
    assert_eq!(approval.approved_by, "alice");
    assert!(ops.gates().pending().await.expect("pending").is_empty());

    // Bound to the agent and the session that asked: another agent (through its own handle
    // or this one), or the same agent in another session or none, cannot spend it.
    for (who, session) in [
        ("mallory", Some("s-1")),
        ("billing", Some("s-2")),
        ("billing", None),
    ] {
        let err = agent
            .gates()
            .consume(&approval, who, session, "send_payment", &args)
            .await
            .expect_err("another agent or session");
        assert_eq!(
            refusal(&err),
            "the approval was granted to another agent or session",
            "{who} {session:?}"
        );
    }
    // Bound to the action, and used once.
    let other = json!({ "to": "cfo@example.com", "amount": 12000 });
    let err = agent
        .gates()
        .consume(&approval, "billing", Some("s-1"), "send_payment", &other)
        .await
        .expect_err("another action");
    assert_eq!(refusal(&err), "the approval is for a different action");
    agent
        .gates()
        .consume(
            &approval,
            "billing",
            Some("s-1"),
            "send_payment",
            &json!({ "amount": 1200, "to": "cfo@example.com" }),
        )
        .await
        .expect("consume");
    let err = agent
        .gates()
        .consume(&approval, "billing", Some("s-1"), "send_payment", &args)
        .await
        .expect_err("a replay");
    assert_eq!(refusal(&err), "the approval was already used");
    let err = ops
        .gates()
        .deny(&alice, req.id, "changed my mind")
        .await
        .expect_err("decided twice");
    assert_eq!(refusal(&err), "the request was already decided");

    // A denial reaches the waiter with who and why.
    let denied = agent
        .gates()
        .request("billing", None, "wire", &json!({ "n": 2 }))
        .await
        .expect("request");
    ops.gates()
        .deny(&alice, denied.id, "not today")
        .await
        .expect("deny");
    match agent
        .gates()
        .wait_for(denied.id, Duration::from_secs(10))
        .await
    {
        Err(Error::ApprovalDenied { by, reason, .. }) => {
            assert_eq!((by.as_str(), reason.as_str()), ("alice", "not today"));
        }
        other => panic!("expected a denial, got {other:?}"),
    }

    // Waiting on an undecided request times out as pending.
    let open = agent
        .gates()
        .request("billing", None, "wire", &json!({ "n": 3 }))
        .await
        .expect("request");
    assert!(matches!(
        agent
            .gates()
            .wait_for(open.id, Duration::from_millis(200))
            .await,
        Err(Error::ApprovalPending { .. })
    ));
    // An approval lapses after its time to live.
    let brief = builder(&db)
        .clock(clock.clone())
        .gate_config(GateConfig {
            approval_ttl: Duration::from_secs(1),
            ..GateConfig::default()
        })
        .connect()
        .await
        .expect("operator handle");
    brief
        .gates()
        .approve(&alice, open.id, "quickly")
        .await
        .expect("approve");
    let lapsing = agent
        .gates()
        .wait_for(open.id, Duration::from_secs(10))
        .await
        .expect("approved");
    clock.advance(Duration::from_secs(2));
    let err = agent
        .gates()
        .consume(&lapsing, "billing", None, "wire", &json!({ "n": 3 }))
        .await
        .expect_err("expired");
    assert_eq!(refusal(&err), "the request or approval has expired");

    let trail: Vec<String> = ops
        .audit()
        .events(&EventFilter::default())
        .await
        .expect("read")
        .into_iter()
        .filter(|r| r.kind.starts_with("gate."))
        .map(|r| format!("{}:{}", r.kind, r.actor.unwrap_or_default()))
        .collect();
    assert_eq!(
        trail,
        [
            "gate.requested:",
            "gate.approved:alice",
            "gate.consumed:",
            "gate.requested:",
            "gate.denied:alice",
            "gate.requested:",
            "gate.approved:alice",
        ]
    );
    // Each decision committed its oversight record with its event; nothing else has one.
    let gate_events: Vec<_> = ops
        .audit()
        .events(&EventFilter::default())
        .await
        .expect("read")
        .into_iter()
        .filter(|r| r.kind.starts_with("gate."))
        .collect();
    let ids: Vec<_> = gate_events.iter().map(|r| r.event_id.as_uuid()).collect();
    let mut backed: Vec<String> = ops
        .audit()
        .oversight_records(&ids)
        .await
        .expect("oversight records")
        .into_iter()
        .map(|o| format!("{}:{}:{}", o.kind, o.operator, o.agent_id))
        .collect();
    backed.sort();
    assert_eq!(
        backed,
        [
            "gate.approved:alice:billing",
            "gate.approved:alice:billing",
            "gate.denied:alice:billing",
        ]
    );
    assert!(ops.audit().verify_chain().await.expect("verify").is_clean());
}

// ---------------------------------------------------------------------------------------------
// Halts and scope

async fn halts_hold_until_resume_and_heartbeats_never_clear_them(b: TestBackend) {
    let db = TestStore::new(b).await;
    // A cache that never expires within the test: only a notification can carry the halt.
    let agent = builder(&db)
        .halt_cache_ttl(Duration::from_secs(600))
        .connect()
        .await
        .expect("agent handle");
    let ops = connect(&db).await;
    agent
        .scope()
        .register(ScopePolicy::new("billing".parse().expect("agent")).allow_tools(["x"]))
        .await
        .expect("policy");
    agent
        .presence()
        .heartbeat("billing")
        .await
        .expect("heartbeat");
    agent
        .presence()
        .assert_not_halted("billing")
        .await
        .expect("not halted"); // warms the cache
    agent.scope().check("billing", "x").await.expect("allowed");

    let alice = operator(&ops, "alice@example.com").await;
    let bob = operator(&ops, "bob").await;
    assert!(
        ops.presence()
            .halt(&alice, "billing", "runaway spend")
            .await
            .expect("halt")
    );
    let took = eventually(
        "the halt reaches the agent's handle",
        PROPAGATION,
        || async { agent.presence().assert_not_halted("billing").await.is_err() },
    )
    .await;
    eprintln!("{b}: halt seen by another handle after {took:?}");
    match agent.presence().assert_not_halted("billing").await {
        Err(Error::Halted { by, reason, .. }) => {
            assert_eq!(by.as_deref(), Some("alice@example.com"));
            assert_eq!(reason.as_deref(), Some("runaway spend"));
        }
        other => panic!("expected halted, got {other:?}"),
    }
    // Every gate refuses.
    assert!(matches!(
        agent.scope().check("billing", "x").await,
        Err(Error::Halted { .. })
    ));
    assert!(matches!(
        agent.cost().check_or_raise("billing", "s").await,
        Err(Error::Halted { .. })
    ));
    assert!(matches!(
        agent
            .gates()
            .request("billing", None, "wire", &json!({}))
            .await,
        Err(Error::Halted { .. })
    ));
    // Heartbeats never clear a halt.
    for _ in 0..3 {
        agent
            .presence()
            .heartbeat("billing")
            .await
            .expect("heartbeat");
        assert!(agent.presence().assert_not_halted("billing").await.is_err());
    }
    assert!(ops.presence().is_halted("billing").await.expect("read"));
    assert_eq!(
        agent
            .presence()
            .status("billing")
            .await
            .expect("status")
            .state,
        PresenceState::Halted
    );
    // Halting twice changes nothing; halting needs an identity and a reason.
    assert!(
        !ops.presence()
            .halt(&alice, "billing", "again")
            .await
            .expect("halt")
    );
    assert!(ops.presence().halt(&alice, "billing", "  ").await.is_err());

    assert!(
        ops.presence()
            .resume(&bob, "billing", "spend reviewed")
            .await
            .expect("resume")
    );
    let took = eventually(
        "the resume reaches the agent's handle",
        PROPAGATION,
        || async { agent.presence().assert_not_halted("billing").await.is_ok() },
    )
    .await;
    eprintln!("{b}: resume seen by another handle after {took:?}");
    agent
        .scope()
        .check("billing", "x")
        .await
        .expect("allowed again");
    assert_eq!(
        agent
            .presence()
            .status("billing")
            .await
            .expect("status")
            .state,
        PresenceState::Live
    );
    // A halt written by another process (plain SQL on a connection of its own, no SDK in the
    // loop) reaches the handle too: on SQLite only through the notification table.
    let halted_elsewhere = db
        .exec(
            "UPDATE agent_presence SET halted = true, halted_by = 'carol', \
             halt_reason = 'from another process' WHERE agent_id = 'billing'",
        )
        .await
        .expect("halt from another process");
    assert_eq!(halted_elsewhere, 1);
    let took = eventually(
        "a halt made by another process reaches the handle",
        PROPAGATION,
        || async { agent.presence().assert_not_halted("billing").await.is_err() },
    )
    .await;
    eprintln!("{b}: halt from another process seen after {took:?}");
    match agent.scope().check("billing", "x").await {
        Err(Error::Halted { by, .. }) => assert_eq!(by.as_deref(), Some("carol")),
        other => panic!("expected halted, got {other:?}"),
    }
    assert!(
        ops.presence()
            .resume(&bob, "billing", "done")
            .await
            .expect("resume")
    );
    eventually(
        "the second resume reaches the agent's handle",
        PROPAGATION,
        || async { agent.presence().assert_not_halted("billing").await.is_ok() },
    )
    .await;
    // Another agent was never affected.
    agent
        .presence()
        .assert_not_halted("other")
        .await
        .expect("not halted");

    let halted = kinds(&ops, "agent.halted").await;
    assert_eq!(
        halted
            .iter()
            .map(|r| r.actor.as_deref())
            .collect::<Vec<_>>(),
        [Some("alice@example.com"), Some("alice@example.com")]
    );
    let resumed = kinds(&ops, "agent.resumed").await;
    assert_eq!(
        resumed
            .iter()
            .map(|r| r.actor.as_deref())
            .collect::<Vec<_>>(),
        [Some("bob"), Some("bob")]
    );
    // Each operator halt and resume committed its oversight record with its event.
    let ids: Vec<_> = halted
        .iter()
        .chain(&resumed)
        .map(|r| r.event_id.as_uuid())
        .collect();
    let records = ops
        .audit()
        .oversight_records(&ids)
        .await
        .expect("oversight records");
    assert_eq!(records.len(), 4);
    for r in halted.iter().chain(&resumed) {
        let o = records
            .iter()
            .find(|o| o.event_id == r.event_id.as_uuid())
            .expect("a record for each");
        assert_eq!(
            (o.kind.as_str(), Some(o.operator.as_str())),
            (r.kind.as_str(), r.actor.as_deref())
        );
    }
}

fn billing_policy() -> ScopePolicy {
    ScopePolicy::new("billing".parse().expect("agent id"))
        .allow_tools(["read_invoice", "send_email", "admin_panel"])
        .allow_apis(["openai"])
        .hide_tools(["admin_panel"])
}

async fn scope_allows_denies_hides_and_audits(b: TestBackend) {
    let db = TestStore::new(b).await;
    let gov = connect(&db).await;
    match gov.scope().check("billing", "read_invoice").await {
        Err(Error::ScopeViolation {
            denial: ScopeDenial::NoPolicy,
            ..
        }) => {}
        other => panic!("an unknown agent must be denied, got {other:?}"),
    }
    gov.scope()
        .register(billing_policy())
        .await
        .expect("policy");
    gov.scope()
        .check("billing", "read_invoice")
        .await
        .expect("allowed");
    gov.scope()
        .check_api("billing", "openai")
        .await
        .expect("allowed");
    match gov.scope().check("billing", "admin_panel").await {
        Err(Error::ScopeViolation {
            denial: ScopeDenial::ToolHidden,
            ..
        }) => {}
        other => panic!("a hidden tool must be denied, got {other:?}"),
    }
    let err = gov
        .scope()
        .check("billing", "delete_db")
        .await
        .expect_err("denied");
    assert!(err.to_string().contains("delete_db"), "{err}");
    assert!(gov.scope().check_api("billing", "anthropic").await.is_err());
    let shown = gov
        .scope()
        .filter_tools(
            "billing",
            &["admin_panel", "send_email", "delete_db", "read_invoice"],
        )
        .await
        .expect("filter");
    assert_eq!(shown, ["send_email", "read_invoice"]);
    // The stored policy reads back as registered.
    let stored = gov
        .scope()
        .policy("billing")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(*stored, billing_policy());

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

    assert!(gov.scope().unregister("billing").await.expect("unregister"));
    assert!(!gov.scope().unregister("billing").await.expect("unregister"));
    assert!(gov.scope().check("billing", "read_invoice").await.is_err());
}

async fn a_policy_changed_by_another_handle_is_seen(b: TestBackend) {
    let db = TestStore::new(b).await;
    let a = connect(&db).await;
    let writer = connect(&db).await;
    assert!(a.scope().check("billing", "send_email").await.is_err());
    writer
        .scope()
        .register(billing_policy())
        .await
        .expect("policy");
    let took = eventually(
        "a new policy reaches the other handle",
        PROPAGATION,
        || async { a.scope().check("billing", "send_email").await.is_ok() },
    )
    .await;
    eprintln!("{b}: policy seen by another handle after {took:?}");
    writer
        .scope()
        .register(ScopePolicy::new("billing".parse().expect("agent")).allow_tools(["read_invoice"]))
        .await
        .expect("policy");
    eventually(
        "a narrowed policy reaches the other handle",
        PROPAGATION,
        || async { a.scope().check("billing", "send_email").await.is_err() },
    )
    .await;
    a.scope()
        .check("billing", "read_invoice")
        .await
        .expect("still allowed");
    // A policy removed by another process (plain SQL on a connection of its own) is seen too:
    // on SQLite only through the notification table.
    let removed = db
        .exec("DELETE FROM scope_policies WHERE agent_id = 'billing'")
        .await
        .expect("remove from another process");
    assert_eq!(removed, 1);
    let took = eventually(
        "a policy removed by another process reaches the handle",
        PROPAGATION,
        || async { a.scope().check("billing", "read_invoice").await.is_err() },
    )
    .await;
    eprintln!("{b}: policy removal from another process seen after {took:?}");
    writer
        .scope()
        .register(billing_policy())
        .await
        .expect("policy");
    eventually(
        "a restored policy reaches the other handle",
        PROPAGATION,
        || async { a.scope().check("billing", "read_invoice").await.is_ok() },
    )
    .await;
    writer
        .scope()
        .unregister("billing")
        .await
        .expect("unregister");
    eventually(
        "a removed policy reaches the other handle",
        PROPAGATION,
        || async {
            matches!(
                a.scope().check("billing", "read_invoice").await,
                Err(Error::ScopeViolation {
                    denial: ScopeDenial::NoPolicy,
                    ..
                })
            )
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Following the chain

async fn a_follower_sees_events_another_handle_appends(b: TestBackend) {
    let (db, writer) = seeded(b, 3).await;
    let follower = connect(&db).await;
    // With no starting point, only events appended from now on.
    let mut tail = follower
        .audit()
        .tail(EventFilter::default())
        .await
        .expect("tail");
    let appender = tokio::spawn(async move {
        for i in 100..105u64 {
            // Another chain in between: a follower of `default` never returns it.
            let other = AuditEvent::builder("agent-1", "tool.call")
                .chain("billing")
                .payload(json!({ "n": i }))
                .build()
                .expect("event");
            writer.audit().log(other).await.expect("log");
            writer
                .audit()
                .log(event("agent-1", "tool.call", i))
                .await
                .expect("log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer
    });
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(10), tail.next())
            .await
            .expect("the follower saw the next event in time")
            .expect("next");
        seen.push((r.chain_id.clone(), r.seq, r.payload.clone()));
    }
    let writer = appender.await.expect("task");
    let expected: Vec<(String, i64, String)> = (0..5)
        .map(|k| {
            (
                "default".to_owned(),
                4 + k,
                format!("{{\"n\":{}}}", 100 + k),
            )
        })
        .collect();
    assert_eq!(seen, expected);
    drop(tail);
    assert!(
        writer
            .audit()
            .verify_all()
            .await
            .expect("verify")
            .is_clean()
    );
}

// ---------------------------------------------------------------------------------------------
// Evidence authority

/// The agent's own handle tries to write what only governance's paths may: an approval by
/// "alice", a halt, an LLM call's settlement, a key rotation, any kind in a reserved namespace,
/// and a host kind naming a human actor. Every one is refused and nothing reaches the chain.
async fn an_agent_handle_cannot_log_governance_records(b: TestBackend) {
    let (_db, gov) = seeded(b, 1).await;
    let forged = |kind: &str| {
        AuditEvent::builder("pay-bot", kind).session("s-1").payload(
            json!({ "request_id": uuid::Uuid::nil(), "tool": "wire_money", "reason": "ok" }),
        )
    };
    let mut kinds: Vec<&str> = gov_sdk::events::EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    kinds.extend([
        "operator.added",
        "gate.reopened",
        "llm.call",
        "governance.note",
    ]);
    for kind in kinds {
        for b in [forged(kind), forged(kind).actor("alice")] {
            let err = gov
                .audit()
                .log(b.build().expect("a well-formed event"))
                .await
                .expect_err(kind);
            assert!(
                matches!(&err, Error::ReservedKind { kind: k } if k == kind),
                "{kind}: {err}"
            );
            assert!(err.is_config(), "{err}");
        }
    }
    let err = gov
        .audit()
        .log(forged("tool.call").actor("alice").build().expect("event"))
        .await
        .expect_err("an actor");
    assert!(matches!(err, Error::ActorReserved), "{err}");
    let head = gov.audit().head("default").await.expect("head");
    assert_eq!(head.map(|h| h.seq), Some(1), "nothing was appended");
    let report = gov.audit().verify_chain().await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 1);
}
