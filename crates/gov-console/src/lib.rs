//! The governance web console: a skeleton that holds the crate's place in the workspace.
//!
//! The console (axum, server-rendered askama pages, live events over SSE, the approval queue)
//! is built by a later issue. Its dependency rule is already fixed and checked by
//! `cargo xtask tidy`: this crate talks to storage only through `gov-sdk`, never `gov-store`
//! or `sqlx`.

/// The SDK handle the console will serve from.
pub use gov_sdk::Governance;
