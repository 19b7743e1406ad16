//! The export file: JSON Lines, version 1.
//!
//! Line 1 is the header (`format`, `version`, the chains and their heads), then one line per
//! signer key, per audit row (chain by chain, in seq order) and per checkpoint, and last an
//! `end` line counting them, so that a cut-off file is told from a whole one. Bytes are
//! lowercase hex; times are RFC 3339 in UTC with every fractional digit kept (a row's
//! `occurred_at` is sealed to the microsecond). Rows carry every stored field of an audit row,
//! so they import verbatim and still verify. This module only converts and checks lines; it
//! does no I/O of its own.
//!
//! A line's own shape is checked here ([`RowLine::into_record`] and the others); how lines fit
//! together (sections, links between rows, the trailer's counts) is the import's check.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use gov_core::{AuditRecord, EventId, MAX_PAYLOAD_BYTES};
use gov_store::{CheckpointRow, SignerKeyRow};

/// The header's `format`.
pub const FORMAT: &str = "governance-export";
/// The file version this build writes and reads.
pub const VERSION: u64 = 1;
/// Longest line read (a 64 KiB payload escaped as `\u00XX` stays well below it).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Bytes as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hex(pub(crate) Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex_encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex_decode(&s)
            .map(Hex)
            .ok_or_else(|| serde::de::Error::custom("expected lowercase hex digits"))
    }
}

pub(crate) fn hex_encode(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 0x0f)]));
    }
    out
}

/// Strict: an even number of lowercase hex digits.
pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// An instant written in UTC with every fractional digit, read back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Instant(pub(crate) OffsetDateTime);

impl Serialize for Instant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self
            .0
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Instant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339)
            .map(|t| Instant(t.to_offset(time::UtcOffset::UTC)))
            .map_err(|e| serde::de::Error::custom(format!("expected an RFC 3339 time: {e}")))
    }
}

impl Instant {
    /// Whether the instant has no digit below the microsecond (what the databases store).
    pub(crate) fn whole_micros(self) -> bool {
        self.0.nanosecond().is_multiple_of(1_000)
    }
}

/// Line 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Always [`FORMAT`].
    pub(crate) format: String,
    /// Always [`VERSION`] when written by this build.
    pub(crate) version: u64,
    /// When the export started.
    pub(crate) exported_at: Instant,
    /// `governance <version>`.
    pub(crate) generator: String,
    /// The source backend: `postgres` or `sqlite`.
    pub(crate) source: String,
    /// Each chain exported and the head its rows end at.
    pub(crate) chains: Vec<HeaderChain>,
}

/// A chain in the header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeaderChain {
    /// The chain.
    pub(crate) chain_id: String,
    /// The seq of its last exported row (0: no rows).
    pub(crate) seq: i64,
    /// That row's `row_hmac` (32 zero bytes with no rows).
    pub(crate) head_hmac: Hex,
    /// When the chain's older rows were archived and removed (`governance archive`): the last
    /// removed seq and its seal, which the file's first row links to. Absent: rows start at 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) starts_after: Option<StartsAfter>,
}

/// Where a chain's rows in a file start, when not at seq 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StartsAfter {
    /// The seq before the file's first row of the chain.
    pub(crate) seq: i64,
    /// That row's `row_hmac`.
    pub(crate) row_hmac: Hex,
}

/// Every line after the header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Line {
    /// A registered Ed25519 signer key.
    Signer(SignerLine),
    /// An audit row, exactly as stored.
    Row(Box<RowLine>),
    /// A signed chain head.
    Checkpoint(CheckpointLine),
    /// The trailer.
    End(EndLine),
}

/// A signer key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SignerLine {
    pub(crate) signer_key_id: String,
    pub(crate) public_key: Hex,
    pub(crate) label: String,
    pub(crate) created_at: Instant,
    pub(crate) revoked_at: Option<Instant>,
}

/// An audit row: every stored field of [`AuditRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RowLine {
    pub(crate) chain_id: String,
    pub(crate) seq: i64,
    pub(crate) event_id: uuid::Uuid,
    pub(crate) occurred_at: Instant,
    pub(crate) agent_id: String,
    pub(crate) session_id: Option<String>,
    pub(crate) kind: String,
    pub(crate) actor: Option<String>,
    pub(crate) parent_event_id: Option<uuid::Uuid>,
    /// The stored canonical JSON text, as a JSON string (never re-serialised).
    pub(crate) payload: String,
    pub(crate) prev_hmac: Hex,
    pub(crate) key_id: String,
    pub(crate) row_hmac: Hex,
    pub(crate) signature: Option<Hex>,
    pub(crate) signer_key_id: Option<String>,
    pub(crate) signature_status: String,
}

/// A checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointLine {
    pub(crate) chain_id: String,
    pub(crate) seq: i64,
    pub(crate) head_hmac: Hex,
    pub(crate) signed_at: Instant,
    pub(crate) signer_key_id: String,
    pub(crate) signature: Hex,
}

/// The trailer: what the file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndLine {
    pub(crate) rows: u64,
    #[serde(default)]
    pub(crate) signers: Option<u64>,
    #[serde(default)]
    pub(crate) checkpoints: Option<u64>,
}

impl From<&SignerKeyRow> for SignerLine {
    fn from(r: &SignerKeyRow) -> Self {
        Self {
            signer_key_id: r.signer_key_id.clone(),
            public_key: Hex(r.public_key.clone()),
            label: r.label.clone(),
            created_at: Instant(r.created_at),
            revoked_at: r.revoked_at.map(Instant),
        }
    }
}

impl SignerLine {
    /// The stored form, or what is wrong with the line.
    pub(crate) fn to_row(&self) -> Result<SignerKeyRow, String> {
        if self.signer_key_id.is_empty() {
            return Err("a signer without a signer_key_id".into());
        }
        if self.public_key.0.len() != 32 {
            return Err(format!(
                "signer {}: public_key has {} bytes, not 32",
                self.signer_key_id,
                self.public_key.0.len()
            ));
        }
        Ok(SignerKeyRow {
            signer_key_id: self.signer_key_id.clone(),
            public_key: self.public_key.0.clone(),
            label: self.label.clone(),
            created_at: self.created_at.0,
            revoked_at: self.revoked_at.map(|t| t.0),
        })
    }
}

impl From<&AuditRecord> for RowLine {
    fn from(r: &AuditRecord) -> Self {
        Self {
            chain_id: r.chain_id.clone(),
            seq: r.seq,
            event_id: r.event_id.as_uuid(),
            occurred_at: Instant(r.occurred_at),
            agent_id: r.agent_id.clone(),
            session_id: r.session_id.clone(),
            kind: r.kind.clone(),
            actor: r.actor.clone(),
            parent_event_id: r.parent_event_id.map(|p| p.as_uuid()),
            payload: r.payload.clone(),
            prev_hmac: Hex(r.prev_hmac.clone()),
            key_id: r.key_id.clone(),
            row_hmac: Hex(r.row_hmac.clone()),
            signature: r.signature.clone().map(Hex),
            signer_key_id: r.signer_key_id.clone(),
            signature_status: r.signature_status.clone(),
        }
    }
}

impl RowLine {
    /// The stored form, or what is wrong with the line. Seals are not checked here (that needs
    /// the audit secret: `governance verify` does it); shapes are.
    pub(crate) fn into_record(self) -> Result<AuditRecord, String> {
        let at = |m: &str| format!("row {} of chain {}: {m}", self.seq, self.chain_id);
        for (name, b) in [("prev_hmac", &self.prev_hmac), ("row_hmac", &self.row_hmac)] {
            if b.0.len() != 32 {
                return Err(at(&format!("{name} has {} bytes, not 32", b.0.len())));
            }
        }
        if let Some(sig) = &self.signature
            && sig.0.len() != 64
        {
            return Err(at(&format!("signature has {} bytes, not 64", sig.0.len())));
        }
        if !matches!(
            self.signature_status.as_str(),
            "signed" | "unsigned" | "unsigned_local_failure"
        ) {
            return Err(at(&format!(
                "unknown signature_status {:?}",
                self.signature_status
            )));
        }
        if !self.occurred_at.whole_micros() {
            return Err(at(
                "occurred_at has digits below the microsecond, which the chain does not store",
            ));
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(at(&format!(
                "the payload has {} bytes, more than the {} a row may hold",
                self.payload.len(),
                MAX_PAYLOAD_BYTES
            )));
        }
        Ok(AuditRecord {
            chain_id: self.chain_id,
            seq: self.seq,
            event_id: EventId::from_uuid(self.event_id),
            occurred_at: self.occurred_at.0,
            agent_id: self.agent_id,
            session_id: self.session_id,
            kind: self.kind,
            actor: self.actor,
            parent_event_id: self.parent_event_id.map(EventId::from_uuid),
            payload: self.payload,
            prev_hmac: self.prev_hmac.0,
            key_id: self.key_id,
            row_hmac: self.row_hmac.0,
            signature: self.signature.map(|s| s.0),
            signer_key_id: self.signer_key_id,
            signature_status: self.signature_status,
        })
    }
}

impl From<&CheckpointRow> for CheckpointLine {
    fn from(c: &CheckpointRow) -> Self {
        Self {
            chain_id: c.chain_id.clone(),
            seq: c.seq,
            head_hmac: Hex(c.head_hmac.clone()),
            signed_at: Instant(c.signed_at),
            signer_key_id: c.signer_key_id.clone(),
            signature: Hex(c.signature.clone()),
        }
    }
}

impl CheckpointLine {
    /// The stored form, or what is wrong with the line.
    pub(crate) fn to_row(&self) -> Result<CheckpointRow, String> {
        let at = |m: &str| {
            format!(
                "checkpoint of chain {} at seq {}: {m}",
                self.chain_id, self.seq
            )
        };
        if self.seq < 1 {
            return Err(at("its seq is below 1"));
        }
        if self.head_hmac.0.len() != 32 {
            return Err(at("head_hmac is not 32 bytes"));
        }
        if self.signature.0.len() != 64 {
            return Err(at("signature is not 64 bytes"));
        }
        if !self.signed_at.whole_micros() {
            return Err(at("signed_at has digits below the microsecond"));
        }
        Ok(CheckpointRow {
            chain_id: self.chain_id.clone(),
            seq: self.seq,
            head_hmac: self.head_hmac.0.clone(),
            signed_at: self.signed_at.0,
            signer_key_id: self.signer_key_id.clone(),
            signature: self.signature.0.clone(),
        })
    }
}

/// One line of JSON (no newline), or why the value cannot be written (a time beyond year 9999).
pub(crate) fn to_line<T: Serialize>(v: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_strict() {
        assert_eq!(hex_encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(hex_decode("00ABff"), None);
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode(""), Some(vec![]));
    }

    #[test]
    fn instants_round_trip_to_the_microsecond() {
        for nanos in [0_i128, 1_000, 123_456_000, 999_999_000, 100_000_000] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(1_780_000_000_000_000_000 + nanos)
                .expect("time");
            let text = serde_json::to_string(&Instant(t)).expect("ser");
            let back: Instant = serde_json::from_str(&text).expect("de");
            assert_eq!(back.0, t, "{text}");
            assert!(text.ends_with("Z\""), "{text}");
        }
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_780_000_000_000_000_500).expect("t");
        assert!(!Instant(t).whole_micros());
        // Another offset reads back as the same instant.
        let back: Instant =
            serde_json::from_str("\"2026-05-28T22:13:20.000001+02:00\"").expect("de");
        assert_eq!(back.0.unix_timestamp_nanos() % 1_000_000_000, 1_000);
    }

    #[test]
    fn a_row_line_round_trips_every_field() {
        let rec = AuditRecord {
            chain_id: "default".into(),
            seq: 7,
            event_id: EventId::new_v7(),
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(1_780_000_000_123_456_000)
                .expect("t"),
            agent_id: "agent-1".into(),
            session_id: Some(String::new()),
            kind: "tool.call".into(),
            actor: None,
            parent_event_id: Some(EventId::new_v7()),
            payload: "{\"a\":\"\\u0000é\\\"\"}".into(),
            prev_hmac: vec![1; 32],
            key_id: "hk1_x".into(),
            row_hmac: vec![2; 32],
            signature: Some(vec![3; 64]),
            signer_key_id: Some("ed1_y".into()),
            signature_status: "signed".into(),
        };
        let text = to_line(&Line::Row(Box::new(RowLine::from(&rec)))).expect("line");
        assert!(text.starts_with("{\"type\":\"row\""), "{text}");
        let Line::Row(back) = serde_json::from_str::<Line>(&text).expect("de") else {
            panic!("not a row: {text}");
        };
        assert_eq!(back.into_record().expect("valid"), rec);
    }
}
