//! Requests through the router (no network), with the client address the server would see.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use gov_console::{ConsoleConfig, router};
use gov_sdk::{AuditEvent, Governance, OperatorRole};
use gov_testdb::TestDb;
use tokio_stream::StreamExt as _;
use tower::ServiceExt as _;

pub(crate) const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
const PW: &str = "correct horse battery staple";

pub(crate) struct Console {
    pub(crate) db: TestDb,
    pub(crate) gov: Governance,
    pub(crate) app: Router,
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: String,
}

/// A signed-in browser: its session cookie and CSRF token.
pub(crate) struct Browser {
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

pub(crate) async fn console(config: ConsoleConfig) -> Console {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    for (name, role) in [
        ("ada", OperatorRole::Admin),
        ("oscar", OperatorRole::Operator),
        ("vera", OperatorRole::Viewer),
        ("pay-bot", OperatorRole::Operator),
    ] {
        gov.operators().add(name, role, PW).await.expect("add user");
    }
    let app = router(gov.clone(), config)
        .layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40_000))));
    Console { db, gov, app }
}

impl Console {
    pub(crate) async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.app.clone().oneshot(req).await.expect("response");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
            .await
            .expect("body");
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub(crate) async fn get(&self, path: &str, who: Option<&Browser>) -> Reply {
        let mut req = Request::get(path);
        if let Some(b) = who {
            req = req.header(header::COOKIE, &b.cookie);
        }
        self.send(req.body(Body::empty()).expect("request")).await
    }

    pub(crate) async fn post_form(&self, path: &str, who: Option<&Browser>, form: &str) -> Reply {
        let mut req =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(b) = who {
            req = req.header(header::COOKIE, &b.cookie);
        }
        self.send(req.body(Body::from(form.to_owned())).expect("request"))
            .await
    }

    pub(crate) async fn post_json(
        &self,
        path: &str,
        who: &Browser,
        csrf: Option<&str>,
        body: serde_json::Value,
    ) -> Reply {
        let mut req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::COOKIE, &who.cookie);
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        self.send(req.body(Body::from(body.to_string())).expect("request"))
            .await
    }

    pub(crate) async fn login(&self, user: &str) -> Browser {
        let r = self
            .post_form(
                "/login",
                None,
                &format!("username={user}&password={}", PW.replace(' ', "+")),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{user}: {}", r.body);
        let set = r
            .headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_owned();
        let cookie = set.split(';').next().expect("name=value").to_owned();
        let page = self
            .get(
                "/agents",
                Some(&Browser {
                    cookie: cookie.clone(),
                    csrf: String::new(),
                }),
            )
            .await;
        let csrf = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a CSRF token in the page")
            .to_owned();
        Browser { cookie, csrf }
    }
}

#[tokio::test]
async fn anonymous_callers_see_the_sign_in_page_and_health_status_only() {
    let c = console(ConsoleConfig::default()).await;
    for path in [
        "/",
        "/agents",
        "/approvals",
        "/events",
        "/costs",
        "/chain",
        "/users",
        "/report",
    ] {
        let r = c.get(path, None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers[header::LOCATION], "/login", "{path}");
    }
    let r = c.get("/login", None).await;
    assert_eq!(r.status, StatusCode::OK);
    for h in [
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ] {
        assert!(r.headers.contains_key(h), "{h} missing");
    }
    assert!(
        r.headers["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("default-src 'self'")
    );
    let r = c.get("/health/governance", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        v,
        serde_json::json!({ "status": "ok" }),
        "status only for anonymous callers"
    );
    let r = c.get("/api/agents", None).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the API answers 401, not a redirect"
    );
    assert!(r.body.contains("sign in first"));
    let r = c.get("/no/such/page", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        c.get("/static/console.js", None).await.status,
        StatusCode::OK
    );
    c.gov.close().await;
    drop(c.db);
}

#[tokio::test]
async fn sign_in_does_not_tell_unknown_users_from_wrong_passwords_and_is_rate_limited() {
    let c = console(ConsoleConfig::default()).await;
    let wrong = c
        .post_form("/login", None, "username=oscar&password=nope-nope-nope")
        .await;
    let unknown = c
        .post_form("/login", None, "username=nobody&password=nope-nope-nope")
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!((unknown.status, &unknown.body), (wrong.status, &wrong.body));
    assert!(wrong.body.contains("wrong user name or password"));
    // Three more attempts make five in this minute; the sixth is refused, even with the right
    // password.
    for _ in 0..3 {
        c.post_form("/login", None, "username=oscar&password=nope-nope-nope")
            .await;
    }
    let sixth = c
        .post_form(
            "/login",
            None,
            &format!("username=oscar&password={}", PW.replace(' ', "+")),
        )
        .await;
    assert_eq!(
        sixth.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        sixth.body
    );
    c.gov.close().await;
}

#[tokio::test]
async fn sessions_are_http_only_strict_cookies_that_end_on_sign_out_and_when_a_user_is_disabled() {
    let c = console(ConsoleConfig {
        secure_cookies: true,
        ..ConsoleConfig::default()
    })
    .await;
    let r = c
        .post_form(
            "/login",
            None,
            &format!("username=vera&password={}", PW.replace(' ', "+")),
        )
        .await;
    let set = r.headers[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_owned();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    let vera = c.login("vera").await;
    assert_eq!(c.get("/", Some(&vera)).await.status, StatusCode::OK);
    // Signing out needs the CSRF token; then the cookie no longer works.
    assert_eq!(
        c.post_form("/logout", Some(&vera), "").await.status,
        StatusCode::FORBIDDEN
    );
    let out = c
        .post_form("/logout", Some(&vera), &format!("csrf={}", vera.csrf))
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(c.get("/", Some(&vera)).await.status, StatusCode::SEE_OTHER);
    // A disabled user's live session stops at once.
    let oscar = c.login("oscar").await;
    let admin = gov_sdk::admin::Admin::connect(c.db.url())
        .await
        .expect("admin");
    admin
        .set_operator_disabled("oscar", true)
        .await
        .expect("disable");
    admin.close().await;
    assert_eq!(c.get("/", Some(&oscar)).await.status, StatusCode::SEE_OTHER);
    // A forged cookie is no session.
    let forged = Browser {
        cookie: format!("gov_session={}", "A".repeat(43)),
        csrf: String::new(),
    };
    assert_eq!(
        c.get("/", Some(&forged)).await.status,
        StatusCode::SEE_OTHER
    );
    c.gov.close().await;
}

#[tokio::test]
async fn every_page_renders_for_every_role_and_only_admins_see_users() {
    let c = console(ConsoleConfig::default()).await;
    c.gov.presence().heartbeat("pay-bot").await.expect("beat");
    c.gov
        .audit()
        .log(
            AuditEvent::builder("pay-bot", "tool.call")
                .payload(serde_json::json!({"tool":"<b>x</b>"}))
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    for (user, users_status) in [
        ("ada", StatusCode::OK),
        ("oscar", StatusCode::FORBIDDEN),
        ("vera", StatusCode::FORBIDDEN),
    ] {
        let b = c.login(user).await;
        for path in [
            "/",
            "/agents",
            "/approvals",
            "/events",
            "/costs",
            "/chain",
            "/api/agents",
            "/api/approvals",
            "/api/events",
            "/api/openapi.json",
        ] {
            let r = c.get(path, Some(&b)).await;
            assert_eq!(r.status, StatusCode::OK, "{user} {path}: {}", r.body);
        }
        let r = c.get("/events", Some(&b)).await;
        assert!(
            r.body.contains("&lt;b&gt;x&lt;/b&gt;") || r.body.contains("&#60;b&#62;"),
            "recorded text is escaped: {}",
            r.body
        );
        assert!(!r.body.contains("<b>x</b>"));
        assert_eq!(
            c.get("/users", Some(&b)).await.status,
            users_status,
            "{user}"
        );
        // Health details for any signed-in user.
        let h = c.get("/health/governance", Some(&b)).await;
        let v: serde_json::Value = serde_json::from_str(&h.body).expect("json");
        assert_eq!(v["chain_integrity"]["status"], "clean", "{v}");
        assert!(v["key_resolution"]["current_key_id"].is_string());
        assert!(v["grants"]["least_privilege"].is_boolean());
    }
    let ada = c.login("ada").await;
    let users = c.get("/users", Some(&ada)).await;
    assert!(users.body.contains("vera") && !users.body.contains("$argon2"));
    // The notice after a form is one the console writes, never text a link carries.
    for (path, shown) in [
        ("/agents?done=halted+pay-bot", Some("halted pay-bot")),
        (
            "/users?done=vera+is+now+operator",
            Some("vera is now operator"),
        ),
        ("/approvals?done=approved", Some("approved")),
        ("/agents?done=All+agents+were+resumed+by+security", None),
        ("/agents?done=halted+%3Cb%3Ex%3C%2Fb%3E", None),
        ("/approvals?done=approved+and+wired", None),
    ] {
        let r = c.get(path, Some(&ada)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        match shown {
            Some(text) => assert!(
                r.body.contains(&format!("<p class=\"flash\">{text}</p>")),
                "{path}: {}",
                r.body
            ),
            None => assert!(!r.body.contains("class=\"flash\""), "{path}: {}", r.body),
        }
    }
    c.gov.close().await;
}

#[tokio::test]
async fn halting_and_approving_need_the_csrf_token_and_an_operator_role() {
    let c = console(ConsoleConfig::default()).await;
    let (vera, oscar) = (c.login("vera").await, c.login("oscar").await);
    let agent = Governance::builder()
        .database_url(c.db.app_url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("agent handle");
    agent.presence().heartbeat("pay-bot").await.expect("beat");

    // Halt: no token → 403; viewer → 403; cross-site → 403; operator with token → done.
    let form = |csrf: &str| format!("csrf={csrf}&reason=runaway");
    assert_eq!(
        c.post_form("/agents/pay-bot/halt", Some(&oscar), "reason=x")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.post_form("/agents/pay-bot/halt", Some(&vera), &form(&vera.csrf))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.post_form("/agents/pay-bot/halt", Some(&oscar), &form(&vera.csrf))
            .await
            .status,
        StatusCode::FORBIDDEN,
        "another session's token"
    );
    let cross = c
        .send(
            Request::post("/agents/pay-bot/halt")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, &oscar.cookie)
                .header("sec-fetch-site", "cross-site")
                .body(Body::from(form(&oscar.csrf)))
                .expect("request"),
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(!agent.presence().is_halted("pay-bot").await.expect("read"));
    let r = c
        .post_form("/agents/pay-bot/halt", Some(&oscar), &form(&oscar.csrf))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(agent.presence().is_halted("pay-bot").await.expect("read"));
    let r = c
        .post_form("/agents/pay-bot/resume", Some(&oscar), "csrf=&reason=ok")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .post_json(
            "/api/agents/pay-bot/resume",
            &oscar,
            Some(&oscar.csrf),
            serde_json::json!({"reason":"fixed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!agent.presence().is_halted("pay-bot").await.expect("read"));

    // A gate request from the agent's own connection, approved in the console; its waiter
    // returns.
    let req = agent
        .gates()
        .request(
            "pay-bot",
            Some("s-1"),
            "wire_money",
            &serde_json::json!({"amount": 5}),
        )
        .await
        .expect("request");
    let page = c.get("/approvals", Some(&vera)).await;
    assert!(
        page.body.contains(&req.id.to_string()),
        "the request is listed"
    );
    assert!(
        !page.body.contains("/approve\""),
        "a viewer gets no decision forms"
    );
    let waiter = {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .gates()
                .wait_for(req.id, Duration::from_secs(10))
                .await
        })
    };
    let path = format!("/approvals/{}/approve", req.id);
    assert_eq!(
        c.post_form(&path, Some(&vera), &format!("csrf={}&reason=ok", vera.csrf))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.post_form(&path, Some(&oscar), "reason=ok").await.status,
        StatusCode::FORBIDDEN
    );
    let r = c
        .post_form(
            &path,
            Some(&oscar),
            &format!("csrf={}&reason=small+amount", oscar.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let approval = waiter.await.expect("task").expect("approved");
    assert_eq!(approval.request_id, req.id);

    // Self-approval: an operator account named like the requesting agent is refused.
    let req = agent
        .gates()
        .request(
            "pay-bot",
            None,
            "wire_money",
            &serde_json::json!({"amount": 6}),
        )
        .await
        .expect("request");
    let bot = c.login("pay-bot").await;
    let r = c
        .post_json(
            &format!("/api/approvals/{}/approve", req.id),
            &bot,
            Some(&bot.csrf),
            serde_json::json!({"reason":"mine"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        (&v["kind"], &v["status"]),
        (&"refused".into(), &409.into()),
        "{v}"
    );
    // The API without the CSRF header, and a denial through it.
    let r = c
        .post_json(
            &format!("/api/approvals/{}/deny", req.id),
            &oscar,
            None,
            serde_json::json!({"reason":"no"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .post_json(
            &format!("/api/approvals/{}/deny", req.id),
            &oscar,
            Some(&oscar.csrf),
            serde_json::json!({"reason":"too much"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    agent.close().await;
    c.gov.close().await;
}

#[tokio::test]
async fn live_events_arrive_over_sse_from_another_process_handle() {
    let c = console(ConsoleConfig::default()).await;
    let vera = c.login("vera").await;
    let res = c
        .app
        .clone()
        .oneshot(
            Request::get("/events/stream?kind=tool.call")
                .header(header::COOKIE, &vera.cookie)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body().into_data_stream();
    // Another handle (as another process would) logs a filtered-out event, then a matching one.
    let writer = Governance::builder()
        .database_url(c.db.app_url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("writer");
    // Give the console's follower a moment to start listening, then write until seen.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while !seen.contains("\"kind\":\"tool.call\"") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event arrived: {seen}"
        );
        for kind in ["model.call", "tool.call"] {
            writer
                .audit()
                .log(
                    AuditEvent::builder("pay-bot", kind)
                        .payload(serde_json::json!({"n": n}))
                        .build()
                        .expect("event"),
                )
                .await
                .expect("log");
        }
        n += 1;
        if let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(500), body.next()).await
        {
            seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
    }
    assert!(seen.contains("event: audit"));
    assert!(
        !seen.contains("model.call"),
        "the kind filter holds: {seen}"
    );
    writer.close().await;
    c.gov.close().await;
}

#[tokio::test]
async fn the_report_downloads_and_chain_verification_runs_for_any_signed_in_user() {
    let c = console(ConsoleConfig::default()).await;
    c.gov
        .audit()
        .log(
            AuditEvent::builder("pay-bot", "tool.call")
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let vera = c.login("vera").await;
    let r = c.get("/report?as=md", Some(&vera)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(
        r.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .expect("header")
            .contains("attachment")
    );
    assert!(r.body.contains("not a claim of compliance"));
    assert_eq!(
        c.get("/report?as=pdf", Some(&vera)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        c.get("/report?from=yesterday", Some(&vera)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        c.post_form("/chain", Some(&vera), "").await.status,
        StatusCode::FORBIDDEN
    );
    let r = c
        .post_form("/chain", Some(&vera), &format!("csrf={}", vera.csrf))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("clean"), "{}", r.body);
    c.gov.close().await;
}

#[tokio::test]
async fn admins_manage_users_and_agent_pages_show_one_agent() {
    let c = console(ConsoleConfig::default()).await;
    let (ada, oscar) = (c.login("ada").await, c.login("oscar").await);
    let form = |csrf: &str| {
        format!(
            "csrf={csrf}&username=nina&role=viewer&password={}",
            PW.replace(' ', "+")
        )
    };
    // Only an admin, with the token, adds users; a bad role is a 400 that says why.
    assert_eq!(
        c.post_form("/users", Some(&oscar), &form(&oscar.csrf))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.post_form(
            "/users",
            Some(&ada),
            "username=nina&role=viewer&password=a+long+enough+password"
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let bad = c
        .post_form(
            "/users",
            Some(&ada),
            &format!(
                "csrf={}&username=nina&role=root&password=a+long+enough+password",
                ada.csrf
            ),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("is not a role"), "{}", bad.body);
    let r = c.post_form("/users", Some(&ada), &form(&ada.csrf)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let dup = c.post_form("/users", Some(&ada), &form(&ada.csrf)).await;
    assert_eq!(dup.status, StatusCode::BAD_REQUEST, "{}", dup.body);
    let nina = c.login("nina").await;
    assert_eq!(c.get("/", Some(&nina)).await.status, StatusCode::OK);
    // Disabling ends nina's session; an admin cannot disable themselves.
    let r = c
        .post_form(
            "/users/nina/disable",
            Some(&ada),
            &format!("csrf={}", ada.csrf),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(c.get("/", Some(&nina)).await.status, StatusCode::SEE_OTHER);
    let me = c
        .post_form(
            "/users/ada/disable",
            Some(&ada),
            &format!("csrf={}", ada.csrf),
        )
        .await;
    assert_eq!(me.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        c.post_form(
            "/users/nina/enable",
            Some(&oscar),
            &format!("csrf={}", oscar.csrf)
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let page = c.get("/users", Some(&ada)).await;
    assert!(page.body.contains("id=\"user-nina\""), "{}", page.body);

    // One agent's page.
    c.gov.presence().heartbeat("pay-bot").await.expect("beat");
    c.gov
        .audit()
        .log(
            AuditEvent::builder("pay-bot", "tool.call")
                .payload(serde_json::json!({"tool":"lookup"}))
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let r = c.get("/agents/pay-bot", Some(&oscar)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("lookup") && r.body.contains("/agents/pay-bot/halt"),
        "{}",
        r.body
    );
    assert_eq!(
        c.get("/agents/bad%20id", Some(&oscar)).await.status,
        StatusCode::BAD_REQUEST
    );
    c.gov.close().await;
}

#[tokio::test]
async fn chain_verification_runs_in_the_background_with_progress() {
    let c = console(ConsoleConfig::default()).await;
    for i in 0..50 {
        c.gov
            .audit()
            .log(
                AuditEvent::builder("pay-bot", "tool.call")
                    .payload(serde_json::json!({ "i": i }))
                    .build()
                    .expect("event"),
            )
            .await
            .expect("log");
    }
    let vera = c.login("vera").await;
    let idle = c.get("/api/chain/verification", Some(&vera)).await;
    assert!(idle.body.contains("\"idle\""), "{}", idle.body);
    let start = |csrf: Option<&str>| {
        let mut req = Request::post("/api/chain/verification").header(header::COOKIE, &vera.cookie);
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        req.body(Body::empty()).expect("request")
    };
    assert_eq!(c.send(start(None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        c.send(start(Some(&vera.csrf))).await.status,
        StatusCode::ACCEPTED
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let job = loop {
        let r = c.get("/api/chain/verification", Some(&vera)).await;
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        if v["status"] != "running" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "still running: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "clean", "{job}");
    assert_eq!(job["report"]["events_checked"], 50);
    assert_eq!(job["started_by"], "vera");
    c.gov.close().await;
}

/// Every route under every role (and anonymous), with the status each must get. State-changing
/// requests carry a valid CSRF token here, so what decides is the role alone.
#[tokio::test]
async fn the_route_table_under_every_role() {
    let c = console(ConsoleConfig::default()).await;
    c.gov.presence().heartbeat("bot-x").await.expect("beat");
    c.gov
        .audit()
        .log(
            AuditEvent::builder("bot-x", "tool.call")
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let ok = StatusCode::OK;
    let see = StatusCode::SEE_OTHER;
    let forbidden = StatusCode::FORBIDDEN;
    let unauth = StatusCode::UNAUTHORIZED;
    // (method, path, anonymous, viewer, operator, admin)
    let gets: &[(&str, StatusCode, StatusCode, StatusCode, StatusCode)] = &[
        ("/", see, ok, ok, ok),
        ("/agents", see, ok, ok, ok),
        ("/agents/bot-x", see, ok, ok, ok),
        ("/approvals", see, ok, ok, ok),
        ("/events", see, ok, ok, ok),
        ("/costs", see, ok, ok, ok),
        ("/chain", see, ok, ok, ok),
        ("/users", see, forbidden, forbidden, ok),
        ("/report?as=json", see, ok, ok, ok),
        ("/login", ok, ok, ok, ok),
        ("/health/governance", ok, ok, ok, ok),
        ("/static/console.css", ok, ok, ok, ok),
        ("/api/openapi.json", ok, ok, ok, ok),
        ("/api/agents", unauth, ok, ok, ok),
        ("/api/approvals", unauth, ok, ok, ok),
        ("/api/events", unauth, ok, ok, ok),
        ("/api/chain/verification", unauth, ok, ok, ok),
    ];
    let users = [
        c.login("vera").await,
        c.login("oscar").await,
        c.login("ada").await,
    ];
    for (path, anon, viewer, operator, admin) in gets {
        assert_eq!(
            c.get(path, None).await.status,
            *anon,
            "anonymous GET {path}"
        );
        for (b, want) in users.iter().zip([viewer, operator, admin]) {
            assert_eq!(
                c.get(path, Some(b)).await.status,
                *want,
                "GET {path} as {}",
                b.cookie
            );
        }
    }
    // Halting and resuming through the pages: a viewer never; operators and admins always.
    for (b, want) in users.iter().zip([forbidden, see, see]) {
        for action in ["halt", "resume"] {
            let r = c
                .post_form(
                    &format!("/agents/bot-x/{action}"),
                    Some(b),
                    &format!("csrf={}&reason=test", b.csrf),
                )
                .await;
            assert_eq!(r.status, want, "POST {action}");
        }
        let r = c
            .post_json(
                "/api/agents/bot-x/halt",
                b,
                Some(&b.csrf),
                serde_json::json!({"reason": "api"}),
            )
            .await;
        assert_eq!(r.status, if want == see { ok } else { forbidden });
        let r = c
            .post_json(
                "/api/agents/bot-x/resume",
                b,
                Some(&b.csrf),
                serde_json::json!({"reason": "api"}),
            )
            .await;
        assert_eq!(r.status, if want == see { ok } else { forbidden });
    }
    // Anonymous state changes go to sign-in (pages) or get 401 (API).
    assert_eq!(
        c.post_form("/agents/bot-x/halt", None, "reason=x")
            .await
            .status,
        see
    );
    assert_eq!(c.post_form("/users", None, "").await.status, see);
    let anon_api = c
        .send(
            Request::post("/api/agents/bot-x/halt")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"reason\":\"x\"}"))
                .expect("request"),
        )
        .await;
    assert_eq!(anon_api.status, unauth);
    // Unknown actions are 404, not a silent success.
    let ada = &users[2];
    assert_eq!(
        c.post_form(
            "/agents/bot-x/explode",
            Some(ada),
            &format!("csrf={}&reason=x", ada.csrf)
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    c.gov.close().await;
}

#[tokio::test]
async fn errors_speak_the_web_keep_the_navigation_and_downloads_are_named_after_their_period() {
    let c = console(ConsoleConfig::default()).await;
    c.gov
        .audit()
        .log(
            AuditEvent::builder("pay-bot", "tool.call")
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
    let vera = c.login("vera").await;
    // A period that ends before it starts: said in the form's words, not the CLI's flags, on a
    // page that keeps the navigation of the signed-in user.
    let r = c
        .get("/report?from=2026-11-30&to=2026-11-01&as=md", Some(&vera))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("the period is empty"), "{}", r.body);
    assert!(
        !r.body.contains("--from") && !r.body.contains("--to"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("vera (viewer)"),
        "navigation kept: {}",
        r.body
    );
    assert!(r.body.contains("href=\"/costs\""), "{}", r.body);
    // A page that does not exist keeps the navigation too; signed out, no navigation.
    let r = c.get("/no-such-page", Some(&vera)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("vera (viewer)"), "{}", r.body);
    let r = c.get("/no-such-page", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.body.contains("(viewer)"), "{}", r.body);
    // The download is named after the period chosen, the last day included.
    let r = c
        .get("/report?from=2026-11-01&to=2026-11-30&as=md", Some(&vera))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .expect("header"),
        "attachment; filename=\"article12-2026-11-01-to-2026-11-30.md\""
    );
    c.gov.close().await;
}
