//! Core types of governance: typed ids, audit events and their validation, the stored audit
//! record, and the error enums that say what is wrong.
//!
//! This crate does no I/O: no database, no network, no clock other than `now()` when an event is
//! built. Everything here is unit-tested without a database.

mod action;
mod budget;
mod error;
mod event;
pub mod events;
mod gate;
mod ids;
mod links;
mod presence;
mod pricing;
mod record;
pub mod rules;
mod scope;

pub use action::action_hash;
pub use budget::{
    BudgetCounter, BudgetDenial, BudgetPolicy, BudgetRefusal, BudgetStatus, ModelUsage,
};
pub use error::{EventError, IdError};
pub use event::{
    AuditEvent, AuditEventBuilder, ENVELOPE_TAG, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, Personal,
};
pub use gate::{GateRecord, GateStatus, GateWorkflow, OperatorRole, WorkflowRoute, WorkflowSpec};
pub use ids::{AgentId, ChainId, EventId, MAX_ID_LEN, SessionId, validate_kind};
pub use links::{ChainLinks, LinkBreak};
pub use presence::{AgentPresence, LoopWindow, PresenceState, PresenceThresholds};
pub use pricing::{MicroUsd, ModelPrice, PRICING_VERSION, PriceTable, TokenUsage};
pub use record::{
    AuditRecord, ChainHead, EventCount, EventFilter, HMAC_LEN, SignatureStatus, ZERO_HMAC,
};
pub use scope::{ScopeDenial, ScopePolicy};
