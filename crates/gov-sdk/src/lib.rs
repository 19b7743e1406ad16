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
//!
//! # Invariants
//!
//! The rules this crate keeps (ARCHITECTURE.md lists them in one line each):
//!
//! - A listener task per handle (on `gov_policy`, `gov_halt` and `gov_gate`: LISTEN/NOTIFY on
//!   Postgres, the polled notification table on SQLite) keeps the scope and halt caches true and
//!   wakes `Gates::wait_for`; while it is down, or found deaf by its watchdog (on Postgres, a
//!   notification on the handle's own channel that does not come back within 5 s after 5 s of
//!   silence), checks read storage, and refuse when storage is out of reach.
//! - Approving, denying, halting for an operator and resuming take an `Operator`, which only
//!   `Operators::authenticate` (argon2id) or a console session makes; each commits its state
//!   change, its audit event and its `oversight_decisions` row in one transaction, and on
//!   Postgres only an operator connection can (the application role has no EXECUTE on
//!   `governance_decide`, `governance_halt`, `governance_resume` and no INSERT on
//!   `oversight_decisions`). A service's own halts (`halt_self`, the loop detector) are recorded
//!   under `governance:` actors, never a person.
//! - An approval is bound to the exact action (tool, `action_hash`) and to the agent and
//!   session that asked, and usable once; the application role inserts only the asking columns of
//!   a gate request, so status, decider and token hash are always `governance_decide`'s.
//! - An LLM request reaches a provider only after the halt, scope (`provider` or
//!   `provider:model`) and budget gates passed and `llm.request` was logged, committed in the
//!   reservation's transaction (while the spool holds records, logged behind them after the
//!   reservation instead); every call that began ends in exactly one of `llm.response` (settled;
//!   `estimated: true` when the provider reported no usage), `llm.error` or `llm.cancelled` (a
//!   dropped future or stream), the last two releasing the reservation; the ending event commits
//!   with the settlement or release, and when that transaction fails (or its reply is lost) the
//!   event is logged as observation (spooled when storage is out of reach, skipped on replay when
//!   it is in the chain) and the settlement is written again as a record the database applies
//!   once per reservation id (`governance_settle_once`), so a settlement that committed with its
//!   reply lost is never counted twice.
//! - A call that got its answer is settled after the answer is returned, in a task counted per
//!   handle (`llm::settlements`; `settle_in_background(false)` settles before returning instead),
//!   and until then its whole reservation stays held; `Llm::settled` and `Governance::close` wait
//!   for those tasks.
//! - Settlement tasks are independent (their budget changes commute and each ending event names
//!   its request), so none is ordered after another, and a call waits for one only as for any
//!   other writer of the same counters or chain; a failed call releases before its error is
//!   returned, so a retry finds its budget.
//! - Observation (`audit().log`, `cost().track`, `gates().request`) never returns a
//!   storage-unavailable error while a spool can be written: it goes through
//!   `spool::Spool::submit`, which writes to storage directly while nothing waits, and otherwise
//!   returns `Spooled` only after the record's line (and a new file's folder entry) is synced in
//!   the handle's spool file; while spooled records wait, new ones queue behind them (into the
//!   file while storage is down, joining the replay in memory while it answers), so order is kept
//!   and the spool drains; once only callers' in-memory records wait, new ones are written
//!   directly again; no caller waits longer than the observation deadline (5 s) for storage or
//!   the replay; enforcement never reads the spool.
//! - A spool is evidence only because nobody else can write it: it lives in a folder private to
//!   the user (refused otherwise), filed under its database's identity (`governance_instance` id
//!   and where the database lives), and every line carries an HMAC under the spool key derived
//!   from the audit secret over the database, file, position and bytes; a line that does not
//!   verify, or a record that fails a live call's checks, is quarantined, never replayed.
//! - The replay is idempotent and ordered: events are skipped by event id, tracked spend by
//!   record id (`applied_records`), gate requests by request id; batches commit one transaction
//!   each (`AuditLog::append_all`) and the replay stops at the first that fails; adoption copies
//!   and syncs before it removes, so a kill at any step leaves every record in a file that is
//!   adopted.

pub mod admin;
pub mod agent_keys;
mod audit;
pub mod blocking;
mod cache;
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
mod personal;
#[cfg(feature = "cedar")]
pub mod policies;
mod presence;
mod scope;
pub mod siem;
mod spool;
mod tail;
#[cfg(feature = "tower")]
pub mod tower;
pub mod workflows;

pub use audit::{Audit, Logged, ROTATION_AWARE};
pub use config::{
    Config, ENV_AUDIT_KEYRING_FILE, ENV_AUDIT_SECRET_PREVIOUS, ENV_SIGNER_LABEL, ENV_SIGNING_KEY,
    GovernanceBuilder, Modules,
};
pub use contracts::{CallContext, Contract, Contracts, Post, PostPredicate, Pre, Predicate};
pub use cost::{BudgetSnapshot, Cost, CostConfig, MAX_TRACKED_MICROS, Reservation, Settlement};
pub use error::{Error, ErrorKind, Result};
pub use gates::{Approval, ApprovalScope, GateConfig, Gates, Vote};
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
/// Personal fields: the encrypted envelope and the markers erased and unreadable fields read as
/// (re-exported from gov-audit).
pub use gov_audit::personal::{ERASED, UNREADABLE};
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
    EventError, EventFilter, EventId, GateRecord, GateStatus, GateWorkflow, IdError,
    MAX_PAYLOAD_BYTES, MicroUsd, ModelPrice, ModelUsage, OperatorRole, PRICING_VERSION, Personal,
    PresenceState, PresenceThresholds, PriceTable, ScopeDenial, ScopePolicy, SessionId, TokenUsage,
    WorkflowRoute, WorkflowSpec, action_hash,
};
pub use gov_store::{
    CheckpointRow, Clock, CosignatureRow, MigrateReport, NewNotification, NotificationOutcome,
    NotificationRecord, OversightRecord, Privileges, StoreError, StoreOptions, TargetCount,
    VerificationRow, VoteRecord,
};

use std::sync::Arc;

use gov_audit::AuditLog;
use gov_store::Store;

/// Environment variable holding the database URL.
pub const ENV_DATABASE_URL: &str = "GOVERNANCE_DATABASE_URL";
/// Environment variable holding a direct URL for the notification listener (Postgres, behind a
/// pooler that cannot carry `LISTEN`; see [`GovernanceBuilder::listen_url`]).
pub const ENV_LISTEN_DATABASE_URL: &str = "GOVERNANCE_LISTEN_DATABASE_URL";
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
    subjects: personal::Subjects,
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

    /// Approval workflows, routes, operators' groups, the escalation and expiry sweep, and
    /// notification deliveries (operator paths).
    pub fn workflows(&self) -> workflows::Workflows<'_> {
        workflows::Workflows::new(self)
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

    /// Cedar policy sets: policy as code, evaluated beside scope.
    #[cfg(feature = "cedar")]
    pub fn policies(&self) -> policies::Policies<'_> {
        policies::Policies::new(self)
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
