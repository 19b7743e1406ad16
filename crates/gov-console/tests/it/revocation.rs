//! Revocation over HTTP, on both backends: a session cookie taken before a password reset, a
//! disable (then an enable) or a role change gets the sign-in page afterwards, whether the
//! change came from an admin in the console or from `governance console` (the `Admin` API).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use gov_console::{ConsoleConfig, router};
use gov_sdk::admin::Admin;
use gov_sdk::{Governance, OperatorRole};
use gov_testdb::{TestBackend, TestStore};
use tower::ServiceExt as _;

const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
const PW: &str = "correct horse battery staple";

struct Console {
    db: TestStore,
    gov: Governance,
    app: Router,
}

/// A signed-in browser: its session cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn console(backend: TestBackend) -> Console {
    let db = TestStore::new(backend).await;
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
    ] {
        gov.operators().add(name, role, PW).await.expect("add user");
    }
    // This test signs in more often than a person would in a minute.
    let config = ConsoleConfig {
        sign_ins_per_minute: 100,
        ..ConsoleConfig::default()
    };
    let app = router(gov.clone(), config)
        .layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 2], 40_000))));
    Console { db, gov, app }
}

impl Console {
    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let res = self.app.clone().oneshot(req).await.expect("response");
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
            .await
            .expect("body");
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// The status of `GET path` with `who`'s cookie (303 to `/login` means no session).
    async fn get(&self, path: &str, who: &Browser) -> StatusCode {
        let req = Request::get(path)
            .header(header::COOKIE, &who.cookie)
            .body(Body::empty())
            .expect("request");
        self.send(req).await.0
    }

    async fn post_form(&self, path: &str, who: Option<&Browser>, form: &str) -> StatusCode {
        self.post_form_to(path, who, form).await.0
    }

    /// The status and the redirect's target, if any.
    async fn post_form_to(
        &self,
        path: &str,
        who: Option<&Browser>,
        form: &str,
    ) -> (StatusCode, String) {
        let mut req =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(b) = who {
            req = req.header(header::COOKIE, &b.cookie);
        }
        let (status, headers, body) = self
            .send(req.body(Body::from(form.to_owned())).expect("request"))
            .await;
        assert!(status.as_u16() < 500, "{path}: {status} {body}");
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, location)
    }

    async fn login(&self, user: &str, password: &str) -> Browser {
        let req = Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "username={user}&password={}",
                password.replace(' ', "+")
            )))
            .expect("request");
        let (status, headers, body) = self.send(req).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{user}: {body}");
        let cookie = headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let req = Request::get("/agents")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("request");
        let (_, _, page) = self.send(req).await;
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("a CSRF token in the page")
            .to_owned();
        Browser { cookie, csrf }
    }
}

async fn sessions_taken_before_a_revocation_are_refused_after_it(backend: TestBackend) {
    let c = console(backend).await;
    let admin = Admin::connect(c.db.url()).await.expect("admin");

    // A password reset from the command line ends the stolen session.
    let stolen = c.login("oscar", PW).await;
    assert_eq!(c.get("/", &stolen).await, StatusCode::OK);
    admin
        .reset_operator_password("oscar", "a brand new password")
        .await
        .expect("reset");
    assert_eq!(
        c.get("/", &stolen).await,
        StatusCode::SEE_OTHER,
        "{backend}: a session outlived a password reset"
    );
    // Its CSRF token is worth nothing either: halting an agent with it sends it to sign in.
    assert_eq!(
        c.post_form_to(
            "/agents/pay-bot/halt",
            Some(&stolen),
            &format!("csrf={}&reason=x", stolen.csrf)
        )
        .await,
        (StatusCode::SEE_OTHER, "/login".to_owned()),
        "{backend}: a revoked session acted"
    );

    // An admin disables then enables vera in the console: her old cookie stays dead.
    let ada = c.login("ada", PW).await;
    let stolen = c.login("vera", PW).await;
    for action in ["disable", "enable"] {
        assert_eq!(
            c.post_form(
                &format!("/users/vera/{action}"),
                Some(&ada),
                &format!("csrf={}", ada.csrf)
            )
            .await,
            StatusCode::SEE_OTHER
        );
    }
    assert_eq!(
        c.get("/", &stolen).await,
        StatusCode::SEE_OTHER,
        "{backend}: disable then enable revived a session"
    );
    // The same from the command line.
    let stolen = c.login("vera", PW).await;
    admin
        .set_operator_disabled("vera", true)
        .await
        .expect("disable");
    admin
        .set_operator_disabled("vera", false)
        .await
        .expect("enable");
    assert_eq!(
        c.get("/", &stolen).await,
        StatusCode::SEE_OTHER,
        "{backend}: disable then enable revived a session"
    );

    // A role change in the console ends the session; the next one has the new role.
    let stolen = c.login("vera", PW).await;
    assert_eq!(c.get("/users", &stolen).await, StatusCode::FORBIDDEN);
    assert_eq!(
        c.post_form(
            "/users/vera/role",
            Some(&ada),
            &format!("csrf={}&role=admin", ada.csrf)
        )
        .await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        c.get("/", &stolen).await,
        StatusCode::SEE_OTHER,
        "{backend}: a session outlived a role change"
    );
    let vera = c.login("vera", PW).await;
    assert_eq!(c.get("/users", &vera).await, StatusCode::OK);
    // And from the command line.
    admin
        .set_operator_role("vera", OperatorRole::Viewer)
        .await
        .expect("demote");
    assert_eq!(
        c.get("/users", &vera).await,
        StatusCode::SEE_OTHER,
        "{backend}: a demoted admin kept an admin session"
    );

    // Role changes need an admin, the CSRF token and a real role; nobody changes their own.
    let oscar = c.login("oscar", "a brand new password").await;
    let form = |b: &Browser, role: &str| format!("csrf={}&role={role}", b.csrf);
    assert_eq!(
        c.post_form("/users/oscar/role", Some(&oscar), &form(&oscar, "admin"))
            .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.post_form("/users/oscar/role", Some(&ada), "role=admin")
            .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.post_form("/users/oscar/role", Some(&ada), &form(&ada, "root"))
            .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        c.post_form("/users/ada/role", Some(&ada), &form(&ada, "viewer"))
            .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(c.get("/", &oscar).await, StatusCode::OK);
    admin.close().await;
    c.gov.close().await;
}

#[tokio::test]
async fn sessions_taken_before_a_revocation_are_refused_after_it_postgres() {
    sessions_taken_before_a_revocation_are_refused_after_it(TestBackend::Postgres).await;
}

#[tokio::test]
async fn sessions_taken_before_a_revocation_are_refused_after_it_sqlite() {
    sessions_taken_before_a_revocation_are_refused_after_it(TestBackend::Sqlite).await;
}
