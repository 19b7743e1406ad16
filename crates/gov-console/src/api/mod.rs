//! The JSON API under `/api` (same sessions and roles as the pages; state-changing calls carry
//! the session's CSRF token in `X-CSRF-Token`) and `/health/governance`: one module per resource,
//! each with its routes. Every body is a typed struct (`Serialize` + `utoipa::ToSchema`), and the
//! OpenAPI 3.1 document at `/api/openapi.json` is generated from those types and the routes
//! registered here, so a route cannot be served without being described.

mod agents;
mod approvals;
pub(crate) mod chain;
pub(crate) mod coverage;
mod events;
pub(crate) mod health;
mod keys;

use std::sync::LazyLock;

use axum::Json;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{CurrentUser, same_site};
use crate::error::AppError;

pub(crate) use chain::VerifyJob;
pub(crate) use health::{Latency, measure};

/// The API's routes (and `/health/governance` and `/events/stream`), each described in the
/// OpenAPI document.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi))
        .routes(routes!(index))
        .merge(health::routes())
        .merge(agents::routes())
        .merge(approvals::routes())
        .merge(events::routes())
        .merge(chain::routes())
        .merge(coverage::routes())
        .merge(keys::routes())
}

/// The OpenAPI 3.1 document of the console's JSON API, generated from its routes and types
/// (what `GET /api/openapi.json` serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    openapi_document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"the OpenAPI document: {e}\"}}"))
});

#[derive(OpenApi)]
#[openapi(
    info(
        title = "governance console API",
        description = "The console's JSON API. Authenticate by signing in at /login (session \
                       cookie `gov_session`). State-changing calls need the session's CSRF token \
                       in the X-CSRF-Token header (the token is embedded in every console page) \
                       and, to halt, resume, approve or deny, the operator or admin role. Errors \
                       are {\"error\": message, \"kind\": kind, \"status\": code}; docs/console.md \
                       lists the kinds."
    ),
    modifiers(&Security),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The security schemes: the session cookie (every call) and the CSRF header (changes).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::COOKIE))),
        );
        components.add_security_scheme(
            "csrf",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-CSRF-Token"))),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "session",
            Vec::<String>::new(),
        )]);
    }
}

/// `GET /api/openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The API's index: every route, and where its full description is.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct ApiIndex {
    /// The OpenAPI 3.1 document.
    openapi: &'static str,
    /// The human-readable description (pages, roles, errors).
    docs: &'static str,
    /// Every route, sorted by path then method.
    routes: Vec<IndexEntry>,
}

/// One route of the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct IndexEntry {
    /// `GET`, `POST`, ...
    method: String,
    path: String,
    /// What it does.
    summary: String,
}

static INDEX: LazyLock<ApiIndex> = LazyLock::new(|| {
    let doc = openapi_document();
    let mut routes = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                routes.push(IndexEntry {
                    method: method.to_owned(),
                    path: path.clone(),
                    summary: op
                        .summary
                        .clone()
                        .or_else(|| op.description.clone())
                        .unwrap_or_default(),
                });
            }
        }
    }
    ApiIndex {
        openapi: "/api/openapi.json",
        docs: "docs/console.md",
        routes,
    }
});

/// `GET /api`: an index of the API (every route with its summary).
#[utoipa::path(
    get,
    path = "/api",
    tag = "meta",
    security(()),
    responses((status = 200, description = "Every route of the API", body = ApiIndex))
)]
async fn index() -> Json<ApiIndex> {
    Json(INDEX.clone())
}

/// An API error's body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong (for a 5xx only that it did; the cause is in the console's log).
    error: String,
    /// `unauthenticated`, `forbidden`, `rate_limited`, `bad_request`, `not_found`, or an SDK
    /// error's kind (`config`, `refused`, `unavailable`, ...).
    kind: &'static str,
    /// The HTTP status.
    status: u16,
}

/// An API error: the same statuses as pages, as JSON (401 instead of a redirect).
pub(crate) struct ApiError(AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        Self(e)
    }
}

impl From<gov_sdk::Error> for ApiError {
    fn from(e: gov_sdk::Error) -> Self {
        Self(AppError::Sdk(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "console API request failed");
        }
        (
            status,
            Json(ErrorBody {
                error: self.0.public_message(),
                kind: self.0.kind(),
                status: status.as_u16(),
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The API's signed-in user: a missing or expired session is 401, not a redirect.
pub(crate) struct ApiUser(CurrentUser);

impl axum::extract::FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        CurrentUser::from_request_parts(parts, state)
            .await
            .map(Self)
            .map_err(ApiError)
    }
}

fn csrf_header(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-csrf-token").and_then(|v| v.to_str().ok())
}

/// The checks of a state-changing call any signed-in user may make: same site, CSRF header.
fn csrf_allowed(headers: &HeaderMap, user: &CurrentUser) -> Result<(), AppError> {
    same_site(headers)?;
    user.check_csrf(csrf_header(headers))
}

/// The checks of a state-changing operator call: same site, CSRF header, role.
fn change_allowed(headers: &HeaderMap, user: &CurrentUser) -> Result<(), AppError> {
    csrf_allowed(headers, user)?;
    user.require_operator()
}

/// The body of halt, resume, approve and deny.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub(crate) struct ReasonBody {
    /// Why; required, since it is recorded in the audit chain.
    #[schema(min_length = 1)]
    reason: String,
}

impl ReasonBody {
    fn reason(&self) -> Result<&str, AppError> {
        crate::pages::required_reason(Some(&self.reason))
    }
}
