//! Gate requests (human in the loop) and operator roles, as plain data.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Where a gate request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// Waiting for an operator.
    Pending,
    /// Approved; the approval may be used once.
    Approved,
    /// Denied.
    Denied,
    /// Approved and used.
    Consumed,
}

impl GateStatus {
    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "consumed" => Self::Consumed,
            _ => return None,
        })
    }
}

/// A gate request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    /// Request id.
    pub id: Uuid,
    /// The requesting agent.
    pub agent_id: String,
    /// Its session.
    pub session_id: Option<String>,
    /// The tool it wants to call.
    pub tool: String,
    /// SHA-256 over the tool and canonical arguments (see `action_hash`).
    pub action_hash: Vec<u8>,
    /// The canonical arguments, for the operator to read.
    pub args: String,
    /// When it was asked.
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    /// When the request lapses if undecided.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Where it stands (a pending request past `expires_at` is expired).
    pub status: GateStatus,
    /// The operator who decided.
    pub decided_by: Option<String>,
    /// Why.
    pub decision_reason: Option<String>,
    /// Until when an approval may be used.
    #[serde(with = "time::serde::rfc3339::option")]
    pub token_expires_at: Option<OffsetDateTime>,
    /// How it is approved: resolved by the store when the request is asked (never by the
    /// asker), then fixed for the request's life.
    #[serde(default)]
    pub workflow: GateWorkflow,
}

/// A request's approval workflow and where its votes stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateWorkflow {
    /// The workflow's name (`None`: no route matched, one approval from any operator).
    #[serde(default)]
    pub name: Option<String>,
    /// Distinct approvals needed.
    #[serde(default = "one")]
    pub quorum: u32,
    /// Approvals given so far.
    #[serde(default)]
    pub approvals: u32,
    /// The group whose members may vote (`None`: any operator).
    #[serde(default)]
    pub approver_group: Option<String>,
    /// The group that may vote too once the request is escalated.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// When the request escalates if still pending.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub escalates_at: Option<OffsetDateTime>,
    /// When it was escalated.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub escalated_at: Option<OffsetDateTime>,
    /// When it was denied for expiring undecided.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expired_at: Option<OffsetDateTime>,
    /// The session grant that approved it when it was asked.
    #[serde(default)]
    pub grant_id: Option<Uuid>,
}

fn one() -> u32 {
    1
}

impl Default for GateWorkflow {
    fn default() -> Self {
        Self {
            name: None,
            quorum: 1,
            approvals: 0,
            approver_group: None,
            escalate_to: None,
            escalates_at: None,
            escalated_at: None,
            expired_at: None,
            grant_id: None,
        }
    }
}

/// A named approval workflow, as operators configure it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowSpec {
    /// Its name (letters, digits and `._:@-`, at most 64).
    pub name: String,
    /// Distinct approvals needed (1 to 10; 2 is four-eyes).
    pub quorum: u32,
    /// The group whose members may approve (`None`: any operator).
    pub approver_group: Option<String>,
    /// The group that may approve too after [`escalate_after_secs`](Self::escalate_after_secs).
    pub escalate_to: Option<String>,
    /// Seconds after the request before it escalates.
    pub escalate_after_secs: Option<u64>,
    /// Seconds a request waits before it is denied for expiring (it never waits longer than the
    /// asker's own request lifetime).
    pub timeout_secs: Option<u64>,
}

/// Which requests follow a workflow: an agent and a tool, each exact or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRoute {
    /// The agent, or `*`.
    pub agent_id: String,
    /// The tool, or `*`.
    pub tool: String,
    /// The workflow's name.
    pub workflow: String,
}

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorRole {
    /// Read only.
    Viewer,
    /// Approve, deny, halt, resume.
    Operator,
    /// Everything, including users.
    Admin,
}

impl OperatorRole {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Self::Viewer,
            "operator" => Self::Operator,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}
