//! Ed25519 signers: loading a key by URL, signing rows over their `row_hmac`, judging a row's
//! signature against the registered public keys, and signed checkpoints of a chain head.
//!
//! Key URLs: `file:///path` (a 32-byte seed in hex, or a PKCS#8 PEM; refused when group or
//! others may read the file), `env://VAR` (the same, from an environment variable), `ephemeral`
//! (a fresh key for this process). A signer that cannot load its key does not stop the host: its
//! rows are written with `signature_status = 'unsigned_local_failure'`.

use std::collections::HashMap;
use std::sync::Arc;

use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use gov_core::{AuditRecord, SignatureStatus};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::keys::ChainKey;

/// Why a signing key could not be loaded. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignerError {
    /// The URL has another scheme.
    #[error("the signing key URL must be file:///path, env://VAR or ephemeral (got a {0:?} URL)")]
    Scheme(String),
    /// The file or variable could not be read.
    #[error("cannot read the signing key from {0}")]
    Unreadable(String),
    /// The key file may be read by others.
    #[error(
        "the signing key file {path} may be read by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The text is neither a hex seed nor a PKCS#8 PEM.
    #[error(
        "the signing key from {0} is neither a 32-byte seed in hex nor a PKCS#8 PEM Ed25519 key"
    )]
    Malformed(String),
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
}

/// An Ed25519 signing key and its fingerprint.
pub struct Signer {
    key: SigningKey,
    id: String,
    label: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// `ed1_` and the first 12 bytes of SHA-256 of the public key, in hex.
pub fn signer_key_id(public: &[u8; 32]) -> String {
    format!("ed1_{}", hex::encode(&Sha256::digest(public)[..12]))
}

fn parse_key(text: &str, from: &str) -> Result<SigningKey, SignerError> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return SigningKey::from_pkcs8_pem(t).map_err(|_| SignerError::Malformed(from.into()));
    }
    let seed = Zeroizing::new(hex::decode(t).map_err(|_| SignerError::Malformed(from.into()))?);
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| SignerError::Malformed(from.into()))?;
    let seed = Zeroizing::new(seed);
    Ok(SigningKey::from_bytes(&seed))
}

impl Signer {
    /// Loads a key from a URL (see the module docs); `label` names the agent or instance.
    pub fn load(url: &str, label: &str) -> Result<Self, SignerError> {
        let key = if url == "ephemeral" {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(seed.as_mut()).map_err(|_| SignerError::Random)?;
            SigningKey::from_bytes(&seed)
        } else if let Some(var) = url.strip_prefix("env://") {
            let text = Zeroizing::new(
                std::env::var(var)
                    .map_err(|_| SignerError::Unreadable(format!("the variable {var}")))?,
            );
            parse_key(&text, &format!("the variable {var}"))?
        } else if let Some(path) = url.strip_prefix("file://") {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path)
                    .map_err(|_| SignerError::Unreadable(path.into()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(SignerError::Exposed {
                        path: path.into(),
                        mode: mode & 0o777,
                    });
                }
            }
            let text = Zeroizing::new(
                std::fs::read_to_string(path).map_err(|_| SignerError::Unreadable(path.into()))?,
            );
            parse_key(&text, path)?
        } else {
            let scheme = url.split(':').next().unwrap_or_default().to_owned();
            return Err(SignerError::Scheme(scheme));
        };
        Ok(Self::from_key(key, label))
    }

    /// A signer over a key already in memory.
    pub fn from_key(key: SigningKey, label: &str) -> Self {
        let id = signer_key_id(key.verifying_key().as_bytes());
        Self {
            key,
            id,
            label: label.to_owned(),
        }
    }

    /// Its `signer_key_id`.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The agent or instance it signs for.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// Whether rows are signed, and by whom.
#[derive(Debug, Clone, Default)]
pub enum SigningState {
    /// No signer configured: rows are `unsigned`.
    #[default]
    Off,
    /// Rows are signed.
    On(Arc<Signer>),
    /// A signer was configured but could not load its key: rows are `unsigned_local_failure`.
    Failed,
}

/// Seals rows: the chain HMAC, then (when a signer is on) the Ed25519 signature over it.
#[derive(Debug, Clone)]
pub struct RowSealer {
    key: ChainKey,
    signing: SigningState,
}

impl RowSealer {
    /// A sealer with `key` and `signing`.
    pub fn new(key: ChainKey, signing: SigningState) -> Self {
        Self { key, signing }
    }

    /// The chain key.
    pub fn key(&self) -> &ChainKey {
        &self.key
    }

    /// The signer, when rows are signed.
    pub fn signer(&self) -> Option<&Arc<Signer>> {
        match &self.signing {
            SigningState::On(s) => Some(s),
            _ => None,
        }
    }

    /// Fills `row_hmac` and the signature fields of `r`. The signer's id is set before the HMAC
    /// is computed, so it is sealed (canonical encoding version 2).
    pub fn seal(&self, r: &mut AuditRecord) {
        match &self.signing {
            SigningState::On(s) => {
                r.signer_key_id = Some(s.key_id().to_owned());
                let hmac = self.key.seal(r);
                r.signature = Some(s.sign(&hmac).to_vec());
                r.row_hmac = hmac.to_vec();
                r.signature_status = SignatureStatus::Signed.as_str().to_owned();
            }
            SigningState::Off | SigningState::Failed => {
                r.signer_key_id = None;
                r.signature = None;
                r.row_hmac = self.key.seal(r).to_vec();
                r.signature_status = match self.signing {
                    SigningState::Failed => SignatureStatus::UnsignedLocalFailure,
                    _ => SignatureStatus::Unsigned,
                }
                .as_str()
                .to_owned();
            }
        }
    }
}

/// A registered public key, as the verifier knows it.
#[derive(Debug, Clone)]
pub struct SignerKey {
    /// The key.
    pub public: VerifyingKey,
    /// When it was revoked, if it was: rows that say they happened at or after that time are
    /// refused.
    pub revoked_at: Option<OffsetDateTime>,
}

/// The registered signers, by `signer_key_id`.
pub type Signers = HashMap<String, SignerKey>;

/// Builds the registry from stored rows; a row whose key is not a valid Ed25519 point, or whose
/// id is not its key's fingerprint, is left out (its signatures then count as unregistered).
pub fn signers_from(rows: &[gov_store::SignerKeyRow]) -> Signers {
    rows.iter()
        .filter_map(|r| {
            let bytes: [u8; 32] = r.public_key.as_slice().try_into().ok()?;
            let public = VerifyingKey::from_bytes(&bytes).ok()?;
            (signer_key_id(&bytes) == r.signer_key_id).then(|| {
                (
                    r.signer_key_id.clone(),
                    SignerKey {
                        public,
                        revoked_at: r.revoked_at,
                    },
                )
            })
        })
        .collect()
}

/// What a row's signature fields say, judged against the registry. Computed per row in
/// parallel with its seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigVerdict {
    /// Signed, by a registered, unrevoked key, and the signature verifies.
    Valid,
    /// Written unsigned (no signer configured).
    Unsigned,
    /// Written unsigned because the signer could not load its key.
    UnsignedLocalFailure,
    /// The row names a signer but carries no signature, or its status says unsigned.
    Stripped,
    /// The signer is not registered.
    Unregistered,
    /// The signer was revoked before the row's time.
    Revoked,
    /// The signature does not verify.
    Invalid,
}

/// Judges the signature fields of `r` (whose seal is checked separately).
pub fn judge(r: &AuditRecord, signers: &Signers) -> SigVerdict {
    let status = SignatureStatus::parse(&r.signature_status);
    let Some(id) = &r.signer_key_id else {
        return match (status, &r.signature) {
            (Some(SignatureStatus::Unsigned), None) => SigVerdict::Unsigned,
            (Some(SignatureStatus::UnsignedLocalFailure), None) => SigVerdict::UnsignedLocalFailure,
            _ => SigVerdict::Invalid,
        };
    };
    let (Some(SignatureStatus::Signed), Some(sig)) = (status, &r.signature) else {
        return SigVerdict::Stripped;
    };
    let Some(k) = signers.get(id) else {
        return SigVerdict::Unregistered;
    };
    if k.revoked_at.is_some_and(|t| t <= r.occurred_at) {
        return SigVerdict::Revoked;
    }
    let Ok(sig) = Signature::from_slice(sig) else {
        return SigVerdict::Invalid;
    };
    if k.public.verify_strict(&r.row_hmac, &sig).is_ok() {
        SigVerdict::Valid
    } else {
        SigVerdict::Invalid
    }
}

/// Verifies an Ed25519 signature over `message` with a raw public key.
pub fn verify_with(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 32]>::try_from(public) else {
        return false;
    };
    let (Ok(key), Ok(sig)) = (
        VerifyingKey::from_bytes(&bytes),
        Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify_strict(message, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;

    fn key_file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gov-signing-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let _ = mode;
        path
    }

    #[test]
    fn keys_load_from_hex_seeds_and_pkcs8_pem_files_and_exposed_files_are_refused() {
        let seed = [7u8; 32];
        let hex_path = key_file("hex", &hex::encode(seed), 0o600);
        let from_hex = Signer::load(&format!("file://{}", hex_path.display()), "a").unwrap();
        let pem = SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(Default::default())
            .unwrap();
        let pem_path = key_file("pem", &pem, 0o600);
        let from_pem = Signer::load(&format!("file://{}", pem_path.display()), "a").unwrap();
        assert_eq!(from_hex.public_key(), from_pem.public_key());
        assert_eq!(from_hex.key_id(), signer_key_id(&from_hex.public_key()));
        assert!(from_hex.key_id().starts_with("ed1_"));
        let sig = from_pem.sign(b"row hmac");
        assert!(verify_with(&from_hex.public_key(), b"row hmac", &sig));
        #[cfg(unix)]
        {
            let open = key_file("open", &hex::encode(seed), 0o644);
            let err = Signer::load(&format!("file://{}", open.display()), "a").unwrap_err();
            assert!(
                matches!(err, SignerError::Exposed { mode: 0o644, .. }),
                "{err}"
            );
        }
        let bad = key_file("bad", "not a key", 0o600);
        assert!(matches!(
            Signer::load(&format!("file://{}", bad.display()), "a"),
            Err(SignerError::Malformed(_))
        ));
        assert!(matches!(
            Signer::load("https://x/k", "a"),
            Err(SignerError::Scheme(_))
        ));
        assert!(matches!(
            Signer::load("env://NO_SUCH_SIGNING_KEY_VARIABLE_FOR_TESTS", "a"),
            Err(SignerError::Unreadable(_))
        ));
        let a = Signer::load("ephemeral", "a").unwrap();
        let b = Signer::load("ephemeral", "a").unwrap();
        assert_ne!(a.key_id(), b.key_id(), "a fresh key each time");
    }
}
