//! Integration tests of gov-sdk against a real Postgres (one fresh database per test).

mod blocking;
mod chain;
mod contracts;
mod cost;
mod enforce;
mod gates;
mod llm;
mod privileges;
mod resilience;
mod rotation;
mod signatures;
mod support;
