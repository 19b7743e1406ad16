//! The enforcement rules, differential: the same case on Postgres, on SQLite and in the pure
//! reference model (`gov_core::rules`), with one controllable clock (`gov_store::Clock`) that
//! both stores run their rules on. Part of the conformance suite: each behaviour expands into
//! `rules::postgres::<name>` and `rules::sqlite::<name>`; the property test drives both
//! backends and the model with random operation sequences and compares every outcome.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gov_core::rules::Model;
use gov_sdk::{AuditEvent, BudgetDenial, BudgetPolicy, GateRecord, GateStatus, MicroUsd};
use gov_sdk::{OperatorRole, TokenUsage};
use gov_store::{Clock, Decision, Reserve, Store, StoreOptions};
use gov_testdb::{TestBackend, TestStore};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

macro_rules! both {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(gov_testdb::TestBackend::Postgres).await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(gov_testdb::TestBackend::Sqlite).await;
                }
            )+
        }
    };
}

both! {
    a_reservation_holds_for_its_ttl_to_the_microsecond,
    a_session_age_is_truncated_to_whole_seconds,
    the_stores_clock_decides_every_expiry,
}

/// A time well ahead of the database's own clock (so the database's clock, a floor across the
/// privilege boundary, never decides) and early in a UTC day (so a case stays in one day).
fn start() -> OffsetDateTime {
    let tomorrow = OffsetDateTime::now_utc()
        .date()
        .next_day()
        .expect("a next day");
    tomorrow
        .with_hms(1, 0, 0)
        .expect("01:00")
        .assume_utc()
        .replace_nanosecond(0)
        .expect("whole second")
}

fn us(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).expect("micros")
}

/// A store on `db` whose rules run on `clock`: the owner's connection (operators decide
/// through it) or the application role's.
async fn store(db: &TestStore, clock: &Clock, owner: bool) -> Store {
    let opts = StoreOptions {
        clock: clock.clone(),
        max_connections: 2,
        ..StoreOptions::default()
    };
    let url = if owner {
        db.url().to_owned()
    } else {
        db.app_url()
    };
    Store::connect(&url, &opts).await.expect("connect")
}

fn reserve<'a>(
    id: Uuid,
    agent: &'a str,
    session: &'a str,
    micros: i64,
    ttl: Duration,
) -> Reserve<'a> {
    Reserve {
        id,
        agent,
        session,
        model: "m",
        micros,
        tokens: 0,
        ttl,
        allow_unbudgeted: false,
    }
}

fn usage(input: u64, output: u64) -> TokenUsage {
    TokenUsage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: 0,
    }
}

/// The first reservation's `expires_at - created_at` in microseconds, as stored.
async fn stored_ttl(db: &TestStore) -> i64 {
    match db.postgres() {
        Some(pg) => {
            let pool = pg.admin_pool().await;
            let v: i64 = sqlx::query_scalar(
                "SELECT (extract(epoch FROM expires_at - created_at) * 1000000)::bigint \
                 FROM budget_reservations",
            )
            .fetch_one(&pool)
            .await
            .expect("ttl");
            pool.close().await;
            v
        }
        None => {
            let path = db.sqlite_path().expect("a SQLite file");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open");
            let v: i64 =
                sqlx::query_scalar("SELECT expires_at - created_at FROM budget_reservations")
                    .fetch_one(&pool)
                    .await
                    .expect("ttl");
            pool.close().await;
            v
        }
    }
}

/// Drift: Postgres held a reservation for whole seconds (1.5 s became 1 s), SQLite to the
/// microsecond. Now both hold it 1.5 s: still held at its expiry instant, gone a microsecond
/// later, as the model says.
async fn a_reservation_holds_for_its_ttl_to_the_microsecond(b: TestBackend) {
    let db = TestStore::new(b).await;
    let clock = Clock::manual(start());
    let s = store(&db, &clock, false).await;
    let mut model = Model::new();
    let policy = BudgetPolicy::new("a".parse().expect("agent")).per_session(MicroUsd(100));
    s.put_budget_policy(&policy).await.expect("policy");
    model.put_policy(&policy);
    let ttl = Duration::from_millis(1_500);
    let t0 = us(clock.now());

    let first = Uuid::now_v7();
    s.reserve(&reserve(first, "a", "s", 100, ttl))
        .await
        .expect("reserve")
        .expect("held");
    model
        .reserve(first.as_u128(), "a", "s", 100, 0, ttl, false, t0)
        .expect("held");
    assert_eq!(stored_ttl(&db).await, 1_500_000);

    clock.advance(ttl);
    let id = Uuid::now_v7();
    let got = s
        .reserve(&reserve(id, "a", "s", 1, ttl))
        .await
        .expect("reserve");
    let want = model.reserve(id.as_u128(), "a", "s", 1, 0, ttl, false, us(clock.now()));
    assert_eq!(got, want);
    assert_eq!(
        got.expect_err("held at its expiry").denial,
        BudgetDenial::SessionUsd
    );

    clock.advance(Duration::from_micros(1));
    let id = Uuid::now_v7();
    let got = s
        .reserve(&reserve(id, "a", "s", 100, ttl))
        .await
        .expect("reserve");
    let want = model.reserve(id.as_u128(), "a", "s", 100, 0, ttl, false, us(clock.now()));
    assert_eq!(got, want);
    assert!(got.is_ok(), "expired a microsecond after 1.5 s: {got:?}");
    assert_eq!(
        s.settle(first, 30, &usage(1, 2), false)
            .await
            .expect("settle"),
        model.settle(first.as_u128(), 30, 3, false).as_str()
    );
    s.close().await;
}

/// Drift: Postgres reported a session's age rounded (1.6 s as 2 s), SQLite truncated. Both
/// truncate now, and the budget check reports the same.
async fn a_session_age_is_truncated_to_whole_seconds(b: TestBackend) {
    let db = TestStore::new(b).await;
    let clock = Clock::manual(start());
    let s = store(&db, &clock, false).await;
    let policy =
        BudgetPolicy::new("a".parse().expect("agent")).max_session_duration(Duration::from_secs(1));
    s.put_budget_policy(&policy).await.expect("policy");
    let ttl = Duration::from_secs(600);
    s.reserve(&reserve(Uuid::now_v7(), "a", "s", 1, ttl))
        .await
        .expect("reserve")
        .expect("a new session");
    clock.advance(Duration::from_millis(1_600));
    let refused = s
        .reserve(&reserve(Uuid::now_v7(), "a", "s", 1, ttl))
        .await
        .expect("reserve")
        .expect_err("the session ran past a second");
    assert_eq!(
        (refused.denial, refused.cap, refused.used),
        (BudgetDenial::SessionExpired, Some(1), Some(1))
    );
    let status = s.budget_status("a", "s").await.expect("status");
    assert_eq!(status.session_age, Some(Duration::from_millis(1_600)));
    assert_eq!(status.exhausted(), Some(refused));
    s.close().await;
}

fn gate(id: Uuid, agent: &str, now: OffsetDateTime, ttl: Duration) -> GateRecord {
    GateRecord {
        id,
        agent_id: agent.to_owned(),
        session_id: Some("s".to_owned()),
        tool: "pay".to_owned(),
        action_hash: Sha256::digest(b"pay 10").to_vec(),
        args: "{}".to_owned(),
        requested_at: now,
        expires_at: now + ttl,
        status: GateStatus::Pending,
        decided_by: None,
        decision_reason: None,
        token_expires_at: None,
        workflow: Default::default(),
    }
}

fn stand_in_seal(r: &mut gov_sdk::AuditRecord) {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&r.seq.to_be_bytes());
    r.row_hmac = h.to_vec();
}

async fn decide(s: &Store, id: Uuid, token: &[u8], expires: OffsetDateTime) -> String {
    let event = AuditEvent::builder("agent", "gate.approved")
        .session("s")
        .build()
        .expect("event");
    let d = Decision {
        id,
        operator: "alice",
        approve: true,
        reason: "ok",
        token_hash: Some(token),
        token_expires_at: Some(expires),
        final_vote: true,
        grant: None,
    };
    s.decide_gate(&d, &event, "k1", &stand_in_seal)
        .await
        .expect("decide")
}

/// Drift: Postgres decided expiry on the database's clock, SQLite on the process's. Both now
/// run on the store's clock: a reservation, a gate request and an approval expire when that
/// clock says so, to the microsecond, however far it is from the database's own.
async fn the_stores_clock_decides_every_expiry(b: TestBackend) {
    let db = TestStore::new(b).await;
    // Ten days ahead of every clock in the room.
    let clock = Clock::manual(start() + Duration::from_secs(10 * 86_400));
    let owner = store(&db, &clock, true).await;
    let app = store(&db, &clock, false).await;
    owner
        .add_operator("alice", OperatorRole::Operator, "$argon2id$stand-in")
        .await
        .expect("operator");

    // A reservation of ten minutes is gone ten minutes and a microsecond later.
    let policy = BudgetPolicy::new("agent".parse().expect("agent")).per_session(MicroUsd(10));
    app.put_budget_policy(&policy).await.expect("policy");
    let ttl = Duration::from_secs(600);
    app.reserve(&reserve(Uuid::now_v7(), "agent", "s", 10, ttl))
        .await
        .expect("reserve")
        .expect("held");
    clock.advance(ttl + Duration::from_micros(1));
    assert_eq!(
        app.budget_status("agent", "s")
            .await
            .expect("status")
            .session
            .reserved,
        MicroUsd(0)
    );
    app.reserve(&reserve(Uuid::now_v7(), "agent", "s", 10, ttl))
        .await
        .expect("reserve")
        .expect("the first hold expired on the store's clock");

    // A gate request lapses on the store's clock: listed until then, refused after.
    let minute = Duration::from_secs(60);
    let (early, late) = (Uuid::now_v7(), Uuid::now_v7());
    app.insert_gate_request(&gate(early, "agent", clock.now(), minute))
        .await
        .expect("ask");
    app.insert_gate_request(&gate(late, "agent", clock.now(), minute))
        .await
        .expect("ask");
    assert_eq!(owner.pending_gates().await.expect("pending").len(), 2);
    let token = Sha256::digest(b"token").to_vec();
    assert_eq!(
        decide(&owner, early, &token, clock.now() + minute).await,
        "ok"
    );
    clock.advance(minute + Duration::from_micros(1));
    assert!(owner.pending_gates().await.expect("pending").is_empty());
    assert_eq!(
        decide(&owner, late, &token, clock.now() + minute).await,
        "expired"
    );

    // The approval was given for a minute from its decision: spent too late, refused.
    let action = Sha256::digest(b"pay 10").to_vec();
    assert_eq!(
        app.consume_gate(early, &token, &action, "agent", Some("s"))
            .await
            .expect("consume"),
        "expired"
    );
    owner.close().await;
    app.close().await;
}

// ---------------------------------------------------------------------------------------------
// Property-based: random budget operations, model against both backends.

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        agent: usize,
        session: usize,
        micros: i64,
        tokens: i64,
        ttl_ms: u64,
        unbudgeted: bool,
    },
    Settle {
        pick: usize,
        micros: i64,
        input: u64,
        output: u64,
        release: bool,
    },
    SettleOnce {
        pick: Option<usize>,
        micros: i64,
        input: u64,
        output: u64,
    },
    Track {
        agent: usize,
        session: usize,
        micros: i64,
        input: u64,
        output: u64,
    },
    Advance {
        ms: u64,
        us: u64,
    },
    Status {
        agent: usize,
        session: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, 0..400i64, 0..300i64, 900..3_000u64, any::<bool>()).prop_map(
            |(agent, session, micros, tokens, ttl_ms, unbudgeted)| Op::Reserve {
                agent, session, micros, tokens, ttl_ms, unbudgeted
            }
        ),
        3 => (any::<usize>(), 0..300i64, 0..100u64, 0..100u64, any::<bool>()).prop_map(
            |(pick, micros, input, output, release)| Op::Settle { pick, micros, input, output, release }
        ),
        1 => (proptest::option::of(any::<usize>()), 0..300i64, 0..100u64, 0..100u64).prop_map(
            |(pick, micros, input, output)| Op::SettleOnce { pick, micros, input, output }
        ),
        1 => (0..3usize, 0..2usize, 0..300i64, 0..100u64, 0..100u64).prop_map(
            |(agent, session, micros, input, output)| Op::Track { agent, session, micros, input, output }
        ),
        2 => (0..2_500u64, 0..3u64).prop_map(|(ms, us)| Op::Advance { ms, us }),
        2 => (0..3usize, 0..2usize).prop_map(|(agent, session)| Op::Status { agent, session }),
    ]
}

/// Caps for agents 0 and 1 (agent 2 has no policy).
type Policies = [(
    Option<i64>,
    Option<i64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
); 2];

fn policies() -> impl Strategy<Value = Policies> {
    let one = (
        proptest::option::of(0..1_000i64),
        proptest::option::of(0..2_000i64),
        proptest::option::of(0..600u64),
        proptest::option::of(0..1_200u64),
        proptest::option::of(1..8u64),
    );
    [one.clone(), one]
}

/// What one operation answered, comparable across the model and the stores.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Reserved(Result<(), gov_sdk::BudgetRefusal>),
    Settled(String),
    Tracked(bool),
    Status {
        caps: Option<gov_core::rules::Caps>,
        session: gov_sdk::BudgetCounter,
        day: gov_sdk::BudgetCounter,
        age_us: Option<i64>,
        exhausted: Option<gov_sdk::BudgetRefusal>,
    },
    Moved,
}

struct Case<'a> {
    prefix: String,
    stores: &'a [Store],
    clock: &'a Clock,
}

impl Case<'_> {
    fn agent(&self, i: usize) -> String {
        format!("{}-a{i}", self.prefix)
    }

    /// Runs `ops` on the model and every store; panics at the first disagreement.
    async fn run(&self, caps: &Policies, ops: &[Op]) -> usize {
        let mut model = Model::new();
        self.clock.set(start());
        for (i, c) in caps.iter().enumerate() {
            let mut p = BudgetPolicy::new(self.agent(i).parse().expect("agent"));
            p.per_session = c.0.map(MicroUsd);
            p.per_day = c.1.map(MicroUsd);
            p.per_session_tokens = c.2;
            p.per_day_tokens = c.3;
            p.max_session_duration = c.4.map(Duration::from_secs);
            model.put_policy(&p);
            for s in self.stores {
                s.put_budget_policy(&p).await.expect("policy");
            }
        }
        let mut made: Vec<Uuid> = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let now = us(self.clock.now());
            let (want, id) = self.model_step(&mut model, op, &made, now);
            for (k, s) in self.stores.iter().enumerate() {
                let got = self.store_step(s, op, id).await;
                assert_eq!(got, want, "op {n} {op:?} on store {k} (after {ops:?})");
            }
            if let (Op::Reserve { .. }, Some(id)) = (op, id) {
                made.push(id);
            }
        }
        ops.len()
    }

    fn picked(made: &[Uuid], pick: usize) -> Uuid {
        if made.is_empty() {
            Uuid::now_v7()
        } else {
            made[pick % made.len()]
        }
    }

    fn model_step(
        &self,
        m: &mut Model,
        op: &Op,
        made: &[Uuid],
        now: i64,
    ) -> (Answer, Option<Uuid>) {
        match op {
            Op::Reserve {
                agent,
                session,
                micros,
                tokens,
                ttl_ms,
                unbudgeted,
            } => {
                let id = Uuid::now_v7();
                let a = m.reserve(
                    id.as_u128(),
                    &self.agent(*agent),
                    &format!("s{session}"),
                    *micros,
                    *tokens,
                    Duration::from_millis(*ttl_ms),
                    *unbudgeted,
                    now,
                );
                (Answer::Reserved(a), Some(id))
            }
            Op::Settle {
                pick,
                micros,
                input,
                output,
                release,
            } => {
                let id = Self::picked(made, *pick);
                let tokens = i64::try_from(input + output).expect("tokens");
                let a = m.settle(id.as_u128(), *micros, tokens, *release);
                (Answer::Settled(a.as_str().to_owned()), Some(id))
            }
            Op::SettleOnce {
                pick,
                micros,
                input,
                output,
            } => {
                let id = pick.map_or_else(Uuid::now_v7, |p| Self::picked(made, p));
                let tokens = i64::try_from(input + output).expect("tokens");
                let a = m.settle_once(id.as_u128(), &self.agent(0), "s0", *micros, tokens, now);
                (Answer::Settled(a.to_owned()), Some(id))
            }
            Op::Track {
                agent,
                session,
                micros,
                input,
                output,
            } => {
                let id = Uuid::now_v7();
                let tokens = i64::try_from(input + output).expect("tokens");
                let a = m.track(
                    id.as_u128(),
                    &self.agent(*agent),
                    &format!("s{session}"),
                    *micros,
                    tokens,
                    now,
                );
                (Answer::Tracked(a), Some(id))
            }
            Op::Advance { ms, us } => {
                self.clock
                    .advance(Duration::from_millis(*ms) + Duration::from_micros(*us));
                (Answer::Moved, None)
            }
            Op::Status { agent, session } => {
                let (caps, s, d, started) =
                    m.status(&self.agent(*agent), &format!("s{session}"), now);
                let age_us = started.map(|t| now - t);
                let exhausted = caps.and_then(|c| {
                    gov_core::rules::check_caps(
                        &c,
                        &s,
                        age_us.map(|_| 0),
                        &d,
                        age_us.unwrap_or(0),
                        1,
                        1,
                    )
                    .err()
                });
                (
                    Answer::Status {
                        caps,
                        session: s,
                        day: d,
                        age_us,
                        exhausted,
                    },
                    None,
                )
            }
        }
    }

    async fn store_step(&self, s: &Store, op: &Op, id: Option<Uuid>) -> Answer {
        let id = id.unwrap_or_else(Uuid::nil);
        match op {
            Op::Reserve {
                agent,
                session,
                micros,
                tokens,
                ttl_ms,
                unbudgeted,
            } => {
                let (agent, session) = (self.agent(*agent), format!("s{session}"));
                let r = Reserve {
                    id,
                    agent: &agent,
                    session: &session,
                    model: "m",
                    micros: *micros,
                    tokens: *tokens,
                    ttl: Duration::from_millis(*ttl_ms),
                    allow_unbudgeted: *unbudgeted,
                };
                Answer::Reserved(s.reserve(&r).await.expect("reserve"))
            }
            Op::Settle {
                micros,
                input,
                output,
                release,
                ..
            } => Answer::Settled(
                s.settle(id, *micros, &usage(*input, *output), *release)
                    .await
                    .expect("settle"),
            ),
            Op::SettleOnce {
                micros,
                input,
                output,
                ..
            } => Answer::Settled(
                s.settle_once(
                    id,
                    &self.agent(0),
                    "s0",
                    "m",
                    *micros,
                    &usage(*input, *output),
                )
                .await
                .expect("settle once"),
            ),
            Op::Track {
                agent,
                session,
                micros,
                input,
                output,
            } => Answer::Tracked(
                s.track(
                    id,
                    &self.agent(*agent),
                    &format!("s{session}"),
                    "m",
                    *micros,
                    &usage(*input, *output),
                )
                .await
                .expect("track"),
            ),
            Op::Advance { .. } => Answer::Moved,
            Op::Status { agent, session } => {
                let st = s
                    .budget_status(&self.agent(*agent), &format!("s{session}"))
                    .await
                    .expect("status");
                Answer::Status {
                    caps: st.policy.as_ref().map(gov_core::rules::Caps::of),
                    session: st.session,
                    day: st.day,
                    age_us: st.session_age.map(gov_core::rules::micros),
                    exhausted: st.exhausted(),
                }
            }
        }
    }
}

/// Cases the property test runs (each a fresh set of agents on the same two databases).
const CASES: u32 = 64;

#[test]
fn random_budget_operations_agree_on_the_model_postgres_and_sqlite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let clock = Clock::manual(start());
    let (pg, lite) = rt.block_on(async {
        (
            TestStore::new(TestBackend::Postgres).await,
            TestStore::new(TestBackend::Sqlite).await,
        )
    });
    let stores = rt.block_on(async {
        [
            store(&pg, &clock, false).await,
            store(&lite, &clock, false).await,
        ]
    });
    let counter = AtomicUsize::new(0);
    let ops_run = AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (policies(), proptest::collection::vec(op(), 1..24));
    runner
        .run(&strategy, |(caps, ops)| {
            let case = Case {
                prefix: format!("c{}", counter.fetch_add(1, Ordering::SeqCst)),
                stores: &stores,
                clock: &clock,
            };
            let n = rt.block_on(case.run(&caps, &ops));
            ops_run.fetch_add(n, Ordering::SeqCst);
            Ok(())
        })
        .expect("the model and both backends agree");
    eprintln!(
        "rules: {} cases, {} operations, each on the model, Postgres and SQLite",
        counter.load(Ordering::SeqCst),
        ops_run.load(Ordering::SeqCst)
    );
    rt.block_on(async {
        for s in &stores {
            s.close().await;
        }
    });
}
