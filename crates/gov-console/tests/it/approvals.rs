//! The approvals pages with workflows: a request's own page (the page notifications link to)
//! with its workflow and votes, a four-eyes request decided by two operators in the console,
//! an approval for the session, and "save as a rule" for admins only.

use axum::http::StatusCode;
use gov_console::ConsoleConfig;
use gov_sdk::WorkflowSpec;

use crate::http::console;

#[tokio::test]
async fn a_four_eyes_request_on_its_own_page_needs_two_operators() {
    let c = console(ConsoleConfig::default()).await;
    c.gov
        .operators()
        .add(
            "olga",
            gov_sdk::OperatorRole::Operator,
            "correct horse battery staple",
        )
        .await
        .expect("add");
    for who in ["ada", "oscar", "olga"] {
        c.gov
            .workflows()
            .set_groups(who, &["finance".to_owned()])
            .await
            .expect("groups");
    }
    c.gov
        .workflows()
        .put(
            &WorkflowSpec {
                name: "four-eyes".into(),
                quorum: 2,
                approver_group: Some("finance".into()),
                escalate_to: None,
                escalate_after_secs: None,
                timeout_secs: None,
            },
            "ada",
        )
        .await
        .expect("workflow");
    c.gov
        .workflows()
        .route("pay-bot", "wire_money", "four-eyes")
        .await
        .expect("route");
    let req = c
        .gov
        .gates()
        .request(
            "pay-bot",
            Some("s-1"),
            "wire_money",
            &serde_json::json!({"amount": 5000}),
        )
        .await
        .expect("request");
    let page_path = format!("/approvals/{}", req.id);
    let vera = c.login("vera").await;
    let page = c.get(&page_path, Some(&vera)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("four-eyes"), "{}", page.body);
    assert!(page.body.contains("0 of 2 approvals from finance"));
    assert!(!page.body.contains("/approve\""), "a viewer gets no form");
    assert_eq!(c.get(&page_path, None).await.status, StatusCode::SEE_OTHER);
    let unknown = format!("/approvals/{}", uuid::Uuid::now_v7());
    assert_eq!(
        c.get(&unknown, Some(&vera)).await.status,
        StatusCode::NOT_FOUND
    );

    let oscar = c.login("oscar").await;
    let approve = format!("/approvals/{}/approve", req.id);
    let r = c
        .post_form(
            &approve,
            Some(&oscar),
            &format!("csrf={}&reason=checked&back=request", oscar.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let to = r
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(to, format!("{page_path}?done=vote+recorded+1+of+2"));
    let page = c.get(&to, Some(&oscar)).await;
    assert!(page.body.contains("vote recorded 1 of 2"), "{}", page.body);
    assert!(
        page.body.contains("<strong>oscar</strong> approved"),
        "{}",
        page.body
    );
    // Twice by the same operator: refused.
    let r = c
        .post_form(
            &approve,
            Some(&oscar),
            &format!("csrf={}&reason=again", oscar.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    // "Save as a rule" is for admins.
    let olga = c.login("olga").await;
    let r = c
        .post_form(
            &approve,
            Some(&olga),
            &format!("csrf={}&reason=ok&scope=rule", olga.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // The second operator, for the session.
    let r = c
        .post_form(
            &approve,
            Some(&olga),
            &format!(
                "csrf={}&reason=agreed&scope=session&back=request",
                olga.csrf
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = c.get(&page_path, Some(&olga)).await;
    assert!(page.body.contains("approved by olga"), "{}", page.body);
    assert!(page.body.contains("2 of 2 approvals"), "{}", page.body);
    c.gov.gates().poll(req.id).await.expect("approved");
    // The session's next request for that tool is approved when asked.
    let next = c
        .gov
        .gates()
        .request(
            "pay-bot",
            Some("s-1"),
            "wire_money",
            &serde_json::json!({"amount": 1}),
        )
        .await
        .expect("request");
    c.gov
        .gates()
        .poll(next.id)
        .await
        .expect("approved for the session");
    let page = c.get(&format!("/approvals/{}", next.id), Some(&olga)).await;
    assert!(
        page.body.contains("approved for the session by olga"),
        "{}",
        page.body
    );
}
