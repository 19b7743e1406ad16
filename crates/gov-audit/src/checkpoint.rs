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

/// The `format` of the JSON form of note checkpoints (`governance checkpoint --format note --json`).
pub const NOTE_FORMAT: &str = "governance.checkpoint-notes.v1";

/// A chain's checkpoint as a C2SP signed note (c2sp.org/tlog-checkpoint): origin
/// `<log name>/<chain id>`, the tree size (the head's seq), the root recomputed from the rows,
/// signed with Ed25519 under the key name `origin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteCheckpoint {
    /// The chain.
    pub chain_id: String,
    /// The origin line.
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The root, hex.
    pub root: String,
    /// The log's verifier key (`origin+keyid+base64(0x01 || public key)`), for witnesses.
    pub vkey: String,
    /// The signed note (text, blank line, signature lines; cosignatures appended once stored).
    pub note: String,
}

/// The origin of a chain's checkpoints: `<log name>/<chain id>`.
pub fn origin(log_name: &str, chain_id: &str) -> Result<String, crate::note::NoteError> {
    let o = format!("{log_name}/{chain_id}");
    if log_name.is_empty() || !crate::note::valid_key_name(&o) {
        return Err(crate::note::NoteError::Malformed(format!(
            "log name {log_name:?}: it must be non-empty, without spaces or `+` (e.g. example.com/governance)"
        )));
    }
    Ok(o)
}

/// Signs the checkpoint of `chain_id` at `size` with root `root` under the origin's name.
pub fn sign_note(
    signer: &Signer,
    log_name: &str,
    chain_id: &str,
    size: u64,
    root: crate::tree::Hash,
) -> Result<NoteCheckpoint, crate::note::NoteError> {
    use crate::note::{CheckpointText, Note, TYPE_ED25519, Vkey, sign};
    let origin = origin(log_name, chain_id)?;
    let text = CheckpointText {
        origin: origin.clone(),
        size,
        root,
        extensions: Vec::new(),
    }
    .text();
    let line = sign(&text, &origin, signer)?;
    let vkey = Vkey::new(&origin, TYPE_ED25519, signer.public_key())?;
    Ok(NoteCheckpoint {
        chain_id: chain_id.to_owned(),
        origin,
        size,
        root: hex::encode(root),
        vkey: vkey.to_string(),
        note: Note {
            text,
            signatures: vec![line],
        }
        .render(),
    })
}
