//! Enforcement gates for AI agents: the one [`Governance`] handle a Rust service links.
//!
//! This crate is the API boundary: the CLI, the console and host services use only what it
//! exports. Today it carries the audit chain ([`Governance::audit`]) and the administration
//! a deployment needs ([`admin`]); the enforcement modules build on the same handle.
//!
//! ```no_run
//! # async fn run() -> Result<(), gov_sdk::Error> {
//! use gov_sdk::{AuditEvent, Governance};
//!
//! let gov = Governance::builder()
//!     .database_url("postgres://governance_app@127.0.0.1/app")
//!     .audit_secret_from_env()
//!     .connect()
//!     .await?;
//! let event = AuditEvent::builder("billing-agent", "invoice.read")
//!     .session("s-42")
//!     .payload(serde_json::json!({ "invoice": "INV-7" }))
//!     .build()?;
//! let at = gov.audit().log(event).await?;
//! println!("logged at seq {:?}", at.seq()); // None if spooled during an outage
//! assert!(gov.audit().verify_chain().await?.is_clean());
//! # Ok(()) }
//! ```

pub mod admin;
mod audit;
pub mod blocking;
mod config;
mod contracts;
mod cost;
mod error;
mod gates;
pub mod llm;
mod loops;
mod notify;
mod operators;
#[cfg(feature = "otel")]
pub mod otel;
mod presence;
mod scope;
mod spool;
mod tail;

pub use audit::{Audit, Logged, ROTATION_AWARE};
pub use config::{
    Config, ENV_AUDIT_KEYRING_FILE, ENV_AUDIT_SECRET_PREVIOUS, ENV_SIGNER_LABEL, ENV_SIGNING_KEY,
    GovernanceBuilder, Modules,
};
pub use contracts::{CallContext, Contract, Contracts, Post, PostPredicate, Pre, Predicate};
pub use cost::{BudgetSnapshot, Cost, CostConfig, MAX_TRACKED_MICROS, Reservation, Settlement};
pub use error::{Error, ErrorKind, Result};
pub use gates::{Approval, GateConfig, Gates};
pub use loops::{LoopAction, LoopConfig, LoopVerdict, Loops};
pub use operators::{Operator, Operators, Session};
pub use presence::{AgentStatus, Presence};
pub use scope::Scope;
pub use spool::ENV_SPOOL_DIR;
pub use tail::Tail;

pub use gov_audit::checkpoint::FILE_FORMAT as CHECKPOINT_FILE_FORMAT;
pub use gov_audit::{
    Appended, AuditSecret, ChainReport, Checkpoint, CheckpointFile, Finding, KeyError, NotWritable,
    Reason, SignatureCounts, Signer, SignerError, Unverifiable, Verdict, VerifyOptions,
    VerifyProgress, VerifyReport,
};
// Types the SDK's public API reaches (`Error::Store`, `Error::Audit`, `VerifyOptions::validate`,
// `Config::store`, `Config::audit`, `AuditSecret`'s derived keys), so that a host can name them
// without depending on the lower crates.
/// The offline evidence bundle: its format, sealing and verification, with no database and no
/// secret (re-exported from gov-audit).
pub use gov_audit::bundle;
pub use gov_audit::checkpoint::{NOTE_FORMAT as CHECKPOINT_NOTE_FORMAT, NoteCheckpoint};
/// DSSE envelopes with Ed25519 (re-exported from gov-audit).
pub use gov_audit::dsse;
/// C2SP signed notes, checkpoints and cosignatures (re-exported from gov-audit).
pub use gov_audit::note;
/// The chain's Merkle tree: leaf encoding, proofs and their offline verification (re-exported
/// from gov-audit).
pub use gov_audit::tree;
/// The c2sp.org/tlog-witness decision and request body (re-exported from gov-audit).
pub use gov_audit::witness;
pub use gov_audit::{AuditError, AuditLogOptions, ChainKey, DerivedKey, SigningState};
/// The events governance itself writes, one payload type per kind (re-exported from gov-core).
pub use gov_core::events;
pub use gov_core::{
    AgentId, AgentPresence, AuditEvent, AuditEventBuilder, AuditRecord, BudgetCounter,
    BudgetDenial, BudgetPolicy, BudgetRefusal, BudgetStatus, ChainHead, ChainId, EventCount,
    EventError, EventFilter, EventId, GateRecord, GateStatus, IdError, MAX_PAYLOAD_BYTES, MicroUsd,
    ModelPrice, ModelUsage, OperatorRole, PRICING_VERSION, PresenceState, PresenceThresholds,
    PriceTable, ScopeDenial, ScopePolicy, SessionId, TokenUsage, action_hash,
};
pub use gov_store::{
    CosignatureRow, MigrateReport, OversightRecord, Privileges, StoreError, StoreOptions,
};

use std::sync::Arc;

use gov_audit::AuditLog;
use gov_store::Store;

/// Environment variable holding the database URL.
pub const ENV_DATABASE_URL: &str = "GOVERNANCE_DATABASE_URL";
/// Environment variable holding the audit secret (hex or base64, at least 32 bytes).
pub const ENV_AUDIT_SECRET: &str = "GOVERNANCE_AUDIT_SECRET";

/// The governance handle: cheap to clone, shared by every task of a service.
#[derive(Clone, Debug)]
pub struct Governance {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    audit: AuditLog,
    config: Config,
    shared: Arc<notify::Shared>,
    approval_key: gov_audit::DerivedKey,
    llm: llm::LlmState,
    spool: spool::Spool,
    /// The spool's replayer, awaited by `close`.
    spool_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    loops: loops::LoopState,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl Governance {
    /// Starts configuring a handle.
    pub fn builder() -> GovernanceBuilder {
        GovernanceBuilder::default()
    }

    /// Connects with `GOVERNANCE_DATABASE_URL` and `GOVERNANCE_AUDIT_SECRET` from the environment.
    pub async fn from_env() -> Result<Self> {
        Self::builder()
            .database_url_from_env()
            .audit_secret_from_env()
            .connect()
            .await
    }

    /// The audit chain.
    pub fn audit(&self) -> Audit<'_> {
        Audit::new(self)
    }

    /// Scope policies: which tools and APIs each agent may use.
    pub fn scope(&self) -> Scope<'_> {
        Scope::new(self)
    }

    /// Presence and halts.
    pub fn presence(&self) -> Presence<'_> {
        Presence::new(self)
    }

    /// Gates: human approval before an action runs.
    pub fn gates(&self) -> Gates<'_> {
        Gates::new(self)
    }

    /// Operator accounts (console and CLI users).
    pub fn operators(&self) -> Operators<'_> {
        Operators::new(self)
    }

    /// Contracts and the governed tool runner.
    pub fn contracts(&self) -> Contracts<'_> {
        Contracts::new(self)
    }

    /// Cost and budgets.
    pub fn cost(&self) -> Cost<'_> {
        Cost::new(self)
    }

    /// Loop detection.
    pub fn loops(&self) -> Loops<'_> {
        Loops::new(self)
    }

    /// Governed LLM calls: adapters, the generic guard and the coverage registry.
    pub fn llm(&self) -> llm::Llm<'_> {
        llm::Llm::new(self)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// One bare round trip to the database (`SELECT 1`): the reference latency.
    pub async fn ping(&self) -> Result<()> {
        Ok(self.inner.store.ping().await?)
    }

    /// What this handle's database role may do to the audit tables (for health checks: a
    /// service should connect as the least-privilege application role).
    pub async fn privileges(&self) -> Result<Privileges> {
        Ok(self.inner.store.privileges().await?)
    }

    /// Waits for the LLM calls still settling ([`llm::Llm::settled`]), stops the spool's
    /// replayer (records still waiting stay in the spool file, synced, and the next handle on
    /// this database adopts them once this one is dropped), then stops the notification
    /// listener and closes the connection pool, waiting for pooled connections to come back:
    /// drop any [`Tail`] first, as it holds one.
    pub async fn close(&self) {
        self.llm().settled().await;
        self.inner.spool.stop();
        let replayer = match self.inner.spool_task.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(t) = replayer {
            let _ = t.await;
        }
        self.inner.listener.abort();
        self.inner.store.close().await;
    }
}
