//! Budget policies and the reasons a budget refuses. The rules are in [`crate::rules`]; the
//! atomic arithmetic runs in storage.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::AgentId;
use crate::pricing::MicroUsd;

/// Caps for one agent. `None` means no cap of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetPolicy {
    /// The agent.
    pub agent_id: AgentId,
    /// Spend cap per session.
    pub per_session: Option<MicroUsd>,
    /// Spend cap per UTC day.
    pub per_day: Option<MicroUsd>,
    /// Token cap per session.
    pub per_session_tokens: Option<u64>,
    /// Token cap per UTC day.
    pub per_day_tokens: Option<u64>,
    /// Longest a session may run (counted from its first reservation).
    pub max_session_duration: Option<Duration>,
}

impl BudgetPolicy {
    /// A policy with no caps yet.
    pub fn new(agent_id: AgentId) -> Self {
        Self {
            agent_id,
            per_session: None,
            per_day: None,
            per_session_tokens: None,
            per_day_tokens: None,
            max_session_duration: None,
        }
    }

    /// Sets the per-session spend cap.
    #[must_use]
    pub fn per_session(mut self, cap: MicroUsd) -> Self {
        self.per_session = Some(cap);
        self
    }

    /// Sets the per-day spend cap.
    #[must_use]
    pub fn per_day(mut self, cap: MicroUsd) -> Self {
        self.per_day = Some(cap);
        self
    }

    /// Sets the per-session token cap.
    #[must_use]
    pub fn per_session_tokens(mut self, cap: u64) -> Self {
        self.per_session_tokens = Some(cap);
        self
    }

    /// Sets the per-day token cap.
    #[must_use]
    pub fn per_day_tokens(mut self, cap: u64) -> Self {
        self.per_day_tokens = Some(cap);
        self
    }

    /// Sets the longest a session may run.
    #[must_use]
    pub fn max_session_duration(mut self, d: Duration) -> Self {
        self.max_session_duration = Some(d);
        self
    }
}

/// Why a budget refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetDenial {
    /// The agent has no budget policy and unbudgeted agents are not allowed.
    NoPolicy,
    /// The session ran longer than its limit.
    SessionExpired,
    /// The session spend cap would be exceeded.
    SessionUsd,
    /// The daily spend cap would be exceeded.
    DayUsd,
    /// The session token cap would be exceeded.
    SessionTokens,
    /// The daily token cap would be exceeded.
    DayTokens,
    /// The model has no price, so the call cannot be projected.
    UnknownModel,
    /// The call declared no `max_tokens` and no default is configured.
    NoMaxTokens,
}

impl BudgetDenial {
    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "no_policy" => Self::NoPolicy,
            "session_expired" => Self::SessionExpired,
            "session_usd" => Self::SessionUsd,
            "day_usd" => Self::DayUsd,
            "session_tokens" => Self::SessionTokens,
            "day_tokens" => Self::DayTokens,
            "unknown_model" => Self::UnknownModel,
            "no_max_tokens" => Self::NoMaxTokens,
            _ => return None,
        })
    }

    /// A short explanation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicy => "the agent has no budget policy (unbudgeted agents are not allowed)",
            Self::SessionExpired => "the session ran past its time limit",
            Self::SessionUsd => "the session spend cap would be exceeded",
            Self::DayUsd => "the daily spend cap would be exceeded",
            Self::SessionTokens => "the session token cap would be exceeded",
            Self::DayTokens => "the daily token cap would be exceeded",
            Self::UnknownModel => "the model has no price; add one to the price table",
            Self::NoMaxTokens => "the call declares no max_tokens and no default is configured",
        }
    }
}

/// A refusal with the cap and the amount already used or reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRefusal {
    /// Why.
    pub denial: BudgetDenial,
    /// The cap that refused (micro-USD, tokens or seconds, per `denial`).
    pub cap: Option<i64>,
    /// What was already spent plus reserved against it.
    pub used: Option<i64>,
}

/// Spend against one period (a session or a UTC day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BudgetCounter {
    /// Settled spend.
    pub spent: MicroUsd,
    /// Reserved, not yet settled.
    pub reserved: MicroUsd,
    /// Settled tokens.
    pub spent_tokens: i64,
    /// Reserved tokens.
    pub reserved_tokens: i64,
}

/// An agent's budget as of now, read in one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetStatus {
    /// The policy, if any.
    pub policy: Option<BudgetPolicy>,
    /// The session's counter.
    pub session: BudgetCounter,
    /// Today's counter (UTC).
    pub day: BudgetCounter,
    /// How long the session has run, if it has started.
    pub session_age: Option<Duration>,
}

impl BudgetStatus {
    /// The first cap with no headroom left, if any: the budget check's rule
    /// ([`crate::rules::check_caps`]) asking for one micro-USD and one token.
    pub fn exhausted(&self) -> Option<BudgetRefusal> {
        let policy = self.policy.as_ref()?;
        let age = self.session_age.map(crate::rules::micros);
        crate::rules::check_caps(
            &crate::rules::Caps::of(policy),
            &self.session,
            age.map(|_| 0),
            &self.day,
            age.unwrap_or(0),
            1,
            1,
        )
        .err()
    }
}

/// Spend by model over a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// The model.
    pub model: String,
    /// Settled calls.
    pub calls: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Spend.
    pub cost: MicroUsd,
}
