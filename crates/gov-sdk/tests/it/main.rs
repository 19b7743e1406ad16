//! Integration tests of gov-sdk against a real Postgres (one fresh database per test).

mod chain;
mod cost;
mod enforce;
mod gates;
mod privileges;
mod resilience;
mod support;
