//! The offline evidence bundle: one file that proves, with no database and no secret, that a
//! period's events of a chain are in the chain's Merkle tree under a signed (and perhaps
//! witnessed) checkpoint, together with the Article 12 report of that period (pure).
//!
//! The file is a DSSE envelope ([`crate::dsse`]) of payload type [`PAYLOAD_TYPE`], signed with
//! the log's Ed25519 key, whose key id is the log's verifier key (`origin+keyid+base64`). The
//! payload is the JSON [`Bundle`]: the events (every column a leaf is rebuilt from, and the
//! canonical encoding they make), a range proof (the hashes left and right of the events'
//! leaves, which with those leaves give the root), the C2SP checkpoint note with the witness
//! cosignatures stored for it, the keys, and the report. docs/audit-chain.md ("The evidence
//! bundle") specifies it byte for byte; [`verify`] checks all of it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use gov_core::{AuditRecord, EventId, SignatureStatus, ZERO_HMAC};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use crate::dsse::{self, Envelope};
use crate::note::{self, CheckpointText, LineCheck, TYPE_COSIGNATURE_V1, TYPE_ED25519, Vkey};
use crate::signing::Signer;
use crate::tree::{self, CompactRange, Hash};
use crate::{canonical, tree::hex32, tree::hex32s, tree::hexbytes};

/// The DSSE payload type of a bundle.
pub const PAYLOAD_TYPE: &str = "application/vnd.governance.evidence-bundle.v1+json";
/// The payload's `format`.
pub const FORMAT: &str = "governance.evidence-bundle.v1";
/// The `format` of the Article 12 report a bundle carries.
pub const REPORT_FORMAT: &str = "governance.article12.v1";

/// The period: events with `from <= occurred_at < to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// Start, included; `None` is the start of the record.
    #[serde(with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    /// End, excluded.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
}

impl Period {
    /// Whether `t` is in the period.
    pub fn contains(&self, t: OffsetDateTime) -> bool {
        self.from.is_none_or(|f| f <= t) && t < self.to
    }
}

/// The log: its origin and verifier key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogKey {
    /// `<log name>/<chain id>`.
    pub origin: String,
    /// `origin+hex(key ID)+base64(0x01 || Ed25519 public key)`.
    pub vkey: String,
}

/// The checkpoint the events are proven under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointPart {
    /// The tree size (a seq).
    pub size: u64,
    /// The root, hex.
    #[serde(with = "hex32")]
    pub root: Hash,
    /// The C2SP note: text, blank line, the log's signature line, then each witness's
    /// cosignature line.
    pub note: String,
}

/// A witness's verifier key as stored with its cosignature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessKey {
    /// `name+hex(key ID)+base64(0x04 || Ed25519 public key)`.
    pub vkey: String,
}

/// The range proof: the leaves of seqs `first_seq..=last_seq` (the events), with `left` (the
/// perfect subtrees of the leaves before them, largest first: one per set bit of
/// `first_seq - 1`) and `right` (the perfect subtrees covering the leaves after them up to the
/// tree size, left to right, each as large as alignment allows), give the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeProof {
    /// The first event's seq.
    pub first_seq: i64,
    /// The last event's seq.
    pub last_seq: i64,
    /// Hashes left of the range, hex.
    #[serde(with = "hex32s")]
    pub left: Vec<Hash>,
    /// Hashes right of the range, hex.
    #[serde(with = "hex32s")]
    pub right: Vec<Hash>,
}

/// One event: its row's columns as stored (what a leaf is rebuilt from), its canonical
/// encoding and its seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEvent {
    /// Its seq.
    pub seq: i64,
    /// Its id.
    pub event_id: EventId,
    /// When it happened (microseconds).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The agent.
    pub agent_id: String,
    /// The session.
    pub session_id: Option<String>,
    /// The kind.
    pub kind: String,
    /// The operator, where a person acted.
    pub actor: Option<String>,
    /// The causing event.
    pub parent_event_id: Option<EventId>,
    /// The payload text as stored.
    pub payload: String,
    /// The previous row's seal, hex.
    #[serde(with = "hexbytes")]
    pub prev_hmac: Vec<u8>,
    /// The sealing key's fingerprint.
    pub key_id: String,
    /// The signer the row was written for (encoding version 2).
    pub signer_key_id: Option<String>,
    /// The seal, hex.
    #[serde(with = "hexbytes")]
    pub row_hmac: Vec<u8>,
    /// The canonical encoding of the fields above (version 1 or 2), standard base64.
    pub canonical: String,
}

impl BundleEvent {
    /// The event of a stored row.
    pub fn from_record(r: &AuditRecord) -> Self {
        Self {
            seq: r.seq,
            event_id: r.event_id,
            occurred_at: r.occurred_at,
            agent_id: r.agent_id.clone(),
            session_id: r.session_id.clone(),
            kind: r.kind.clone(),
            actor: r.actor.clone(),
            parent_event_id: r.parent_event_id,
            payload: r.payload.clone(),
            prev_hmac: r.prev_hmac.clone(),
            key_id: r.key_id.clone(),
            signer_key_id: r.signer_key_id.clone(),
            row_hmac: r.row_hmac.clone(),
            canonical: B64.encode(canonical::encode(r)),
        }
    }

    /// The row the fields make (signature fields left out: they are not part of a leaf).
    pub fn to_record(&self, chain_id: &str) -> AuditRecord {
        AuditRecord {
            chain_id: chain_id.to_owned(),
            seq: self.seq,
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            agent_id: self.agent_id.clone(),
            session_id: self.session_id.clone(),
            kind: self.kind.clone(),
            actor: self.actor.clone(),
            parent_event_id: self.parent_event_id,
            payload: self.payload.clone(),
            prev_hmac: self.prev_hmac.clone(),
            key_id: self.key_id.clone(),
            row_hmac: self.row_hmac.clone(),
            signature: None,
            signer_key_id: self.signer_key_id.clone(),
            signature_status: SignatureStatus::Unsigned.as_str().to_owned(),
        }
    }
}

/// The payload of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`FORMAT`].
    pub format: String,
    /// The tool that made it.
    pub generator: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The chain.
    pub chain_id: String,
    /// The period.
    pub period: Period,
    /// The log's key.
    pub log: LogKey,
    /// The checkpoint.
    pub checkpoint: CheckpointPart,
    /// The witnesses whose cosignatures the note carries.
    pub witnesses: Vec<WitnessKey>,
    /// The range proof of the events.
    pub proof: RangeProof,
    /// The events of seqs `proof.first_seq..=proof.last_seq`: the period's, and those between
    /// them whose time is outside it.
    pub events: Vec<BundleEvent>,
    /// The Article 12 report (`governance.article12.v1`) of the chain over the period.
    pub report: serde_json::Value,
}

/// What the store gives for a bundle: the rows, the checkpoint and its proof.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The chain.
    pub chain_id: String,
    /// The log's verifier key (type 0x01; its name is the origin).
    pub log: Vkey,
    /// The tree size of the checkpoint.
    pub size: u64,
    /// Its root, recomputed from the rows.
    pub root: Hash,
    /// The signed note, with the stored cosignatures of that checkpoint appended.
    pub note: String,
    /// The witnesses whose cosignatures are appended.
    pub witnesses: Vec<Vkey>,
    /// The rows from the period's first event to its last, in seq order.
    pub rows: Vec<AuditRecord>,
    /// The hashes left of the rows.
    pub left: Vec<Hash>,
    /// The hashes right of the rows, up to the size.
    pub right: Vec<Hash>,
}

/// Why a bundle does not verify. Each has a short reason code ([`BundleError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    /// The bytes are not a DSSE envelope as governance writes one.
    #[error("not an evidence bundle: {0}")]
    Malformed(String),
    /// The envelope's key id is not a log verifier key, or not the pinned one.
    #[error("the envelope's key id {0}")]
    KeyId(String),
    /// The envelope's signature does not verify.
    #[error(
        "the envelope's signature does not verify under {0}: the file was changed, or signed by another key"
    )]
    Signature(String),
    /// The payload type is not a bundle's.
    #[error("the payload type is {0:?}, not {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    /// Verified, but not byte for byte as governance writes it.
    #[error(
        "the envelope is not byte for byte as governance writes it (first difference at byte {0}): it was changed or re-encoded"
    )]
    NotCanonical(usize),
    /// The payload names another log key than the envelope's.
    #[error("the log key: {0}")]
    LogKey(String),
    /// The signed payload is not a bundle.
    #[error("the signed payload is not an evidence bundle: {0}")]
    Payload(String),
    /// The checkpoint note does not verify or does not match the bundle.
    #[error("the checkpoint: {0}")]
    Checkpoint(String),
    /// A cosignature line does not verify.
    #[error("a witness cosignature: {0}")]
    Cosignature(String),
    /// A pinned witness did not cosign the checkpoint.
    #[error("the pinned witness {0}")]
    Witness(String),
    /// An event's fields differ from its sealed bytes.
    #[error(
        "event seq {seq}: its {field} differs from the event's sealed bytes (its canonical encoding)"
    )]
    EventFields {
        /// The event.
        seq: i64,
        /// The first field that differs.
        field: String,
    },
    /// The events are not the range the proof names, or do not link up.
    #[error("the events: {0}")]
    Events(String),
    /// The events' leaves do not lead to the checkpoint's root.
    #[error("the events are not in the checkpoint's tree: {0}")]
    NotIncluded(String),
    /// The report does not match the events.
    #[error("the report: {0}")]
    Report(String),
}

impl BundleError {
    /// The reason code (`--json`'s `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::KeyId(_) => "keyid",
            Self::Signature(_) => "envelope_signature",
            Self::PayloadType(_) => "payload_type",
            Self::NotCanonical(_) => "not_canonical",
            Self::LogKey(_) => "log_key",
            Self::Payload(_) => "payload",
            Self::Checkpoint(_) => "checkpoint",
            Self::Cosignature(_) => "cosignature",
            Self::Witness(_) => "witness",
            Self::EventFields { .. } => "event_fields",
            Self::Events(_) => "events",
            Self::NotIncluded(_) => "inclusion",
            Self::Report(_) => "report",
        }
    }
}

impl Bundle {
    /// The bundle of `evidence` with `report` (the report's JSON form).
    pub fn assemble(
        evidence: &Evidence,
        period: Period,
        report: serde_json::Value,
        generator: &str,
        created_at: OffsetDateTime,
    ) -> Self {
        let first = evidence.rows.first().map_or(0, |r| r.seq);
        let last = evidence.rows.last().map_or(0, |r| r.seq);
        Self {
            format: FORMAT.to_owned(),
            generator: generator.to_owned(),
            created_at,
            chain_id: evidence.chain_id.clone(),
            period,
            log: LogKey {
                origin: evidence.log.name.clone(),
                vkey: evidence.log.to_string(),
            },
            checkpoint: CheckpointPart {
                size: evidence.size,
                root: evidence.root,
                note: evidence.note.clone(),
            },
            witnesses: evidence
                .witnesses
                .iter()
                .map(|w| WitnessKey {
                    vkey: w.to_string(),
                })
                .collect(),
            proof: RangeProof {
                first_seq: first,
                last_seq: last,
                left: evidence.left.clone(),
                right: evidence.right.clone(),
            },
            events: evidence
                .rows
                .par_iter()
                .map(BundleEvent::from_record)
                .collect(),
            report,
        }
    }

    /// The file: the bundle as the payload of a DSSE envelope signed by `signer`, which must be
    /// the log's key.
    pub fn seal(&self, signer: &Signer) -> Result<Vec<u8>, BundleError> {
        let vkey = Vkey::new(&self.log.origin, TYPE_ED25519, signer.public_key())
            .map_err(|e| BundleError::LogKey(e.to_string()))?;
        if vkey.to_string() != self.log.vkey {
            return Err(BundleError::LogKey(
                "the signing key is not the log key the bundle names".into(),
            ));
        }
        let body = serde_json::to_vec(self).map_err(|e| BundleError::Payload(e.to_string()))?;
        Ok(Envelope::sign(PAYLOAD_TYPE, &body, signer, &self.log.vkey).to_bytes())
    }
}

/// Keys the verifier holds from elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// The log's verifier key (type 0x01).
    pub log: Option<Vkey>,
    /// Witnesses that must have cosigned the checkpoint (type 0x04).
    pub witnesses: Vec<Vkey>,
}

/// A witness cosignature that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WitnessCheck {
    /// The witness's name.
    pub name: String,
    /// Its verifier key.
    pub vkey: String,
    /// Whether that key was pinned.
    pub pinned: bool,
    /// The cosignature's timestamp (POSIX seconds).
    pub cosigned_at: u64,
}

/// What a bundle that verified holds, and what that proves and does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The chain.
    pub chain_id: String,
    /// The period.
    pub period: Period,
    /// Events in the bundle.
    pub events: u64,
    /// Of which in the period.
    pub events_in_period: u64,
    /// The first event's seq.
    pub first_seq: i64,
    /// The last event's seq.
    pub last_seq: i64,
    /// The checkpoint's origin.
    pub origin: String,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// Its root, hex.
    pub root: String,
    /// The log's verifier key.
    pub log_vkey: String,
    /// Whether it was pinned.
    pub log_key_pinned: bool,
    /// The witness cosignatures that verified.
    pub witnesses: Vec<WitnessCheck>,
    /// The report's verification status, as the exporter's `governance` found it.
    pub report_verification: String,
    /// What the bundle proves, one statement each.
    pub proves: Vec<String>,
    /// What it does not prove.
    pub does_not_prove: Vec<String>,
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Checks a bundle file with no database and no secret (docs/audit-chain.md, "The evidence
/// bundle", "Verification"), in order: the envelope and its signature (under the pinned log key,
/// or the key the envelope names), the bytes being exactly as governance writes them, the
/// checkpoint note under the log key, each cosignature (and each pinned witness), each event's
/// fields against its sealed bytes and its link to the previous event, the events' leaves
/// with the range proof against the checkpoint's root, and the report against the events.
pub fn verify(bytes: &[u8], pins: &Pins) -> Result<Verified, BundleError> {
    // 1. The envelope.
    let env = Envelope::parse(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let [sig] = env.signatures.as_slice() else {
        return Err(BundleError::Malformed(format!(
            "the envelope carries {} signatures; a bundle has exactly one",
            env.signatures.len()
        )));
    };
    let keyid = sig
        .keyid
        .as_deref()
        .ok_or_else(|| BundleError::Malformed("the signature names no keyid".into()))?;
    let named = Vkey::parse(keyid)
        .map_err(|e| BundleError::KeyId(format!("is not a verifier key: {e}")))?;
    if named.sig_type != TYPE_ED25519 {
        return Err(BundleError::KeyId(
            "is not an Ed25519 note key (type 0x01)".into(),
        ));
    }
    let key = pins.log.as_ref().unwrap_or(&named);
    let body = env.verify(PAYLOAD_TYPE, &key.public).map_err(|e| match e {
        dsse::DsseError::BadSignature => BundleError::Signature(if pins.log.is_some() {
            format!("the pinned log key {key}")
        } else {
            format!("the key the envelope names ({key})")
        }),
        dsse::DsseError::PayloadType { got, .. } => BundleError::PayloadType(got),
        e => BundleError::Malformed(e.to_string()),
    })?;
    if let Some(pinned) = &pins.log
        && pinned.to_string() != keyid
    {
        return Err(BundleError::KeyId(format!(
            "{keyid:?} is not the pinned log key {pinned}"
        )));
    }
    let sig_bytes = dsse::decode_base64(&sig.sig)
        .ok_or_else(|| BundleError::Malformed("the signature is not base64".into()))?;
    // The payload decoded, its text is governance's exactly when it is the standard alphabet,
    // padded (the decoder refuses other trailing bits); the rest is compared as written.
    let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let head = format!(
        "{{\"payloadType\":{},\"payload\":\"",
        json(&env.payload_type)
    );
    let tail = format!(
        "\",\"signatures\":[{{\"keyid\":{},\"sig\":\"{}\"}}]}}\n",
        json(keyid),
        B64.encode(sig_bytes)
    );
    let payload_ok = env.payload.len() % 4 == 0 && !env.payload.contains(['-', '_']);
    let expected_len = head.len() + env.payload.len() + tail.len();
    let same = payload_ok
        && bytes.len() == expected_len
        && bytes.starts_with(head.as_bytes())
        && bytes[head.len()..head.len() + env.payload.len()] == *env.payload.as_bytes()
        && bytes.ends_with(tail.as_bytes());
    if !same {
        let canonical = Envelope {
            payload_type: env.payload_type.clone(),
            payload: B64.encode(&body),
            signatures: vec![dsse::EnvelopeSignature {
                keyid: Some(keyid.to_owned()),
                sig: sig.sig.clone(),
            }],
        }
        .to_bytes();
        let mut canonical = canonical;
        if let Some(t) = canonical.len().checked_sub(tail.len()) {
            canonical.truncate(t);
            canonical.extend_from_slice(tail.as_bytes());
        }
        return Err(BundleError::NotCanonical(first_difference(
            &canonical, bytes,
        )));
    }

    // 2. The payload.
    let b: Bundle =
        serde_json::from_slice(&body).map_err(|e| BundleError::Payload(e.to_string()))?;
    if b.format != FORMAT {
        return Err(BundleError::Payload(format!(
            "format {:?}, expected {FORMAT:?}",
            b.format
        )));
    }
    if b.log.vkey != keyid {
        return Err(BundleError::LogKey(format!(
            "the payload names {}, the envelope {keyid}",
            b.log.vkey
        )));
    }
    if named.name != b.log.origin || !b.log.origin.ends_with(&format!("/{}", b.chain_id)) {
        return Err(BundleError::LogKey(format!(
            "the key's name {:?} is not the origin {:?} of chain {:?}",
            named.name, b.log.origin, b.chain_id
        )));
    }

    // 3. The checkpoint and its cosignatures.
    let witnesses = b
        .witnesses
        .iter()
        .map(|w| {
            Vkey::parse(&w.vkey)
                .ok()
                .filter(|k| k.sig_type == TYPE_COSIGNATURE_V1)
                .ok_or_else(|| {
                    BundleError::Cosignature(format!(
                        "{:?} is not a witness verifier key (type 0x04)",
                        w.vkey
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let parsed = note::Note::parse(&b.checkpoint.note)
        .map_err(|e| BundleError::Checkpoint(e.to_string()))?;
    let mut log_signed = false;
    let mut cosigned: Vec<WitnessCheck> = Vec::new();
    for line in &parsed.signatures {
        match note::check_line(&parsed.text, line, &named) {
            LineCheck::Valid(_) => {
                log_signed = true;
                continue;
            }
            LineCheck::Invalid => {
                return Err(BundleError::Checkpoint(format!(
                    "the log's signature of the note does not verify under {named}"
                )));
            }
            LineCheck::NotThisKey => {}
        }
        let mut mine = false;
        for w in &witnesses {
            match note::check_line(&parsed.text, line, w) {
                LineCheck::NotThisKey => {}
                LineCheck::Invalid => {
                    return Err(BundleError::Cosignature(format!(
                        "the cosignature of {} does not verify under {w}",
                        w.name
                    )));
                }
                LineCheck::Valid(t) => {
                    mine = true;
                    cosigned.push(WitnessCheck {
                        name: w.name.clone(),
                        vkey: w.to_string(),
                        pinned: pins.witnesses.iter().any(|p| p == w),
                        cosigned_at: t.unwrap_or_default(),
                    });
                }
            }
        }
        if !mine {
            return Err(BundleError::Cosignature(format!(
                "the note carries a signature line of {:?} by a key the bundle does not list",
                line.name
            )));
        }
    }
    if !log_signed {
        return Err(BundleError::Checkpoint(format!(
            "the note carries no signature of the log key {named}"
        )));
    }
    if let Some(w) = witnesses
        .iter()
        .find(|w| !cosigned.iter().any(|c| c.vkey == w.to_string()))
    {
        return Err(BundleError::Cosignature(format!(
            "the bundle lists witness {} but the note carries no cosignature of it",
            w.name
        )));
    }
    for p in &pins.witnesses {
        if !cosigned.iter().any(|c| c.vkey == p.to_string()) {
            let other = cosigned.iter().find(|c| c.name == p.name);
            return Err(BundleError::Witness(match other {
                Some(c) => format!(
                    "{} did not cosign the checkpoint with the pinned key: the bundle's cosignature of that name is by another key ({})",
                    p.name, c.vkey
                ),
                None => format!(
                    "{} did not cosign the checkpoint (no cosignature of it in the bundle)",
                    p.name
                ),
            }));
        }
    }
    let cp =
        CheckpointText::parse(&parsed.text).map_err(|e| BundleError::Checkpoint(e.to_string()))?;
    if cp.origin != b.log.origin {
        return Err(BundleError::Checkpoint(format!(
            "its origin {:?} is not the log's {:?}",
            cp.origin, b.log.origin
        )));
    }
    if cp.size != b.checkpoint.size || cp.root != b.checkpoint.root || !cp.extensions.is_empty() {
        return Err(BundleError::Checkpoint(
            "the note's size or root is not the bundle's".into(),
        ));
    }

    // 4. The events: contiguous, sealed bytes as the fields say, linked, in period at both ends.
    let (first, last) = (b.proof.first_seq, b.proof.last_seq);
    if b.events.is_empty() {
        return Err(BundleError::Events("the bundle holds no events".into()));
    }
    if first < 1 || last < first || (last - first + 1).unsigned_abs() != b.events.len() as u64 {
        return Err(BundleError::Events(format!(
            "{} events cannot be seqs {first} to {last}",
            b.events.len()
        )));
    }
    if last.unsigned_abs() > b.checkpoint.size {
        return Err(BundleError::Events(format!(
            "seq {last} is beyond the checkpoint's tree size {}",
            b.checkpoint.size
        )));
    }
    let leaves: Vec<Hash> = b
        .events
        .par_iter()
        .enumerate()
        .map(|(i, e)| check_event(&b.chain_id, first + i as i64, e))
        .collect::<Result<_, _>>()?;
    for (i, pair) in b.events.windows(2).enumerate() {
        if pair[1].prev_hmac != pair[0].row_hmac {
            return Err(BundleError::Events(format!(
                "seq {}'s prev_hmac is not seq {}'s row_hmac: the rows do not link up",
                first + i as i64 + 1,
                first + i as i64
            )));
        }
    }
    if first == 1 && b.events[0].prev_hmac != ZERO_HMAC {
        return Err(BundleError::Events(
            "seq 1's prev_hmac is not 32 zero bytes".into(),
        ));
    }
    let ends = [&b.events[0], &b.events[b.events.len() - 1]];
    if let Some(e) = ends.iter().find(|e| !b.period.contains(e.occurred_at)) {
        return Err(BundleError::Events(format!(
            "seq {} is at an end of the bundle's range but outside its period",
            e.seq
        )));
    }

    // 5. The range proof.
    let start = (first - 1).unsigned_abs();
    let mut range = CompactRange::from_hashes(start, &b.proof.left).ok_or_else(|| {
        BundleError::NotIncluded(format!(
            "{} hashes left of seq {first}; the tree needs {}",
            b.proof.left.len(),
            start.count_ones()
        ))
    })?;
    for l in leaves {
        range.push(l);
    }
    let right = tree::covering_subtrees(last.unsigned_abs(), b.checkpoint.size);
    if right.len() != b.proof.right.len() {
        return Err(BundleError::NotIncluded(format!(
            "{} hashes right of seq {last}; the tree of size {} needs {}",
            b.proof.right.len(),
            b.checkpoint.size,
            right.len()
        )));
    }
    for ((_, h), hash) in right.iter().zip(&b.proof.right) {
        range.push_subtree(*h, *hash);
    }
    if range.size() != b.checkpoint.size || range.root() != b.checkpoint.root {
        return Err(BundleError::NotIncluded(format!(
            "the leaves of seqs {first} to {last} with the proof's hashes give root {}, not the checkpoint's {}",
            hex::encode(range.root()),
            hex::encode(b.checkpoint.root)
        )));
    }

    // 6. The report.
    let in_period: Vec<&BundleEvent> = b
        .events
        .iter()
        .filter(|e| b.period.contains(e.occurred_at))
        .collect();
    let report_verification = check_report(&b, &in_period)?;

    let n = b.events.len() as u64;
    let m = in_period.len() as u64;
    let mut proves = vec![
        if pins.log.is_some() {
            format!("the file is signed by the log key you pinned ({keyid})")
        } else {
            format!(
                "the file is internally consistent and signed by the key it carries ({keyid}); that key was not pinned (--log-key), so nothing here says whose key it is"
            )
        },
        format!(
            "that key signs the checkpoint {} of tree size {} with root {}",
            b.log.origin,
            b.checkpoint.size,
            hex::encode(b.checkpoint.root)
        ),
    ];
    for w in &cosigned {
        proves.push(format!(
            "witness {} cosigned that checkpoint at {} (POSIX seconds), under {}",
            w.name,
            w.cosigned_at,
            if w.pinned {
                "the key you pinned"
            } else {
                "the key the bundle carries, not pinned (--witness-key)"
            }
        ));
    }
    proves.push(format!(
        "the {n} events of seqs {first} to {last} are, byte for byte as sealed (their fields, canonical encoding and row_hmac), leaves {} to {} of that tree, and each links to the one before it (prev_hmac)",
        first - 1,
        last - 1
    ));
    proves.push(format!(
        "the Article 12 report covers chain {} over the same period and counts the same {m} events of the period, by kind and by agent",
        b.chain_id
    ));
    let mut does_not_prove = vec![
        "the HMAC seals are not re-checked: that needs the audit secret (run governance verify against the database)".to_owned(),
        "the rows' Ed25519 signatures are not in the bundle and are not checked".to_owned(),
        format!(
            "that the period holds no other events: an event of the period stored before seq {first} or after seq {last} would not be in the bundle; the report's counts are the exporter's"
        ),
        "the rest of the report (decisions, halts, denials, coverage, verification status) is the exporter's statement, not recomputed here".to_owned(),
    ];
    if cosigned.is_empty() {
        does_not_prove.push(
            "no witness cosigned this checkpoint: whoever holds the log key could have signed another tree of the same size".to_owned(),
        );
    }
    if pins.log.is_none() {
        does_not_prove
            .push("who holds the log key: pin it with --log-key to check that".to_owned());
    }
    Ok(Verified {
        chain_id: b.chain_id.clone(),
        period: b.period.clone(),
        events: n,
        events_in_period: m,
        first_seq: first,
        last_seq: last,
        origin: b.log.origin.clone(),
        tree_size: b.checkpoint.size,
        root: hex::encode(b.checkpoint.root),
        log_vkey: keyid.to_owned(),
        log_key_pinned: pins.log.is_some(),
        witnesses: cosigned,
        report_verification,
        proves,
        does_not_prove,
    })
}

/// Checks one event at `seq`: its fields make exactly its sealed bytes; returns its leaf hash.
fn check_event(chain: &str, seq: i64, e: &BundleEvent) -> Result<Hash, BundleError> {
    if e.seq != seq {
        return Err(BundleError::Events(format!(
            "seq {} stands where seq {seq} should",
            e.seq
        )));
    }
    let sealed = dsse::decode_base64(&e.canonical).ok_or_else(|| BundleError::EventFields {
        seq,
        field: "canonical (not base64)".into(),
    })?;
    if e.row_hmac.len() != 32 || e.prev_hmac.len() != 32 {
        return Err(BundleError::EventFields {
            seq,
            field: "row_hmac or prev_hmac (not 32 bytes)".into(),
        });
    }
    if !e.occurred_at.nanosecond().is_multiple_of(1_000) {
        return Err(BundleError::EventFields {
            seq,
            field: "occurred_at (finer than a microsecond)".into(),
        });
    }
    let r = e.to_record(chain);
    let mut at = 0usize;
    for (name, part) in canonical::encode_fields(&r) {
        if sealed.get(at..at + part.len()) != Some(part.as_slice()) {
            return Err(BundleError::EventFields {
                seq,
                field: name.to_owned(),
            });
        }
        at += part.len();
    }
    if at != sealed.len() {
        return Err(BundleError::EventFields {
            seq,
            field: "signer_key_id (the sealed bytes hold more)".into(),
        });
    }
    Ok(tree::leaf_hash(&tree::leaf_data(&r)))
}

fn report_err(what: impl Into<String>) -> BundleError {
    BundleError::Report(what.into())
}

/// Checks the report against the events of the period; returns its verification status.
fn check_report(b: &Bundle, in_period: &[&BundleEvent]) -> Result<String, BundleError> {
    let r = &b.report;
    if r.get("format").and_then(|f| f.as_str()) != Some(REPORT_FORMAT) {
        return Err(report_err(format!("its format is not {REPORT_FORMAT:?}")));
    }
    let time = |v: &serde_json::Value| -> Result<Option<OffsetDateTime>, BundleError> {
        match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map(Some)
                    .map_err(|_| report_err(format!("{s:?} is not an RFC 3339 time")))
            }
            _ => Err(report_err("its period is not two times")),
        }
    };
    let from = time(&r["period"]["from"])?;
    let to = time(&r["period"]["to"])?;
    if from != b.period.from || to != Some(b.period.to) {
        return Err(report_err("its period is not the bundle's"));
    }
    if r["chains"] != serde_json::json!([b.chain_id]) {
        return Err(report_err(format!(
            "it does not cover chain {:?} alone",
            b.chain_id
        )));
    }
    let m = in_period.len() as u64;
    let count = |v: &serde_json::Value| v.as_u64();
    if count(&r["totals"]["events"]) != Some(m) {
        return Err(report_err(format!(
            "it counts {} events in the period; the bundle holds {m}",
            r["totals"]["events"]
        )));
    }
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_agent: BTreeMap<&str, u64> = BTreeMap::new();
    for e in in_period {
        *by_kind.entry(e.kind.as_str()).or_default() += 1;
        *by_agent.entry(e.agent_id.as_str()).or_default() += 1;
    }
    let kinds: BTreeMap<&str, u64> = r["events_by_kind"]
        .as_object()
        .ok_or_else(|| report_err("events_by_kind is not an object"))?
        .iter()
        .map(|(k, v)| {
            Ok((
                k.as_str(),
                count(v).ok_or_else(|| report_err("a count is not a number"))?,
            ))
        })
        .collect::<Result<_, BundleError>>()?;
    if kinds != by_kind {
        return Err(report_err(
            "its events by kind are not the bundle's events of the period by kind",
        ));
    }
    if count(&r["totals"]["agents"]) != Some(by_agent.len() as u64) {
        return Err(report_err("its count of agents is not the bundle's"));
    }
    let systems = r["systems"]
        .as_array()
        .ok_or_else(|| report_err("systems is not a list"))?;
    let mut agents: BTreeMap<&str, u64> = BTreeMap::new();
    for s in systems {
        if s["chain_id"].as_str() != Some(b.chain_id.as_str()) || count(&s["events"]) != Some(m) {
            return Err(report_err(
                "its systems are not the bundle's chain and count",
            ));
        }
        for a in s["agents"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let id = a["agent_id"]
                .as_str()
                .ok_or_else(|| report_err("an agent has no id"))?;
            *agents.entry(id).or_default() += count(&a["events"]).unwrap_or(u64::MAX);
        }
    }
    if agents != by_agent {
        return Err(report_err(
            "its events by agent are not the bundle's events of the period by agent",
        ));
    }
    Ok(r["verification"]["status"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{AuditSecret, ChainKey};
    use ed25519_dalek::SigningKey;
    use gov_core::AuditEvent;

    const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
    const LOG: &str = "example.com/gov";

    fn signer(byte: u8) -> Signer {
        Signer::from_key(SigningKey::from_bytes(&[byte; 32]), "test")
    }

    fn base() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap()
    }

    /// `n` sealed rows of chain `default`, row `s` at `base + s` seconds, two agents.
    fn rows(k: &ChainKey, n: i64) -> Vec<AuditRecord> {
        let mut prev = ZERO_HMAC.to_vec();
        (1..=n)
            .map(|seq| {
                let agent = if seq % 3 == 0 { "agent-b" } else { "agent-a" };
                let kind = if seq % 2 == 0 {
                    "tool.call"
                } else {
                    "invoice.read"
                };
                let ev = AuditEvent::builder(agent, kind)
                    .session("s-1")
                    .payload(serde_json::json!({ "n": seq }))
                    .build()
                    .unwrap();
                let mut r = AuditRecord::unsealed(&ev, seq, &prev, k.key_id());
                r.occurred_at = base() + time::Duration::seconds(seq);
                r.row_hmac = k.seal(&r).to_vec();
                prev.clone_from(&r.row_hmac);
                r
            })
            .collect()
    }

    /// The report the exporter would write for `events` over `period`.
    fn report(period: &Period, events: &[&AuditRecord]) -> serde_json::Value {
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let mut agents: BTreeMap<String, u64> = BTreeMap::new();
        for e in events {
            *kinds.entry(e.kind.clone()).or_default() += 1;
            *agents.entry(e.agent_id.clone()).or_default() += 1;
        }
        let fmt = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        serde_json::json!({
            "format": REPORT_FORMAT,
            "period": { "from": period.from.map(fmt), "to": fmt(period.to) },
            "chains": ["default"],
            "totals": { "events": events.len(), "agents": agents.len(), "sessions": agents.len() },
            "systems": [{
                "chain_id": "default",
                "events": events.len(),
                "agents": agents.iter().map(|(a, n)| serde_json::json!({"agent_id": a, "events": n})).collect::<Vec<_>>(),
            }],
            "events_by_kind": kinds,
            "verification": { "status": "clean" },
        })
    }

    /// A bundle of rows `a..=b` of a chain of `n` rows, proven at tree size `size`, cosigned by
    /// each of `witnesses` (name, key).
    fn bundle(n: i64, a: i64, b: i64, size: u64, witnesses: &[(&str, &Signer)]) -> Bundle {
        let k = AuditSecret::parse(SECRET).unwrap().chain_key();
        let all = rows(&k, n);
        let leaves: Vec<Hash> = all
            .iter()
            .map(|r| tree::leaf_hash(&tree::leaf_data(r)))
            .collect();
        let mut left = CompactRange::default();
        for l in &leaves[..(a - 1) as usize] {
            left.push(*l);
        }
        let right = tree::covering_subtrees(b as u64, size)
            .into_iter()
            .map(|(s, h)| tree::root_of(&leaves[s as usize..s as usize + (1 << h)]))
            .collect();
        let root = tree::root_of(&leaves[..size as usize]);
        let log = signer(1);
        let signed = crate::checkpoint::sign_note(&log, LOG, "default", size, root).unwrap();
        let mut note = note::Note::parse(&signed.note).unwrap();
        let mut wkeys = Vec::new();
        for (name, w) in witnesses {
            note.signatures
                .push(note::cosign(&note.text, name, w, 1_767_300_000).unwrap());
            wkeys.push(Vkey::new(name, TYPE_COSIGNATURE_V1, w.public_key()).unwrap());
        }
        let period = Period {
            from: Some(base() + time::Duration::seconds(a)),
            to: base() + time::Duration::seconds(b + 1),
        };
        let span = all[(a - 1) as usize..b as usize].to_vec();
        let in_period: Vec<&AuditRecord> = span.iter().collect();
        let ev = Evidence {
            chain_id: "default".into(),
            log: Vkey::new(&format!("{LOG}/default"), TYPE_ED25519, log.public_key()).unwrap(),
            size,
            root,
            note: note.render(),
            witnesses: wkeys,
            rows: span.clone(),
            left: left.hashes(),
            right,
        };
        let r = report(&period, &in_period);
        Bundle::assemble(&ev, period, r, "governance test", base())
    }

    fn sealed(b: &Bundle) -> Vec<u8> {
        b.seal(&signer(1)).unwrap()
    }

    fn log_pin() -> Vkey {
        Vkey::new(
            &format!("{LOG}/default"),
            TYPE_ED25519,
            signer(1).public_key(),
        )
        .unwrap()
    }

    #[test]
    fn a_bundle_verifies_and_says_what_it_proves() {
        for (n, a, b, size) in [(1, 1, 1, 1), (9, 3, 5, 9), (20, 7, 12, 13), (16, 1, 16, 16)] {
            let file = sealed(&bundle(n, a, b, size, &[]));
            let v = verify(&file, &Pins::default()).expect("verifies");
            assert_eq!((v.first_seq, v.last_seq, v.tree_size), (a, b, size));
            assert_eq!(v.events, (b - a + 1) as u64);
            assert!(!v.log_key_pinned);
            assert!(v.proves[0].contains("not pinned"), "{:?}", v.proves);
            assert!(
                v.does_not_prove
                    .iter()
                    .any(|s| s.contains("HMAC seals are not re-checked"))
            );
            assert!(
                v.does_not_prove
                    .iter()
                    .any(|s| s.contains("no witness cosigned"))
            );
            let pinned = Pins {
                log: Some(log_pin()),
                witnesses: vec![],
            };
            let v = verify(&file, &pinned).expect("verifies pinned");
            assert!(v.log_key_pinned);
        }
    }

    #[test]
    fn a_witness_pinned_must_have_cosigned_with_that_key() {
        let w = signer(7);
        let other = signer(8);
        let file = sealed(&bundle(9, 3, 5, 9, &[("witness.example/w1", &w)]));
        let key = |s: &Signer| {
            Vkey::new("witness.example/w1", TYPE_COSIGNATURE_V1, s.public_key()).unwrap()
        };
        let v = verify(
            &file,
            &Pins {
                log: Some(log_pin()),
                witnesses: vec![key(&w)],
            },
        )
        .expect("verifies");
        assert_eq!(v.witnesses.len(), 1);
        assert!(v.witnesses[0].pinned);
        let e = verify(
            &file,
            &Pins {
                log: None,
                witnesses: vec![key(&other)],
            },
        )
        .unwrap_err();
        assert_eq!(e.reason(), "witness", "{e}");
        assert!(e.to_string().contains("another key"), "{e}");
        // Unpinned, the carried key verifies it and says so.
        let v = verify(&file, &Pins::default()).unwrap();
        assert!(!v.witnesses[0].pinned);
        assert!(
            v.proves
                .iter()
                .any(|p| p.contains("not pinned (--witness-key)"))
        );
    }

    /// Every byte of a small bundle, and a sample of the payload's bytes, flipped: each fails
    /// with a named reason, none panics.
    #[test]
    fn any_changed_byte_fails_with_a_reason() {
        let file = sealed(&bundle(4, 2, 3, 4, &[("witness.example/w1", &signer(7))]));
        let payload_at = file
            .windows(11)
            .position(|w| w == b"\"payload\":\"")
            .unwrap()
            + 11;
        let payload_end = payload_at + file[payload_at..].iter().position(|c| *c == b'"').unwrap();
        let mut reasons = BTreeMap::new();
        for i in 0..file.len() {
            if (payload_at..payload_end).contains(&i) && i % 5 != 0 {
                continue;
            }
            let mask = [0x01u8, 0x20, 0x80][i % 3];
            let mut bad = file.clone();
            bad[i] ^= mask;
            let pins = if i % 2 == 0 {
                Pins::default()
            } else {
                Pins {
                    log: Some(log_pin()),
                    witnesses: vec![],
                }
            };
            let e = verify(&bad, &pins).expect_err(&format!("byte {i} ^ {mask:#04x} must fail"));
            *reasons.entry(e.reason()).or_insert(0) += 1;
        }
        assert!(reasons.contains_key("envelope_signature"), "{reasons:?}");
        assert!(reasons.contains_key("malformed"), "{reasons:?}");
        assert!(reasons.contains_key("keyid"), "{reasons:?}");
    }

    /// Someone holding the log key re-signs a changed payload: each check still names what
    /// changed.
    #[test]
    fn changes_signed_by_the_log_key_are_caught_by_the_checks_after_the_signature() {
        let good = bundle(12, 4, 8, 12, &[("witness.example/w1", &signer(7))]);
        let fails = |b: &Bundle, reason: &str| {
            let e = verify(&sealed(b), &Pins::default()).unwrap_err();
            assert_eq!(e.reason(), reason, "{e}");
            e.to_string()
        };
        // A readable field that is not what was sealed.
        let mut b = good.clone();
        b.events[2].agent_id = "someone-else".into();
        assert!(fails(&b, "event_fields").contains("agent_id"));
        // Fields and canonical bytes changed together: no longer the leaf in the tree.
        let mut b = good.clone();
        b.events[2].payload = "{\"n\":99}".into();
        b.events[2].canonical = B64.encode(canonical::encode(&b.events[2].to_record("default")));
        fails(&b, "inclusion");
        // A proof hash changed.
        let mut b = good.clone();
        b.proof.right[0][0] ^= 1;
        fails(&b, "inclusion");
        // An event dropped from the middle: the seqs no longer run.
        let mut b = good.clone();
        b.events.remove(2);
        fails(&b, "events");
        // The last event dropped with the proof adjusted: the report no longer counts it.
        let mut b = good.clone();
        b.events.pop();
        b.proof.last_seq -= 1;
        let e = fails(&b, "inclusion");
        assert!(e.contains("hashes right") || e.contains("root"), "{e}");
        // The report's count changed.
        let mut b = good.clone();
        b.report["totals"]["events"] = serde_json::json!(4);
        fails(&b, "report");
        let mut b = good.clone();
        b.report["events_by_kind"]["tool.call"] = serde_json::json!(1);
        fails(&b, "report");
        let mut b = good.clone();
        b.report["chains"] = serde_json::json!(["default", "billing"]);
        fails(&b, "report");
        // Another period than the report's.
        let mut b = good.clone();
        b.period.to += time::Duration::seconds(1);
        fails(&b, "report");
        // The witness's cosignature dropped from the note, the witness still listed.
        let mut b = good.clone();
        let mut n = note::Note::parse(&b.checkpoint.note).unwrap();
        n.signatures.truncate(1);
        b.checkpoint.note = n.render();
        fails(&b, "cosignature");
        // The note re-signed over another root.
        let mut b = good.clone();
        b.checkpoint.root[0] ^= 1;
        fails(&b, "checkpoint");
        // Another log key than the envelope's.
        let mut b = good.clone();
        b.log.vkey = Vkey::new(&b.log.origin, TYPE_ED25519, signer(2).public_key())
            .unwrap()
            .to_string();
        assert!(matches!(b.seal(&signer(1)), Err(BundleError::LogKey(_))));
        // A link broken (prev_hmac changed in the fields and the sealed bytes).
        let mut b = good.clone();
        b.events[3].prev_hmac[0] ^= 1;
        b.events[3].canonical = B64.encode(canonical::encode(&b.events[3].to_record("default")));
        fails(&b, "events");
        // Signed by another key than the one pinned.
        let file = sealed(&good);
        let e = verify(
            &file,
            &Pins {
                log: Some(
                    Vkey::new(&good.log.origin, TYPE_ED25519, signer(2).public_key()).unwrap(),
                ),
                witnesses: vec![],
            },
        )
        .unwrap_err();
        assert_eq!(e.reason(), "envelope_signature", "{e}");
    }
}
