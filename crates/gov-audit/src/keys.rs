//! The audit secret and the keys derived from it.
//!
//! One secret (`GOVERNANCE_AUDIT_SECRET`, hex or base64, at least 32 bytes) feeds HKDF-SHA256;
//! each use gets its own key under a distinct label, so a key for one use can never forge
//! another (an approval-token key cannot seal a chain row). Weak secrets are refused.

use std::collections::HashMap;

use base64::Engine as _;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use gov_core::AuditRecord;

use crate::canonical;

type HmacSha256 = Hmac<Sha256>;

/// Minimum decoded length of the secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

const HKDF_SALT: &[u8] = b"governance/audit-secret/v1";
const LABEL_CHAIN: &[u8] = b"governance/v1/chain-hmac";
const LABEL_APPROVAL: &[u8] = b"governance/v1/approval-token";
const LABEL_REPORT: &[u8] = b"governance/v1/report-signing";
const LABEL_FINGERPRINT: &[u8] = b"governance/v1/key-fingerprint";
const LABEL_COVERAGE_HOST: &[u8] = b"governance/v1/coverage-host";
const LABEL_SPOOL: &[u8] = b"governance/v1/spool-record";
const LABEL_SUBJECT_KEK: &[u8] = b"governance/v1/subject-key-wrap";

const HOW_TO: &str =
    "generate one with `openssl rand -hex 32` and set GOVERNANCE_AUDIT_SECRET to it";

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// No secret was given.
    #[error("no audit secret is set; {HOW_TO}")]
    Missing,
    /// The secret is neither hex nor base64.
    #[error("the audit secret is neither hex nor base64; {HOW_TO}")]
    NotEncoded,
    /// The secret decodes to fewer than 32 bytes.
    #[error(
        "the audit secret decodes to {bytes} bytes; at least {MIN_SECRET_BYTES} are needed; {HOW_TO}"
    )]
    TooShort {
        /// Decoded length.
        bytes: usize,
    },
    /// The secret looks like a placeholder or has too little entropy.
    #[error("the audit secret is weak ({0}); {HOW_TO}")]
    Weak(&'static str),
}

/// The decoded audit secret. Zeroed on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AuditSecret(Vec<u8>);

impl std::fmt::Debug for AuditSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSecret(<redacted>)")
    }
}

// Words of six or more letters only: a random base64 secret contains one of these by chance
// with negligible probability (about 1 in 10^10 per word).
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change_me",
    "change-me",
    "replace",
    "placeholder",
    "example",
    "secret",
    "password",
    "xxxxxxxx",
    "deadbeefdeadbeef",
    "0123456789abcdef",
    "abcdefabcdef",
];

impl AuditSecret {
    /// Parses a secret written as hex (optionally `hex:`-prefixed) or base64 (standard or
    /// URL-safe, padded or not; optionally `base64:`-prefixed) and refuses weak ones.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Missing);
        }
        let lower = text.to_ascii_lowercase();
        if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
            return Err(KeyError::Weak("it contains a placeholder word or pattern"));
        }
        let bytes = Zeroizing::new(decode(text).ok_or(KeyError::NotEncoded)?);
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(KeyError::TooShort { bytes: bytes.len() });
        }
        check_entropy(&bytes)?;
        Ok(Self(bytes.to_vec()))
    }

    /// A fresh random secret from the operating system, and its hex form (to show once).
    pub fn generate() -> Result<(Self, zeroize::Zeroizing<String>), KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut())
            .map_err(|_| KeyError::Weak("the system random source failed"))?;
        let text = Zeroizing::new(hex::encode(bytes.as_ref()));
        Ok((Self(bytes.to_vec()), text))
    }

    /// Wraps raw key bytes (at least 32, checked for entropy).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(KeyError::TooShort { bytes: bytes.len() });
        }
        check_entropy(bytes)?;
        Ok(Self(bytes.to_vec()))
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.0);
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        if hk.expand(label, okm.as_mut()).is_err() {
            unreachable!("HKDF output length is fixed at 32 bytes");
        }
        okm
    }

    /// The key that seals chain rows, with its fingerprint.
    pub fn chain_key(&self) -> ChainKey {
        let key = self.derive(LABEL_CHAIN);
        let fp = self.derive(LABEL_FINGERPRINT);
        ChainKey::from_parts(&key, &fp)
    }

    /// The key for approval tokens (used by gates).
    pub fn approval_key(&self) -> DerivedKey {
        DerivedKey(*self.derive(LABEL_APPROVAL))
    }

    /// The key for signing reports.
    pub fn report_key(&self) -> DerivedKey {
        DerivedKey(*self.derive(LABEL_REPORT))
    }

    /// The key that turns the hostnames of wrapped LLM clients into the salted digests the
    /// coverage registry stores (the hostname itself is never stored).
    pub fn coverage_host_key(&self) -> DerivedKey {
        DerivedKey(*self.derive(LABEL_COVERAGE_HOST))
    }

    /// The key that authenticates the records of the local spool (each record's MAC covers
    /// the database it belongs to, its file and its position), so a file dropped into the
    /// spool folder by anyone without the secret is never replayed into the chain.
    pub fn spool_key(&self) -> DerivedKey {
        DerivedKey(*self.derive(LABEL_SPOOL))
    }

    /// The key-encryption key that wraps data subjects' keys in `subject_keys`
    /// ([`crate::personal`]), so that a copy of the database alone reveals no personal field.
    pub fn subject_kek(&self) -> crate::personal::Kek {
        crate::personal::Kek::new(&self.derive(LABEL_SUBJECT_KEK))
    }
}

fn decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if let Some(h) = text.strip_prefix("hex:") {
        return hex::decode(h).ok();
    }
    if let Some(b) = text.strip_prefix("base64:") {
        return [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(b).ok());
    }
    if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(text).ok();
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(text).ok())
}

fn check_entropy(bytes: &[u8]) -> Result<(), KeyError> {
    let mut counts = [0usize; 256];
    for b in bytes {
        counts[usize::from(*b)] += 1;
    }
    let distinct = counts.iter().filter(|c| **c > 0).count();
    // 32 random bytes show about 30 distinct values; fewer than half is a pattern.
    if distinct < 16.min(bytes.len() / 2) {
        return Err(KeyError::Weak("it repeats too few distinct bytes"));
    }
    let n = bytes.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum();
    // Random 32-byte strings score about 4.8 bits per byte on this estimate.
    if entropy < 3.5 {
        return Err(KeyError::Weak("its bytes have too little entropy"));
    }
    Ok(())
}

/// A key derived for one use. Zeroed on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DerivedKey([u8; 32]);

impl DerivedKey {
    /// The key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKey(<redacted>)")
    }
}

/// The chain-sealing key and its salted fingerprint (`key_id`).
#[derive(Clone)]
pub struct ChainKey {
    mac: HmacSha256,
    key_id: String,
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ChainKey {
    fn from_parts(key: &[u8; 32], fingerprint_key: &[u8; 32]) -> Self {
        let mac = match HmacSha256::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        let fp = match HmacSha256::new_from_slice(fingerprint_key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        let tag = fp.chain_update(b"key-id").finalize().into_bytes();
        Self {
            mac,
            key_id: format!("hk1_{}", hex::encode(&tag[..12])),
        }
    }

    /// The salted fingerprint stored in each row's `key_id`. It identifies the key without
    /// revealing anything that helps recover it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// HMAC-SHA256 over the canonical bytes of `record` (its `row_hmac` and signature fields are
    /// not part of the input).
    pub fn seal(&self, record: &AuditRecord) -> [u8; 32] {
        let mut buf = Vec::with_capacity(256 + record.payload.len());
        canonical::encode_into(record, &mut buf);
        let mut mac = self.mac.clone();
        mac.update(&buf);
        mac.finalize().into_bytes().into()
    }

    /// HMAC-SHA256 under this key over `message` (a rotation message: its own magic keeps it
    /// apart from row encodings).
    pub fn tag(&self, message: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is this key's tag over `message` (constant time).
    pub fn verify_tag(&self, message: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.verify_slice(tag).is_ok()
    }

    /// Whether `record.row_hmac` is the seal of `record` under this key (constant time).
    pub fn verify(&self, record: &AuditRecord, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        canonical::encode_into(record, buf);
        let mut mac = self.mac.clone();
        mac.update(buf);
        mac.verify_slice(&record.row_hmac).is_ok()
    }
}

/// The keys a verifier accepts, by `key_id`: the current key, which seals new rows, and the
/// earlier keys of rotated chains. Resolution is a map lookup built once, bounded by the keys
/// configured.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<ChainKey>,
    by_id: HashMap<String, usize>,
    signers: crate::signing::Signers,
}

impl KeyRing {
    /// A ring holding the current key only.
    pub fn new(current: ChainKey) -> Self {
        Self::with_previous(current, [])
    }

    /// A ring with the current key and earlier ones (duplicates are dropped).
    pub fn with_previous(current: ChainKey, previous: impl IntoIterator<Item = ChainKey>) -> Self {
        let mut ring = Self {
            keys: Vec::new(),
            by_id: HashMap::new(),
            signers: HashMap::new(),
        };
        for k in std::iter::once(current).chain(previous) {
            if !ring.by_id.contains_key(&k.key_id) {
                ring.by_id.insert(k.key_id.clone(), ring.keys.len());
                ring.keys.push(k);
            }
        }
        ring
    }

    /// The key that seals new rows.
    pub fn current(&self) -> &ChainKey {
        &self.keys[0]
    }

    /// The key with this fingerprint, if known.
    pub fn get(&self, key_id: &str) -> Option<&ChainKey> {
        self.by_id.get(key_id).map(|i| &self.keys[*i])
    }

    /// Fingerprints of every key, the current one first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.key_id.as_str())
    }

    /// This ring with the registered signers whose row signatures it checks.
    pub fn with_signers(mut self, signers: crate::signing::Signers) -> Self {
        self.signers = signers;
        self
    }

    /// The registered signers.
    pub fn signers(&self) -> &crate::signing::Signers {
        &self.signers
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a ring holds at least the current key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD_HEX: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";

    #[test]
    fn hex_and_base64_give_the_same_key() {
        let bytes = hex::decode(GOOD_HEX).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let a = AuditSecret::parse(GOOD_HEX).unwrap().chain_key();
        for other in [
            b64.as_str(),
            url.as_str(),
            &format!("hex:{GOOD_HEX}"),
            &format!("base64:{b64}"),
        ] {
            assert_eq!(
                AuditSecret::parse(other).unwrap().chain_key().key_id(),
                a.key_id()
            );
        }
    }

    #[test]
    fn weak_secrets_are_refused_with_advice() {
        type Expect = fn(&KeyError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| *e == KeyError::Missing),
            ("not a key!", |e| *e == KeyError::NotEncoded),
            ("abcd1234", |e| matches!(e, KeyError::TooShort { bytes: 4 })),
            (&"00".repeat(32), |e| matches!(e, KeyError::Weak(_))),
            (&"0102".repeat(32), |e| matches!(e, KeyError::Weak(_))),
            ("changeme-changeme-changeme-changeme-changeme", |e| {
                matches!(e, KeyError::Weak(_))
            }),
        ];
        for (text, ok) in cases {
            let err = AuditSecret::parse(text).unwrap_err();
            assert!(ok(&err), "{text:?} gave {err:?}");
            assert!(err.to_string().contains("openssl rand -hex 32"), "{err}");
        }
    }

    #[test]
    fn derived_keys_differ_per_use() {
        let s = AuditSecret::parse(GOOD_HEX).unwrap();
        let a = s.approval_key();
        let r = s.report_key();
        let h = s.coverage_host_key();
        let sp = s.spool_key();
        assert_ne!(a.expose(), r.expose());
        assert_ne!(h.expose(), a.expose());
        assert_ne!(h.expose(), r.expose());
        for other in [&a, &r, &h] {
            assert_ne!(sp.expose(), other.expose());
        }
        // The chain key's fingerprint is not the chain key, nor any other key.
        let id = s.chain_key().key_id().to_owned();
        assert!(id.starts_with("hk1_") && id.len() == 28, "{id}");
        assert!(!id.contains(&hex::encode(&a.expose()[..12])));
    }

    #[test]
    fn secrets_never_print() {
        let s = AuditSecret::parse(GOOD_HEX).unwrap();
        assert_eq!(format!("{s:?}"), "AuditSecret(<redacted>)");
        assert!(!format!("{:?}", s.chain_key()).contains(&GOOD_HEX[..8]));
    }
}
