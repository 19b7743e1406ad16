//! The audit record as stored: an event plus its place in the chain and its seal.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{AgentId, ChainId, EventId, SessionId};

/// Length of an HMAC-SHA256 tag in bytes.
pub const HMAC_LEN: usize = 32;
/// The `prev_hmac` of the first row of every chain.
pub const ZERO_HMAC: [u8; HMAC_LEN] = [0; HMAC_LEN];

/// Whether a row carries an Ed25519 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureStatus {
    /// Signed by a registered signer.
    Signed,
    /// No signer configured.
    Unsigned,
    /// A signer was configured but could not load its key; the row was written unsigned.
    UnsignedLocalFailure,
}

impl SignatureStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signed => "signed",
            Self::Unsigned => "unsigned",
            Self::UnsignedLocalFailure => "unsigned_local_failure",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "signed" => Some(Self::Signed),
            "unsigned" => Some(Self::Unsigned),
            "unsigned_local_failure" => Some(Self::UnsignedLocalFailure),
            _ => None,
        }
    }
}

/// One row of the audit chain, exactly as stored.
///
/// Rows read back from storage are not trusted: ids are kept as the strings that were stored, so
/// that a tampered row is reported by the verifier instead of failing to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The chain.
    pub chain_id: String,
    /// Position in the chain, from 1.
    pub seq: i64,
    /// UUID v7 of the event.
    pub event_id: EventId,
    /// When it happened (microseconds).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The agent.
    pub agent_id: String,
    /// The session, if any.
    pub session_id: Option<String>,
    /// The kind.
    pub kind: String,
    /// The operator who acted, if any.
    pub actor: Option<String>,
    /// The causing event, if any.
    pub parent_event_id: Option<EventId>,
    /// Canonical JSON payload text, as hashed.
    pub payload: String,
    /// The previous row's `row_hmac`; zeros for seq 1.
    #[serde(with = "hex_bytes")]
    pub prev_hmac: Vec<u8>,
    /// Salted fingerprint of the HMAC key.
    pub key_id: String,
    /// HMAC-SHA256 over the canonical bytes of the fields above.
    #[serde(with = "hex_bytes")]
    pub row_hmac: Vec<u8>,
    /// Ed25519 signature over `row_hmac`, if signed.
    #[serde(with = "opt_hex_bytes", default)]
    pub signature: Option<Vec<u8>>,
    /// Id of the signing key, if signed.
    pub signer_key_id: Option<String>,
    /// Signature status as stored.
    pub signature_status: String,
}

impl AuditRecord {
    /// Builds the record for `event` at `seq` after `prev_hmac`, with an empty seal.
    pub fn unsealed(event: &AuditEvent, seq: i64, prev_hmac: &[u8], key_id: &str) -> Self {
        Self {
            chain_id: event.chain_id.as_str().to_owned(),
            seq,
            event_id: event.event_id,
            occurred_at: event.occurred_at,
            agent_id: event.agent_id.as_str().to_owned(),
            session_id: event.session_id.as_ref().map(|s| s.as_str().to_owned()),
            kind: event.kind.clone(),
            actor: event.actor.clone(),
            parent_event_id: event.parent_event_id,
            payload: event.payload.clone(),
            prev_hmac: prev_hmac.to_vec(),
            key_id: key_id.to_owned(),
            row_hmac: Vec::new(),
            signature: None,
            signer_key_id: None,
            signature_status: SignatureStatus::Unsigned.as_str().to_owned(),
        }
    }

    /// The payload parsed as JSON (it was canonical JSON when written).
    pub fn payload_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.payload).ok()
    }
}

use crate::event::AuditEvent;

/// The head of a chain: its last seq and that row's HMAC, as kept in the head row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// The chain.
    pub chain_id: String,
    /// Seq of the last row (0 for a chain with no rows).
    pub seq: i64,
    /// `row_hmac` of the last row (zeros for an empty chain).
    #[serde(with = "hex_bytes")]
    pub head_hmac: Vec<u8>,
}

/// How many events one agent wrote on one chain over a period: per kind, or in all when `kind`
/// is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventCount {
    /// The chain.
    pub chain_id: String,
    /// The agent.
    pub agent_id: String,
    /// The kind; `None` for the agent's total over every kind.
    pub kind: Option<String>,
    /// Events counted.
    pub events: u64,
    /// Distinct sessions among them.
    pub sessions: u64,
    /// The earliest `occurred_at`.
    #[serde(with = "time::serde::rfc3339")]
    pub first_at: OffsetDateTime,
    /// The latest `occurred_at`.
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
}

/// Which events to read. Every field narrows the result; `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this chain (default: the `default` chain).
    pub chain_id: Option<ChainId>,
    /// Only this agent.
    pub agent_id: Option<AgentId>,
    /// Only this session.
    pub session_id: Option<SessionId>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only events before this time.
    pub until: Option<OffsetDateTime>,
    /// Only rows with seq greater than this (keyset paging).
    pub after_seq: Option<i64>,
    /// At most this many rows (default 100, at most 10,000).
    pub limit: Option<u32>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(b.len() * 2);
        for x in b {
            out.push_str(&format!("{x:02x}"));
        }
        s.serialize_str(&out)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).ok_or_else(|| serde::de::Error::custom("expected lowercase hex"))
    }

    pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }
}

mod opt_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => super::hex_bytes::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::hex_bytes::decode(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("expected lowercase hex")),
            None => Ok(None),
        }
    }
}
