//! Whose key sealed a chain: the one rule that tells a chain the configured keys cannot check
//! from a tampered one, and whether a writer may append to a chain at all. Pure: no storage.
//!
//! Evidence is judged by what cannot be forged. A `key_id` is a string that anyone who can
//! write the table can rewrite; a seal that verifies under a configured key (or a rotation
//! marker's proof that verifies under one) is proof that the holder of that key made the row.
//!
//! - A row whose `key_id` is not configured but which a configured key seals once its own
//!   `key_id` is put back was relabelled: tampering ([`RowSeal::Relabelled`]).
//! - The verifier ([`crate::ChainCheck`]) calls a chain *unverifiable with the configured keys*
//!   (a configuration problem, never tampering) only while nothing in it is evidence for a
//!   configured key: no row names a configured key and no configured key seals any row. A
//!   chain in which some rows are proven ours and others are not is tampered, at the first
//!   such row. The exceptions are rotations: the rows before a marker whose proof verifies
//!   under a configured key (the earlier secret is missing from the key ring), and the rows
//!   from a marker sealed by a configured key that rotates the chain to a key the ring lacks
//!   (the new secret is missing), are unverifiable, not tampered.
//! - A writer ([`check_head`]) appends to a chain only when its head row is proven sealed by
//!   the writer's current key, or is a marker proven to rotate the chain to that key.

use std::collections::BTreeSet;

use gov_core::{AuditRecord, ChainHead};
use serde::Serialize;
use thiserror::Error;

use crate::keys::KeyRing;
use crate::rotation::{MarkerError, ROTATION_KIND, check_marker};
use crate::verify::{Finding, Reason};

/// What the key ring can prove about one row's seal, at its stored seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSeal {
    /// The row names a configured key and that key seals it.
    Sealed,
    /// The row names a configured key, which does not seal it.
    Mismatch,
    /// The row names no configured key, yet a configured key seals it with that key's own
    /// fingerprint put back: its `key_id` was rewritten (to the one stored here).
    Relabelled {
        /// The configured key that sealed the row.
        sealed_with: String,
    },
    /// The row names no configured key and none seals it.
    Foreign,
}

/// Judges the seal of `row` against every key of `keys` (`buf` is scratch space). Only a row
/// that names no configured key costs more than one HMAC.
pub fn row_seal(keys: &KeyRing, row: &AuditRecord, buf: &mut Vec<u8>) -> RowSeal {
    if let Some(k) = keys.get(&row.key_id) {
        return if k.verify(row, buf) {
            RowSeal::Sealed
        } else {
            RowSeal::Mismatch
        };
    }
    let mut probe = row.clone();
    for id in keys.key_ids() {
        probe.key_id = id.to_owned();
        if keys.get(id).is_some_and(|k| k.verify(&probe, buf)) {
            return RowSeal::Relabelled {
                sealed_with: id.to_owned(),
            };
        }
    }
    RowSeal::Foreign
}

/// How a verified chain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every row checked is sealed by a configured key, linked and in order.
    Clean,
    /// Rows that no configured key can check, and nothing in them is evidence for a
    /// configured key: the chain was written with another secret (a configuration problem).
    Unverifiable,
    /// A finding: the chain was changed (or written by a key it should not have been).
    Tampered,
}

impl Verdict {
    /// `clean`, `unverifiable` or `tampered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Unverifiable => "unverifiable",
            Self::Tampered => "tampered",
        }
    }
}

/// Rows of a chain that no configured key can check: the secret that sealed them is not
/// configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unverifiable {
    /// The stretches of those rows, each as its first and last seq, in order.
    pub seqs: Vec<(i64, i64)>,
    /// The key fingerprints those rows name (or that a rotation moved the chain to).
    pub key_ids: BTreeSet<String>,
    /// What to do, naming the fingerprints the rows need and the ones configured.
    pub advice: String,
}

/// A run of consecutive rows that no configured key can check, as the verifier meets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stretch {
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) key_ids: BTreeSet<String>,
    /// The seq of a marker, sealed by a configured key, that rotated the chain to a key not
    /// configured: the stretch starts there. `None`: the stretch starts the check.
    pub(crate) opened_by: Option<i64>,
    /// The seq of a marker, proven by a configured key, that moved the chain to that key and
    /// ended the stretch.
    pub(crate) closed_by: Option<i64>,
}

impl Stretch {
    pub(crate) fn new(first: i64, opened_by: Option<i64>) -> Self {
        Self {
            first,
            last: first,
            key_ids: BTreeSet::new(),
            opened_by,
            closed_by: None,
        }
    }

    fn advice(&self) -> String {
        let named = join(self.key_ids.iter().map(String::as_str));
        let rows = if self.first == self.last {
            format!("row {}", self.first)
        } else {
            format!("rows {} to {}", self.first, self.last)
        };
        match (self.opened_by, self.closed_by) {
            (None, None) => format!(
                "{rows} name key {named} and none is sealed by a configured key: the chain was written with another audit secret; set GOVERNANCE_AUDIT_SECRET (or GOVERNANCE_AUDIT_SECRET_PREVIOUS, or a line of GOVERNANCE_AUDIT_KEYRING_FILE) to the secret whose key is {named}"
            ),
            (None, Some(at)) => format!(
                "{rows} were sealed with key {named} before the chain was rotated to a configured key at seq {at}: add that earlier secret to GOVERNANCE_AUDIT_SECRET_PREVIOUS (or GOVERNANCE_AUDIT_KEYRING_FILE) to verify them"
            ),
            (Some(at), closed) => format!(
                "the chain was rotated at seq {at} to key {named}, which is not configured, so {rows} cannot be checked{}: set GOVERNANCE_AUDIT_SECRET to the secret whose key is {named} (and GOVERNANCE_AUDIT_SECRET_PREVIOUS to the earlier ones)",
                closed.map_or(String::new(), |c| format!(
                    " (until the rotation at seq {c} to a configured key)"
                ))
            ),
        }
    }
}

impl Unverifiable {
    /// The rows as text: `rows 1..5`, `row 4`, `rows 1..3, 9..12`.
    pub fn rows(&self) -> String {
        let parts: Vec<String> = self
            .seqs
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}..{b}")
                }
            })
            .collect();
        let one = self.seqs.len() == 1 && self.seqs[0].0 == self.seqs[0].1;
        format!("{} {}", if one { "row" } else { "rows" }, parts.join(", "))
    }

    /// The rows of `stretches` (none empty), with advice naming the keys of `keys`.
    pub(crate) fn new(stretches: &[Stretch], keys: &KeyRing) -> Option<Self> {
        if stretches.is_empty() {
            return None;
        }
        let advice = stretches
            .iter()
            .map(Stretch::advice)
            .collect::<Vec<_>>()
            .join("; ");
        Some(Self {
            seqs: stretches.iter().map(|s| (s.first, s.last)).collect(),
            key_ids: stretches
                .iter()
                .flat_map(|s| s.key_ids.iter().cloned())
                .collect(),
            advice: format!("{advice} (configured: {})", join(keys.key_ids())),
        })
    }
}

fn join<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    ids.collect::<Vec<_>>().join(", ")
}

/// Why a writer may not append to a chain: the chain's head was not sealed by the key the
/// writer seals with, so its rows would break the chain for good (it is append-only). A
/// configuration problem: the message names the fingerprints and what to set, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotWritable {
    /// The head was sealed by a key this writer does not hold (or holds nothing to prove).
    #[error(
        "chain `{chain}` was sealed with key {sealed_with}; this handle seals with {ours}: set GOVERNANCE_AUDIT_SECRET to the chain's secret (to move the chain to this key, run `governance rotate-chain-key` with the chain's secret as GOVERNANCE_AUDIT_SECRET and this one as GOVERNANCE_AUDIT_SECRET_NEW)"
    )]
    ForeignKey {
        /// The chain.
        chain: String,
        /// The fingerprint the head row names.
        sealed_with: String,
        /// The fingerprint this writer seals with.
        ours: String,
    },
    /// The head was sealed by a key this writer holds only as an earlier one, and no marker
    /// moved the chain to the current key.
    #[error(
        "chain `{chain}` was last sealed with key {sealed_with}, which this handle holds only as an earlier key; sealing with {ours} without a rotation marker would break the chain: rotate it first (`governance rotate-chain-key` with the secret of {sealed_with} as GOVERNANCE_AUDIT_SECRET and this one as GOVERNANCE_AUDIT_SECRET_NEW)"
    )]
    EarlierKey {
        /// The chain.
        chain: String,
        /// The fingerprint the head row names.
        sealed_with: String,
        /// The fingerprint this writer seals with.
        ours: String,
    },
    /// The chain's last row is a rotation marker to a key other than the one this writer
    /// seals with.
    #[error(
        "chain `{chain}` was rotated at seq {seq} from key {from} to key {to}; this handle seals with {ours}: set GOVERNANCE_AUDIT_SECRET to the secret of {to} (and GOVERNANCE_AUDIT_SECRET_PREVIOUS to the earlier ones)"
    )]
    RotatedAway {
        /// The chain.
        chain: String,
        /// The seq of the marker.
        seq: i64,
        /// The fingerprint the marker retired.
        from: String,
        /// The fingerprint the marker moved the chain to.
        to: String,
        /// The fingerprint this writer seals with.
        ours: String,
    },
}

/// Why [`check_head`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadRefusal {
    /// The head is sound but not this writer's to extend.
    NotWritable(NotWritable),
    /// The head is damaged: nothing proves who sealed it.
    Broken(Finding),
}

/// Whether a writer sealing with `keys.current()` may append to `chain`, whose head row is
/// `head` (`None`: no head row) and whose row at the head's seq is `row`.
///
/// A new chain (no head, or a head at seq 0) may be started. Otherwise the head row must be
/// proven: sealed by the current key and not a marker that rotates away from it; or a
/// `chain.key_rotated` marker whose proof verifies under the current key (the chain was
/// rotated to it; the marker's own seal is checked when the ring holds the old key). A head
/// that names a key and does not verify under it, a missing head row, or a head row whose HMAC
/// is not the one `chain_heads` holds, is broken: nothing is appended to it.
pub fn check_head(
    keys: &KeyRing,
    chain: &str,
    head: Option<&ChainHead>,
    row: Option<&AuditRecord>,
) -> Result<(), HeadRefusal> {
    let Some(head) = head.filter(|h| h.seq > 0) else {
        return Ok(());
    };
    let broken = |reason, detail: String| {
        Err(HeadRefusal::Broken(Finding {
            seq: head.seq,
            reason,
            detail: format!(
                "{detail}; nothing more is sealed onto chain `{chain}` until it is examined (`governance verify --chain {chain}`)"
            ),
        }))
    };
    let Some(row) = row.filter(|r| r.seq == head.seq) else {
        return broken(
            Reason::MissingRow,
            format!(
                "the head of chain `{chain}` is at seq {}, but that row is missing",
                head.seq
            ),
        );
    };
    if row.row_hmac != head.head_hmac {
        return broken(
            Reason::HeadMismatch,
            format!(
                "the head row of chain `{chain}` is not the row at seq {}",
                head.seq
            ),
        );
    }
    let ours = keys.current().key_id().to_owned();
    let mut buf = Vec::with_capacity(256 + row.payload.len());
    // Where a marker at the head moves the chain: `Some(Ok(to))` when its proof verifies,
    // `Some(Err(to))` when it names a key the ring lacks (so its proof cannot be checked).
    let marker = (row.kind == ROTATION_KIND).then(|| match check_marker(row, keys) {
        Ok(to) => Ok(Ok(to)),
        Err(MarkerError::UnknownNewKey(to)) => Ok(Err(to)),
        Err(e) => Err(e),
    });
    let rotated_away = |to: String| {
        Err(HeadRefusal::NotWritable(NotWritable::RotatedAway {
            chain: chain.to_owned(),
            seq: row.seq,
            from: row.key_id.clone(),
            to,
            ours: ours.clone(),
        }))
    };
    let forged = || {
        broken(
            Reason::ForgedRotation,
            format!(
                "the head of chain `{chain}` is a rotation marker that does not prove the key it names"
            ),
        )
    };
    match row_seal(keys, row, &mut buf) {
        RowSeal::Sealed => match marker {
            None if row.key_id == ours => Ok(()),
            // The chain was rotated to the current key by a marker sealed with an earlier one.
            Some(Ok(Ok(to))) if to == ours => Ok(()),
            Some(Ok(Ok(to) | Err(to))) => rotated_away(to),
            Some(Err(_)) => forged(),
            None => Err(HeadRefusal::NotWritable(NotWritable::EarlierKey {
                chain: chain.to_owned(),
                sealed_with: row.key_id.clone(),
                ours,
            })),
        },
        RowSeal::Mismatch | RowSeal::Relabelled { .. } => broken(
            Reason::ModifiedRow,
            format!(
                "the head row of chain `{chain}` (seq {}) is not sealed by the key it names",
                row.seq
            ),
        ),
        // The old key is not held, but the new key's proof shows that its holder rotated the
        // chain to the current key.
        RowSeal::Foreign => match marker {
            Some(Ok(Ok(to))) if to == ours => Ok(()),
            Some(Ok(Ok(to) | Err(to))) => rotated_away(to),
            Some(Err(MarkerError::BadProof)) => forged(),
            Some(Err(_)) | None => Err(HeadRefusal::NotWritable(NotWritable::ForeignKey {
                chain: chain.to_owned(),
                sealed_with: row.key_id.clone(),
                ours,
            })),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{AuditSecret, ChainKey};
    use gov_core::{AuditEvent, ZERO_HMAC};

    const A: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
    const B: &str = "3b8f1d2c9a4e7f60b5c1d8e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2";

    fn key(s: &str) -> ChainKey {
        AuditSecret::parse(s).unwrap().chain_key()
    }

    fn sealed(k: &ChainKey, ev: &AuditEvent, seq: i64) -> (AuditRecord, ChainHead) {
        let mut r = AuditRecord::unsealed(ev, seq, &ZERO_HMAC, k.key_id());
        r.row_hmac = k.seal(&r).to_vec();
        let head = ChainHead {
            chain_id: "default".into(),
            seq,
            head_hmac: r.row_hmac.clone(),
        };
        (r, head)
    }

    fn row(k: &ChainKey) -> (AuditRecord, ChainHead) {
        let ev = AuditEvent::builder("a", "tool.call").build().unwrap();
        sealed(k, &ev, 1)
    }

    fn refusal(keys: &KeyRing, r: &AuditRecord, h: &ChainHead) -> HeadRefusal {
        check_head(keys, "default", Some(h), Some(r)).unwrap_err()
    }

    #[test]
    fn a_relabelled_row_is_told_from_a_foreign_one() {
        let (a, b) = (key(A), key(B));
        let ring = KeyRing::new(a.clone());
        let mut buf = Vec::new();
        let (mut r, _) = row(&a);
        assert_eq!(row_seal(&ring, &r, &mut buf), RowSeal::Sealed);
        r.key_id = "hk1_000000000000000000000000".into();
        assert_eq!(
            row_seal(&ring, &r, &mut buf),
            RowSeal::Relabelled {
                sealed_with: a.key_id().to_owned()
            }
        );
        let (f, _) = row(&b);
        assert_eq!(row_seal(&ring, &f, &mut buf), RowSeal::Foreign);
        let mut claimed = f.clone();
        claimed.key_id = a.key_id().to_owned();
        assert_eq!(row_seal(&ring, &claimed, &mut buf), RowSeal::Mismatch);
    }

    #[test]
    fn a_writer_appends_only_after_a_head_its_key_sealed() {
        let (a, b) = (key(A), key(B));
        let ring_a = KeyRing::new(a.clone());
        // New chains may be started.
        assert_eq!(check_head(&ring_a, "default", None, None), Ok(()));
        // Our own head.
        let (r, h) = row(&a);
        assert_eq!(check_head(&ring_a, "default", Some(&h), Some(&r)), Ok(()));
        // A head sealed with another key: refused, naming both fingerprints, never a secret.
        let ring_b = KeyRing::new(b.clone());
        let e = refusal(&ring_b, &r, &h);
        let HeadRefusal::NotWritable(e) = e else {
            panic!("{e:?}")
        };
        let m = e.to_string();
        assert!(m.contains(a.key_id()) && m.contains(b.key_id()), "{m}");
        assert!(!m.contains(A) && !m.contains(B), "{m}");
        // Holding the chain's key only as an earlier one is not enough: no marker.
        let ring_ba = KeyRing::with_previous(b.clone(), [a.clone()]);
        assert!(matches!(
            refusal(&ring_ba, &r, &h),
            HeadRefusal::NotWritable(NotWritable::EarlierKey { .. })
        ));
        // A head that names our key but is not sealed by it proves nothing.
        let (mut forged, _) = row(&b);
        forged.key_id = a.key_id().to_owned();
        let fh = ChainHead {
            head_hmac: forged.row_hmac.clone(),
            ..h.clone()
        };
        assert!(matches!(
            refusal(&ring_a, &forged, &fh),
            HeadRefusal::Broken(Finding {
                reason: Reason::ModifiedRow,
                ..
            })
        ));
        // A missing head row, or one that is not the head's HMAC.
        assert!(matches!(
            check_head(&ring_a, "default", Some(&h), None),
            Err(HeadRefusal::Broken(_))
        ));
        let other = ChainHead {
            head_hmac: vec![1; 32],
            ..h.clone()
        };
        assert!(matches!(
            refusal(&ring_a, &r, &other),
            HeadRefusal::Broken(_)
        ));
    }

    #[test]
    fn a_rotation_marker_hands_the_chain_to_the_new_key_only() {
        let (a, b) = (key(A), key(B));
        let ev = crate::rotation::marker_event("default", &a, &b, "alice", "yearly").unwrap();
        let (m, h) = sealed(&a, &ev, 1);
        // The new key's holder may append, with or without the old key in its ring.
        let with_old = KeyRing::with_previous(b.clone(), [a.clone()]);
        assert_eq!(check_head(&with_old, "default", Some(&h), Some(&m)), Ok(()));
        assert_eq!(
            check_head(&KeyRing::new(b.clone()), "default", Some(&h), Some(&m)),
            Ok(())
        );
        // The old key's holder may not: it was retired.
        let old = KeyRing::with_previous(a.clone(), [b.clone()]);
        assert!(matches!(
            refusal(&old, &m, &h),
            HeadRefusal::NotWritable(NotWritable::RotatedAway { .. })
        ));
        let old_alone = KeyRing::new(a.clone());
        let e = refusal(&old_alone, &m, &h);
        let HeadRefusal::NotWritable(NotWritable::RotatedAway { to, .. }) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(to, b.key_id());
        // A third key's holder is told which key the chain moved to.
        let c = key("c4d1e8f2a9b3c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2");
        let e = refusal(&KeyRing::new(c), &m, &h);
        assert!(
            matches!(&e, HeadRefusal::NotWritable(NotWritable::RotatedAway { to, .. }) if to == b.key_id()),
            "{e:?}"
        );
    }
}
