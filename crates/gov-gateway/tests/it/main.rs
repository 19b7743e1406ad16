//! The gateway's integration tests: real HTTP, a mock provider and an MCP server, real databases.

mod gateway;
mod keys;
mod mcp;
mod python;
mod support;
