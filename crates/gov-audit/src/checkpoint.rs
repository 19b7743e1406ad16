//! Signed checkpoints: a chain head (chain, seq, head HMAC, time) signed with Ed25519.
//!
//! Kept outside the database, a checkpoint proves later that the chain still extends that head:
//! a cut tail lacks the row at its seq, and a chain rebuilt wholesale by someone who holds the
//! HMAC key but not the signing key has another HMAC there.
//!
//! Signed message: `GOVCHKPT`, version byte 1, then five fields, each a 4-byte big-endian length
//! and its bytes: chain id (UTF-8), seq (8 bytes, big-endian), head HMAC (32 bytes), signed_at
//! (microseconds since 1970, 8 bytes, big-endian), signer key id (UTF-8).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::signing::{Signer, signer_key_id, verify_with};

/// The `format` of a checkpoint file.
pub const FILE_FORMAT: &str = "governance.checkpoints.v1";
const MAGIC: &[u8; 8] = b"GOVCHKPT";
const VERSION: u8 = 1;

/// One signed chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The chain.
    pub chain_id: String,
    /// The head's seq.
    pub seq: i64,
    /// The head row's `row_hmac`, hex.
    pub head_hmac: String,
    /// When it was signed (microsecond precision).
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    /// The signer's `ed1_…` id.
    pub signer_key_id: String,
    /// The signer's Ed25519 public key, hex.
    pub public_key: String,
    /// The Ed25519 signature over the checkpoint message, hex.
    pub signature: String,
}

/// A file of checkpoints, one per chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    /// Always [`FILE_FORMAT`].
    pub format: String,
    /// The checkpoints.
    pub checkpoints: Vec<Checkpoint>,
}

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The bytes a checkpoint's signature covers.
pub fn checkpoint_message(
    chain_id: &str,
    seq: i64,
    head_hmac: &[u8],
    signed_at: OffsetDateTime,
    signer: &str,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    field(&mut buf, chain_id.as_bytes());
    field(&mut buf, &seq.to_be_bytes());
    field(&mut buf, head_hmac);
    field(&mut buf, &micros(signed_at).to_be_bytes());
    field(&mut buf, signer.as_bytes());
    buf
}

impl Checkpoint {
    /// Signs a head. `signed_at` is truncated to microseconds.
    pub fn sign(
        signer: &Signer,
        chain_id: &str,
        seq: i64,
        head_hmac: &[u8],
        signed_at: OffsetDateTime,
    ) -> Self {
        let signed_at = signed_at
            .replace_nanosecond(signed_at.nanosecond() / 1_000 * 1_000)
            .unwrap_or(signed_at);
        let msg = checkpoint_message(chain_id, seq, head_hmac, signed_at, signer.key_id());
        Self {
            chain_id: chain_id.to_owned(),
            seq,
            head_hmac: hex::encode(head_hmac),
            signed_at,
            signer_key_id: signer.key_id().to_owned(),
            public_key: hex::encode(signer.public_key()),
            signature: hex::encode(signer.sign(&msg)),
        }
    }

    /// The head HMAC's bytes, if the hex is well formed and 32 bytes long.
    pub fn head_hmac_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.head_hmac).ok().filter(|b| b.len() == 32)
    }

    /// Whether the signature verifies under the public key it names, and the key id is that
    /// key's fingerprint. Says nothing about whether the key is trusted.
    pub fn signature_is_valid(&self) -> bool {
        let (Ok(public), Ok(sig), Some(head)) = (
            hex::decode(&self.public_key),
            hex::decode(&self.signature),
            self.head_hmac_bytes(),
        ) else {
            return false;
        };
        let Ok(pk) = <[u8; 32]>::try_from(public.as_slice()) else {
            return false;
        };
        if signer_key_id(&pk) != self.signer_key_id {
            return false;
        }
        let msg = checkpoint_message(
            &self.chain_id,
            self.seq,
            &head,
            self.signed_at,
            &self.signer_key_id,
        );
        verify_with(&public, &msg, &sig)
    }
}
