//! Scope policies: which tools and APIs an agent may use, and which it must not even see.
//! Pure decisions; storage and reloading live in the SDK.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::AgentId;

/// What an agent may use. Default deny: a tool or API not listed is refused, and an agent with
/// no policy at all is refused everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopePolicy {
    /// The agent.
    pub agent_id: AgentId,
    /// Tools it may call.
    pub allowed_tools: BTreeSet<String>,
    /// APIs (model providers, external services) it may use.
    pub allowed_apis: BTreeSet<String>,
    /// Tools removed from what the agent is shown. A hidden tool is also refused, even if
    /// listed as allowed: hiding wins.
    pub hidden_tools: BTreeSet<String>,
}

/// Why a scope check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeDenial {
    /// The agent has no scope policy (default deny).
    NoPolicy,
    /// The tool is not in `allowed_tools`.
    ToolNotAllowed,
    /// The tool is hidden from this agent.
    ToolHidden,
    /// The API is not in `allowed_apis`.
    ApiNotAllowed,
}

impl ScopeDenial {
    /// A short explanation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicy => "the agent has no scope policy (default deny)",
            Self::ToolNotAllowed => "the tool is not in the agent's allowed tools",
            Self::ToolHidden => "the tool is hidden from the agent",
            Self::ApiNotAllowed => "the API is not in the agent's allowed APIs",
        }
    }
}

impl ScopePolicy {
    /// A policy allowing `tools` and nothing else.
    pub fn new(agent_id: AgentId) -> Self {
        Self {
            agent_id,
            allowed_tools: BTreeSet::new(),
            allowed_apis: BTreeSet::new(),
            hidden_tools: BTreeSet::new(),
        }
    }

    /// Adds allowed tools.
    #[must_use]
    pub fn allow_tools<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tools: I) -> Self {
        self.allowed_tools.extend(tools.into_iter().map(Into::into));
        self
    }

    /// Adds allowed APIs.
    #[must_use]
    pub fn allow_apis<I: IntoIterator<Item = S>, S: Into<String>>(mut self, apis: I) -> Self {
        self.allowed_apis.extend(apis.into_iter().map(Into::into));
        self
    }

    /// Adds hidden tools.
    #[must_use]
    pub fn hide_tools<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tools: I) -> Self {
        self.hidden_tools.extend(tools.into_iter().map(Into::into));
        self
    }

    /// Whether the agent may call `tool`.
    pub fn check_tool(&self, tool: &str) -> Result<(), ScopeDenial> {
        if self.hidden_tools.contains(tool) {
            Err(ScopeDenial::ToolHidden)
        } else if self.allowed_tools.contains(tool) {
            Ok(())
        } else {
            Err(ScopeDenial::ToolNotAllowed)
        }
    }

    /// Whether the agent may use `api`.
    pub fn check_api(&self, api: &str) -> Result<(), ScopeDenial> {
        if self.allowed_apis.contains(api) {
            Ok(())
        } else {
            Err(ScopeDenial::ApiNotAllowed)
        }
    }

    /// The tools of `offered` the agent may be shown, in their original order.
    pub fn filter_tools<'a, S: AsRef<str>>(&self, offered: &'a [S]) -> Vec<&'a S> {
        offered
            .iter()
            .filter(|t| self.check_tool(t.as_ref()).is_ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScopePolicy {
        ScopePolicy::new(AgentId::new("billing").unwrap())
            .allow_tools(["read_invoice", "send_email", "admin_panel"])
            .allow_apis(["openai"])
            .hide_tools(["admin_panel"])
    }

    #[test]
    fn default_deny_and_hiding_wins() {
        let p = policy();
        assert_eq!(p.check_tool("read_invoice"), Ok(()));
        assert_eq!(p.check_tool("delete_db"), Err(ScopeDenial::ToolNotAllowed));
        assert_eq!(p.check_tool("admin_panel"), Err(ScopeDenial::ToolHidden));
        assert_eq!(
            p.check_tool("Read_Invoice"),
            Err(ScopeDenial::ToolNotAllowed)
        );
        assert_eq!(p.check_api("openai"), Ok(()));
        assert_eq!(p.check_api("anthropic"), Err(ScopeDenial::ApiNotAllowed));
    }

    #[test]
    fn filter_keeps_order_and_drops_hidden_and_disallowed() {
        let offered = ["send_email", "admin_panel", "delete_db", "read_invoice"];
        let shown: Vec<&&str> = policy().filter_tools(&offered);
        assert_eq!(shown, [&"send_email", &"read_invoice"]);
    }
}
