//! The pages an operator reads an incident from, fed through the SDK's real paths: a session's
//! trace (a guarded LLM call, a tool run, a refusal, an approval and who gave it), the topology
//! of agents, tools and models, costs over a range whose numbers are the SDK's (`governance
//! budget`'s), coverage, the last sign-in, and a chain verification that survives a restart
//! (the application role's side of that is `gov-sdk`'s privileges test).

use std::time::Duration;

use axum::http::StatusCode;
use gov_console::{ConsoleConfig, router};
use gov_sdk::llm::{Completion, LlmCall};
use gov_sdk::{BudgetPolicy, CallContext, Contract, Governance, MicroUsd, ScopePolicy, TokenUsage};
use gov_testdb::{TestBackend, TestStore};

use crate::http::{SECRET, console};

const PW: &str = "correct horse battery staple";
const AGENT: &str = "trip-bot";

/// `trip-bot` in session `s-1`: a guarded LLM call, an approval decided by oscar, a tool run
/// under a contract, a budget refusal; and a scope refusal outside any session. Returns the LLM
/// call's cost.
async fn incident(gov: &Governance) -> MicroUsd {
    gov.scope()
        .register(
            ScopePolicy::new(AGENT.parse().expect("id"))
                .allow_tools(["book", "wire"])
                .allow_apis(["openai"]),
        )
        .await
        .expect("scope");
    gov.cost()
        .register(
            BudgetPolicy::new(AGENT.parse().expect("id"))
                .per_session(MicroUsd(5_000_000))
                .per_day(MicroUsd(20_000_000))
                .per_day_tokens(1_000_000),
        )
        .await
        .expect("budget");
    let client = gov.llm().client("openai").build().await.expect("client");
    let out = client
        .guard(
            LlmCall::new(AGENT, "s-1", "gpt-4o-mini")
                .max_tokens(200)
                .input_tokens(40),
            || async {
                Ok::<_, std::io::Error>(
                    Completion::new("a plan")
                        .usage(TokenUsage {
                            input_tokens: 42,
                            output_tokens: 120,
                            cached_input_tokens: 0,
                        })
                        .finish_reason("stop"),
                )
            },
        )
        .await
        .expect("governed call");
    gov.llm().settled().await;
    let args = serde_json::json!({ "amount": 900 });
    let asked = gov
        .gates()
        .request(AGENT, Some("s-1"), "wire", &args)
        .await
        .expect("request");
    let oscar = gov
        .operators()
        .authenticate("oscar", PW)
        .await
        .expect("oscar");
    gov.gates()
        .approve(&oscar, asked.id, "invoice checked")
        .await
        .expect("approve");
    gov.contracts()
        .run(
            &Contract::new(),
            CallContext {
                agent: AGENT,
                session: "s-1",
                tool: "book",
                args: &serde_json::json!({ "hotel": "Ritz" }),
            },
            None,
            |_| async { Ok::<_, String>(serde_json::json!({ "booked": true })) },
        )
        .await
        .expect("tool ran");
    assert!(gov.scope().check(AGENT, "shell").await.is_err());
    assert!(
        gov.cost()
            .reserve(AGENT, "s-1", "gpt-4o-mini", 1_000, Some(100_000_000))
            .await
            .is_err(),
        "over the session's caps"
    );
    out.receipt.cost
}

#[tokio::test]
async fn the_session_trace_shows_the_llm_call_the_tool_the_refusal_and_who_approved() {
    let c = console(ConsoleConfig::default()).await;
    let cost = incident(&c.gov).await;
    let b = c.login("vera").await;
    let r = c
        .get(&format!("/agents/{AGENT}/sessions/s-1"), Some(&b))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = &r.body;
    for want in [
        "llm gpt-4o-mini",
        "42 in, 120 out tokens",
        &cost.to_string(),
        "approval wire",
        "approved by oscar after",
        "invoice checked",
        "tool book",
        "budget.denied",
        "1 LLM calls",
        "1 tool calls",
        "1 denials",
        "decided by oscar",
        "<title id=\"trace-title\">",
    ] {
        assert!(body.contains(want), "missing {want:?}: {body}");
    }
    // Linked from the agent's page and the events page.
    let agent = c.get(&format!("/agents/{AGENT}"), Some(&b)).await;
    assert!(
        agent
            .body
            .contains(&format!("href=\"/agents/{AGENT}/sessions/s-1\"")),
        "{}",
        agent.body
    );
    let events = c
        .get(&format!("/events?agent={AGENT}&session=s-1"), Some(&b))
        .await;
    assert!(
        events.body.contains("id=\"session-trace\""),
        "{}",
        events.body
    );
    // A session with nothing in it says which ids to check.
    let none = c
        .get(&format!("/agents/{AGENT}/sessions/s-404"), Some(&b))
        .await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    assert!(
        none.body.contains("no events in session s-404"),
        "{}",
        none.body
    );
    c.gov.close().await;
}

#[tokio::test]
async fn the_topology_draws_who_used_which_tool_and_model_with_refusals() {
    let c = console(ConsoleConfig::default()).await;
    incident(&c.gov).await;
    let b = c.login("vera").await;
    let r = c.get("/topology", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.body.contains("<title id=\"topology-title\">1 agents"),
        "{}",
        r.body
    );
    for want in [
        "trip-bot → gpt-4o-mini: 1 calls, 1 refused",
        "trip-bot → book: 1 calls, 0 refused",
        "trip-bot → shell: 0 calls, 1 refused",
        "edge denied",
    ] {
        assert!(r.body.contains(want), "missing {want:?}: {}", r.body);
    }
    // A period before anything happened is empty; an empty period is refused.
    let r = c
        .get(
            "/topology?from=2020-01-01T00:00&to=2020-01-02T00:00",
            Some(&b),
        )
        .await;
    assert!(r.body.contains("id=\"topology-empty\""), "{}", r.body);
    let r = c
        .get(
            "/topology?from=2020-01-02T00:00&to=2020-01-01T00:00",
            Some(&b),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    c.gov.close().await;
}

/// The text of the first element with `class="{class}"` after `marker` in `body`.
fn cell<'a>(body: &'a str, marker: &str, class: &str) -> &'a str {
    body.split(marker)
        .nth(1)
        .and_then(|s| s.split(&format!("class=\"{class}\">")).nth(1))
        .and_then(|s| s.split('<').next())
        .unwrap_or_else(|| panic!("no {class} after {marker}: {body}"))
}

#[tokio::test]
async fn the_costs_page_shows_the_sdks_numbers_for_a_range_and_each_cap() {
    let c = console(ConsoleConfig::default()).await;
    let cost = incident(&c.gov).await;
    let b = c.login("vera").await;
    let r = c
        .get(&format!("/costs?agent={AGENT}&session=s-1"), Some(&b))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = &r.body;
    // Today's row is the one `governance budget` prints (Cost::snapshot, by_model).
    let snap = c.gov.cost().snapshot(AGENT, "s-1").await.expect("snapshot");
    let m = &snap.by_model[0];
    let row = format!("data-agent=\"{AGENT}\" data-model=\"{}\"", m.model);
    assert_eq!(cell(body, &row, "calls"), m.calls.to_string());
    assert_eq!(cell(body, &row, "input"), m.input_tokens.to_string());
    assert_eq!(cell(body, &row, "output"), m.output_tokens.to_string());
    assert_eq!(cell(body, &row, "cost"), m.cost.to_string());
    assert_eq!(m.cost, cost);
    // The range's total is the sum of the SDK's rows for those days.
    let today = time::OffsetDateTime::now_utc().date();
    let range = c
        .gov
        .cost()
        .usage_between(today - time::Duration::days(6), today)
        .await
        .expect("range");
    let total = MicroUsd(range.iter().map(|r| r.2.cost.0).sum());
    assert!(
        body.contains(&format!("<span id=\"range-total\">{total}</span>")),
        "{body}"
    );
    assert!(body.contains("<title id=\"by-day-title\">"), "{body}");
    // The caps: session and day, USD and tokens, as `governance budget --session s-1`.
    let policy = snap.status.policy.clone().expect("a policy");
    let budget = body
        .split("id=\"budget\"")
        .nth(1)
        .expect("the budget table");
    for (period, counter, cap) in [
        ("session s-1", &snap.status.session, policy.per_session),
        ("today (UTC)", &snap.status.day, policy.per_day),
    ] {
        let line = format!(
            "<td>{period}</td><td>USD</td><td class=\"spent\">{}</td><td class=\"reserved\">{}</td><td class=\"cap\">{}</td>",
            counter.spent,
            counter.reserved,
            cap.expect("a cap")
        );
        assert!(budget.contains(&line), "missing {line}: {budget}");
    }
    let tokens = format!(
        "<td>today (UTC)</td><td>tokens</td><td class=\"spent\">{}</td>",
        snap.status.day.spent_tokens
    );
    assert!(budget.contains(&tokens), "{budget}");
    // Bad input names the fix.
    let r = c.get("/costs?from=yesterday", Some(&b)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("use YYYY-MM-DD"), "{}", r.body);
    let r = c
        .get("/costs?from=2026-12-03&to=2026-12-01", Some(&b))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("give the earlier day first"), "{}", r.body);
    let r = c
        .get("/costs?from=2024-01-01&to=2026-01-01", Some(&b))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("more than 366 days"), "{}", r.body);
    c.gov.close().await;
}

#[tokio::test]
async fn coverage_counts_governed_and_observed_calls_like_the_report() {
    let c = console(ConsoleConfig::default()).await;
    let b = c.login("vera").await;
    let r = c.get("/api/coverage", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        v["coverage"]["coverage_pct"],
        serde_json::Value::Null,
        "{v}"
    );
    assert_eq!(v["coverage"]["reason_code"], "no_wrapped_clients", "{v}");
    let dash = c.get("/", Some(&b)).await;
    assert!(
        dash.body.contains("coverage: no wrapped LLM client"),
        "{}",
        dash.body
    );

    incident(&c.gov).await;
    c.gov
        .llm()
        .observe(
            AGENT,
            "s-2",
            "openai",
            "gpt-4o-mini",
            TokenUsage {
                input_tokens: 5,
                output_tokens: 5,
                cached_input_tokens: 0,
            },
        )
        .await
        .expect("observed");
    let r = c.get("/api/coverage", Some(&b)).await;
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["coverage"]["governed_calls"], 1, "{v}");
    assert_eq!(v["coverage"]["observed_calls"], 1, "{v}");
    assert_eq!(v["coverage"]["coverage_pct"], 50.0, "{v}");
    assert_eq!(
        v["coverage"]["wrapped_clients"][0]["provider"], "openai",
        "{v}"
    );
    // The report's coverage over the same period is the same.
    let to = time::OffsetDateTime::parse(
        v["to"].as_str().expect("to"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc 3339");
    let from = to - time::Duration::hours(24);
    let report = gov_report::coverage_between(&c.gov, Some(from), to)
        .await
        .expect("report coverage");
    assert_eq!(
        serde_json::to_value(&report).expect("json"),
        v["coverage"],
        "the API and the report agree"
    );
    let r = c
        .get(
            "/api/coverage?from=2026-12-03T00:00&to=2026-12-02T00:00",
            Some(&b),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    c.gov.close().await;
}

#[tokio::test]
async fn the_users_page_shows_each_users_last_sign_in() {
    let c = console(ConsoleConfig::default()).await;
    let before = time::OffsetDateTime::now_utc();
    let _ = c.login("vera").await;
    let admin = c.login("ada").await;
    let r = c.get("/users", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let shown = |user: &str| -> String {
        r.body
            .split(&format!("id=\"user-{user}\""))
            .nth(1)
            .and_then(|s| s.split("class=\"last-sign-in\">").nth(1))
            .and_then(|s| s.split('<').next())
            .expect("a last sign-in cell")
            .to_owned()
    };
    assert_eq!(shown("oscar"), "never");
    let vera = time::OffsetDateTime::parse(
        &shown("vera"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("a time");
    assert!(vera >= before - Duration::from_secs(1), "{vera} {before}");
    // A sign-in refused (wrong password) is no sign-in.
    let r = c
        .post_form(
            "/login",
            None,
            "username=oscar&password=wrong+password+here",
        )
        .await;
    assert_ne!(r.status, StatusCode::SEE_OTHER);
    let r = c.get("/users", Some(&admin)).await;
    assert!(
        r.body.contains("id=\"user-oscar\"")
            && r.body.split("id=\"user-oscar\"").nth(1).is_some_and(|s| s
                .split("</tr>")
                .next()
                .is_some_and(|row| row.contains(">never<"))),
        "{}",
        r.body
    );
    c.gov.close().await;
}

/// A console over `db` with one viewer, `vera`.
pub(crate) async fn restartable(db: &TestStore) -> (Governance, axum::Router) {
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    let app = router(gov.clone(), ConsoleConfig::default()).layer(
        axum::extract::connect_info::MockConnectInfo(std::net::SocketAddr::from((
            [10, 0, 0, 9],
            40_000,
        ))),
    );
    (gov, app)
}

pub(crate) async fn page(app: &axum::Router, path: &str, cookie: &str) -> String {
    use tower::ServiceExt as _;
    let res = app
        .clone()
        .oneshot(
            axum::http::Request::get(path)
                .header(axum::http::header::COOKIE, cookie)
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes).into_owned()
}

pub(crate) async fn sign_in(app: &axum::Router) -> String {
    use tower::ServiceExt as _;
    let res = app
        .clone()
        .oneshot(
            axum::http::Request::post("/login")
                .header(
                    axum::http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(axum::body::Body::from(format!(
                    "username=vera&password={}",
                    PW.replace(' ', "+")
                )))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    res.headers()[axum::http::header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned()
}

/// The verdict and time on the chain page (`class`, `time`).
fn verdict(body: &str) -> (String, String) {
    let class = body
        .split("id=\"last-verdict\" class=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no verdict: {body}"))
        .to_owned();
    let at = body
        .split("<time id=\"last-verified\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("a time")
        .to_owned();
    (class, at)
}

async fn a_verification_survives_a_restart(backend: TestBackend) {
    let db = TestStore::new(backend).await;
    let (gov, app) = restartable(&db).await;
    gov.operators()
        .add("vera", gov_sdk::OperatorRole::Viewer, PW)
        .await
        .expect("add user");
    for n in 0..3 {
        gov.audit()
            .log(
                gov_sdk::AuditEvent::builder("pay-bot", "tool.call")
                    .payload(serde_json::json!({ "n": n }))
                    .build()
                    .expect("event"),
            )
            .await
            .expect("log");
    }
    let cookie = sign_in(&app).await;
    let fresh = page(&app, "/chain", &cookie).await;
    assert!(fresh.contains("No verification recorded yet"), "{fresh}");
    // Verify through the page's form.
    let csrf = fresh
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf")
        .to_owned();
    {
        use tower::ServiceExt as _;
        let res = app
            .clone()
            .oneshot(
                axum::http::Request::post("/chain")
                    .header(
                        axum::http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .header(axum::http::header::COOKIE, &cookie)
                    .body(axum::body::Body::from(format!("csrf={csrf}")))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(res.status(), StatusCode::OK);
    }
    let (class, at) = verdict(&page(&app, "/chain", &cookie).await);
    assert_eq!(class, "clean");
    gov.close().await;
    drop(app);

    // A new console over the same database: the verdict, its time and the per-chain rows.
    let (gov, app) = restartable(&db).await;
    let cookie = sign_in(&app).await;
    let body = page(&app, "/chain", &cookie).await;
    assert_eq!(verdict(&body), ("clean".to_owned(), at.clone()), "{body}");
    let chains = body.split("id=\"chains\"").nth(1).expect("chains table");
    assert!(
        chains.contains(
            "<td>default</td><td>3</td><td class=\"clean\">clean</td><td>3</td><td>3</td>"
        ),
        "{chains}"
    );
    // The health check reports the same verification without verifying again.
    let health: serde_json::Value =
        serde_json::from_str(&page(&app, "/health/governance", &cookie).await).expect("json");
    assert_eq!(health["chain_checked_at"], at.as_str(), "{health}");
    assert_eq!(health["chain_integrity"]["status"], "clean", "{health}");
    gov.close().await;
}

#[tokio::test]
async fn a_verification_survives_a_console_restart_on_postgres() {
    a_verification_survives_a_restart(TestBackend::Postgres).await;
}

#[tokio::test]
async fn a_verification_survives_a_console_restart_on_sqlite() {
    a_verification_survives_a_restart(TestBackend::Sqlite).await;
}
