//! Budgets on real Postgres: atomic reservations under concurrency, settlement, expiry, caps.

use std::time::Duration;

use gov_sdk::{
    BudgetDenial, BudgetPolicy, Clock, CostConfig, Error, EventFilter, Governance, MicroUsd,
    ModelPrice, PriceTable, TokenUsage,
};
use gov_testdb::TestDb;
use proptest::prelude::*;

use crate::support::SECRET;

/// One micro-USD per token, in and out, so costs are easy to reason about.
fn prices() -> PriceTable {
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

async fn gov(db: &TestDb, f: impl FnOnce(CostConfig) -> CostConfig) -> Governance {
    gov_on(db, Clock::system(), f).await
}

/// As [`gov`], deciding expiry on `clock`.
async fn gov_on(db: &TestDb, clock: Clock, f: impl FnOnce(CostConfig) -> CostConfig) -> Governance {
    let cost = f(CostConfig {
        prices: prices(),
        ..CostConfig::default()
    });
    Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .max_connections(20)
        .clock(clock)
        .cost(cost)
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    #[test]
    fn concurrent_reservations_never_sum_above_the_cap(cap in 500i64..20_000, costs in proptest::collection::vec(10u64..900, 64)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = TestDb::new().await;
            let gov = gov(&db, |c| c).await;
            for round in 0..3 {
                let agent = format!("agent-{round}");
                gov.cost().register(BudgetPolicy::new(agent.parse().unwrap()).per_session(MicroUsd(cap))).await.unwrap();
                let mut tasks = Vec::new();
                for c in costs.iter().copied() {
                    let (gov, agent) = (gov.clone(), agent.clone());
                    // input 0, max_tokens c: projected cost c micro-USD.
                    tasks.push(tokio::spawn(async move { gov.cost().reserve(&agent, "s", "unit-model", 0, Some(c)).await }));
                }
                let mut held = Vec::new();
                for t in tasks {
                    match t.await.unwrap() {
                        Ok(r) => held.push(r),
                        Err(e) => assert_eq!(denial(&e), Some(BudgetDenial::SessionUsd), "{e}"),
                    }
                }
                let sum: i64 = held.iter().map(|r| r.reserved().0).sum();
                assert!(sum <= cap, "reserved {sum} > cap {cap}");
                let counted = gov.cost().snapshot(&agent, "s").await.unwrap().status.session.reserved.0;
                assert_eq!(counted, sum, "the counter must hold exactly what the winners reserved");
                // Not a refuse-everything budget: something fits whenever anything could.
                let smallest = i64::try_from(*costs.iter().min().unwrap()).unwrap();
                assert!(smallest > cap || !held.is_empty());
                for r in held {
                    r.release().await.unwrap();
                }
            }
        });
    }
}

#[tokio::test]
async fn settle_returns_what_was_not_used() {
    let db = TestDb::new().await;
    let gov = gov(&db, |c| c).await;
    gov.cost()
        .register(BudgetPolicy::new("a".parse().unwrap()).per_session(MicroUsd(1_000)))
        .await
        .unwrap();
    let first = gov
        .cost()
        .reserve("a", "s", "unit-model", 100, Some(500))
        .await
        .unwrap();
    assert_eq!(first.reserved(), MicroUsd(600));
    let err = gov
        .cost()
        .reserve("a", "s", "unit-model", 100, Some(500))
        .await
        .unwrap_err();
    assert_eq!(denial(&err), Some(BudgetDenial::SessionUsd), "{err}");
    assert!(
        err.to_string()
            .contains("cap 1000, used 600, requested 600"),
        "{err}"
    );
    let settled = first.settle(usage(100, 50)).await.unwrap();
    assert_eq!(settled.cost, MicroUsd(150));
    let again = gov
        .cost()
        .reserve("a", "s", "unit-model", 100, Some(500))
        .await
        .unwrap();
    let status = gov.cost().check_or_raise("a", "s").await.unwrap();
    assert_eq!(status.session.spent, MicroUsd(150));
    assert_eq!(status.session.reserved, MicroUsd(600));
    again.release().await.unwrap();
    // A settled reservation cannot be settled twice: settle consumes it, so only the store
    // could try; the day counter matches the session counter.
    let status = gov.cost().check_or_raise("a", "s").await.unwrap();
    assert_eq!(status.session.reserved, MicroUsd(0));
    assert_eq!(status.day.spent, MicroUsd(150));
    assert_eq!(
        gov.audit()
            .events(&EventFilter {
                kind: Some("budget.denied".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn agents_without_a_policy_are_refused_unless_allowed() {
    let db = TestDb::new().await;
    let strict = gov(&db, |c| c).await;
    let err = strict
        .cost()
        .reserve("nobody", "s", "unit-model", 1, Some(1))
        .await
        .unwrap_err();
    assert_eq!(denial(&err), Some(BudgetDenial::NoPolicy));
    assert_eq!(
        denial(
            &strict
                .cost()
                .check_or_raise("nobody", "s")
                .await
                .unwrap_err()
        ),
        Some(BudgetDenial::NoPolicy)
    );
    let lax = gov(&db, |c| CostConfig {
        allow_unbudgeted: true,
        ..c
    })
    .await;
    lax.cost()
        .reserve("nobody", "s", "unit-model", 1, Some(1))
        .await
        .unwrap()
        .settle(usage(1, 1))
        .await
        .unwrap();
    lax.cost().check_or_raise("nobody", "s").await.unwrap();
}

#[tokio::test]
async fn calls_that_cannot_be_projected_are_refused() {
    let db = TestDb::new().await;
    let gov = gov(&db, |c| c).await;
    gov.cost()
        .register(BudgetPolicy::new("a".parse().unwrap()).per_session(MicroUsd(1_000_000)))
        .await
        .unwrap();
    let err = gov
        .cost()
        .reserve("a", "s", "no-such-model", 1, Some(1))
        .await
        .unwrap_err();
    assert_eq!(denial(&err), Some(BudgetDenial::UnknownModel));
    let err = gov
        .cost()
        .reserve("a", "s", "unit-model", 1, None)
        .await
        .unwrap_err();
    assert_eq!(denial(&err), Some(BudgetDenial::NoMaxTokens));
    let with_default = gov_with_default(&db).await;
    with_default
        .cost()
        .reserve("a", "s", "unit-model", 1, None)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    // Dated model names find their base price.
    assert_eq!(
        gov.cost().price("gpt-4o-2024-08-06"),
        gov.cost().price("gpt-4o")
    );
}

async fn gov_with_default(db: &TestDb) -> Governance {
    gov(db, |c| CostConfig {
        default_max_tokens: Some(256),
        ..c
    })
    .await
}

#[tokio::test]
async fn day_and_token_caps_span_sessions_and_check_or_raise_sees_them() {
    let db = TestDb::new().await;
    let gov = gov(&db, |c| c).await;
    gov.cost()
        .register(
            BudgetPolicy::new("a".parse().unwrap())
                .per_day(MicroUsd(1_000))
                .per_session_tokens(700),
        )
        .await
        .unwrap();
    gov.cost()
        .reserve("a", "s1", "unit-model", 300, Some(300))
        .await
        .unwrap()
        .settle(usage(300, 300))
        .await
        .unwrap();
    let err = gov
        .cost()
        .reserve("a", "s1", "unit-model", 100, Some(100))
        .await
        .unwrap_err();
    assert_eq!(denial(&err), Some(BudgetDenial::SessionTokens));
    gov.cost()
        .reserve("a", "s2", "unit-model", 200, Some(200))
        .await
        .unwrap()
        .settle(usage(200, 200))
        .await
        .unwrap();
    let err = gov
        .cost()
        .reserve("a", "s3", "unit-model", 1, Some(1))
        .await
        .unwrap_err();
    assert_eq!(denial(&err), Some(BudgetDenial::DayUsd));
    assert_eq!(
        denial(&gov.cost().check_or_raise("a", "s3").await.unwrap_err()),
        Some(BudgetDenial::DayUsd)
    );
    let snap = gov.cost().snapshot("a", "s1").await.unwrap();
    assert_eq!(snap.by_model.len(), 1);
    assert_eq!(snap.by_model[0].calls, 2);
    assert_eq!(snap.by_model[0].cost, MicroUsd(1_000));
    assert_eq!(snap.status.day.spent, MicroUsd(1_000));
}

#[tokio::test]
async fn abandoned_reservations_expire_and_dropped_ones_are_released() {
    let db = TestDb::new().await;
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    let gov = gov_on(&db, clock.clone(), |c| CostConfig {
        reservation_ttl: Duration::from_secs(1),
        ..c
    })
    .await;
    gov.cost()
        .register(BudgetPolicy::new("a".parse().unwrap()).per_session(MicroUsd(100)))
        .await
        .unwrap();
    let held = gov
        .cost()
        .reserve("a", "s", "unit-model", 0, Some(100))
        .await
        .unwrap();
    assert!(
        gov.cost()
            .reserve("a", "s", "unit-model", 0, Some(1))
            .await
            .is_err()
    );
    std::mem::forget(held); // a crashed caller: neither settled nor dropped
    clock.advance(Duration::from_millis(1_001));
    let r = gov
        .cost()
        .reserve("a", "s", "unit-model", 0, Some(100))
        .await
        .unwrap();
    drop(r);
    // The drop releases in the background.
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = gov
            .cost()
            .reserve("a", "s", "unit-model", 0, Some(100))
            .await
        {
            r.release().await.unwrap();
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "a dropped reservation was not released");
}

#[tokio::test]
async fn sessions_past_their_time_limit_are_refused() {
    let db = TestDb::new().await;
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    let gov = gov_on(&db, clock.clone(), |c| c).await;
    gov.cost()
        .register(
            BudgetPolicy::new("a".parse().unwrap()).max_session_duration(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    gov.cost()
        .reserve("a", "s", "unit-model", 1, Some(1))
        .await
        .unwrap()
        .settle(usage(1, 1))
        .await
        .unwrap();
    clock.advance(Duration::from_millis(1_100));
    let err = gov
        .cost()
        .reserve("a", "s", "unit-model", 1, Some(1))
        .await
        .unwrap_err();
    assert_eq!(denial(&err), Some(BudgetDenial::SessionExpired));
    assert_eq!(
        denial(&gov.cost().check_or_raise("a", "s").await.unwrap_err()),
        Some(BudgetDenial::SessionExpired)
    );
    // A new session starts fresh.
    gov.cost()
        .reserve("a", "s2", "unit-model", 1, Some(1))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// An agent cannot stretch its budget by naming a costly variant: `o1-pro` is reserved at its
/// own price (ten times `o1`'s), an unlisted variant is an unknown model, and dated snapshots
/// of a priced model still reserve at that model's price.
#[tokio::test]
async fn a_costly_variant_is_reserved_at_its_own_price_or_refused() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    // $1 per session; 10,000 output tokens of o1 cost $0.60, of o1-pro $6.00.
    gov.cost()
        .register(BudgetPolicy::new("agent-x".parse().unwrap()).per_session(MicroUsd(1_000_000)))
        .await
        .unwrap();
    let reserve = |model: &'static str, session: &'static str| {
        let gov = gov.clone();
        async move {
            gov.cost()
                .reserve("agent-x", session, model, 0, Some(10_000))
                .await
        }
    };
    let base = reserve("o1", "s-1").await.expect("o1 fits the cap");
    assert_eq!(base.reserved(), MicroUsd(600_000));
    base.release().await.unwrap();
    let e = reserve("o1-pro", "s-2").await.expect_err("o1-pro costs $6");
    assert_eq!(denial(&e), Some(BudgetDenial::SessionUsd), "{e}");
    for unlisted in ["o3-deep-research", "gpt-4o-realtime-preview", "o1-pro-max"] {
        let e = reserve(unlisted, "s-3").await.expect_err(unlisted);
        assert_eq!(
            denial(&e),
            Some(BudgetDenial::UnknownModel),
            "{unlisted}: {e}"
        );
    }
    let snap = reserve("gpt-4o-2024-08-06", "s-4")
        .await
        .expect("a snapshot");
    assert_eq!(snap.reserved(), MicroUsd(100_000)); // 10,000 × $10 per Mtok
    snap.release().await.unwrap();
    // Tracking spend after the fact refuses an unknown model too.
    assert!(
        gov.cost()
            .track("agent-x", "s-5", "o3-deep-research", usage(10, 10))
            .await
            .is_err()
    );
    gov.close().await;
}
