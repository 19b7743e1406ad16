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
    /// The enforced Cedar policy set forbade the action (or could not evaluate it).
    #[error(
        "policy forbids: agent {agent} may not {target} (policy set {}, determining policies: {}){}",
        short(policy_set_hash),
        list(policies),
        errors_suffix(errors)
    )]
    PolicyForbidden {
        /// The agent.
        agent: String,
        /// The action and resource (`tool_call Governance::Tool::"refund"`).
        target: String,
        /// SHA-256 (hex) of the policy set that decided.
        policy_set_hash: Box<str>,
        /// The determining policies.
        policies: Box<[String]>,
        /// Evaluation errors (each refuses).
        errors: Box<[String]>,
    },
    /// The enforced Cedar policy set permits the action only with a person's approval: ask
    /// through `gates()`.
    #[error(
        "approval required: agent {agent} may {target} only once a person approves ({reason}; policy set {}, policies: {})",
        short(policy_set_hash),
        list(policies)
    )]
    PolicyApprovalRequired {
        /// The agent.
        agent: String,
        /// The action and resource.
        target: String,
        /// The `@approval` reason.
        reason: String,
        /// SHA-256 (hex) of the policy set that decided.
        policy_set_hash: Box<str>,
        /// The determining policies.
        policies: Box<[String]>,
    },
    /// The policy sets could not be read (the listener is not trusted and storage is out of
    /// reach); the action is refused (fail closed).
    #[error("cannot read the policy sets, so the action of agent {agent} is refused: {cause}")]
    PolicyUnavailable {
        /// The agent.
        agent: String,
        /// Why.
        cause: String,
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

/// What kind of failure an [`enum@Error`] is: the one classification that every surface maps
/// (the CLI to its exit code, the console to its HTTP status and the `kind` of its JSON error
/// body). New kinds may be added; match with a fallback arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Configuration or usage the operator or the caller must fix: a bad URL, refused database
    /// credentials, a missing database or schema, a lacking privilege, a missing or weak
    /// secret, a chain sealed with another key, an invalid event or argument, a write that
    /// conflicts with the chain.
    Config,
    /// What was named does not exist: an unknown chain, or no audit events at all to verify.
    NotFound,
    /// Sign-in failed (unknown user, wrong password or disabled account: one answer for all).
    Unauthenticated,
    /// Enforcement refused the action: a halted agent, a scope violation, a budget, a loop, a
    /// contract, an approval pending, denied or refused.
    Refused,
    /// Storage is out of reach (connection refused or timed out, the server shutting down), or
    /// whether the agent is halted could not be established because of it. Retrying later may
    /// succeed.
    Unavailable,
    /// An audit chain is broken (tampered or damaged).
    Tampered,
    /// The governed tool or the LLM provider failed after the gates let the call through.
    Upstream,
    /// Anything else: a stored value that cannot be decoded, a database error that is not a
    /// configuration problem, an internal task stopped.
    Internal,
}

/// A hash's first 12 characters, for messages.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn list(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

fn errors_suffix(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

impl ErrorKind {
    /// Every kind, in declaration order (for tables that must cover them all).
    pub const ALL: &'static [ErrorKind] = &[
        Self::Config,
        Self::NotFound,
        Self::Unauthenticated,
        Self::Refused,
        Self::Unavailable,
        Self::Tampered,
        Self::Upstream,
        Self::Internal,
    ];

    /// A stable snake_case name (`config`, `not_found`, `unauthenticated`, `refused`,
    /// `unavailable`, `tampered`, `upstream`, `internal`), as surfaces print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::NotFound => "not_found",
            Self::Unauthenticated => "unauthenticated",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::Tampered => "tampered",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::InvalidUrl(_)
        | StoreError::AuthFailed
        | StoreError::NoSuchDatabase
        | StoreError::NotMigrated(_)
        | StoreError::PermissionDenied(_)
        | StoreError::InvalidArgument(_)
        | StoreError::Conflict(_)
        | StoreError::ChainMoved { .. }
        | StoreError::Pooler(_) => ErrorKind::Config,
        StoreError::Unavailable(_) | StoreError::DiskFull => ErrorKind::Unavailable,
        StoreError::Corrupt(_) | StoreError::Database { .. } => ErrorKind::Internal,
    }
}

fn audit_kind(e: &AuditError) -> ErrorKind {
    match e {
        AuditError::Key(_)
        | AuditError::InvalidOptions(_)
        | AuditError::NotWritable(_)
        | AuditError::KeyNotConfigured { .. } => ErrorKind::Config,
        AuditError::NoSuchChain(_) | AuditError::NothingToVerify => ErrorKind::NotFound,
        AuditError::Store(s) => store_kind(s),
        AuditError::ChainBroken(_) => ErrorKind::Tampered,
        AuditError::Internal(_) | AuditError::WriterStopped => ErrorKind::Internal,
    }
}

impl Error {
    /// What kind of failure this is. The only place where errors are classified: exit codes,
    /// HTTP statuses, [`Error::is_config`] and [`Error::is_unavailable`] all derive from it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_)
            | Self::Key(_)
            | Self::Event(_)
            | Self::NotWritable(_)
            | Self::ReservedKind { .. }
            | Self::ActorReserved => ErrorKind::Config,
            Self::Store(e) => store_kind(e),
            Self::Audit(a) => audit_kind(a),
            Self::ChainBroken(_) => ErrorKind::Tampered,
            Self::ScopeViolation { .. }
            | Self::PolicyForbidden { .. }
            | Self::PolicyApprovalRequired { .. }
            | Self::Halted { .. }
            | Self::LoopDetected { .. }
            | Self::BudgetExceeded { .. }
            | Self::ContractViolation { .. }
            | Self::ApprovalPending { .. }
            | Self::ApprovalDenied { .. }
            | Self::ApprovalRefused { .. } => ErrorKind::Refused,
            Self::HaltStateUnknown { .. } | Self::PolicyUnavailable { .. } => {
                ErrorKind::Unavailable
            }
            Self::AuthenticationFailed => ErrorKind::Unauthenticated,
            Self::ToolFailed { .. } | Self::Provider { .. } => ErrorKind::Upstream,
        }
    }

    /// Storage is out of reach (connection refused, timed out, server shutting down), or the
    /// halt state could not be established because of it: [`ErrorKind::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// The failure is one of configuration or usage (bad URL, credentials, secret, missing
    /// schema, unknown chain, nothing to verify), which the operator must fix:
    /// [`ErrorKind::Config`] or [`ErrorKind::NotFound`].
    pub fn is_config(&self) -> bool {
        matches!(self.kind(), ErrorKind::Config | ErrorKind::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(e: StoreError) -> Error {
        Error::from(e)
    }

    fn a(e: AuditError) -> Error {
        Error::Audit(e)
    }

    /// One error of each classified shape, with the kind it must have.
    fn table() -> Vec<(Error, ErrorKind)> {
        vec![
            (Error::Config("x".into()), ErrorKind::Config),
            (Error::Key(KeyError::Missing), ErrorKind::Config),
            (Error::ActorReserved, ErrorKind::Config),
            (
                Error::ReservedKind {
                    kind: "gate.approved".into(),
                },
                ErrorKind::Config,
            ),
            (s(StoreError::InvalidUrl("x".into())), ErrorKind::Config),
            (s(StoreError::AuthFailed), ErrorKind::Config),
            (s(StoreError::NoSuchDatabase), ErrorKind::Config),
            (s(StoreError::NotMigrated("x".into())), ErrorKind::Config),
            (
                s(StoreError::PermissionDenied("x".into())),
                ErrorKind::Config,
            ),
            (
                s(StoreError::InvalidArgument("x".into())),
                ErrorKind::Config,
            ),
            (s(StoreError::Conflict("x".into())), ErrorKind::Config),
            (
                s(StoreError::Unavailable("x".into())),
                ErrorKind::Unavailable,
            ),
            (s(StoreError::Corrupt("x".into())), ErrorKind::Internal),
            (a(AuditError::NoSuchChain("c".into())), ErrorKind::NotFound),
            (a(AuditError::NothingToVerify), ErrorKind::NotFound),
            (a(AuditError::InvalidOptions("x".into())), ErrorKind::Config),
            (
                a(AuditError::KeyNotConfigured {
                    chain: "c".into(),
                    seq: 1,
                    key_id: "k".into(),
                }),
                ErrorKind::Config,
            ),
            (a(AuditError::Internal("x")), ErrorKind::Internal),
            (a(AuditError::WriterStopped), ErrorKind::Internal),
            (
                a(AuditError::Store(Arc::new(StoreError::Unavailable(
                    "x".into(),
                )))),
                ErrorKind::Unavailable,
            ),
            (
                Error::Halted {
                    agent: "a".into(),
                    by: None,
                    reason: None,
                },
                ErrorKind::Refused,
            ),
            (
                Error::ApprovalRefused {
                    request_id: uuid::Uuid::nil(),
                    reason: "x".into(),
                },
                ErrorKind::Refused,
            ),
            (
                Error::ApprovalPending {
                    request_id: uuid::Uuid::nil(),
                },
                ErrorKind::Refused,
            ),
            (
                Error::HaltStateUnknown {
                    agent: "a".into(),
                    cause: "x".into(),
                },
                ErrorKind::Unavailable,
            ),
            (Error::AuthenticationFailed, ErrorKind::Unauthenticated),
            (
                Error::ToolFailed {
                    tool: "t".into(),
                    message: "x".into(),
                },
                ErrorKind::Upstream,
            ),
        ]
    }

    #[test]
    fn errors_are_classified_and_the_predicates_follow_the_kind() {
        for (err, kind) in table() {
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(
                err.is_config(),
                matches!(kind, ErrorKind::Config | ErrorKind::NotFound),
                "{err}"
            );
            assert_eq!(
                err.is_unavailable(),
                kind == ErrorKind::Unavailable,
                "{err}"
            );
        }
    }

    #[test]
    fn an_audit_error_converts_to_the_same_kind() {
        for e in [
            AuditError::Key(KeyError::Missing),
            AuditError::Store(Arc::new(StoreError::Unavailable("x".into()))),
            AuditError::NothingToVerify,
            AuditError::WriterStopped,
        ] {
            assert_eq!(Error::from(e.clone()).kind(), Error::Audit(e).kind());
        }
    }

    #[test]
    fn kind_names_are_distinct_and_cover_all() {
        let names: std::collections::BTreeSet<&str> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::Tampered.to_string(), "tampered");
    }
}
