//! The console's HTTP surface against a real Postgres: every route under every role, refusals
//! (no CSRF token, wrong role, self-approval, a sixth sign-in in a minute), sessions, security
//! headers, live events over SSE and the report download; revocation of sessions on both backends;
//! the generated OpenAPI document against the routes; the cached chain status of the health check.

mod approvals;
mod dashboard;
mod health;
mod hourly;
mod http;
mod insight;
mod keys;
mod links;
mod live;
mod openapi;
mod revocation;
