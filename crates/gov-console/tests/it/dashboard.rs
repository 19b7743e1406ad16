//! The operator's view of an incident: agents shown as they are now (a resumed agent without its
//! old halt reason, an agent blocked on an approval as waiting, an unknown id as 404), the
//! dashboard's attention list, day caps and chain verdict, the events page's filters and paging,
//! and the API's index.

use axum::http::StatusCode;
use gov_console::ConsoleConfig;
use gov_sdk::{BudgetPolicy, MicroUsd, ScopePolicy};

use crate::http::console;

const PW: &str = "correct horse battery staple";

#[tokio::test]
async fn a_resumed_agent_shows_no_old_halt_a_waiting_agent_waits_and_an_unknown_one_is_404() {
    let c = console(ConsoleConfig::default()).await;
    let oscar = c
        .gov
        .operators()
        .authenticate("oscar", PW)
        .await
        .expect("oscar");
    let presence = c.gov.presence();
    presence.heartbeat("pay-bot").await.expect("beat");
    presence.heartbeat("mail-bot").await.expect("beat");
    presence
        .halt(&oscar, "pay-bot", "wired money twice")
        .await
        .expect("halt");
    presence
        .resume(&oscar, "pay-bot", "fixed the retry")
        .await
        .expect("resume");
    c.gov
        .gates()
        .request(
            "mail-bot",
            Some("s-9"),
            "send_mail",
            &serde_json::json!({ "to": "all" }),
        )
        .await
        .expect("request");
    let b = c.login("vera").await;

    // The API: no halt reason after a resume; waiting while a request is pending.
    let r = c.get("/api/agents", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let agent = |id: &str| {
        v["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .find(|a| a["agent_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing: {v}"))
    };
    let pay = agent("pay-bot");
    assert_eq!(pay["halted"], false, "{pay}");
    assert_eq!(pay["halt_reason"], serde_json::Value::Null, "{pay}");
    assert_eq!(pay["halted_by"], serde_json::Value::Null, "{pay}");
    assert_ne!(pay["state"], "halted", "{pay}");
    let mail = agent("mail-bot");
    assert_eq!(mail["state"], "waiting", "{mail}");
    assert_eq!(mail["pending_requests"], 1, "{mail}");

    // The pages say the same (the halt stays in the agent's event history, not in its state).
    let r = c.get("/agents", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("wired money twice"), "{}", r.body);
    let r = c.get("/agents/pay-bot", Some(&b)).await;
    let state_line = r
        .body
        .split("id=\"agent-state\"")
        .nth(1)
        .and_then(|s| s.split("</p>").next())
        .expect("the state line");
    assert!(!state_line.contains("wired money twice"), "{state_line}");
    assert!(!state_line.contains("halted by"), "{state_line}");
    let r = c.get("/agents/mail-bot", Some(&b)).await;
    assert!(r.body.contains("state waiting"), "{}", r.body);
    assert!(r.body.contains("send_mail"), "the pending request is shown");

    // Halted again: the new reason shows.
    presence
        .halt(&oscar, "pay-bot", "loops on refunds")
        .await
        .expect("halt");
    let r = c.get("/agents/pay-bot", Some(&b)).await;
    assert!(r.body.contains("loops on refunds"), "{}", r.body);

    // An id nothing knows: 404 on the page, no Halt button.
    let op = c.login("oscar").await;
    let r = c.get("/agents/no-such-bot", Some(&op)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(!r.body.contains("Halt</button>"), "{}", r.body);
    assert!(r.body.contains("no-such-bot"), "the page names the id");
    c.gov.close().await;
}

/// An agent misbehaves through the real gates (scope, budget, loops, a halt); the dashboard
/// lists it under attention, the most severe first, shows the day cap used up, and keeps
/// "0 halted" neutral while nothing is halted.
#[tokio::test]
async fn the_dashboard_lists_misbehaving_agents_by_severity_and_caps_against_spend() {
    let c = console(ConsoleConfig::default()).await;
    let b = c.login("vera").await;
    c.gov.presence().heartbeat("calm-bot").await.expect("beat");
    let r = c.get("/", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("state halted zero"),
        "0 halted is neutral: {}",
        r.body
    );
    assert!(r.body.contains("id=\"attention-empty\""), "{}", r.body);

    // scope-bot: denied by scope; spend-bot: over its day cap; loop-bot: loops, then halted.
    let gov = &c.gov;
    gov.scope()
        .register(ScopePolicy::new("scope-bot".parse().expect("id")))
        .await
        .expect("scope");
    assert!(gov.scope().check("scope-bot", "rm_rf").await.is_err());
    gov.cost()
        .register(BudgetPolicy::new("spend-bot".parse().expect("id")).per_day(MicroUsd(1)))
        .await
        .expect("budget");
    assert!(
        gov.cost()
            .reserve("spend-bot", "s-2", "gpt-5-mini", 1_000, Some(1_000))
            .await
            .is_err()
    );
    let mut looped = false;
    for _ in 0..50 {
        let v = gov
            .loops()
            .record("loop-bot", "s-3", "refund", &serde_json::json!({ "id": 7 }))
            .await;
        if !matches!(v, Ok(gov_sdk::LoopVerdict::Ok { .. })) {
            looped = true;
            break;
        }
    }
    assert!(looped, "the loop detector tripped");
    let oscar = gov
        .operators()
        .authenticate("oscar", PW)
        .await
        .expect("oscar");
    gov.presence()
        .halt(&oscar, "loop-bot", "loops on refunds")
        .await
        .expect("halt");

    let r = c.get("/", Some(&b)).await;
    let at = |id: &str| {
        r.body
            .find(&format!("id=\"attention-{id}\""))
            .unwrap_or_else(|| panic!("{id} is not under attention: {}", r.body))
    };
    assert!(at("loop-bot") < at("spend-bot"), "halt and loop first");
    assert!(at("spend-bot") < at("scope-bot"), "budget before scope");
    assert!(r.body.contains("1 halted"), "{}", r.body);
    assert!(r.body.contains("budget refused"), "{}", r.body);
    assert!(
        r.body.contains("spend-bot · "),
        "the day cap is listed: {}",
        r.body
    );
    assert!(
        !r.body.contains("state halted zero"),
        "one agent is halted now"
    );
    c.gov.close().await;
}

#[tokio::test]
async fn a_tampered_chain_turns_the_dashboard_red_and_says_where() {
    let c = console(ConsoleConfig::default()).await;
    for i in 0..3 {
        c.gov
            .audit()
            .log(
                gov_sdk::AuditEvent::builder("pay-bot", "demo.step")
                    .payload(serde_json::json!({ "n": i }))
                    .build()
                    .expect("event"),
            )
            .await
            .expect("record");
    }
    let b = c.login("vera").await;
    // The chain page's verification is what the dashboard shows.
    let r = c
        .post_form("/chain", Some(&b), &format!("csrf={}", b.csrf))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = c.get("/", Some(&b)).await;
    assert!(r.body.contains("intact: 3 events verified"), "{}", r.body);
    assert!(!r.body.contains("class=\"alarm\""));
    c.db.tamper(&["UPDATE audit_events SET payload = '{\"n\":99}' WHERE seq = 2"])
        .await;
    let r = c
        .post_form("/chain", Some(&b), &format!("csrf={}", b.csrf))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = c.get("/", Some(&b)).await;
    assert!(r.body.contains("<body class=\"alarm\">"), "{}", r.body);
    assert!(
        r.body.contains("TAMPERED: chain default fails at seq 2"),
        "{}",
        r.body
    );
    assert!(r.body.contains("role=\"alert\""));
    c.gov.close().await;
}

#[tokio::test]
async fn events_filter_by_session_and_kind_family_page_by_seq_and_say_why_they_are_empty() {
    let c = console(ConsoleConfig::default()).await;
    let b = c.login("vera").await;
    let r = c.get("/events", Some(&b)).await;
    assert!(r.body.contains("has no events yet"), "{}", r.body);
    for i in 0..120 {
        let kind = if i % 10 == 0 {
            "demo.denied"
        } else {
            "demo.step"
        };
        c.gov
            .audit()
            .log(
                gov_sdk::AuditEvent::builder("pay-bot", kind)
                    .session(if i % 2 == 0 { "s-even" } else { "s-odd" })
                    .payload(serde_json::json!({ "i": i }))
                    .build()
                    .expect("event"),
            )
            .await
            .expect("record");
    }
    let rows = |body: &str| body.matches("<td data-label=\"Seq\">").count();
    let older_of = |body: &str| {
        body.split("id=\"older\" href=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(|s| s.replace("&amp;", "&").replace("&#38;", "&"))
    };
    // Unfiltered: the newest 50, then the 50 below them, then the rest.
    let r = c.get("/events", Some(&b)).await;
    assert_eq!(rows(&r.body), 50, "{}", r.body);
    assert!(
        r.body.contains("<td data-label=\"Seq\">120</td>"),
        "{}",
        r.body
    );
    let older = older_of(&r.body).expect("an older page");
    let r = c.get(&older, Some(&b)).await;
    assert_eq!(rows(&r.body), 50, "{older}: {}", r.body);
    assert!(
        r.body.contains("<td data-label=\"Seq\">70</td>"),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("<td data-label=\"Seq\">71</td>"),
        "{}",
        r.body
    );
    let older = older_of(&r.body).expect("an older page");
    let r = c.get(&older, Some(&b)).await;
    assert_eq!(rows(&r.body), 20, "{older}: {}", r.body);
    assert!(older_of(&r.body).is_none(), "the oldest page: {}", r.body);
    let r = c.get("/events?kind=*.denied", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(rows(&r.body), 12, "{}", r.body);
    assert!(r.body.contains("sev-high"), "denials stand out");
    let r = c.get("/events?kind=demo.*&session=s-odd", Some(&b)).await;
    assert_eq!(rows(&r.body), 50, "a page");
    assert!(!r.body.contains("s-even</a>"));
    // The older page continues below the last row shown.
    let older = r
        .body
        .split("id=\"older\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("an older page")
        .replace("&amp;", "&")
        .replace("&#38;", "&");
    let r = c.get(&older, Some(&b)).await;
    assert_eq!(rows(&r.body), 10, "{older}: {}", r.body);
    let r = c.get("/events?kind=nothing.*", Some(&b)).await;
    assert!(r.body.contains("matches the filters"), "{}", r.body);
    let r = c.get("/events?from=yesterday", Some(&b)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("YYYY-MM-DDTHH:MM"), "{}", r.body);
    c.gov.close().await;
}

#[tokio::test]
async fn the_api_answers_with_its_index_and_pages_mark_the_current_section() {
    let c = console(ConsoleConfig::default()).await;
    let r = c.get("/api", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["openapi"], "/api/openapi.json");
    let routes = v["routes"].as_array().expect("routes");
    assert!(
        routes
            .iter()
            .any(|r| r["path"] == "/api/agents" && r["method"] == "GET"),
        "{v}"
    );
    let b = c.login("vera").await;
    let r = c.get("/agents", Some(&b)).await;
    assert!(
        r.body
            .contains("<a href=\"/agents\" aria-current=\"page\">Agents</a>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("href=\"#main\""), "a skip link");
    assert!(
        r.body.contains("href=\"/api\""),
        "the UI links the API index"
    );
    c.gov.close().await;
}

#[tokio::test]
async fn an_approval_shows_its_arguments_whole_the_time_left_and_the_sessions_events() {
    let c = console(ConsoleConfig::default()).await;
    c.gov.presence().heartbeat("pay-bot").await.expect("beat");
    c.gov
        .audit()
        .log(
            gov_sdk::AuditEvent::builder("pay-bot", "invoice.read")
                .session("s-4")
                .payload(serde_json::json!({ "invoice": "INV-77" }))
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let long = "x".repeat(400);
    let req = c
        .gov
        .gates()
        .request(
            "pay-bot",
            Some("s-4"),
            "wire_money",
            &serde_json::json!({ "amount": 120, "memo": long }),
        )
        .await
        .expect("request");
    let b = c.login("oscar").await;
    let r = c.get("/approvals", Some(&b)).await;
    assert_eq!(r.status, StatusCode::OK);
    let card = r
        .body
        .split(&format!("id=\"gate-{}\"", req.id))
        .nth(1)
        .and_then(|s| s.split("</article>").next())
        .expect("the request's card");
    assert!(card.contains(&long), "the arguments are whole");
    assert!(
        card.contains("&#34;amount&#34;: 120"),
        "indented JSON: {card}"
    );
    assert!(card.contains("min") && card.contains("left"), "{card}");
    assert!(card.contains("state waiting"), "{card}");
    assert!(
        card.contains("invoice.read"),
        "the session's events: {card}"
    );
    assert!(card.contains("href=\"/agents/pay-bot\""), "{card}");
    assert_eq!(
        card.matches("name=\"reason\"").count(),
        1,
        "one reason box: {card}"
    );
    c.gov.close().await;
}

#[tokio::test]
async fn the_chain_page_keeps_the_last_verification_and_the_periodic_one_runs_unasked() {
    let config = ConsoleConfig {
        verify_every: Some(std::time::Duration::from_millis(200)),
        ..ConsoleConfig::default()
    };
    let c = console(config).await;
    c.gov
        .audit()
        .log(
            gov_sdk::AuditEvent::builder("pay-bot", "demo.step")
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let b = c.login("vera").await;
    // Nobody asks: the periodic verification's result reaches the chain page.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = c.get("/chain", Some(&b)).await;
        if r.body.contains("id=\"last-verdict\" class=\"clean\"") {
            assert!(r.body.contains("id=\"last-verified\""), "{}", r.body);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no verification shown: {}",
            r.body
        );
        tokio::task::yield_now().await;
    }
    c.db.tamper(&["UPDATE audit_events SET payload = '{\"n\":99}' WHERE seq = 1"])
        .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = c.get("/", Some(&b)).await;
        if r.body.contains("TAMPERED: chain default fails at seq 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the periodic verification never saw the tampering: {}",
            r.body
        );
        tokio::task::yield_now().await;
    }
    c.gov.close().await;
}

/// The dashboard's day caps read the same counters the budget check writes, on both backends.
async fn day_budgets_read_the_day_counters(backend: gov_testdb::TestBackend) {
    let db = gov_testdb::TestStore::new(backend).await;
    let gov = gov_sdk::Governance::builder()
        .database_url(db.url())
        .audit_secret(crate::http::SECRET)
        .connect()
        .await
        .expect("connect");
    gov.cost()
        .register(
            BudgetPolicy::new("capped-bot".parse().expect("id"))
                .per_day(MicroUsd(10_000_000))
                .per_day_tokens(100_000),
        )
        .await
        .expect("policy");
    gov.cost()
        .register(BudgetPolicy::new("free-bot".parse().expect("id")))
        .await
        .expect("policy");
    let r = gov
        .cost()
        .reserve("capped-bot", "s-1", "gpt-5-mini", 1_000, Some(500))
        .await
        .expect("reserve");
    r.settle(gov_sdk::TokenUsage {
        input_tokens: 1_000,
        output_tokens: 200,
        cached_input_tokens: 0,
    })
    .await
    .expect("settle");
    let budgets = gov.cost().day_budgets().await.expect("day budgets");
    let ids: Vec<&str> = budgets.iter().map(|(p, _)| p.agent_id.as_str()).collect();
    assert_eq!(ids, ["capped-bot", "free-bot"], "{backend}");
    let (policy, day) = &budgets[0];
    assert_eq!(policy.per_day, Some(MicroUsd(10_000_000)), "{backend}");
    assert_eq!(policy.per_day_tokens, Some(100_000), "{backend}");
    let snapshot = gov
        .cost()
        .snapshot("capped-bot", "s-1")
        .await
        .expect("snapshot");
    assert_eq!(day.spent, snapshot.status.day.spent, "{backend}");
    assert_eq!(
        day.spent_tokens, snapshot.status.day.spent_tokens,
        "{backend}"
    );
    assert!(day.spent.0 > 0, "{backend}: {day:?}");
    assert_eq!(budgets[1].1, gov_sdk::BudgetCounter::default(), "{backend}");
    gov.close().await;
}

#[tokio::test]
async fn day_budgets_read_the_day_counters_postgres() {
    day_budgets_read_the_day_counters(gov_testdb::TestBackend::Postgres).await;
}

#[tokio::test]
async fn day_budgets_read_the_day_counters_sqlite() {
    day_budgets_read_the_day_counters(gov_testdb::TestBackend::Sqlite).await;
}

#[tokio::test]
async fn an_admin_resets_a_password_which_ends_that_users_sessions() {
    let c = console(ConsoleConfig::default()).await;
    let ada = c.login("ada").await;
    let vera = c.login("vera").await;
    let new = "a much longer new password";
    // A viewer may not; an admin may not reset their own here.
    let r = c
        .post_form(
            "/users/oscar/password",
            Some(&vera),
            &format!("csrf={}&password=whatever+long+enough", vera.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .post_form(
            "/users/ada/password",
            Some(&ada),
            &format!("csrf={}&password=whatever+long+enough", ada.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = c
        .post_form(
            "/users/vera/password",
            Some(&ada),
            &format!("csrf={}&password={}", ada.csrf, new.replace(' ', "+")),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = c
        .get("/users?done=password+of+vera+reset", Some(&ada))
        .await;
    assert!(
        page.body.contains("password of vera reset"),
        "{}",
        page.body
    );
    // Vera's session ended; the old password is refused, the new one works.
    let r = c.get("/", Some(&vera)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "the old session ended");
    assert!(c.gov.operators().authenticate("vera", PW).await.is_err());
    assert!(c.gov.operators().authenticate("vera", new).await.is_ok());
    c.gov.close().await;
}
