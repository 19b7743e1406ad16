//! Test cases in files (what a request should get: permit, forbid or approval, and by which
//! policies), and the difference between two policy sets.
//!
//! A case file is JSON: `{"cases": [{"name", "agent", one of "tool" | "model"
//! ("provider:model") | "mcp_tool" ("server/tool"), "arguments"?, "session"?,
//! "estimated_cost_micros"?, "session_spend_micros"?, "now"? (RFC 3339, default
//! 2026-01-05T12:00:00Z, a Monday), "expect": "permit" | "forbid" | "approval",
//! "policies"? (the determining policy ids, in any order)}]}`. Unknown fields are refused, so a
//! typo cannot make a case pass.

use serde::{Deserialize, Serialize};

use crate::{Decision, Effect, PolicyError, PolicySet, Request, Resource};

/// One test case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks.
    pub name: String,
    /// The agent.
    pub agent: String,
    /// A tool call of this tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// An LLM call of this model, `provider:model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// An MCP tool call, `server/tool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_tool: Option<String>,
    /// The call's arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// The session.
    #[serde(default = "default_session")]
    pub session: String,
    /// The estimated cost, micro-USD.
    #[serde(default)]
    pub estimated_cost_micros: i64,
    /// The session's spend so far, micro-USD.
    #[serde(default)]
    pub session_spend_micros: i64,
    /// When, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// The expected outcome.
    pub expect: Effect,
    /// The expected determining policies (any order); not checked when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
}

fn default_session() -> String {
    "test".to_owned()
}

/// The time a case without `now` is decided at: a Monday, noon UTC.
pub const DEFAULT_NOW: &str = "2026-01-05T12:00:00Z";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

/// Parses a case file; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Case>, PolicyError> {
    let file: CaseFile = serde_json::from_str(text).map_err(|e| {
        PolicyError::Cases(format!(
            "{origin}: not a case file ({e}); expected {{\"cases\": [{{\"name\", \"agent\", \"tool\" | \"model\" | \"mcp_tool\", \"expect\": \"permit\" | \"forbid\" | \"approval\", …}}]}}"
        ))
    })?;
    for c in &file.cases {
        c.resource()
            .map_err(|e| PolicyError::Cases(format!("{origin}: case {:?}: {e}", c.name)))?;
        c.now()
            .map_err(|e| PolicyError::Cases(format!("{origin}: case {:?}: {e}", c.name)))?;
    }
    Ok(file.cases)
}

impl Case {
    fn resource(&self) -> Result<Resource<'_>, String> {
        match (&self.tool, &self.model, &self.mcp_tool) {
            (Some(t), None, None) => Ok(Resource::Tool(t)),
            (None, Some(m), None) => match m.split_once(':') {
                Some((provider, model)) => Ok(Resource::Model { provider, model }),
                None => Err(format!("model {m:?} must be provider:model")),
            },
            (None, None, Some(m)) => match m.split_once('/') {
                Some((server, tool)) => Ok(Resource::McpTool { server, tool }),
                None => Err(format!("mcp_tool {m:?} must be server/tool")),
            },
            _ => Err("give exactly one of tool, model, mcp_tool".into()),
        }
    }

    fn now(&self) -> Result<time::OffsetDateTime, String> {
        let text = self.now.as_deref().unwrap_or(DEFAULT_NOW);
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("now {text:?} is not an RFC 3339 time: {e}"))
    }

    /// Decides this case under `set`.
    pub fn decide(&self, set: &PolicySet) -> Decision {
        let (resource, now) = match (self.resource(), self.now()) {
            (Ok(r), Ok(n)) => (r, n),
            (Err(e), _) | (_, Err(e)) => {
                return Decision {
                    effect: Effect::Forbid,
                    determining: Vec::new(),
                    approval: None,
                    errors: vec![e],
                };
            }
        };
        set.decide(&Request {
            agent: &self.agent,
            resource,
            session: &self.session,
            arguments: self.arguments.as_ref(),
            estimated_cost_micros: self.estimated_cost_micros,
            session_spend_micros: self.session_spend_micros,
            now,
        })
    }
}

/// A case's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The case's name.
    pub name: String,
    /// Whether the decision (and the determining policies, when given) matched.
    pub passed: bool,
    /// What was expected.
    pub expected: Effect,
    /// The expected determining policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_policies: Option<Vec<String>>,
    /// What the set decided.
    pub got: Decision,
}

/// Runs `cases` under `set`.
pub fn run(set: &PolicySet, cases: &[Case]) -> Vec<Outcome> {
    cases
        .iter()
        .map(|c| {
            let got = c.decide(set);
            let policies_match = c.policies.as_ref().is_none_or(|want| {
                let mut want = want.clone();
                want.sort_unstable();
                want == got.determining
            });
            Outcome {
                name: c.name.clone(),
                passed: got.effect == c.expect && policies_match,
                expected: c.expect,
                expected_policies: c.policies.clone(),
                got,
            }
        })
        .collect()
}

/// How one policy set differs from another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SetDiff {
    /// Policies only in the new set.
    pub added: Vec<String>,
    /// Policies only in the old set.
    pub removed: Vec<String>,
    /// Policies in both, with different text.
    pub changed: Vec<String>,
    /// Whether the settings (agents, arguments) differ.
    pub settings_changed: bool,
    /// Cases decided differently (when cases were given): name, old, new.
    pub decisions: Vec<DecisionChange>,
}

/// A case the two sets decide differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionChange {
    /// The case.
    pub name: String,
    /// The old set's decision (`None`: no old set, so only scope decided).
    pub old: Option<Effect>,
    /// The new set's decision.
    pub new: Effect,
}

impl SetDiff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.settings_changed
            && self.decisions.is_empty()
    }
}

/// Compares `old` (`None`: no set) with `new`, by policy id, and by decision over `cases`.
pub fn diff(old: Option<&PolicySet>, new: &PolicySet, cases: &[Case]) -> SetDiff {
    let mut d = SetDiff::default();
    for id in new.ids() {
        match old.and_then(|o| o.policy_text(id)) {
            None => d.added.push(id.clone()),
            Some(text) if new.policy_text(id).as_ref() != Some(&text) => d.changed.push(id.clone()),
            Some(_) => {}
        }
    }
    if let Some(o) = old {
        d.removed = o
            .ids()
            .iter()
            .filter(|id| new.policy_text(id).is_none())
            .cloned()
            .collect();
        d.settings_changed = o.settings() != new.settings();
    } else {
        d.settings_changed = new.settings() != &crate::Settings::default();
    }
    for c in cases {
        let before = old.map(|o| c.decide(o).effect);
        let after = c.decide(new).effect;
        if before != Some(after) {
            d.decisions.push(DecisionChange {
                name: c.name.clone(),
                old: before,
                new: after,
            });
        }
    }
    d
}
