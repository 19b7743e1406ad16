//! Spend by hour (`/costs?bucket=hour`) on both backends: settled guarded LLM calls and tracked
//! calls land in the hourly rows with the daily rows, so the hours of a day add up, per agent
//! and model, to the day's rows, to `governance budget`'s figures (`Cost::snapshot`, the CLI's
//! call) and to the page's total.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use gov_sdk::llm::{Completion, LlmCall};
use gov_sdk::{BudgetPolicy, Governance, MicroUsd, OperatorRole, TokenUsage};
use gov_testdb::{TestBackend, TestStore};

use crate::insight::{page, restartable, sign_in};

const PW: &str = "correct horse battery staple";

async fn spend(gov: &Governance) {
    for agent in ["hour-bot", "day-bot"] {
        gov.scope()
            .register(gov_sdk::ScopePolicy::new(agent.parse().expect("id")).allow_apis(["openai"]))
            .await
            .expect("scope");
        gov.cost()
            .register(BudgetPolicy::new(agent.parse().expect("id")).per_day(MicroUsd(50_000_000)))
            .await
            .expect("budget");
    }
    let client = gov.llm().client("openai").build().await.expect("client");
    for (i, (agent, model)) in [
        ("hour-bot", "gpt-4o-mini"),
        ("hour-bot", "gpt-4o"),
        ("hour-bot", "gpt-4o-mini"),
        ("day-bot", "gpt-4o-mini"),
    ]
    .into_iter()
    .enumerate()
    {
        let n = u64::try_from(i).expect("small") + 1;
        client
            .guard(
                LlmCall::new(agent, "s-1", model)
                    .max_tokens(500)
                    .input_tokens(40),
                || async move {
                    Ok::<_, std::io::Error>(Completion::new("ok").usage(TokenUsage {
                        input_tokens: 100 * n,
                        output_tokens: 50 * n,
                        cached_input_tokens: 0,
                    }))
                },
            )
            .await
            .expect("governed call");
    }
    gov.llm().settled().await;
    gov.cost()
        .track(
            "day-bot",
            "s-2",
            "gpt-4o",
            TokenUsage {
                input_tokens: 1_000,
                output_tokens: 10,
                cached_input_tokens: 0,
            },
        )
        .await
        .expect("tracked");
}

type Key = (String, String);

fn sum(rows: impl Iterator<Item = (String, gov_sdk::ModelUsage)>) -> BTreeMap<Key, [i64; 5]> {
    let mut out: BTreeMap<Key, [i64; 5]> = BTreeMap::new();
    for (agent, u) in rows {
        let e = out.entry((agent, u.model.clone())).or_default();
        e[0] += u.calls;
        e[1] += u.input_tokens;
        e[2] += u.output_tokens;
        e[3] += u.cached_tokens;
        e[4] += u.cost.0;
    }
    out
}

async fn hours_add_up_to_the_day_and_the_budget(backend: TestBackend) {
    let db = TestStore::new(backend).await;
    let (gov, app) = restartable(&db).await;
    gov.operators()
        .add("vera", OperatorRole::Viewer, PW)
        .await
        .expect("add user");
    spend(&gov).await;
    let today = time::OffsetDateTime::now_utc().date();
    let days = gov.cost().usage_between(today, today).await.expect("days");
    let hours = gov.cost().usage_by_hour(today, today).await.expect("hours");
    assert!(!hours.is_empty());
    assert!(hours.iter().all(|h| h.0.date() == today
        && h.0.minute() == 0
        && h.0.second() == 0
        && h.0.nanosecond() == 0));
    let by_day = sum(days.into_iter().map(|(_, a, u)| (a, u)));
    let by_hour = sum(hours.iter().map(|(_, a, u)| (a.clone(), u.clone())));
    assert_eq!(
        by_hour, by_day,
        "the hours add up to the day, per agent and model"
    );
    assert_eq!(by_day.len(), 4, "{by_day:?}");
    // `governance budget AGENT`'s figures: spend by model today and the day counter.
    for agent in ["hour-bot", "day-bot"] {
        let snap = gov.cost().snapshot(agent, "s-1").await.expect("snapshot");
        let cli = sum(snap.by_model.iter().map(|u| (agent.to_owned(), u.clone())));
        let mine: BTreeMap<Key, [i64; 5]> = by_hour
            .iter()
            .filter(|(k, _)| k.0 == agent)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_eq!(
            mine, cli,
            "{agent}: the hours are governance budget's numbers"
        );
        let spent: i64 = mine.values().map(|v| v[4]).sum();
        assert_eq!(
            MicroUsd(spent),
            snap.status.day.spent,
            "{agent}: the day counter"
        );
    }
    // The page: hour buckets over today, the same total, every hour's row, no gap.
    let cookie = sign_in(&app).await;
    let body = page(&app, "/costs?bucket=hour", &cookie).await;
    let total = MicroUsd(by_hour.values().map(|v| v[4]).sum());
    assert!(
        body.contains(&format!("<span id=\"range-total\">{total}</span>")),
        "{body}"
    );
    assert!(body.contains("<title id=\"by-hour-title\">"), "{body}");
    assert_eq!(
        body.matches("class=\"bar\"").count(),
        24 + 2 + 2 + 2,
        "a bar per hour of today, per agent and per model over the range, per agent today"
    );
    assert!(!body.contains("id=\"hour-gap\""), "{body}");
    for (h, a, u) in &hours {
        let row = format!(
            "<tr><td>{}T{:02}:00Z</td><td>{a}</td><td>{}</td><td>{}</td>",
            h.date(),
            h.hour(),
            u.model,
            u.calls
        );
        assert!(body.contains(&row), "missing {row}: {body}");
    }
    // Days stay the default; an unknown bucket and a range of hours too long are refused.
    let body = page(&app, "/costs", &cookie).await;
    assert!(body.contains("<title id=\"by-day-title\">"), "{body}");
    gov.close().await;
}

#[tokio::test]
async fn hours_add_up_to_the_day_and_the_budget_postgres() {
    hours_add_up_to_the_day_and_the_budget(TestBackend::Postgres).await;
}

#[tokio::test]
async fn hours_add_up_to_the_day_and_the_budget_sqlite() {
    hours_add_up_to_the_day_and_the_budget(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn an_unknown_bucket_or_too_many_hours_is_refused() {
    let c = crate::http::console(gov_console::ConsoleConfig::default()).await;
    let b = c.login("vera").await;
    let r = c.get("/costs?bucket=minute", Some(&b)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("use day or hour"), "{}", r.body);
    let r = c
        .get("/costs?bucket=hour&from=2026-01-01&to=2026-03-01", Some(&b))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("more than 31 days"), "{}", r.body);
    c.gov.close().await;
}
