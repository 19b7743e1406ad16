//! Personal fields and crypto-shredding: the encrypted field envelope, data subjects' keys and
//! their wrapping.
//!
//! A top-level payload field marked personal ([`gov_core::AuditEventBuilder::personal`]) is
//! replaced, before the event is sealed, spooled or stored, by an envelope
//!
//! ```text
//! {"$gov.enc":"v1","ct":B64,"kid":KID,"nonce":B64,"subject":SUBJECT}
//! ```
//!
//! where `ct` is XChaCha20-Poly1305 under the subject's 256-bit key `KID` over the field's value
//! as JSON, with a random 24-byte `nonce`, and associated data binding the event id, the field's
//! name, the subject and the key id (so a ciphertext moved to another event or field, or
//! relabelled, fails to open). The chain seals the payload as stored, envelopes included, so
//! destroying a key (an erasure) leaves every seal, proof and bundle intact.
//!
//! A subject's keys are stored wrapped (XChaCha20-Poly1305 under a key-encryption key derived
//! from the audit secret, [`crate::AuditSecret::subject_kek`]) in `subject_keys`: a copy of the
//! database alone opens nothing.
//!
//! # Invariants
//!
//! - Pure: no storage, no clock; randomness only for new keys and nonces.
//! - Opening never fails: a field whose key is gone reads [`ERASED`], one whose key is present
//!   but whose ciphertext does not authenticate (moved, altered) reads [`UNREADABLE`]; the two
//!   are never confused.
//! - docs/audit-chain.md ("Personal fields") is the byte-for-byte format; changing it means a
//!   new envelope version.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use gov_core::{AuditEvent, ENVELOPE_TAG};
use serde_json::{Map, Value};
use thiserror::Error;
use zeroize::Zeroizing;

/// The envelope version this build writes and reads.
pub const VERSION: &str = "v1";
/// What a field reads as once its subject's key is destroyed.
pub const ERASED: &str = "[erased]";
/// What a field reads as when its key exists but its ciphertext does not authenticate: it was
/// moved to another event or field, or altered (an integrity problem, never an erasure).
pub const UNREADABLE: &str = "[unreadable: integrity check failed]";

const FIELD_AAD_MAGIC: &[u8] = b"GOVPII";
const WRAP_AAD_MAGIC: &[u8] = b"GOVSKEY";
const AAD_VERSION: u8 = 0x01;
/// Length of a wrapped key: 24-byte nonce, 32-byte key, 16-byte tag.
pub const WRAPPED_LEN: usize = 24 + 32 + 16;

/// Why a field could not be encrypted or a key unwrapped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PersonalError {
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// The event's personal marking does not fit (another subject than the key's, a missing
    /// field).
    #[error("personal fields: {0}")]
    Marking(String),
    /// The payload with its envelopes is refused by the event's checks (too large).
    #[error(transparent)]
    Event(#[from] gov_core::EventError),
    /// A stored key does not unwrap under this audit secret's key-encryption key (another
    /// secret wrapped it, or the row was altered).
    #[error(
        "the key {kid} of a data subject does not unwrap under this audit secret (another secret wrapped it, or the row was altered)"
    )]
    Unwrap {
        /// The key id.
        kid: String,
    },
}

fn field(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths here are bounded by the payload cap (64 KiB) and id limits.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, PersonalError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut()).map_err(|_| PersonalError::Random)?;
    Ok(b)
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    match XChaCha20Poly1305::new_from_slice(key) {
        Ok(c) => c,
        Err(_) => unreachable!("XChaCha20-Poly1305 keys are 32 bytes"),
    }
}

/// One key of a data subject. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct SubjectKey {
    subject: String,
    kid: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey")
            .field("subject", &self.subject)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// A fresh random key for `subject`, with a fresh key id (a UUID v7).
    pub fn generate(subject: &str) -> Result<Self, PersonalError> {
        Ok(Self {
            subject: subject.to_owned(),
            kid: uuid::Uuid::now_v7().to_string(),
            key: random::<32>()?,
        })
    }

    /// A key from its parts (test vectors).
    pub fn from_parts(subject: &str, kid: &str, key: [u8; 32]) -> Self {
        Self {
            subject: subject.to_owned(),
            kid: kid.to_owned(),
            key: Zeroizing::new(key),
        }
    }

    /// The data subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// The key-encryption key that wraps subjects' keys. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

fn wrap_aad(subject: &str, kid: &str) -> Vec<u8> {
    let mut aad = WRAP_AAD_MAGIC.to_vec();
    aad.push(AAD_VERSION);
    field(&mut aad, subject.as_bytes());
    field(&mut aad, kid.as_bytes());
    aad
}

impl Kek {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*key))
    }

    /// Wraps `key`: a random 24-byte nonce, then XChaCha20-Poly1305 of the 32 key bytes with
    /// the associated data `"GOVSKEY" 0x01 field(subject) field(kid)`.
    pub fn wrap(&self, key: &SubjectKey) -> Result<Vec<u8>, PersonalError> {
        let nonce = random::<24>()?;
        Ok(self.wrap_with_nonce(key, &nonce))
    }

    fn wrap_with_nonce(&self, key: &SubjectKey, nonce: &[u8; 24]) -> Vec<u8> {
        let aad = wrap_aad(&key.subject, &key.kid);
        let ct = match cipher(&self.0).encrypt(
            &XNonce::from(*nonce),
            Payload {
                msg: key.key.as_ref(),
                aad: &aad,
            },
        ) {
            Ok(ct) => ct,
            Err(_) => unreachable!("encrypting 32 bytes cannot exceed the AEAD's limit"),
        };
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    /// Unwraps a stored key of `subject` named `kid`.
    pub fn unwrap(
        &self,
        subject: &str,
        kid: &str,
        wrapped: &[u8],
    ) -> Result<SubjectKey, PersonalError> {
        let bad = || PersonalError::Unwrap {
            kid: kid.to_owned(),
        };
        if wrapped.len() != WRAPPED_LEN {
            return Err(bad());
        }
        let (nonce, ct) = wrapped.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| bad())?;
        let aad = wrap_aad(subject, kid);
        let plain = Zeroizing::new(
            cipher(&self.0)
                .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad })
                .map_err(|_| bad())?,
        );
        let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| bad())?;
        Ok(SubjectKey::from_parts(subject, kid, key))
    }
}

/// The associated data of a field's ciphertext:
/// `"GOVPII" 0x01 field(event_id: 16 bytes) field(name) field(subject) field(kid)`.
pub fn field_aad(event_id: &uuid::Uuid, name: &str, subject: &str, kid: &str) -> Vec<u8> {
    let mut aad = FIELD_AAD_MAGIC.to_vec();
    aad.push(AAD_VERSION);
    field(&mut aad, event_id.as_bytes());
    field(&mut aad, name.as_bytes());
    field(&mut aad, subject.as_bytes());
    field(&mut aad, kid.as_bytes());
    aad
}

/// The envelope of `value` as field `name` of event `event_id`, with the given nonce.
pub fn envelope(
    event_id: &uuid::Uuid,
    name: &str,
    key: &SubjectKey,
    nonce: &[u8; 24],
    value: &Value,
) -> Value {
    let msg = Zeroizing::new(value.to_string().into_bytes());
    let aad = field_aad(event_id, name, &key.subject, &key.kid);
    let ct = match cipher(&key.key).encrypt(
        &XNonce::from(*nonce),
        Payload {
            msg: msg.as_slice(),
            aad: &aad,
        },
    ) {
        Ok(ct) => ct,
        Err(_) => unreachable!("a payload of at most 64 KiB is within the AEAD's limit"),
    };
    let mut m = Map::new();
    m.insert(ENVELOPE_TAG.into(), Value::String(VERSION.into()));
    m.insert("ct".into(), Value::String(URL_SAFE_NO_PAD.encode(ct)));
    m.insert("kid".into(), Value::String(key.kid.clone()));
    m.insert("nonce".into(), Value::String(URL_SAFE_NO_PAD.encode(nonce)));
    m.insert("subject".into(), Value::String(key.subject.clone()));
    Value::Object(m)
}

/// Replaces each field `event.personal` marks by its envelope under `key` (a fresh random
/// nonce each), puts the payload back in canonical form, and clears the marking. `key` must be
/// the marked subject's.
pub fn encrypt_event(event: &mut AuditEvent, key: &SubjectKey) -> Result<(), PersonalError> {
    encrypt_with(event, key, || random::<24>().map(|n| *n))
}

fn encrypt_with(
    event: &mut AuditEvent,
    key: &SubjectKey,
    mut nonce: impl FnMut() -> Result<[u8; 24], PersonalError>,
) -> Result<(), PersonalError> {
    let Some(p) = event.personal.take() else {
        return Ok(());
    };
    if p.subject != key.subject {
        return Err(PersonalError::Marking(
            "the key is not the marked subject's".into(),
        ));
    }
    let mut value: Value = serde_json::from_str(&event.payload)
        .map_err(|e| PersonalError::Marking(format!("the payload is not JSON: {e}")))?;
    let Value::Object(map) = &mut value else {
        return Err(PersonalError::Marking(
            "the payload is not a JSON object".into(),
        ));
    };
    let id = event.event_id.as_uuid();
    for name in &p.fields {
        let Some(v) = map.get_mut(name) else {
            return Err(PersonalError::Marking(format!(
                "{name:?} is not a top-level field of the payload"
            )));
        };
        let n = nonce()?;
        *v = envelope(&id, name, key, &n, v);
    }
    event.set_payload_value(&value)?;
    Ok(())
}

/// An envelope's parts, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRef {
    /// The field's name.
    pub name: String,
    /// The data subject.
    pub subject: String,
    /// The key id.
    pub kid: String,
}

fn parse(v: &Value) -> Option<(&str, &str, &str, &str)> {
    let o = v.as_object()?;
    if o.get(ENVELOPE_TAG)?.as_str()? != VERSION || o.len() != 5 {
        return None;
    }
    Some((
        o.get("subject")?.as_str()?,
        o.get("kid")?.as_str()?,
        o.get("nonce")?.as_str()?,
        o.get("ct")?.as_str()?,
    ))
}

fn is_envelope(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.contains_key(ENVELOPE_TAG))
}

/// The envelopes among a stored payload's top-level fields (what keys reading it needs).
pub fn envelopes(payload: &str) -> Vec<EnvelopeRef> {
    if !payload.contains(ENVELOPE_TAG) {
        return Vec::new();
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(payload) else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(name, v)| {
            let (subject, kid, _, _) = parse(v)?;
            Some(EnvelopeRef {
                name: name.clone(),
                subject: subject.to_owned(),
                kid: kid.to_owned(),
            })
        })
        .collect()
}

/// Whether a payload (canonical JSON text) holds any top-level value that looks like an
/// envelope.
pub fn holds_envelope(payload: &str) -> bool {
    if !payload.contains(ENVELOPE_TAG) {
        return false;
    }
    matches!(serde_json::from_str::<Value>(payload), Ok(Value::Object(m)) if m.values().any(is_envelope))
}

/// What one envelope opens to.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// The field's value.
    Value(Value),
    /// The subject's key is gone: erased.
    Erased,
    /// The key exists but the ciphertext does not authenticate, or the envelope is malformed.
    Unreadable,
}

/// Opens one envelope, field `name` of event `event_id`, with `keys` (the keys found for its
/// subject and key id; `None` when there is none).
pub fn open(
    event_id: &uuid::Uuid,
    name: &str,
    envelope: &Value,
    key: Option<&SubjectKey>,
) -> Opened {
    let Some((subject, kid, nonce, ct)) = parse(envelope) else {
        return Opened::Unreadable;
    };
    let Some(key) = key.filter(|k| k.subject == subject && k.kid == kid) else {
        return Opened::Erased;
    };
    let (Ok(nonce), Ok(ct)) = (URL_SAFE_NO_PAD.decode(nonce), URL_SAFE_NO_PAD.decode(ct)) else {
        return Opened::Unreadable;
    };
    let Ok(nonce) = <[u8; 24]>::try_from(nonce.as_slice()) else {
        return Opened::Unreadable;
    };
    let aad = field_aad(event_id, name, subject, kid);
    let Ok(plain) = cipher(&key.key).decrypt(
        &XNonce::from(nonce),
        Payload {
            msg: &ct,
            aad: &aad,
        },
    ) else {
        return Opened::Unreadable;
    };
    let plain = Zeroizing::new(plain);
    match serde_json::from_slice(&plain) {
        Ok(v) => Opened::Value(v),
        Err(_) => Opened::Unreadable,
    }
}

/// A stored payload made readable: each top-level envelope replaced by its value, by
/// [`ERASED`] or by [`UNREADABLE`]; `find(subject, kid)` gives the key, if it exists. `None`
/// when the payload holds no envelope (it reads as stored).
pub fn open_payload<'k>(
    event_id: &uuid::Uuid,
    payload: &str,
    find: impl Fn(&str, &str) -> Option<&'k SubjectKey>,
) -> Option<String> {
    if !payload.contains(ENVELOPE_TAG) {
        return None;
    }
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(payload) else {
        return None;
    };
    let mut changed = false;
    for (name, v) in map.iter_mut() {
        if !is_envelope(v) {
            continue;
        }
        let key = parse(v).and_then(|(subject, kid, _, _)| find(subject, kid));
        *v = match open(event_id, name, v, key) {
            Opened::Value(x) => x,
            Opened::Erased => Value::String(ERASED.into()),
            Opened::Unreadable => Value::String(UNREADABLE.into()),
        };
        changed = true;
    }
    changed.then(|| Value::Object(map).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SubjectKey {
        SubjectKey::from_parts("u-1", "k-1", [7u8; 32])
    }

    fn event() -> AuditEvent {
        AuditEvent::builder("a", "user.signup")
            .payload(json!({"email": "x@example.org", "plan": "pro"}))
            .personal("u-1", &["email"])
            .event_id(gov_core::EventId::from_uuid(uuid::Uuid::from_u128(1)))
            .build()
            .expect("event")
    }

    #[test]
    fn the_envelope_has_a_fixed_vector() {
        // Checked against an independent implementation (HChaCha20 written out, then the
        // `cryptography` package's ChaCha20-Poly1305), docs/audit-chain.md "Personal fields".
        let mut e = event();
        encrypt_with(&mut e, &key(), || Ok([9u8; 24])).expect("encrypts");
        assert!(e.personal.is_none());
        assert_eq!(
            e.payload,
            r#"{"email":{"$gov.enc":"v1","ct":"nAqi7wTLFBKYdyZTGhQlpWSmo5wSWne6eIVd3bZ6Dw","kid":"k-1","nonce":"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJ","subject":"u-1"},"plan":"pro"}"#
        );
        assert!(!e.payload.contains("example.org"));
        let aad = field_aad(&uuid::Uuid::from_u128(1), "email", "u-1", "k-1");
        assert_eq!(
            hex::encode(&aad),
            "474f5650494901000000100000000000000000000000000000000100000005656d61696c000000037\
             52d31000000036b2d31"
        );
        let k = key();
        let opened = open_payload(&uuid::Uuid::from_u128(1), &e.payload, |s, kid| {
            (s == "u-1" && kid == "k-1").then_some(&k)
        });
        assert_eq!(
            opened.as_deref(),
            Some(r#"{"email":"x@example.org","plan":"pro"}"#)
        );
    }

    #[test]
    fn a_missing_key_reads_erased_and_a_moved_ciphertext_unreadable() {
        let mut e = event();
        encrypt_event(&mut e, &key()).expect("encrypts");
        let none = open_payload(&e.event_id.as_uuid(), &e.payload, |_, _| None);
        assert_eq!(
            none.as_deref(),
            Some(r#"{"email":"[erased]","plan":"pro"}"#)
        );
        let k = key();
        // Another event id: the AAD differs.
        let moved = open_payload(&uuid::Uuid::from_u128(2), &e.payload, |_, _| Some(&k));
        assert_eq!(
            moved.as_deref(),
            Some(r#"{"email":"[unreadable: integrity check failed]","plan":"pro"}"#)
        );
        // Another field name.
        let renamed = e.payload.replace("\"email\"", "\"mail\"");
        let r = open_payload(&e.event_id.as_uuid(), &renamed, |_, _| Some(&k));
        assert!(r.expect("opened").contains(UNREADABLE));
        assert_eq!(
            envelopes(&e.payload),
            [EnvelopeRef {
                name: "email".into(),
                subject: "u-1".into(),
                kid: "k-1".into()
            }]
        );
        assert!(holds_envelope(&e.payload));
        assert_eq!(
            open_payload(&uuid::Uuid::nil(), r#"{"a":1}"#, |_, _| None),
            None
        );
    }

    #[test]
    fn keys_wrap_and_unwrap_only_for_their_subject_and_id() {
        let kek = Kek::new(&[3u8; 32]);
        let k = SubjectKey::generate("u-1").expect("key");
        let w = kek.wrap(&k).expect("wraps");
        assert_eq!(w.len(), WRAPPED_LEN);
        let back = kek.unwrap("u-1", k.kid(), &w).expect("unwraps");
        assert_eq!(back.key.as_ref(), k.key.as_ref());
        assert!(kek.unwrap("u-2", k.kid(), &w).is_err());
        assert!(kek.unwrap("u-1", "other", &w).is_err());
        assert!(Kek::new(&[4u8; 32]).unwrap("u-1", k.kid(), &w).is_err());
        let fixed = kek.wrap_with_nonce(&key(), &[1u8; 24]);
        assert_eq!(fixed.len(), WRAPPED_LEN);
        assert_eq!(&fixed[..24], &[1u8; 24]);
    }
}
