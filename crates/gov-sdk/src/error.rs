//! The SDK's error enum. Messages say what is wrong and what to do; none carries a URL, SQL or
//! a secret.

use std::sync::Arc;

use gov_audit::{AuditError, Finding, KeyError, NotWritable};
use gov_core::{BudgetDenial, EventError, ScopeDenial};
use gov_store::StoreError;
use thiserror::Error;

/// Everything that can go wrong in the SDK.
#[derive(Debug, Clone, Error)]
pub enum Error {
    /// Configuration is missing or invalid.
    #[error("{0}")]
    Config(String),
    /// The audit secret was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An event was refused before it was written.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The event's kind belongs to governance's own paths ([`gov_core::events::is_reserved`]):
    /// a host cannot log that a gate was approved, an agent halted or an LLM call settled.
    #[error(
        "event kind {kind} is reserved for governance's own records (gates, halts, denials, LLM calls, key rotation); log the action under a kind of your own, such as `app.{kind}`"
    )]
    ReservedKind {
        /// The refused kind.
        kind: String,
    },
    /// The event names an actor: only operator actions (approvals, denials, halts, resumes)
    /// name the human who acted, and they take an authenticated [`crate::Operator`].
    #[error(
        "an event logged by the host cannot name an actor: the actor is the authenticated operator of an approval, a denial, a halt or a resume; put who asked for the action in the payload instead"
    )]
    ActorReserved,
    /// Storage failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The audit chain is broken (a read with `verify_chain_on_read`).
    #[error("the audit chain is broken at {0}")]
    ChainBroken(Finding),
    /// This handle may not append to the chain: its head was sealed by a key the handle does
    /// not seal with (another secret, an earlier key without a rotation marker, or a rotation
    /// to another key), so appending would break the chain for good. A configuration error;
    /// the message names the fingerprints and what to set.
    #[error(transparent)]
    NotWritable(NotWritable),
    /// Any other audit failure.
    #[error(transparent)]
    Audit(AuditError),
    /// A scope check refused (default deny).
    #[error("scope violation: agent {agent} may not use {target}: {}", denial.as_str())]
    ScopeViolation {
        /// The agent.
        agent: String,
        /// The tool or API it asked for.
        target: String,
        /// Why it was refused.
        denial: ScopeDenial,
    },
    /// The agent is halted; only an operator's resume lets it act again.
    #[error("agent {agent} is halted{}{}", by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default(), reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Halted {
        /// The agent.
        agent: String,
        /// The operator who halted it, if known.
        by: Option<String>,
        /// Why, if known.
        reason: Option<String>,
    },
    /// Whether the agent is halted could not be established (storage out of reach); the
    /// action is refused (fail closed).
    #[error("cannot establish whether agent {agent} is halted, so the action is refused: {cause}")]
    HaltStateUnknown {
        /// The agent.
        agent: String,
        /// Why the state is unknown.
        cause: String,
    },
    /// The user name or password is wrong, or the account is disabled (one answer for all,
    /// so that user names cannot be probed).
    #[error("authentication failed: unknown user, wrong password or disabled account")]
    AuthenticationFailed,
    /// The gate request has not been decided yet.
    #[error("approval pending for request {request_id}")]
    ApprovalPending {
        /// The request.
        request_id: uuid::Uuid,
    },
    /// An operator denied the request.
    #[error("request {request_id} was denied by {by}: {reason}")]
    ApprovalDenied {
        /// The request.
        request_id: uuid::Uuid,
        /// Who denied it.
        by: String,
        /// Why.
        reason: String,
    },
    /// A decision or a use of an approval was refused.
    #[error("approval refused for request {request_id}: {reason}")]
    ApprovalRefused {
        /// The request.
        request_id: uuid::Uuid,
        /// Why.
        reason: String,
    },
    /// A contract condition failed; the tool did not run (pre) or its output was refused (post).
    #[error(
        "contract violated for {tool} of agent {agent} ({phase}condition {condition}): {detail}"
    )]
    ContractViolation {
        /// The agent.
        agent: String,
        /// The tool.
        tool: String,
        /// `pre` or `post`.
        phase: &'static str,
        /// The condition's name.
        condition: String,
        /// What failed.
        detail: String,
    },
    /// The governed tool itself returned an error (audited in `tool.finished`).
    #[error("tool {tool} failed: {message}")]
    ToolFailed {
        /// The tool.
        tool: String,
        /// Its error, as text.
        message: String,
    },
    /// A budget refused the call.
    #[error("budget exceeded for agent {agent}: {}{}", denial.as_str(), match (cap, used) { (Some(c), Some(u)) => format!(" (cap {c}, used {u}, requested {requested})"), _ => String::new() })]
    BudgetExceeded {
        /// The agent.
        agent: String,
        /// Why.
        denial: BudgetDenial,
        /// The cap that refused (micro-USD, tokens or seconds).
        cap: Option<i64>,
        /// Spent plus reserved against it.
        used: Option<i64>,
        /// What the call would have reserved (micro-USD).
        requested: i64,
    },
    /// The same action repeated too often in the session's window.
    #[error(
        "loop detected: agent {agent} called {tool} with the same arguments {repeats} times in session {session}"
    )]
    LoopDetected {
        /// The agent.
        agent: String,
        /// The session.
        session: String,
        /// The repeated tool.
        tool: String,
        /// How many times it was seen in the window.
        repeats: usize,
    },
    /// An LLM provider call failed after the gates let it through (audited as `llm.error`,
    /// its reservation released). The message never holds an API key, a URL or the provider's
    /// free text, which may echo request content.
    #[error("LLM call to {provider} failed: {kind}{}{}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(), error_type.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
    Provider {
        /// The provider name the call was governed under.
        provider: String,
        /// What failed: `http_status`, `timeout`, `connect`, `transport`, `decode`,
        /// `stream_error` or `client_error` (a generic guard's own error).
        kind: &'static str,
        /// The HTTP status, when the provider answered.
        status: Option<u16>,
        /// The provider's error type or code (`rate_limit_error`, `server_error`, ...), or the
        /// generic guard's error text.
        error_type: Option<String>,
        /// Seconds the provider asked to wait before retrying (`retry-after`), if it said.
        retry_after_s: Option<u64>,
    },
}

/// `Result` with [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<gov_core::IdError> for Error {
    fn from(e: gov_core::IdError) -> Self {
        Self::Event(EventError::Id(e))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

impl From<AuditError> for Error {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Key(k) => Self::Key(k),
            AuditError::Store(s) => Self::Store(s),
            AuditError::ChainBroken(f) => Self::ChainBroken(f),
            AuditError::NotWritable(n) => Self::NotWritable(n),
            other => Self::Audit(other),
        }
    }
}

impl Error {
    /// Storage is out of reach (connection refused, timed out, server shutting down).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_unavailable())
    }

    /// The failure is one of configuration or usage (bad URL, credentials, secret, missing
    /// schema, unknown chain, nothing to verify), which the operator must fix.
    pub fn is_config(&self) -> bool {
        match self {
            Self::Config(_)
            | Self::Key(_)
            | Self::Event(_)
            | Self::NotWritable(_)
            | Self::ReservedKind { .. }
            | Self::ActorReserved => true,
            Self::Store(e) => matches!(
                **e,
                StoreError::InvalidUrl(_)
                    | StoreError::AuthFailed
                    | StoreError::NoSuchDatabase
                    | StoreError::NotMigrated(_)
                    | StoreError::PermissionDenied(_)
                    | StoreError::InvalidArgument(_)
                    | StoreError::Conflict(_)
                    | StoreError::ChainMoved { .. }
            ),
            Self::Audit(a) => matches!(
                a,
                AuditError::NoSuchChain(_)
                    | AuditError::NothingToVerify
                    | AuditError::InvalidOptions(_)
                    | AuditError::NotWritable(_)
                    | AuditError::KeyNotConfigured { .. }
            ),
            Self::ChainBroken(_)
            | Self::ScopeViolation { .. }
            | Self::Halted { .. }
            | Self::HaltStateUnknown { .. }
            | Self::LoopDetected { .. }
            | Self::BudgetExceeded { .. }
            | Self::AuthenticationFailed
            | Self::ContractViolation { .. }
            | Self::ToolFailed { .. }
            | Self::Provider { .. }
            | Self::ApprovalPending { .. }
            | Self::ApprovalDenied { .. }
            | Self::ApprovalRefused { .. } => false,
        }
    }
}
