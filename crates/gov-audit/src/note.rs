//! C2SP signed notes, tlog checkpoints and tlog cosignatures (pure).
//!
//! Byte for byte as <https://c2sp.org/signed-note>, <https://c2sp.org/tlog-checkpoint> and
//! <https://c2sp.org/tlog-cosignature> (Ed25519 `cosignature/v1`) define them, and as
//! docs/audit-chain.md ("Checkpoints as signed notes") repeats:
//!
//! ```text
//! note       = text ("\n"-terminated lines), "\n", signature line+
//! line       = "— " key name " " base64(key ID (4 bytes, big-endian) || signature) "\n"
//! key ID     = SHA-256(key name || 0x0A || type || public key)[..4]
//!              type 0x01: Ed25519 over the text; 0x04: timestamped cosignature/v1
//! cosignature/v1 signature = timestamp (u64 big-endian, seconds) || Ed25519(
//!              "cosignature/v1\ntime " decimal(timestamp) "\n" || text)
//! checkpoint text = origin "\n" decimal(tree size) "\n" base64(root) "\n" (extension "\n")*
//! vkey       = key name "+" hex(key ID) "+" base64(type || public key)
//! ```
//!
//! Verification follows the spec: signature lines whose name and key ID match no configured
//! key are ignored; a line that matches a key but does not verify rejects the whole note; a note
//! that no configured key verifies is rejected. This module does no I/O.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::signing::{Signer, verify_with};
use crate::tree::Hash;

/// Signature type of Ed25519 note signatures.
pub const TYPE_ED25519: u8 = 0x01;
/// Signature type of timestamped Ed25519 checkpoint cosignatures (`cosignature/v1`).
pub const TYPE_COSIGNATURE_V1: u8 = 0x04;
/// At most this many signature lines are read from one note (the spec asks for at least 16).
pub const MAX_SIGNATURES: usize = 100;
/// The em dash (U+2014) and space that begin a signature line.
const DASH: &str = "\u{2014} ";

/// A signed note, checkpoint or cosignature that is malformed or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// The bytes are not a note (or not a checkpoint, or not a vkey).
    #[error("malformed {0}")]
    Malformed(String),
    /// A signature line names a configured key but does not verify.
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
    /// No signature line comes from a configured key.
    #[error("the note carries no signature from a configured key")]
    Unverified,
}

fn malformed(what: impl Into<String>) -> NoteError {
    NoteError::Malformed(what.into())
}

/// `SHA-256(name || 0x0A || type || public key)[..4]`.
pub fn key_id(name: &str, sig_type: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', sig_type]);
    h.update(public);
    let d: [u8; 32] = h.finalize().into();
    [d[0], d[1], d[2], d[3]]
}

/// Whether `name` may name a key: non-empty, no Unicode space, no `+`, no control character.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// Whether `text` may be a note's text: ends in a newline, no control character but newline.
fn valid_text(text: &str) -> bool {
    text.ends_with('\n') && !text.chars().any(|c| c.is_control() && c != '\n')
}

/// A verifier key: a key name, a signature type and an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vkey {
    /// The key name (a log's origin, a witness's name).
    pub name: String,
    /// [`TYPE_ED25519`] or [`TYPE_COSIGNATURE_V1`].
    pub sig_type: u8,
    /// The Ed25519 public key.
    pub public: [u8; 32],
}

impl Vkey {
    /// A key of `sig_type` for `public` under `name`.
    pub fn new(name: &str, sig_type: u8, public: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(malformed(format!(
                "key name {name:?}: it must be non-empty, without spaces or `+`"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            sig_type,
            public,
        })
    }

    /// Parses `name+hex(key ID)+base64(type || public key)`; the key ID must be the key's.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let bad = || malformed(format!("verifier key {s:?} (expected name+keyid+base64)"));
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let raw = B64.decode(key).map_err(|_| bad())?;
        let (&sig_type, public) = raw.split_first().ok_or_else(bad)?;
        if sig_type != TYPE_ED25519 && sig_type != TYPE_COSIGNATURE_V1 {
            return Err(malformed(format!(
                "verifier key {s:?}: signature type {sig_type:#04x} is not supported (0x01 or 0x04)"
            )));
        }
        let public: [u8; 32] = public.try_into().map_err(|_| bad())?;
        let k = Self::new(name, sig_type, public)?;
        if id.len() != 8 || hex::encode(k.key_id()) != id {
            return Err(malformed(format!(
                "verifier key {s:?}: its key ID is not the hash of its name and key"
            )));
        }
        Ok(k)
    }

    /// The key ID.
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, self.sig_type, &self.public)
    }
}

impl std::fmt::Display for Vkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![self.sig_type];
        raw.extend_from_slice(&self.public);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(raw)
        )
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLine {
    /// The key name.
    pub name: String,
    /// The key ID (first four bytes of the decoded signature).
    pub key_id: [u8; 4],
    /// The signature bytes after the key ID (Ed25519: 64; cosignature/v1: 8 + 64).
    pub signature: Vec<u8>,
}

impl SignatureLine {
    /// Parses `— name base64\n` (or without the final newline).
    pub fn parse(line: &str) -> Result<Self, NoteError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let bad = || malformed(format!("signature line {line:?}"));
        let rest = line.strip_prefix(DASH).ok_or_else(bad)?;
        let (name, sig) = rest.split_once(' ').ok_or_else(bad)?;
        if !valid_key_name(name) || sig.contains(' ') {
            return Err(bad());
        }
        let raw = B64.decode(sig).map_err(|_| bad())?;
        if raw.len() < 5 {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: [raw[0], raw[1], raw[2], raw[3]],
            signature: raw[4..].to_vec(),
        })
    }

    /// The line, newline included.
    pub fn to_line(&self) -> String {
        let mut raw = self.key_id.to_vec();
        raw.extend_from_slice(&self.signature);
        format!("{DASH}{} {}\n", self.name, B64.encode(raw))
    }

    /// The cosignature's timestamp, when this is a `cosignature/v1` line.
    pub fn timestamp(&self) -> Option<u64> {
        let t: [u8; 8] = self.signature.get(..8)?.try_into().ok()?;
        Some(u64::from_be_bytes(t))
    }
}

/// A note: its text and its signature lines, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The text, final newline included.
    pub text: String,
    /// The signature lines.
    pub signatures: Vec<SignatureLine>,
}

impl Note {
    /// Splits a signed note into its text and signature lines (without verifying anything).
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(malformed("note: it holds a control character"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| malformed("note: no blank line before its signatures"))?;
        let text = &note[..=split];
        let sigs = &note[split + 2..];
        if !sigs.ends_with('\n') || sigs.len() < 2 {
            return Err(malformed("note: its signature lines must end in a newline"));
        }
        let signatures = sigs
            .lines()
            .map(SignatureLine::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if signatures.len() > MAX_SIGNATURES {
            return Err(malformed(format!(
                "note: more than {MAX_SIGNATURES} signatures"
            )));
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The signed note: text, blank line, signature lines.
    pub fn render(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for l in &self.signatures {
            s.push_str(&l.to_line());
        }
        s
    }
}

/// Signs `text` with Ed25519 (type 0x01) under `name`.
pub fn sign(text: &str, name: &str, signer: &Signer) -> Result<SignatureLine, NoteError> {
    if !valid_text(text) {
        return Err(malformed(
            "note text: it must end in a newline and hold no other control character",
        ));
    }
    let public = signer.public_key();
    Ok(SignatureLine {
        key_id: Vkey::new(name, TYPE_ED25519, public)?.key_id(),
        name: name.to_owned(),
        signature: signer.sign(text.as_bytes()).to_vec(),
    })
}

/// The message a `cosignature/v1` signs: `cosignature/v1\ntime <t>\n` followed by the text.
pub fn cosignature_message(text: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// Cosigns `text` (a checkpoint) as the witness `name` at `timestamp` (POSIX seconds).
pub fn cosign(
    text: &str,
    name: &str,
    signer: &Signer,
    timestamp: u64,
) -> Result<SignatureLine, NoteError> {
    if !valid_text(text) || timestamp == 0 || timestamp > i64::MAX.unsigned_abs() {
        return Err(malformed("cosignature: bad text or timestamp"));
    }
    let mut signature = timestamp.to_be_bytes().to_vec();
    signature.extend_from_slice(&signer.sign(&cosignature_message(text, timestamp)));
    Ok(SignatureLine {
        key_id: Vkey::new(name, TYPE_COSIGNATURE_V1, signer.public_key())?.key_id(),
        name: name.to_owned(),
        signature,
    })
}

/// What one configured key says about one signature line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCheck {
    /// The line is not this key's (name or key ID differ): ignore it.
    NotThisKey,
    /// The line is this key's and verifies; the cosignature's timestamp for type 0x04.
    Valid(Option<u64>),
    /// The line is this key's and does not verify.
    Invalid,
}

/// Checks one signature line of `text` against `key`.
pub fn check_line(text: &str, line: &SignatureLine, key: &Vkey) -> LineCheck {
    if line.name != key.name || line.key_id != key.key_id() {
        return LineCheck::NotThisKey;
    }
    match key.sig_type {
        TYPE_ED25519 if verify_with(&key.public, text.as_bytes(), &line.signature) => {
            LineCheck::Valid(None)
        }
        TYPE_COSIGNATURE_V1 => match (line.timestamp(), line.signature.get(8..)) {
            (Some(t), Some(sig))
                if t <= i64::MAX.unsigned_abs()
                    && verify_with(&key.public, &cosignature_message(text, t), sig) =>
            {
                LineCheck::Valid(Some(t))
            }
            _ => LineCheck::Invalid,
        },
        _ => LineCheck::Invalid,
    }
}

/// A signature line that a configured key verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key that verified it.
    pub key: Vkey,
    /// The line.
    pub line: SignatureLine,
    /// The cosignature's timestamp (type 0x04 only).
    pub timestamp: Option<u64>,
}

/// Opens a signed note with the configured `keys`, as the spec requires: lines of unknown keys
/// are ignored; a line of a configured key that fails rejects the note; at least one must verify.
pub fn open(note: &str, keys: &[Vkey]) -> Result<(Note, Vec<Verified>), NoteError> {
    let n = Note::parse(note)?;
    let mut verified = Vec::new();
    for line in &n.signatures {
        for key in keys {
            match check_line(&n.text, line, key) {
                LineCheck::NotThisKey => {}
                LineCheck::Invalid => return Err(NoteError::BadSignature(key.name.clone())),
                LineCheck::Valid(timestamp) => verified.push(Verified {
                    key: key.clone(),
                    line: line.clone(),
                    timestamp,
                }),
            }
        }
    }
    if verified.is_empty() {
        return Err(NoteError::Unverified);
    }
    Ok((n, verified))
}

/// The text of a checkpoint (c2sp.org/tlog-checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointText {
    /// The log's origin (`<log name>/<chain id>` for governance).
    pub origin: String,
    /// The tree size (a chain's seq).
    pub size: u64,
    /// The RFC 9162 root of the tree of that size.
    pub root: Hash,
    /// Extension lines (governance writes none).
    pub extensions: Vec<String>,
}

impl CheckpointText {
    /// The note text, final newline included.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint's note text.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |what: &str| malformed(format!("checkpoint: {what}"));
        if !valid_text(text) {
            return Err(bad("not a note text"));
        }
        let mut lines = text[..text.len() - 1].split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size = lines.next().ok_or_else(|| bad("no tree size"))?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("the tree size is not a decimal without leading zeroes"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad("the tree size is too large"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("the root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("an empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    /// golang.org/x/mod/sumdb/note, note_test.go: the signer key
    /// `PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz`
    /// (base64 of 0x01 || the Ed25519 seed), its vkey and the signed note `TestSign` expects.
    const PETER_SKEY: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                        then you don't know what your problem is.\n";
    const SIGNED: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter() -> Signer {
        let raw = B64.decode(PETER_SKEY).unwrap();
        assert_eq!(raw[0], TYPE_ED25519);
        let seed: [u8; 32] = raw[1..].try_into().unwrap();
        Signer::from_key(SigningKey::from_bytes(&seed), "test")
    }

    #[test]
    fn go_sumdb_note_sign_vector_byte_for_byte() {
        let s = peter();
        let vkey = Vkey::parse(PETER_VKEY).unwrap();
        assert_eq!(
            vkey.public,
            s.public_key(),
            "the vkey is the seed's public key"
        );
        assert_eq!(vkey.to_string(), PETER_VKEY);
        assert_eq!(hex::encode(vkey.key_id()), "c74f20a3");
        let line = sign(TEXT, "PeterNeumann", &s).unwrap();
        let note = Note {
            text: TEXT.into(),
            signatures: vec![line],
        };
        assert_eq!(note.render(), SIGNED);
        assert_eq!(Note::parse(SIGNED).unwrap(), note);
    }

    #[test]
    fn go_sumdb_note_open_vectors() {
        let peter = Vkey::parse(PETER_VKEY).unwrap();
        let enoch = Vkey::parse(ENOCH_VKEY).unwrap();
        let both = format!("{SIGNED}{ENOCH_SIG}");
        // One key configured: the other line is ignored.
        let (n, v) = open(&both, std::slice::from_ref(&peter)).unwrap();
        assert_eq!(n.text, TEXT);
        assert_eq!(v.len(), 1);
        let (_, v) = open(&both, &[peter.clone(), enoch.clone()]).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(open(&both, &[]), Err(NoteError::Unverified));
        // A configured key's line that fails rejects the note (Go's "ABCD" insertion).
        let (a, b) = SIGNED.split_at(SIGNED.len() - 40);
        let bad = format!("{a}ABCD{b}");
        assert_eq!(
            open(&bad, std::slice::from_ref(&peter)),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
        // Go's malformed messages.
        let sig = &SIGNED[TEXT.len() + 1..];
        for m in [
            TEXT.to_owned(),
            format!("{TEXT}\n"),
            format!("{TEXT}\n{}", &sig[..sig.len() - 1]),
            format!("\x01{TEXT}\n{sig}"),
            format!(
                "{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
            ),
            format!("{TEXT}\n{sig}Unexpected line.\n"),
        ] {
            assert!(
                matches!(
                    open(&m, std::slice::from_ref(&peter)),
                    Err(NoteError::Malformed(_))
                ),
                "{m:?}"
            );
        }
    }

    #[test]
    fn c2sp_signed_note_example_verifies() {
        // c2sp.org/signed-note, "Example".
        let vkey =
            Vkey::parse("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
                .unwrap();
        let note = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        let (n, v) = open(note, &[vkey]).unwrap();
        assert_eq!(n.text, "This is an example message.\n");
        assert_eq!(v[0].timestamp, None);
    }

    #[test]
    fn transparency_dev_cosignature_timestamp_vector() {
        // transparency-dev/formats note_cosigv1_test.go, TestCosignatureTimestamp "works".
        let b = "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==";
        let l = SignatureLine::parse(&format!("\u{2014} w {b}\n")).unwrap();
        assert_eq!(l.signature.len(), 72);
        assert_eq!(l.timestamp(), Some(1_727_964_367));
    }

    #[test]
    fn c2sp_checkpoint_example_parses_and_renders() {
        // c2sp.org/tlog-checkpoint's example text.
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = CheckpointText::parse(text).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20_852_163);
        assert_eq!(c.text(), text);
        for bad in [
            "o\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n12\nCsUY\n",
            "\n12\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n12\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
        ] {
            assert!(CheckpointText::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cosignature_round_trip_and_message() {
        let w = Signer::from_key(SigningKey::from_bytes(&[7u8; 32]), "w");
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        // The spec's example message.
        assert_eq!(
            cosignature_message(text, 1_679_315_147),
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
        let line = cosign(text, "witness.example/w1", &w, 1_679_315_147).unwrap();
        let key = Vkey::new("witness.example/w1", TYPE_COSIGNATURE_V1, w.public_key()).unwrap();
        assert_eq!(
            check_line(text, &line, &key),
            LineCheck::Valid(Some(1_679_315_147))
        );
        // The same key as a type 0x01 key has another ID: the line is not its.
        let plain = Vkey::new("witness.example/w1", TYPE_ED25519, w.public_key()).unwrap();
        assert_eq!(check_line(text, &line, &plain), LineCheck::NotThisKey);
        // Any changed byte (here the timestamp) fails.
        let mut bad = line.clone();
        bad.signature[7] ^= 1;
        assert_eq!(check_line(text, &bad, &key), LineCheck::Invalid);
        assert_eq!(Vkey::parse(&key.to_string()).unwrap(), key);
    }
}
