//! The events governance itself writes: each kind once, with one payload type.
//!
//! [`EventKind`] lists every kind the system's own paths produce (gates, halts, denials, the
//! governed tool runner, LLM calls, key rotation), and each kind has a serde payload type that
//! implements [`SystemEvent`]. The SDK builds these events with [`SystemEvent::event`] and the
//! report and the console read them back with [`AuditRecord::decode`]; no other crate spells a
//! system kind as a string.
//!
//! These kinds are *reserved*: a host's own `audit().log` refuses them (and everything in a
//! reserved namespace, [`is_reserved`]), so the record can only say that a gate was approved or
//! an agent halted when the system's own path wrote it. The payloads serialise to the same JSON
//! the SDK has always written, so older rows decode with the same types.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::budget::BudgetDenial;
use crate::event::AuditEventBuilder;
use crate::record::AuditRecord;
use crate::scope::ScopeDenial;

macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ),+ $(,)?) => {
        /// A kind of event that only governance's own paths write.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $( $(#[$doc])* $variant, )+
        }

        impl EventKind {
            /// Every system kind.
            pub const ALL: &'static [EventKind] = &[$( EventKind::$variant, )+];

            /// The stored spelling (`gate.approved`, ...).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( EventKind::$variant => $name, )+
                }
            }

            /// Parses a stored kind; `None` for a kind the system does not write.
            pub fn parse(kind: &str) -> Option<Self> {
                match kind {
                    $( $name => Some(EventKind::$variant), )+
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// An agent asked for human approval.
    GateRequested = "gate.requested",
    /// An authenticated operator approved a request.
    GateApproved = "gate.approved",
    /// An authenticated operator denied a request.
    GateDenied = "gate.denied",
    /// An approval was spent on the action it was given for.
    GateConsumed = "gate.consumed",
    /// An operator voted on a request that needs more approvals than one (the vote that
    /// completes the quorum, or any denial, is the decision: `gate.approved`, `gate.denied`).
    GateVoted = "gate.voted",
    /// A pending request's escalation time came: its escalation group may approve too.
    GateEscalated = "gate.escalated",
    /// A pending request expired undecided and was denied.
    GateExpired = "gate.expired",
    /// An agent was halted (by an operator, or by a system path such as the loop detector).
    AgentHalted = "agent.halted",
    /// An operator resumed a halted agent.
    AgentResumed = "agent.resumed",
    /// A scope check refused a tool or an API.
    ScopeDenied = "scope.denied",
    /// A budget refused a reservation.
    BudgetDenied = "budget.denied",
    /// The loop detector tripped.
    LoopDetected = "loop.detected",
    /// A contract's pre- or postcondition failed.
    ContractViolated = "contract.violated",
    /// The governed tool runner started a tool.
    ToolStarted = "tool.started",
    /// The governed tool runner's tool returned.
    ToolFinished = "tool.finished",
    /// A governed LLM call passed the gates and is about to reach the provider.
    LlmRequest = "llm.request",
    /// A governed LLM call was answered and settled.
    LlmResponse = "llm.response",
    /// A governed LLM call failed.
    LlmError = "llm.error",
    /// A governed LLM call was dropped by its caller before it ended.
    LlmCancelled = "llm.cancelled",
    /// An LLM call made outside the gates, recorded after the fact.
    LlmObserved = "llm.observed",
    /// The chain's sealing key changed (a marker sealed by the old key).
    ChainKeyRotated = "chain.key_rotated",
    /// A data subject's keys were destroyed: their personal fields are unreadable from now on.
    SubjectErased = "subject.erased",
    /// The chain's oldest rows were archived to a file and removed (retention); sealed in the
    /// same transaction as the removal, after the rows that remain.
    ChainArchived = "chain.archived",
    /// An operator applied a new version of a Cedar policy set (enforced or shadow).
    PolicyApplied = "policy.applied",
    /// The enforced Cedar policy set forbade an action.
    PolicyDenied = "policy.denied",
    /// The enforced Cedar policy set permitted an action only with a person's approval.
    PolicyApprovalRequired = "policy.approval_required",
    /// The shadow (candidate) policy set decided differently from the enforced one; logged,
    /// never enforced.
    PolicyShadowDiff = "policy.shadow_diff",
    /// An admin made a gateway key for an agent (its id is recorded, never the key).
    GatewayKeyAdded = "agent.key_added",
    /// An admin revoked an agent's gateway key.
    GatewayKeyRevoked = "agent.key_revoked",
}

/// Namespaces (first segment of a kind) that belong to governance: a host may not log any kind
/// in them, including ones a later version may add.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "agent",
    "budget",
    "chain",
    "contract",
    "gate",
    "governance",
    "llm",
    "loop",
    "operator",
    "policy",
    "scope",
    "subject",
];

/// Whether `kind` is reserved for governance's own paths: a system kind, or any kind in a
/// [`RESERVED_NAMESPACES`] namespace.
pub fn is_reserved(kind: &str) -> bool {
    EventKind::parse(kind).is_some()
        || kind
            .split('.')
            .next()
            .is_some_and(|ns| RESERVED_NAMESPACES.contains(&ns))
}

impl EventKind {
    /// A human decision: approving or denying a gate, halting or resuming an agent. The report
    /// counts one only when the decision record written by the operator path backs it.
    pub const fn is_oversight(self) -> bool {
        matches!(
            self,
            Self::GateApproved | Self::GateDenied | Self::AgentHalted | Self::AgentResumed
        )
    }

    /// A refusal by one of the gates (scope, budget, loops, contracts).
    pub const fn is_denial(self) -> bool {
        matches!(
            self,
            Self::ScopeDenied
                | Self::BudgetDenied
                | Self::LoopDetected
                | Self::ContractViolated
                | Self::PolicyDenied
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of one system kind.
pub trait SystemEvent: Serialize + DeserializeOwned {
    /// The kind this payload is written under.
    const KIND: EventKind;

    /// Starts the event for `agent` with this payload (add the session, parent, chain, actor
    /// on the builder; `build` validates).
    fn event(&self, agent: impl AsRef<str>) -> AuditEventBuilder {
        crate::AuditEvent::builder(agent, Self::KIND.as_str()).payload(self)
    }
}

/// Why a stored record could not be read as a system event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is of another kind.
    #[error("the event is a {found}, not a {expected}")]
    WrongKind {
        /// The kind asked for.
        expected: EventKind,
        /// The kind stored.
        found: String,
    },
    /// The payload does not have the kind's shape.
    #[error("the payload of a {kind} event does not have its shape: {detail}")]
    Payload {
        /// The kind.
        kind: EventKind,
        /// What serde said.
        detail: String,
    },
}

impl AuditRecord {
    /// This record's system kind, if it has one.
    pub fn system_kind(&self) -> Option<EventKind> {
        EventKind::parse(&self.kind)
    }

    /// Reads the payload as the system event `P`, checking the kind first.
    pub fn decode<P: SystemEvent>(&self) -> Result<P, DecodeError> {
        if self.kind != P::KIND.as_str() {
            return Err(DecodeError::WrongKind {
                expected: P::KIND,
                found: self.kind.clone(),
            });
        }
        serde_json::from_str(&self.payload).map_err(|e| DecodeError::Payload {
            kind: P::KIND,
            detail: e.to_string(),
        })
    }
}

macro_rules! system_event {
    ($ty:ty => $kind:ident) => {
        impl SystemEvent for $ty {
            const KIND: EventKind = EventKind::$kind;
        }
    };
}

/// `gate.requested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRequested {
    /// The request.
    pub request_id: Uuid,
    /// The tool asked for.
    pub tool: String,
    /// SHA-256 (hex) of the canonical arguments, the action the approval is bound to.
    #[serde(default)]
    pub args_sha256: Option<String>,
}
system_event!(GateRequested => GateRequested);

/// The decision on a gate request (`gate.approved` and `gate.denied` share it), or a vote on
/// it (`gate.voted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDecision {
    /// The request.
    pub request_id: Uuid,
    /// The tool it was for.
    pub tool: String,
    /// The operator's reason.
    pub reason: String,
    /// Approvals given with this vote, when the request needs more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
    /// Approvals the request needs, when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// What an approval covers when not this request alone: `session` (later requests of the
    /// agent's session for the same tool) or `rule` (also proposed as a Cedar policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl GateDecision {
    /// A decision on `request_id` for `tool`, one approval needed, for this request alone.
    pub fn new(request_id: Uuid, tool: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            request_id,
            tool: tool.into(),
            reason: reason.into(),
            approvals: None,
            quorum: None,
            scope: None,
        }
    }
}

/// `gate.voted`: a vote that did not decide the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GateVoted(pub GateDecision);
system_event!(GateVoted => GateVoted);

/// `gate.escalated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateEscalated {
    /// The request.
    pub request_id: Uuid,
    /// The tool it is for.
    pub tool: String,
    /// The group that may approve from now on too.
    pub escalate_to: String,
    /// The workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
}
system_event!(GateEscalated => GateEscalated);

/// `gate.expired`: denied for expiring undecided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateExpired {
    /// The request.
    pub request_id: Uuid,
    /// The tool it was for.
    pub tool: String,
    /// Approvals it had (fewer than its quorum).
    pub approvals: u32,
    /// Approvals it needed.
    pub quorum: u32,
}
system_event!(GateExpired => GateExpired);

/// `gate.approved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GateApproved(pub GateDecision);
system_event!(GateApproved => GateApproved);

/// `gate.denied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GateDenied(pub GateDecision);
system_event!(GateDenied => GateDenied);

/// `gate.consumed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateConsumed {
    /// The request.
    pub request_id: Uuid,
    /// The tool the approval was spent on.
    pub tool: String,
    /// Who had approved it.
    pub approved_by: Option<String>,
}
system_event!(GateConsumed => GateConsumed);

/// A halt or a resume (`agent.halted` and `agent.resumed` share it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltChange {
    /// Why.
    pub reason: String,
    /// Whether the state changed (false when the agent was already in it).
    pub changed: bool,
}

/// `agent.halted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentHalted(pub HaltChange);
system_event!(AgentHalted => AgentHalted);

/// `agent.resumed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentResumed(pub HaltChange);
system_event!(AgentResumed => AgentResumed);

/// A gateway key made or revoked by an admin (`agent.key_added` and `agent.key_revoked` share
/// it). Never the key or its hash: only its public id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayKeyChange {
    /// The key's public id.
    pub key_id: String,
    /// The operator's note on the key.
    pub label: String,
    /// Who made or revoked it.
    pub operator: String,
}

/// `agent.key_added`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GatewayKeyAdded(pub GatewayKeyChange);
system_event!(GatewayKeyAdded => GatewayKeyAdded);

/// `agent.key_revoked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GatewayKeyRevoked(pub GatewayKeyChange);
system_event!(GatewayKeyRevoked => GatewayKeyRevoked);

/// `scope.denied`: exactly one of `tool` and `api` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeDenied {
    /// The tool refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The API refused (`provider` or `provider:model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Why.
    pub reason: ScopeDenial,
}
system_event!(ScopeDenied => ScopeDenied);

/// `budget.denied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetDenied {
    /// Why.
    pub reason: BudgetDenial,
    /// The cap that refused (micro-USD, tokens or seconds, per `reason`).
    pub cap: Option<i64>,
    /// What was already spent plus reserved against it.
    pub used: Option<i64>,
    /// The projected cost of the refused call, micro-USD.
    pub requested_micros: i64,
    /// The model of the refused call.
    pub model: String,
}
system_event!(BudgetDenied => BudgetDenied);

/// What the loop detector does when it trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopResponse {
    /// Audit and let the action run.
    Warn,
    /// Audit, halt the agent and refuse.
    Halt,
}

/// `loop.detected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopDetected {
    /// The repeated tool.
    pub tool: String,
    /// How many times the same action occurred in the window.
    pub repeats: u64,
    /// The window's size.
    pub window_size: u64,
    /// What the detector did.
    pub action: LoopResponse,
}
system_event!(LoopDetected => LoopDetected);

/// `contract.violated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractViolated {
    /// The tool.
    pub tool: String,
    /// `pre` or `post`.
    pub phase: String,
    /// The condition that failed.
    pub condition: String,
    /// What failed.
    pub detail: String,
}
system_event!(ContractViolated => ContractViolated);

/// `tool.started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolStarted {
    /// The tool.
    pub tool: String,
    /// The SHA-256 (hex) of the call: `action_hash` of the tool and its canonical arguments,
    /// the same hash an approval is bound to. Absent in rows written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<String>,
}
system_event!(ToolStarted => ToolStarted);

/// `tool.finished`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolFinished {
    /// The tool.
    pub tool: String,
    /// Whether it returned a value.
    pub ok: bool,
    /// How long it ran.
    pub duration_ms: u64,
    /// Its error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
system_event!(ToolFinished => ToolFinished);

/// `llm.request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// The provider (`openai`, `anthropic`, ...).
    pub provider: String,
    /// The SDK wrapper that made the call.
    pub wrapper: String,
    /// The GenAI operation (`chat`).
    pub operation: String,
    /// The model asked for.
    pub model: String,
    /// Whether the answer streams.
    pub stream: bool,
    /// The output tokens reserved for.
    pub max_tokens: u64,
    /// Whether the caller declared `max_tokens` (else a configured default was used).
    pub max_tokens_declared: bool,
    /// The input tokens the reservation was projected from.
    pub input_tokens_estimate: u64,
    /// The reservation, micro-USD.
    pub reserved_micros: i64,
}
system_event!(LlmRequest => LlmRequest);

/// `llm.response`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// The provider.
    pub provider: String,
    /// The model asked for.
    pub model: String,
    /// The model the provider says answered.
    pub response_model: Option<String>,
    /// Whether the answer streamed.
    pub stream: bool,
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Whether the usage is an estimate (the provider reported none).
    pub estimated: bool,
    /// The call's cost, micro-USD.
    pub cost_micros: i64,
    /// What had been reserved, micro-USD.
    pub reserved_micros: i64,
    /// From the request to the answer.
    pub latency_ms: u64,
    /// The provider's finish reason.
    pub finish_reason: Option<String>,
}
system_event!(LlmResponse => LlmResponse);

/// `llm.error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmError {
    /// The provider.
    pub provider: String,
    /// The model asked for.
    pub model: String,
    /// Whether the answer streamed.
    pub stream: bool,
    /// What failed (`timeout`, `rate_limited`, `status`, ...).
    pub kind: String,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
    /// The provider's error type (never its message).
    pub error_type: Option<String>,
    /// The provider's `retry-after`, seconds.
    pub retry_after_s: Option<u64>,
    /// Stream chunks received before the failure.
    pub chunks: u64,
    /// The reservation released, micro-USD.
    pub released_micros: i64,
    /// From the request to the failure.
    pub latency_ms: u64,
}
system_event!(LlmError => LlmError);

/// `llm.cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmCancelled {
    /// The provider.
    pub provider: String,
    /// The model asked for.
    pub model: String,
    /// Whether the answer streamed.
    pub stream: bool,
    /// Stream chunks received before the call was dropped.
    pub chunks: u64,
    /// The reservation released, micro-USD.
    pub released_micros: i64,
    /// From the request to the drop.
    pub latency_ms: u64,
}
system_event!(LlmCancelled => LlmCancelled);

/// `llm.observed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmObserved {
    /// The provider.
    pub provider: String,
    /// The model.
    pub model: String,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// The tracked cost, micro-USD.
    pub cost_micros: i64,
}
system_event!(LlmObserved => LlmObserved);

/// `chain.key_rotated`: the marker sealed by the old key, carrying the new key's proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainKeyRotated {
    /// The key that sealed the chain up to and including the marker.
    pub from_key_id: String,
    /// The key that seals the rows after it.
    pub to_key_id: String,
    /// The new key's HMAC over the rotation message, hex.
    pub proof: String,
    /// Why.
    pub reason: String,
    /// The marker format's version.
    pub version: u64,
}
system_event!(ChainKeyRotated => ChainKeyRotated);

/// The agent id the erasure events are recorded under (an erasure concerns a data subject, not
/// an agent).
pub const ERASURE_AGENT: &str = "governance:erasure";

/// `subject.erased`: an operator destroyed every key of a data subject (crypto-shredding). The
/// subject's personal fields stay in the chain as ciphertext nobody can read; the rest of each
/// event, and this record of the erasure, stay readable and sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectErased {
    /// The data subject (an opaque pseudonymous id).
    pub subject: String,
    /// How many key rows were destroyed (0 when the subject had none, or was erased before).
    pub keys_destroyed: u64,
    /// Why (the request or legal basis, for the record).
    pub reason: String,
    /// Who ran the erasure.
    pub operator: String,
}
system_event!(SubjectErased => SubjectErased);

/// The agent id retention events are recorded under (a cut concerns a chain, not an agent).
pub const RETENTION_AGENT: &str = "governance:retention";

/// `chain.archived`: an operator archived rows `from_seq..=through_seq` of the chain to a file
/// and removed them. Verification honours a recorded cut only when this sealed event names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainArchived {
    /// The first archived seq.
    pub from_seq: i64,
    /// The last archived seq.
    pub through_seq: i64,
    /// `row_hmac` of row `through_seq` (hex): the first remaining row links to it.
    pub row_hmac: String,
    /// Rows removed.
    pub rows: u64,
    /// SHA-256 (hex) of the archive file.
    pub archive_sha256: String,
    /// Why.
    pub reason: String,
    /// Who archived.
    pub operator: String,
}
system_event!(ChainArchived => ChainArchived);

/// The agent id the policy set events are recorded under (a policy set concerns every agent).
pub const POLICY_AGENT: &str = "governance:policy";

/// `policy.applied`: an operator applied a version of a Cedar policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyApplied {
    /// `enforced` or `shadow`.
    pub slot: String,
    /// The version applied (1, 2, … per slot).
    pub version: i64,
    /// SHA-256 (hex) of the set; `None` when the slot was turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_set_hash: Option<String>,
    /// How many policies it holds.
    pub policies: u64,
    /// Who applied it.
    pub operator: String,
}
system_event!(PolicyApplied => PolicyApplied);

/// What a Cedar decision was about and which policy set version decided it; the payload of
/// `policy.denied` and `policy.approval_required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDecision {
    /// The Cedar action (`tool_call`, `llm_call`, `mcp_tool_call`).
    pub action: String,
    /// The resource, as a Cedar entity uid (`Governance::Tool::"send_email"`).
    pub resource: String,
    /// SHA-256 (hex) of the policy set that decided.
    pub policy_set_hash: String,
    /// The ids of the policies that determined the decision (the forbids that matched, or the
    /// permits; empty when nothing permitted).
    pub determining_policies: Vec<String>,
    /// The approval's reason (the `@approval` annotation), for `policy.approval_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// `policy.denied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PolicyDenied(pub PolicyDecision);
system_event!(PolicyDenied => PolicyDenied);

/// `policy.approval_required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PolicyApprovalRequired(pub PolicyDecision);
system_event!(PolicyApprovalRequired => PolicyApprovalRequired);

/// `policy.shadow_diff`: the candidate set would have decided differently. Never enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyShadowDiff {
    /// The Cedar action.
    pub action: String,
    /// The resource, as a Cedar entity uid.
    pub resource: String,
    /// The enforced decision (`permit`, `forbid`, `approval`).
    pub enforced: String,
    /// SHA-256 (hex) of the enforced set (`None`: no enforced set, only scope decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_hash: Option<String>,
    /// The policies that determined the enforced decision.
    pub enforced_policies: Vec<String>,
    /// The shadow set's decision.
    pub shadow: String,
    /// SHA-256 (hex) of the shadow set.
    pub shadow_hash: String,
    /// The policies that determined the shadow decision.
    pub shadow_policies: Vec<String>,
}
system_event!(PolicyShadowDiff => PolicyShadowDiff);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_and_is_valid_and_reserved() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
            crate::validate_kind(k.as_str()).expect("a valid kind");
            assert!(is_reserved(k.as_str()), "{k}");
        }
        let mut names: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len(), "kinds are distinct");
    }

    #[test]
    fn reserved_namespaces_cover_future_kinds_but_not_the_hosts_own() {
        for k in [
            "gate.reopened",
            "agent.renamed",
            "operator.added",
            "llm.call",
        ] {
            assert!(is_reserved(k), "{k}");
        }
        for k in [
            "tool.call",
            "tool.result",
            "invoice.read",
            "agents.list",
            "gates.x",
        ] {
            assert!(!is_reserved(k), "{k}");
        }
    }

    #[test]
    fn payloads_keep_the_json_the_sdk_has_always_written() {
        let e = ScopeDenied {
            tool: Some("x".into()),
            api: None,
            reason: ScopeDenial::ToolNotAllowed,
        }
        .event("a")
        .build()
        .expect("event");
        assert_eq!(e.kind, "scope.denied");
        assert_eq!(e.payload, r#"{"reason":"tool_not_allowed","tool":"x"}"#);
        let h = AgentHalted(HaltChange {
            reason: "r".into(),
            changed: true,
        })
        .event("a")
        .build()
        .expect("event");
        assert_eq!(h.payload, r#"{"changed":true,"reason":"r"}"#);
    }

    #[test]
    fn decode_checks_the_kind_and_the_shape() {
        let e = GateApproved(GateDecision::new(Uuid::nil(), "refund", "ok"))
            .event("a")
            .build()
            .expect("event");
        let rec = AuditRecord::unsealed(&e, 1, &crate::ZERO_HMAC, "k");
        assert_eq!(
            rec.decode::<GateApproved>().expect("decodes").0.tool,
            "refund"
        );
        assert!(matches!(
            rec.decode::<GateDenied>(),
            Err(DecodeError::WrongKind { .. })
        ));
        let bad = AuditRecord {
            payload: "{}".into(),
            ..rec
        };
        assert!(matches!(
            bad.decode::<GateApproved>(),
            Err(DecodeError::Payload { .. })
        ));
    }
}
