//! The gateway's integration tests: real HTTP, a mock provider on loopback, real databases.

mod gateway;
mod keys;
mod python;
mod support;
