//! Key rotation markers: a `chain.key_rotated` row that is provable under the old and the new
//! key.
//!
//! The marker is the last row sealed with the old key: its `row_hmac` (old key) fixes it at its
//! seq and after its predecessor. Its payload carries the new key's fingerprint and `proof`, the
//! new key's HMAC over a rotation message naming the chain, the marker's event id and both
//! fingerprints. So a marker can only be made by someone holding both keys, and every row after
//! it must be sealed with the new key.
//!
//! Rotation message (`proof` input): `GOVROTAT`, version byte 1, then four fields, each a
//! 4-byte big-endian length and its bytes: chain id (UTF-8), event id (16 bytes), old key id,
//! new key id (UTF-8).

use gov_core::events::{ChainKeyRotated, EventKind, SystemEvent};
use gov_core::{AuditEvent, AuditRecord, EventError, EventId};

use crate::keys::{ChainKey, KeyRing};

/// The kind of a marker row.
pub const ROTATION_KIND: &str = EventKind::ChainKeyRotated.as_str();
/// The agent id marker rows are written under.
pub const ROTATION_AGENT: &str = "governance";
const MAGIC: &[u8; 8] = b"GOVROTAT";
const VERSION: u8 = 1;

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The bytes the new key's proof covers.
pub fn rotation_message(chain_id: &str, event_id: &[u8; 16], from: &str, to: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96 + chain_id.len());
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    field(&mut buf, chain_id.as_bytes());
    field(&mut buf, event_id);
    field(&mut buf, from.as_bytes());
    field(&mut buf, to.as_bytes());
    buf
}

/// The marker event for rotating `chain` from `old` to `new`; append it with `old` as the
/// sealing key.
pub fn marker_event(
    chain: &str,
    old: &ChainKey,
    new: &ChainKey,
    actor: &str,
    reason: &str,
) -> Result<AuditEvent, EventError> {
    let event_id = EventId::new_v7();
    let msg = rotation_message(
        chain,
        event_id.as_uuid().as_bytes(),
        old.key_id(),
        new.key_id(),
    );
    ChainKeyRotated {
        from_key_id: old.key_id().to_owned(),
        to_key_id: new.key_id().to_owned(),
        proof: hex::encode(new.tag(&msg)),
        reason: reason.to_owned(),
        version: u64::from(VERSION),
    }
    .event(ROTATION_AGENT)
    .chain(chain)
    .event_id(event_id)
    .actor(actor)
    .build()
}

/// Why a marker row does not prove a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerError {
    /// The payload is not a marker's, or names another old key than the one sealing the row.
    Malformed(String),
    /// The new key is not in the key ring, so the proof cannot be checked.
    UnknownNewKey(String),
    /// The proof does not verify under the new key.
    BadProof,
}

/// Checks a `chain.key_rotated` row (whose own seal was checked under its `key_id`): returns the
/// new key's fingerprint when its proof verifies.
pub fn check_marker(row: &AuditRecord, keys: &KeyRing) -> Result<String, MarkerError> {
    let p: serde_json::Value = serde_json::from_str(&row.payload)
        .map_err(|_| MarkerError::Malformed("the payload is not JSON".into()))?;
    let text = |k: &str| {
        p.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| MarkerError::Malformed(format!("the payload has no {k}")))
    };
    let (from, to, proof) = (text("from_key_id")?, text("to_key_id")?, text("proof")?);
    if from != row.key_id {
        return Err(MarkerError::Malformed(format!(
            "the marker names {from} as the old key but is sealed with {}",
            row.key_id
        )));
    }
    if to == from {
        return Err(MarkerError::Malformed(
            "the marker rotates a key to itself".into(),
        ));
    }
    let proof =
        hex::decode(&proof).map_err(|_| MarkerError::Malformed("the proof is not hex".into()))?;
    let new = keys
        .get(&to)
        .ok_or_else(|| MarkerError::UnknownNewKey(to.clone()))?;
    let msg = rotation_message(&row.chain_id, row.event_id.as_uuid().as_bytes(), &from, &to);
    if new.verify_tag(&msg, &proof) {
        Ok(to)
    } else {
        Err(MarkerError::BadProof)
    }
}
