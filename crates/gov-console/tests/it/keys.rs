//! The gateway keys page and API: an admin makes a key and sees it once, lists keys without
//! secrets and revokes one, which the SDK's key check (as a gateway on the application role
//! runs it) then refuses; each change is in the chain without the key; viewers and operators
//! are refused.

use axum::http::StatusCode;
use gov_console::ConsoleConfig;
use gov_sdk::Governance;
use secrecy::SecretString;

use crate::http::{SECRET, console};

/// The key in a page (`gk1_…`, in the read-only input), if any.
fn key_in(page: &str) -> Option<String> {
    let at = page.find("gk1_")?;
    Some(
        page[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect(),
    )
}

#[tokio::test]
async fn an_admin_makes_sees_once_lists_and_revokes_a_gateway_key() {
    let c = console(ConsoleConfig::default()).await;
    let ada = c.login("ada").await;
    let empty = c.get("/gateway-keys", Some(&ada)).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert!(empty.body.contains("No gateway keys yet"), "{}", empty.body);
    assert!(
        empty
            .body
            .contains("href=\"/gateway-keys\" aria-current=\"page\""),
        "the nav marks the page"
    );

    // Made through the form: the response page shows the key, once.
    let made = c
        .post_form(
            "/gateway-keys",
            Some(&ada),
            &format!("csrf={}&agent=pay-bot&label=prod+gateway", ada.csrf),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    let key = key_in(&made.body).expect("the key on the response page");
    assert_eq!(key.len(), "gk1_".len() + 32 + 1 + 43, "{key}");
    let id = key["gk1_".len().."gk1_".len() + 32].to_owned();
    assert!(
        made.body.contains(&format!("id=\"key-{id}\"")),
        "listed too"
    );
    assert!(
        made.headers["cache-control"]
            .to_str()
            .expect("cache-control")
            .contains("no-store")
    );

    // The gateway's check (application role) accepts it.
    let app = Governance::builder()
        .database_url(c.db.app_url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("an application handle");
    let presented = SecretString::from(key.clone());
    assert_eq!(
        app.authenticate_agent_key(&presented)
            .await
            .expect("check")
            .as_deref(),
        Some("pay-bot")
    );

    // Never again: not on the page, not in the API, not in the chain.
    let page = c.get("/gateway-keys", Some(&ada)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&id) && page.body.contains("prod gateway"));
    assert_eq!(key_in(&page.body), None, "the list holds no secret");
    let api = c.get("/api/gateway-keys", Some(&ada)).await;
    assert_eq!(api.status, StatusCode::OK, "{}", api.body);
    assert!(!api.body.contains("gk1_"), "{}", api.body);
    let v: serde_json::Value = serde_json::from_str(&api.body).expect("json");
    assert_eq!(v["keys"][0]["id"], id.as_str());
    assert_eq!(v["keys"][0]["agent"], "pay-bot");
    assert_eq!(v["keys"][0]["revoked_at"], serde_json::Value::Null);

    // The API makes one too (its answer holds the key), and needs the CSRF header.
    let r = c
        .post_json(
            "/api/gateway-keys",
            &ada,
            None,
            serde_json::json!({ "agent": "ops-bot" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = c
        .post_json(
            "/api/gateway-keys",
            &ada,
            Some(&ada.csrf),
            serde_json::json!({ "agent": "ops-bot", "label": "api" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert!(v["key"].as_str().expect("key").starts_with("gk1_"));

    // Revoked from the page: the list says so and the key check refuses it.
    let r = c
        .post_form(
            &format!("/gateway-keys/{id}/revoke"),
            Some(&ada),
            "csrf=wrong",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "CSRF");
    let r = c
        .post_form(
            &format!("/gateway-keys/{id}/revoke"),
            Some(&ada),
            &format!("csrf={}", ada.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let back = r.headers["location"].to_str().expect("location").to_owned();
    assert_eq!(back, format!("/gateway-keys?done=revoked+key+{id}"));
    let page = c.get(&back, Some(&ada)).await;
    assert!(
        page.body.contains(&format!("revoked key {id}")),
        "the flash"
    );
    let row = page
        .body
        .split(&format!("id=\"key-{id}\""))
        .nth(1)
        .and_then(|s| s.split("</tr>").next())
        .expect("the key's row");
    assert!(
        !row.contains("Revoke"),
        "no revoke button once revoked: {row}"
    );
    assert!(!row.contains("<td class=\"revoked\">no</td>"), "{row}");
    assert_eq!(
        app.authenticate_agent_key(&presented).await.expect("check"),
        None,
        "a revoked key is refused"
    );
    // A second revocation: nothing to revoke.
    let r = c
        .post_json(
            &format!("/api/gateway-keys/{id}/revoke"),
            &ada,
            Some(&ada.csrf),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("no unrevoked gateway key"), "{}", r.body);

    // The chain records who made and revoked which key, never the key.
    let rows = c
        .gov
        .audit()
        .events(&gov_sdk::EventFilter::default())
        .await
        .expect("events");
    let of = |kind: &str| {
        rows.iter()
            .filter(|r| r.kind == kind && r.payload.contains(&id))
            .collect::<Vec<_>>()
    };
    let (added, revoked) = (of("agent.key_added"), of("agent.key_revoked"));
    assert_eq!((added.len(), revoked.len()), (1, 1), "{rows:?}");
    for r in added.iter().chain(&revoked) {
        assert_eq!(r.agent_id, "pay-bot");
        assert_eq!(r.actor.as_deref(), Some("ada"));
    }
    assert!(
        rows.iter().all(|r| !r.payload.contains("gk1_")),
        "no key in the chain"
    );
    app.close().await;
    c.gov.close().await;
    drop(c.db);
}

#[tokio::test]
async fn viewers_and_operators_cannot_see_or_change_gateway_keys() {
    let c = console(ConsoleConfig::default()).await;
    let ada = c.login("ada").await;
    let made = c
        .post_json(
            "/api/gateway-keys",
            &ada,
            Some(&ada.csrf),
            serde_json::json!({ "agent": "pay-bot" }),
        )
        .await;
    let v: serde_json::Value = serde_json::from_str(&made.body).expect("json");
    let id = v["id"].as_str().expect("id").to_owned();
    for who in ["vera", "oscar"] {
        let b = c.login(who).await;
        let page = c.get("/gateway-keys", Some(&b)).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{who}");
        assert!(
            page.body.contains("may not do this"),
            "{who}: {}",
            page.body
        );
        assert!(!page.body.contains(&id), "{who} sees no key");
        assert!(!page.body.contains("href=\"/gateway-keys\""), "no nav link");
        let api = c.get("/api/gateway-keys", Some(&b)).await;
        assert_eq!(api.status, StatusCode::FORBIDDEN, "{who}");
        let add = c
            .post_form(
                "/gateway-keys",
                Some(&b),
                &format!("csrf={}&agent=pay-bot", b.csrf),
            )
            .await;
        assert_eq!(add.status, StatusCode::FORBIDDEN, "{who}");
        assert!(!add.body.contains("gk1_"));
        let revoke = c
            .post_form(
                &format!("/gateway-keys/{id}/revoke"),
                Some(&b),
                &format!("csrf={}", b.csrf),
            )
            .await;
        assert_eq!(revoke.status, StatusCode::FORBIDDEN, "{who}");
        let api = c
            .post_json(
                &format!("/api/gateway-keys/{id}/revoke"),
                &b,
                Some(&b.csrf),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(api.status, StatusCode::FORBIDDEN, "{who}");
    }
    let keys = c
        .gov
        .gateway_keys()
        .list(
            &c.gov
                .operators()
                .authenticate("ada", "correct horse battery staple")
                .await
                .expect("ada"),
            None,
        )
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1);
    assert!(keys[0].revoked_at.is_none(), "still valid");
    c.gov.close().await;
    drop(c.db);
}
