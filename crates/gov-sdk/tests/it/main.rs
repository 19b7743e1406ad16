//! Integration tests of gov-sdk against a real database (one fresh database per test): Postgres,
//! and in `conformance` both Postgres and SQLite.

mod adapters;
mod approvals;
mod blocking;
mod chain;
mod conformance;
mod contracts;
mod cost;
mod crash;
mod embedded;
mod enforce;
mod failover;
mod faults;
mod gates;
mod keys;
mod llm;
mod personal;
mod policies;
mod pooler;
mod privileges;
mod promote;
mod resilience;
mod retention;
mod rotation;
mod rules;
mod schema;
mod sessions;
mod signatures;
mod spool;
mod support;
mod transfer;
mod tree;
