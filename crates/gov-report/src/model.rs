//! The report's content: plain data, serialised as the report's JSON form.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

/// Identifies the JSON layout; bumped when a field changes meaning.
pub const FORMAT: &str = "governance.article12.v1";

/// The statement every report carries, in every format.
pub const STATEMENT: &str = "This report is evidence of the actions that the governance SDK observed and recorded in its audit chain during the period. It is not a claim of compliance with the EU AI Act (Regulation (EU) 2024/1689) or with any other law. Actions that did not pass through the SDK are not recorded here: the record is complete only where every relevant AI action of the deployment is routed through the SDK.";

/// The EU AI Act Article 12 evidence report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Article12Report {
    /// Always [`FORMAT`].
    pub format: &'static str,
    /// Human title.
    pub title: &'static str,
    /// Always [`STATEMENT`].
    pub statement: &'static str,
    /// When the report was made.
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// The tool and version that made it.
    pub generator: String,
    /// The period the events were taken from.
    pub period: Period,
    /// The chains the report covers.
    pub chains: Vec<String>,
    /// Totals over the period.
    pub totals: Totals,
    /// Per chain (the system whose actions it records), the agents that acted in the period.
    pub systems: Vec<System>,
    /// Events in the period, by kind, over every chain covered.
    pub events_by_kind: BTreeMap<String, u64>,
    /// Requests for human approval and the decisions taken on them.
    pub human_oversight: Oversight,
    /// Agents halted and resumed by operators (or by the loop detector).
    pub halts: Halts,
    /// Actions refused before they ran.
    pub denials: Denials,
    /// The result of verifying the chains covered, whole (not only the period).
    pub verification: Verification,
    /// Which share of the deployment's LLM calls went through the SDK.
    pub coverage: Coverage,
}

/// The period: events with `from <= occurred_at < to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Period {
    /// Start (inclusive); `None` is the start of the record.
    #[serde(with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    /// End (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
}

/// Totals over the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Events recorded.
    pub events: u64,
    /// Distinct agents that acted.
    pub agents: u64,
    /// Distinct (chain, agent, session) triples, summed over agents.
    pub sessions: u64,
}

/// One chain and its agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct System {
    /// The chain.
    pub chain_id: String,
    /// Events on it in the period.
    pub events: u64,
    /// Its agents, by id.
    pub agents: Vec<AgentSummary>,
}

/// What one agent did on one chain in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSummary {
    /// The agent.
    pub agent_id: String,
    /// Events.
    pub events: u64,
    /// Distinct sessions.
    pub sessions: u64,
    /// The first event.
    #[serde(with = "time::serde::rfc3339")]
    pub first_event_at: OffsetDateTime,
    /// The last event.
    #[serde(with = "time::serde::rfc3339")]
    pub last_event_at: OffsetDateTime,
}

/// Where a listed event sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct At {
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// Its chain.
    pub chain_id: String,
    /// Its seq in that chain.
    pub seq: i64,
}

/// Human oversight: gate requests and decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Oversight {
    /// Approvals requested in the period.
    pub requested: u64,
    /// Requests approved.
    pub approved: u64,
    /// Requests denied.
    pub denied: u64,
    /// Every decision, oldest first.
    pub decisions: Vec<Decision>,
    /// True when more decisions exist than are listed.
    pub truncated: bool,
    /// Events that claim a human decision but have no oversight record behind them: not made
    /// by an operator path, so neither counted nor listed as decisions. Oldest first.
    pub unbacked: Vec<UnbackedClaim>,
}

/// An event that claims human oversight (a decision, or a halt or resume in a person's name)
/// without the oversight record the operator path writes in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnbackedClaim {
    /// Where it is recorded.
    #[serde(flatten)]
    pub at: At,
    /// The agent it names.
    pub agent_id: String,
    /// Its kind.
    pub kind: String,
    /// Whom it names as the operator.
    pub claimed_by: Option<String>,
}

/// One decision on a gate request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Where it is recorded.
    #[serde(flatten)]
    pub at: At,
    /// The agent whose action it was.
    pub agent_id: String,
    /// The session, if any.
    pub session_id: Option<String>,
    /// `approved` or `denied`.
    pub decision: &'static str,
    /// The operator who decided.
    pub decided_by: Option<String>,
    /// The tool the action would call.
    pub tool: Option<String>,
    /// The gate request.
    pub request_id: Option<String>,
    /// The operator's reason.
    pub reason: Option<String>,
}

/// Halts and resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Halts {
    /// Halts.
    pub halted: u64,
    /// Resumes.
    pub resumed: u64,
    /// Every halt and resume, oldest first.
    pub events: Vec<HaltEvent>,
    /// True when more exist than are listed.
    pub truncated: bool,
    /// Halts and resumes in a person's name without an oversight record behind them: neither
    /// counted nor listed. Oldest first.
    pub unbacked: Vec<UnbackedClaim>,
}

/// One halt or resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HaltEvent {
    /// Where it is recorded.
    #[serde(flatten)]
    pub at: At,
    /// The agent.
    pub agent_id: String,
    /// `halted` or `resumed`.
    pub action: &'static str,
    /// Who did it.
    pub by: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// Refused actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Denials {
    /// `scope.denied`: a tool or API outside the agent's scope.
    pub scope: u64,
    /// `budget.denied`: a call that would pass a cap.
    pub budget: u64,
    /// `loop.detected`: the same call repeated past the window's limit.
    pub loops: u64,
    /// `contract.violated`: a pre- or postcondition failed.
    pub contracts: u64,
    /// Every denial, oldest first.
    pub events: Vec<Denial>,
    /// True when more exist than are listed.
    pub truncated: bool,
}

/// One refusal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Denial {
    /// Where it is recorded.
    #[serde(flatten)]
    pub at: At,
    /// The agent.
    pub agent_id: String,
    /// The session, if any.
    pub session_id: Option<String>,
    /// The event kind.
    pub kind: String,
    /// A one-line account of what was refused and why.
    pub detail: String,
    /// The event's payload as recorded.
    pub payload: serde_json::Value,
}

/// Chain verification, whole chains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// `clean` or `tampered` (a report is not made when the worst is `unverifiable`).
    pub status: &'static str,
    /// Whether the verifier follows key-rotation markers (rows sealed under earlier keys verify
    /// with the keyring; a key changes only at a valid marker).
    pub rotation_aware: bool,
    /// What was verified.
    pub scope: &'static str,
    /// Rows checked in all.
    pub events_checked: u64,
    /// Fingerprints of the keys that sealed the rows.
    pub key_ids: Vec<String>,
    /// How the verified rows were signed (Ed25519), over every chain covered.
    pub signatures: gov_sdk::SignatureCounts,
    /// Per chain.
    pub chains: Vec<ChainVerification>,
}

/// One chain's verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainVerification {
    /// The chain.
    pub chain_id: String,
    /// `clean`, `tampered`, or `unverifiable` (rows the configured keys cannot check; listed
    /// only in a report made because another chain is tampered).
    pub status: &'static str,
    /// Rows checked.
    pub events_checked: u64,
    /// The head seq verified up to.
    pub head_seq: i64,
    /// The first problem, if any.
    pub finding: Option<FindingSummary>,
    /// The rows the configured keys cannot check, when `status` is `unverifiable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverifiable: Option<gov_sdk::Unverifiable>,
}

impl ChainVerification {
    /// The result column of the rendered report for a chain without a finding: `clean`, or
    /// which rows the configured keys cannot check and why.
    pub fn unfound_result(&self) -> String {
        match &self.unverifiable {
            None => "clean".into(),
            Some(u) => format!("not verifiable with the configured keys: {}", u.advice),
        }
    }
}

/// The first problem in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingSummary {
    /// The first bad seq.
    pub seq: i64,
    /// Why, as a short name.
    pub reason: String,
    /// What exactly was seen.
    pub detail: String,
}

/// What `coverage_pct` means, stated in every report.
pub const COVERAGE_DEFINITION: &str = "governed_calls / (governed_calls + observed_calls) x 100 over the period, to one decimal: governed calls passed the SDK's gates before they were sent (llm.request); observed calls were reported to the SDK after the fact without passing its gates (llm.observed). Calls made by clients that were never wrapped are invisible to the SDK and not counted, so the share is an upper bound of the true one.";

/// Coverage: the share of the LLM calls the SDK recorded that went through its gates, and the
/// registry of wrapped clients.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    /// The share in percent (see `definition`), when it can be computed.
    pub coverage_pct: Option<f64>,
    /// Why it is null, as a stable code: `no_wrapped_clients` (no client is registered and no
    /// LLM call was recorded) or `no_llm_calls_in_period` (clients are registered, no call was
    /// recorded in the period).
    pub reason_code: Option<&'static str>,
    /// Why it is null, in words.
    pub reason: Option<&'static str>,
    /// Always [`COVERAGE_DEFINITION`].
    pub definition: &'static str,
    /// LLM calls that passed the gates in the period (`llm.request` events).
    pub governed_calls: u64,
    /// LLM calls recorded without the gates in the period (`llm.observed` events).
    pub observed_calls: u64,
    /// The wrapped LLM clients registered before the end of the period (the coverage
    /// registry; hostnames only as salted digests).
    pub wrapped_clients: Vec<gov_sdk::llm::WrappedClient>,
}
