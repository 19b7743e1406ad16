//! Every page that shows a session links to its trace (`/agents/{agent}/sessions/{session}`)
//! and to the agent: the approvals queue, a request's own page, the dashboard's queue, the
//! events page and the agent's page (the agents list links to the agent page, which lists the
//! agent's sessions).

use axum::http::StatusCode;
use gov_console::ConsoleConfig;
use gov_sdk::AuditEvent;

use crate::http::console;

#[tokio::test]
async fn approvals_events_agents_and_the_dashboard_link_to_the_session_trace_and_the_agent() {
    let c = console(ConsoleConfig::default()).await;
    c.gov.presence().heartbeat("trip-bot").await.expect("beat");
    c.gov
        .audit()
        .log(
            AuditEvent::builder("trip-bot", "tool.call")
                .session("s-42")
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let asked = c
        .gov
        .gates()
        .request(
            "trip-bot",
            Some("s-42"),
            "wire",
            &serde_json::json!({ "x": 1 }),
        )
        .await
        .expect("request");
    let b = c.login("oscar").await;
    let trace = "href=\"/agents/trip-bot/sessions/s-42\"";
    let agent = "href=\"/agents/trip-bot\"";
    for path in [
        "/approvals".to_owned(),
        format!("/approvals/{}", asked.id),
        "/".to_owned(),
        "/events".to_owned(),
        "/events?agent=trip-bot&session=s-42".to_owned(),
        "/agents/trip-bot".to_owned(),
    ] {
        let r = c.get(&path, Some(&b)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert!(
            r.body.contains(trace),
            "{path} has no link to the trace: {}",
            r.body
        );
        if path != "/agents/trip-bot" {
            assert!(
                r.body.contains(agent),
                "{path} has no link to the agent: {}",
                r.body
            );
        }
    }
    let r = c.get("/agents", Some(&b)).await;
    assert!(
        r.body.contains(agent),
        "the agents list links to the agent's page"
    );
    c.gov.close().await;
    drop(c.db);
}
