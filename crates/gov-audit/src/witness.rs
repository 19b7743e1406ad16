//! The witness protocol (c2sp.org/tlog-witness `add-checkpoint`), pure: the request body, the
//! witness's decision for one log, and the check of a stored cosignature.
//!
//! The witness's state per log is the last checkpoint it cosigned (size and root). A request
//! carries the size the log believes that to be (`old N`), a consistency proof from there, and
//! the new checkpoint signed by the log. The witness cosigns only a checkpoint that is signed by
//! a key it trusts for the origin and consistent with its state; the HTTP server and the state
//! files are the CLI's (`governance witness serve`). No I/O here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::note::{self, CheckpointText, NoteError, TYPE_COSIGNATURE_V1, Vkey};
use crate::tree::{self, Hash};

/// At most this many consistency proof lines (the spec's limit).
pub const MAX_PROOF_LINES: usize = 63;

/// An `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the last checkpoint the log believes the witness cosigned.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// The request body: `old N`, one base64 hash per line, a blank line, the checkpoint.
    pub fn render(&self) -> String {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    /// Parses a request body.
    pub fn parse(body: &str) -> Result<Self, Refusal> {
        let bad = |what: &str| Refusal::BadRequest(format!("malformed request: {what}"));
        let (head, checkpoint) = body
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or_else(|| bad("the first line is not `old <size>`"))?;
        if old.is_empty()
            || !old.bytes().all(|b| b.is_ascii_digit())
            || (old.len() > 1 && old.starts_with('0'))
        {
            return Err(bad("the old size is not a decimal without leading zeroes"));
        }
        let old_size = old.parse().map_err(|_| bad("the old size is too large"))?;
        let proof = lines
            .map(|l| {
                B64.decode(l)
                    .ok()
                    .and_then(|h| Hash::try_from(h).ok())
                    .ok_or_else(|| bad("a proof line is not a base64 hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(bad("more than 63 proof lines"));
        }
        Ok(Self {
            old_size,
            proof,
            checkpoint: checkpoint.to_owned(),
        })
    }
}

/// Why a witness does not cosign, with the HTTP status the spec gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a malformed request, or an old size beyond the checkpoint's.
    BadRequest(String),
    /// 403: no signature of a trusted key, or a trusted key's signature that fails.
    Forbidden(String),
    /// 404: the origin is not a log this witness knows.
    UnknownLog(String),
    /// 409: the old size is not the size the witness last cosigned (which this holds).
    Conflict(u64),
    /// 422: the proof does not verify, or the checkpoint is not consistent with the last one.
    Unprocessable(String),
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Forbidden(_) => 403,
            Self::UnknownLog(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unprocessable(_) => 422,
        }
    }

    /// The response body (for 409, the witness's size and a newline, as the spec requires).
    pub fn body(&self) -> String {
        match self {
            Self::Conflict(size) => format!("{size}\n"),
            Self::BadRequest(m)
            | Self::Forbidden(m)
            | Self::UnknownLog(m)
            | Self::Unprocessable(m) => format!("{m}\n"),
        }
    }
}

/// What the witness last cosigned for a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// Its tree size.
    pub size: u64,
    /// Its root.
    pub root: Hash,
}

/// The checkpoint the witness may cosign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The checkpoint's parsed text.
    pub checkpoint: CheckpointText,
    /// The note text to cosign.
    pub text: String,
}

/// The origin a request's checkpoint claims (to find the log's keys and state).
pub fn origin_of(req: &AddCheckpoint) -> Result<String, Refusal> {
    let n = note::Note::parse(&req.checkpoint)
        .map_err(|e| Refusal::BadRequest(format!("malformed checkpoint: {e}")))?;
    let c = CheckpointText::parse(&n.text)
        .map_err(|e| Refusal::BadRequest(format!("malformed checkpoint: {e}")))?;
    Ok(c.origin)
}

/// Decides a request against the log's trusted keys and the witness's state for it, in the
/// order of c2sp.org/tlog-witness. The caller must hold the log's state lock from this check
/// until the new state is persisted.
pub fn decide(
    req: &AddCheckpoint,
    log_keys: &[Vkey],
    state: Option<&LogState>,
) -> Result<Accepted, Refusal> {
    let origin = origin_of(req)?;
    if log_keys.is_empty() {
        return Err(Refusal::UnknownLog(format!("unknown log {origin}")));
    }
    let (n, _) = note::open(&req.checkpoint, log_keys).map_err(|e| match e {
        NoteError::Malformed(m) => Refusal::BadRequest(format!("malformed checkpoint: {m}")),
        e => Refusal::Forbidden(format!("checkpoint of {origin}: {e}")),
    })?;
    let c = CheckpointText::parse(&n.text)
        .map_err(|e| Refusal::BadRequest(format!("malformed checkpoint: {e}")))?;
    if req.old_size > c.size {
        return Err(Refusal::BadRequest(format!(
            "the old size {} is beyond the checkpoint's size {}",
            req.old_size, c.size
        )));
    }
    let known = state.map_or(0, |s| s.size);
    if req.old_size != known {
        return Err(Refusal::Conflict(known));
    }
    if c.size == 0 && c.root != tree::empty_root() {
        return Err(Refusal::Unprocessable(
            "a checkpoint of size 0 must have the empty tree's root".into(),
        ));
    }
    match state {
        None => {
            if !req.proof.is_empty() {
                return Err(Refusal::Unprocessable(
                    "the proof from size 0 must be empty".into(),
                ));
            }
        }
        Some(s) => tree::verify_consistency(s.size, c.size, &s.root, &c.root, &req.proof)
            .map_err(|e| {
                Refusal::Unprocessable(format!(
                    "the checkpoint of size {} is not consistent with the one of size {} cosigned before: {e}",
                    c.size, s.size
                ))
            })?,
    }
    Ok(Accepted {
        text: n.text,
        checkpoint: c,
    })
}

/// Whether a stored cosignature verifies under the witness key stored with it, over the
/// checkpoint text its origin, size and root make.
pub fn stored_cosignature_verifies(c: &gov_store::CosignatureRow) -> bool {
    let (Ok(key), Ok(root), Ok(size)) = (
        <[u8; 32]>::try_from(c.witness_key.as_slice()),
        Hash::try_from(c.root_hash.as_slice()),
        u64::try_from(c.tree_size),
    ) else {
        return false;
    };
    let Ok(vkey) = Vkey::new(&c.witness_name, TYPE_COSIGNATURE_V1, key) else {
        return false;
    };
    let Ok(ts) = u64::try_from(c.cosigned_at) else {
        return false;
    };
    let text = CheckpointText {
        origin: c.origin.clone(),
        size,
        root,
        extensions: Vec::new(),
    }
    .text();
    let mut signature = ts.to_be_bytes().to_vec();
    signature.extend_from_slice(&c.signature);
    let line = note::SignatureLine {
        name: c.witness_name.clone(),
        key_id: vkey.key_id(),
        signature,
    };
    note::check_line(&text, &line, &vkey) == note::LineCheck::Valid(Some(ts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Signer;
    use ed25519_dalek::SigningKey;

    fn leaves(n: u32) -> Vec<Hash> {
        (0..n).map(|i| tree::leaf_hash(&i.to_be_bytes())).collect()
    }

    fn checkpoint(log: &Signer, origin: &str, size: u32) -> String {
        let text = CheckpointText {
            origin: origin.into(),
            size: size.into(),
            root: tree::root_of(&leaves(size)),
            extensions: vec![],
        }
        .text();
        let line = note::sign(&text, origin, log).unwrap();
        note::Note {
            text,
            signatures: vec![line],
        }
        .render()
    }

    fn proof(old: u32, new: u32) -> Vec<Hash> {
        let l = leaves(new);
        tree::consistency_path(old.into(), new.into(), &mut |s: tree::Subtree| {
            let a = (s.index << s.height) as usize;
            tree::root_of(&l[a..a + (1usize << s.height)])
        })
    }

    #[test]
    fn the_witness_decides_as_the_spec_says() {
        let log = Signer::from_key(SigningKey::from_bytes(&[1u8; 32]), "log");
        let other = Signer::from_key(SigningKey::from_bytes(&[2u8; 32]), "other");
        let o = "example.com/gov/default";
        let keys = [Vkey::new(o, note::TYPE_ED25519, log.public_key()).unwrap()];
        let req = |old: u32, new: u32, signer: &Signer| AddCheckpoint {
            old_size: old.into(),
            proof: if old == 0 { vec![] } else { proof(old, new) },
            checkpoint: checkpoint(signer, o, new),
        };
        // Round trip of the body.
        let r = req(3, 7, &log);
        assert_eq!(AddCheckpoint::parse(&r.render()).unwrap(), r);
        // First contact.
        let a = decide(&req(0, 5, &log), &keys, None).unwrap();
        assert_eq!(a.checkpoint.size, 5);
        let state = LogState {
            size: 5,
            root: a.checkpoint.root,
        };
        assert!(decide(&req(5, 9, &log), &keys, Some(&state)).is_ok());
        assert_eq!(
            decide(&req(0, 9, &log), &keys, Some(&state)),
            Err(Refusal::Conflict(5))
        );
        assert_eq!(
            decide(&req(5, 9, &log), &[], Some(&state))
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            decide(&req(5, 9, &other), &keys, Some(&state))
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            decide(&req(9, 5, &log), &keys, Some(&state))
                .unwrap_err()
                .status(),
            400
        );
        // A proof that does not lead from the witness's root: 422.
        let mut bad = req(5, 9, &log);
        bad.proof[0][0] ^= 1;
        assert_eq!(decide(&bad, &keys, Some(&state)).unwrap_err().status(), 422);
        // Another root at the same size: 422.
        let forked = LogState {
            size: 5,
            root: [9u8; 32],
        };
        assert_eq!(
            decide(&req(5, 9, &log), &keys, Some(&forked))
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(Refusal::Conflict(5).body(), "5\n");
    }
}
