//! Sign-in, sessions, roles and CSRF.
//!
//! - Sign-in checks the password with argon2id through the SDK, which answers an unknown user, a
//!   wrong password and a disabled account alike, after the same work.
//! - A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure when configured);
//!   only its SHA-256 is stored, with an expiry. A disabled user's sessions stop at once.
//! - Every change to an operator account (password, disabled, role) deletes that user's
//!   sessions in the same transaction (`update_operator` in the store), and a session is
//!   inserted only while the account is still as it was authenticated (enabled, same password
//!   hash and role, under the row's lock), so no session outlives a revocation.
//! - A state-changing route checks, in this order, the browser's `Sec-Fetch-Site`, the CSRF
//!   token and the role; decisions and halts name the signed-in operator, never a value from
//!   the request.
//! - Every state-changing request carries the session's CSRF token (a form field, or the
//!   `X-CSRF-Token` header for the API), compared in constant time; requests a browser marks as
//!   cross-site are refused outright.
//! - Sign-in attempts are limited per client address (5 a minute by default). The address is
//!   the TCP peer's: behind a reverse proxy, limit there too.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use gov_sdk::{OperatorRole, Session};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::AppState;
use crate::error::AppError;

/// `GET`/`POST /login` and `POST /logout`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
}

/// The session cookie's name.
pub(crate) const COOKIE: &str = "gov_session";

/// Sign-in attempts per client address.
pub(crate) struct SignInLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl SignInLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self(RateLimiter::keyed(Quota::per_minute(n)))
    }

    fn allow(&self, ip: IpAddr) -> bool {
        self.0.check_key(&ip).is_ok()
    }
}

/// The signed-in user of a request.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser {
    pub(crate) session: Session,
    /// The requested path (the navigation marks its page `aria-current`).
    pub(crate) path: String,
}

impl CurrentUser {
    pub(crate) fn username(&self) -> &str {
        self.session.operator.username()
    }

    pub(crate) fn role(&self) -> OperatorRole {
        self.session.operator.role()
    }

    /// Refuses unless the role may decide gates and halt or resume agents.
    pub(crate) fn require_operator(&self) -> Result<(), AppError> {
        match self.role() {
            OperatorRole::Admin | OperatorRole::Operator => Ok(()),
            OperatorRole::Viewer => Err(AppError::Forbidden("viewer")),
        }
    }

    /// Refuses unless the role is admin.
    pub(crate) fn require_admin(&self) -> Result<(), AppError> {
        match self.role() {
            OperatorRole::Admin => Ok(()),
            OperatorRole::Operator => Err(AppError::Forbidden("operator")),
            OperatorRole::Viewer => Err(AppError::Forbidden("viewer")),
        }
    }

    /// Refuses unless `token` is this session's CSRF token (constant-time comparison).
    pub(crate) fn check_csrf(&self, token: Option<&str>) -> Result<(), AppError> {
        let expected = self.session.csrf_token.as_bytes();
        let given = token.unwrap_or_default().as_bytes();
        let same = given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same { Ok(()) } else { Err(AppError::Csrf) }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(token) = jar.get(COOKIE).map(|c| c.value().to_owned()) else {
            return Err(AppError::Unauthenticated);
        };
        match state.gov.operators().session(&token).await? {
            Some(session) => Ok(Self {
                session,
                path: parts.uri.path().to_owned(),
            }),
            None => Err(AppError::Unauthenticated),
        }
    }
}

/// The signed-in user, if any (for pages that also serve anonymous callers).
pub(crate) async fn optional_user(headers: &HeaderMap, state: &AppState) -> Option<CurrentUser> {
    let jar = CookieJar::from_headers(headers);
    let token = jar.get(COOKIE)?.value().to_owned();
    let session = state.gov.operators().session(&token).await.ok()??;
    Some(CurrentUser {
        session,
        path: String::new(),
    })
}

/// Refuses a state-changing request that a browser marks as coming from another site.
pub(crate) fn same_site(headers: &HeaderMap) -> Result<(), AppError> {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("cross-site" | "same-site") => Err(AppError::Csrf),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    username: String,
    password: String,
}

pub(crate) async fn login_page() -> Result<Html<String>, AppError> {
    crate::pages::login_html(None)
}

fn session_cookie(token: String, state: &AppState) -> Cookie<'static> {
    let max_age =
        time::Duration::try_from(state.config.session_ttl).unwrap_or(time::Duration::hours(8));
    Cookie::build((COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.config.secure_cookies)
        .path("/")
        .max_age(max_age)
        .build()
}

pub(crate) async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    same_site(&headers)?;
    if !state.limiter.allow(peer.ip()) {
        return Err(AppError::RateLimited);
    }
    let operator = match state
        .gov
        .operators()
        .authenticate(form.username.trim(), &form.password)
        .await
    {
        Ok(op) => op,
        Err(gov_sdk::Error::AuthenticationFailed) => {
            let page = crate::pages::login_html(Some("wrong user name or password"))?;
            return Ok((StatusCode::UNAUTHORIZED, page).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let (token, _) = state
        .gov
        .operators()
        .start_session(&operator, state.config.session_ttl)
        .await?;
    tracing::info!(user = operator.username(), "console sign-in");
    let jar = jar.add(session_cookie(token, &state));
    Ok((jar, Redirect::to("/")).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    pub(crate) csrf: Option<String>,
}

pub(crate) async fn logout(
    State(state): State<AppState>,
    user: CurrentUser,
    jar: CookieJar,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, AppError> {
    same_site(&headers)?;
    user.check_csrf(form.csrf.as_deref())?;
    if let Some(c) = jar.get(COOKIE) {
        state.gov.operators().end_session(c.value()).await?;
    }
    let jar = jar.remove(Cookie::build(COOKIE).path("/").build());
    Ok((jar, Redirect::to("/login")).into_response())
}
