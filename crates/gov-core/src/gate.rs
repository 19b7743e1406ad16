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
