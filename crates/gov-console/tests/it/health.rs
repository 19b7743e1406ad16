//! `/health/governance` reports the chain status of the last verification, and when it was
//! computed, instead of verifying every chain on each request: a tampered row is not seen until
//! the cache is refreshed (by an operator's verification, or a health request once the interval
//! has passed), on both backends.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use gov_console::{ConsoleConfig, router};
use gov_sdk::{AuditEvent, Governance, OperatorRole};
use gov_testdb::{TestBackend, TestStore};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::ServiceExt as _;

const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
const PW: &str = "correct horse battery staple";
const TAMPER: &str = "UPDATE audit_events SET payload = '{\"n\":99}' WHERE seq = 2";

struct Console {
    db: TestStore,
    gov: Governance,
    app: Router,
    cookie: String,
    csrf: String,
}

/// A console over a fresh database with three events, and a signed-in viewer.
async fn console(backend: TestBackend, chain_check_interval: Duration) -> Console {
    let db = TestStore::new(backend).await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    gov.operators()
        .add("vera", OperatorRole::Viewer, PW)
        .await
        .expect("add user");
    for n in 1..=3 {
        gov.audit()
            .log(
                AuditEvent::builder("pay-bot", "tool.call")
                    .payload(serde_json::json!({ "n": n }))
                    .build()
                    .expect("event"),
            )
            .await
            .expect("log");
    }
    let config = ConsoleConfig {
        chain_check_interval,
        ..ConsoleConfig::default()
    };
    let app = router(gov.clone(), config)
        .layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 4], 40_000))));
    let res = app
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!(
                    "username=vera&password={}",
                    PW.replace(' ', "+")
                )))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    let mut c = Console {
        db,
        gov,
        app,
        cookie,
        csrf: String::new(),
    };
    let (_, page) = c.send(Request::get("/chain")).await;
    c.csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();
    c
}

impl Console {
    async fn send(&self, req: axum::http::request::Builder) -> (StatusCode, String) {
        let req = req
            .header(header::COOKIE, &self.cookie)
            .body(Body::empty())
            .expect("request");
        let res = self.app.clone().oneshot(req).await.expect("response");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The chain status health reports, and when it was computed.
    async fn health(&self) -> (String, OffsetDateTime, Value) {
        let (status, body) = self.send(Request::get("/health/governance")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        let at = v["chain_checked_at"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .unwrap_or_else(|| panic!("no chain_checked_at: {v}"));
        let status = v["chain_integrity"]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no chain status: {v}"))
            .to_owned();
        (status, at, v)
    }

    async fn verify_api(&self) -> Value {
        let (status, body) = self
            .send(Request::post("/api/chain/verify").header("x-csrf-token", &self.csrf))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).expect("json")
    }
}

async fn cached_until_an_operator_verifies(backend: TestBackend) {
    let c = console(backend, Duration::from_secs(300)).await;
    let before = OffsetDateTime::now_utc();
    let (status, first_at, v) = c.health().await;
    assert_eq!(status, "clean", "{backend}: {v}");
    assert_eq!(v["chain_integrity"]["events_checked"], 3, "{v}");
    assert!(
        first_at >= before - Duration::from_secs(1),
        "{backend}: {v}"
    );

    c.db.tamper(&[TAMPER]).await;
    // Answered from the cache: the same status, computed at the same time.
    for _ in 0..3 {
        let (status, at, v) = c.health().await;
        assert_eq!((status.as_str(), at), ("clean", first_at), "{backend}: {v}");
    }

    // An operator's verification sees the change and refreshes what health reports.
    let report = c.verify_api().await;
    assert_eq!(report["status"], "tampered", "{backend}: {report}");
    let (status, at, v) = c.health().await;
    assert_eq!(status, "tampered", "{backend}: {v}");
    assert!(at >= first_at, "{backend}: {v}");
    assert_eq!(v["chain_integrity"]["first"]["seq"], 2, "{backend}: {v}");
    assert_eq!(
        v["chain_integrity"]["first"]["chain"], "default",
        "{backend}: {v}"
    );
    c.gov.close().await;
}

#[tokio::test]
async fn health_answers_the_cached_chain_status_until_an_operator_verifies_on_postgres() {
    cached_until_an_operator_verifies(TestBackend::Postgres).await;
}

#[tokio::test]
async fn health_answers_the_cached_chain_status_until_an_operator_verifies_on_sqlite() {
    cached_until_an_operator_verifies(TestBackend::Sqlite).await;
}

/// The chain page's verify form refreshes the cache too.
#[tokio::test]
async fn the_chain_pages_verification_refreshes_the_health_status() {
    let c = console(TestBackend::Postgres, Duration::from_secs(300)).await;
    let (status, first_at, _) = c.health().await;
    assert_eq!(status, "clean");
    c.db.tamper(&[TAMPER]).await;
    let req =
        Request::post("/chain").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    let req = req
        .header(header::COOKIE, &c.cookie)
        .body(Body::from(format!("csrf={}", c.csrf)))
        .expect("request");
    let res = c.app.clone().oneshot(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let (status, at, v) = c.health().await;
    assert_eq!(status, "tampered", "{v}");
    assert!(at >= first_at, "{v}");
    c.gov.close().await;
}

/// With an interval of zero every signed-in health request verifies (as before the cache).
#[tokio::test]
async fn an_interval_of_zero_verifies_on_every_health_request() {
    let c = console(TestBackend::Postgres, Duration::ZERO).await;
    assert_eq!(c.health().await.0, "clean");
    c.db.tamper(&[TAMPER]).await;
    assert_eq!(c.health().await.0, "tampered");
    c.gov.close().await;
}

/// Once the interval has passed, a health request answers the status it has and refreshes it
/// in the background; a later request reports the new one.
#[tokio::test]
async fn a_stale_status_is_refreshed_in_the_background() {
    let c = console(TestBackend::Postgres, Duration::from_millis(1)).await;
    let (status, first_at, _) = c.health().await;
    assert_eq!(status, "clean");
    c.db.tamper(&[TAMPER]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, at, v) = c.health().await;
        assert!(at >= first_at, "{v}");
        if status == "tampered" {
            assert!(at > first_at, "{v}");
            break;
        }
        assert_eq!(status, "clean", "{v}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refreshed: {v}"
        );
        tokio::task::yield_now().await;
    }
    c.gov.close().await;
}
