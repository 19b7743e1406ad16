//! The chain verifier: streams rows in seq order with bounded memory, recomputes each HMAC on
//! every core, checks links, gaps and the head row, and names the first bad seq and why.
//!
//! A reader task fetches pages of rows by seq (keyset) a few pages ahead; each page's seals are
//! recomputed in parallel on a rayon pool, then its rows are checked in order by [`ChainCheck`]
//! with those results, so the findings are exactly those of a row-by-row check. Never does CPU
//! work on the async threads.

use std::collections::BTreeSet;
use std::sync::Arc;

use gov_core::{AuditRecord, ChainHead, ZERO_HMAC};
use gov_store::Store;
use rayon::prelude::*;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::AuditError;
use crate::keys::KeyRing;
use crate::owner::{RowSeal, Stretch, Unverifiable, Verdict, row_seal};
use crate::rotation::{MarkerError, ROTATION_KIND, check_marker};
use crate::signing::SigVerdict;

/// Rows fetched per page (one page is verified while the next is fetched).
pub const PAGE_ROWS: u32 = 2_000;
/// How far from its stored seq a row is searched for when its seal does not match there.
const REORDER_WINDOW: i64 = 64;

/// Why a row failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The row's contents no longer match its HMAC.
    ModifiedRow,
    /// A seq is missing: a row was deleted, or the tail was cut off.
    MissingRow,
    /// The row is authentic but was written at another seq: rows were moved or swapped.
    ReorderedRows,
    /// A row that was never written by the chain sits in it.
    InsertedRow,
    /// The row is authentic but does not follow its predecessor: the chain forked.
    Fork,
    /// The row was sealed with a key that is not in the key ring.
    UnknownKey,
    /// The head row does not match the last row.
    HeadMismatch,
    /// A `chain.key_rotated` marker whose proof does not verify under the new key, or that is
    /// malformed: it was not made by a holder of both keys.
    ForgedRotation,
    /// An authentic row sealed with a key that an earlier rotation retired: a writer still runs
    /// with the old secret.
    RetiredKey,
    /// The sealing key changes between two rows without a rotation marker.
    UnmarkedKeyChange,
    /// The row was sealed as signed by a signer, but its signature was removed.
    StrippedSignature,
    /// The row is signed by a key that is not registered in `signer_keys`.
    UnregisteredSigner,
    /// The row is signed by a key revoked before the row's time.
    RevokedSigner,
    /// The row's signature does not verify (or its signature fields are inconsistent).
    BadSignature,
    /// The chain no longer holds the head a signed checkpoint recorded: it was rebuilt or
    /// rewritten up to there.
    CheckpointMismatch,
    /// A checkpoint's own signature does not verify, or its signer is not registered.
    BadCheckpoint,
    /// A witness cosigned a root at a tree size that the rows no longer give: the chain was
    /// rebuilt or rewritten up to there, by someone holding every key.
    CosignatureMismatch,
    /// A stored witness cosignature does not verify under the witness key stored with it.
    BadCosignature,
}

impl Reason {
    /// A short human name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModifiedRow => "modified row",
            Self::MissingRow => "missing row",
            Self::ReorderedRows => "reordered rows",
            Self::InsertedRow => "inserted row",
            Self::Fork => "fork",
            Self::UnknownKey => "unknown key",
            Self::HeadMismatch => "head mismatch",
            Self::ForgedRotation => "forged rotation marker",
            Self::RetiredKey => "retired key",
            Self::UnmarkedKeyChange => "unmarked key change",
            Self::StrippedSignature => "stripped signature",
            Self::UnregisteredSigner => "unregistered signer",
            Self::RevokedSigner => "revoked signer",
            Self::BadSignature => "bad signature",
            Self::CheckpointMismatch => "checkpoint mismatch",
            Self::BadCheckpoint => "bad checkpoint",
            Self::CosignatureMismatch => "cosignature mismatch",
            Self::BadCosignature => "bad cosignature",
        }
    }
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The first bad seq.
    pub seq: i64,
    /// Why.
    pub reason: Reason,
    /// What exactly was seen.
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seq {}: {}: {}",
            self.seq,
            self.reason.as_str(),
            self.detail
        )
    }
}

/// The result for one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The chain.
    pub chain_id: String,
    /// Rows checked (up to and including the first bad one).
    pub events_checked: u64,
    /// The head seq the verification ran up to.
    pub head_seq: i64,
    /// Key fingerprints seen.
    pub key_ids: BTreeSet<String>,
    /// How the rows that passed were signed: reported apart from findings.
    pub signatures: SignatureCounts,
    /// The seqs verified, first and last, when a range was asked for (absent otherwise). The
    /// last is the range's end or the head, whichever is lower.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<(i64, i64)>,
    /// The last seq archived and removed by a recorded retention cut (`governance archive`),
    /// when there is one: verification starts after it, linked to that row's recorded seal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_through: Option<i64>,
    /// The first problem, if any.
    pub finding: Option<Finding>,
    /// Rows that no configured key can check, when nothing in them is evidence for a
    /// configured key (absent otherwise, and whenever there is a finding): the chain, or its
    /// part before a rotation to a configured key, was written with another secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverifiable: Option<Unverifiable>,
}

impl ChainReport {
    /// Tampered when there is a finding; else unverifiable when rows could not be checked with
    /// the configured keys; else clean.
    pub fn verdict(&self) -> Verdict {
        if self.finding.is_some() {
            Verdict::Tampered
        } else if self.unverifiable.is_some() {
            Verdict::Unverifiable
        } else {
            Verdict::Clean
        }
    }

    /// True when every row was checked and none has a problem.
    pub fn is_clean(&self) -> bool {
        self.verdict() == Verdict::Clean
    }
}

/// How many rows that passed were signed, and how many were not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SignatureCounts {
    /// Signed by a registered key, signature verified.
    pub signed: u64,
    /// Written without a signer.
    pub unsigned: u64,
    /// Written unsigned because the signer could not load its key.
    pub unsigned_local_failure: u64,
}

/// The result over one or more chains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Per chain, ordered by chain id.
    pub chains: Vec<ChainReport>,
    /// Rows checked in all.
    pub events_checked: u64,
}

impl VerifyReport {
    /// True when every chain is clean.
    pub fn is_clean(&self) -> bool {
        self.chains.iter().all(ChainReport::is_clean)
    }

    /// The worst verdict over the chains: tampered before unverifiable before clean. Each
    /// chain is judged on its own (a chain that cannot be checked says nothing about another).
    pub fn verdict(&self) -> Verdict {
        self.chains
            .iter()
            .map(ChainReport::verdict)
            .max()
            .unwrap_or(Verdict::Clean)
    }

    /// The chains with rows the configured keys cannot check, and what to do about them.
    pub fn unverifiable(&self) -> impl Iterator<Item = (&str, &Unverifiable)> {
        self.chains.iter().filter_map(|c| match c.verdict() {
            Verdict::Unverifiable => c.unverifiable.as_ref().map(|u| (c.chain_id.as_str(), u)),
            _ => None,
        })
    }

    /// The first chain with a problem.
    pub fn first_finding(&self) -> Option<(&str, &Finding)> {
        self.chains
            .iter()
            .find_map(|c| c.finding.as_ref().map(|f| (c.chain_id.as_str(), f)))
    }
}

/// Options for [`crate::AuditLog::verify_with`].
///
/// `from_seq` and `to_seq` bound the rows verified, both inclusive. The first row of a range
/// that starts after seq 1 must link to the row before it: that row's stored `row_hmac` is the
/// expected `prev_hmac`, and that row's own seal is not checked (it lies outside the range). The
/// head row checks (a cut tail, the head's HMAC) and the check for rows stored beyond the head
/// apply only when `to_seq` is `None` or reaches the head.
#[derive(Clone, Default)]
pub struct VerifyOptions {
    /// First seq to verify (inclusive, at least 1; default 1).
    pub from_seq: Option<i64>,
    /// Last seq to verify (inclusive, at least `from_seq`; default the chain's head).
    pub to_seq: Option<i64>,
    /// Threads that recompute HMACs: `None` for one per core, `Some(1)` for one.
    pub threads: Option<usize>,
    /// Called after each page of rows with the progress of the chain being verified.
    pub progress: Option<Arc<dyn Fn(VerifyProgress) + Send + Sync>>,
}

impl std::fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("from_seq", &self.from_seq)
            .field("to_seq", &self.to_seq)
            .field("threads", &self.threads)
            .field(
                "progress",
                &self.progress.as_ref().map(|_| "Fn(VerifyProgress)"),
            )
            .finish()
    }
}

impl VerifyOptions {
    /// Refuses a range that starts below seq 1 or ends before it starts, and zero threads.
    pub fn validate(&self) -> Result<(), AuditError> {
        let bad = |m: String| Err(AuditError::InvalidOptions(m));
        if let Some(from) = self.from_seq
            && from < 1
        {
            return bad(format!(
                "the range must start at seq 1 or later, not {from}"
            ));
        }
        if let Some(to) = self.to_seq
            && to < 1
        {
            return bad(format!("the range must end at seq 1 or later, not {to}"));
        }
        if let (Some(from), Some(to)) = (self.from_seq, self.to_seq)
            && from > to
        {
            return bad(format!(
                "the range starts at seq {from}, after its end at seq {to}"
            ));
        }
        if self.threads == Some(0) {
            return bad("verification needs at least one thread".into());
        }
        Ok(())
    }

    /// Whether a range was asked for.
    pub fn is_range(&self) -> bool {
        self.from_seq.is_some() || self.to_seq.is_some()
    }
}

/// How far the verification of one chain has got; reported after each page of rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyProgress {
    /// The chain being verified.
    pub chain_id: String,
    /// Rows that passed so far.
    pub checked: u64,
    /// Rows to check in this chain (its head seq, or the size of the range).
    pub total: u64,
}

/// Pure, incremental verification of one chain: feed rows in seq order, then `finish`.
pub struct ChainCheck<'k> {
    keys: &'k KeyRing,
    s: CheckState,
}

/// What a check carries from row to row. Owned, so it can move to a worker thread and back.
struct CheckState {
    head: ChainHead,
    /// The last seq to check: the head's, or the end of the range.
    end_seq: i64,
    /// Whether the last row checked must be the head (false for a range ending before it).
    check_head: bool,
    range: Option<(i64, i64)>,
    archived_through: Option<i64>,
    expected_seq: i64,
    prev: Vec<u8>,
    checked: u64,
    key_ids: BTreeSet<String>,
    signatures: SignatureCounts,
    /// The key that must seal the next row (`None` before the first row checked).
    expect_key: Option<String>,
    /// Keys retired by rotation markers, with the marker's seq.
    retired: Vec<(String, i64)>,
    /// Runs of rows that no configured key can check, ended (see `crate::owner`).
    stretches: Vec<Stretch>,
    /// The run being met: rows from the start of the check while no row is proven ours, or
    /// rows after a marker (sealed by a configured key) to a key that is not configured.
    open: Option<Stretch>,
    /// Whether a row was proven sealed by a configured key (a row that passed, or a rotation
    /// marker whose proof verifies under one). After that, a row no configured key seals is a
    /// finding, unless a rotation to a key that is not configured came first.
    ours: bool,
    buf: Vec<u8>,
}

impl<'k> ChainCheck<'k> {
    /// Starts checking a chain whose head row is `head`.
    pub fn new(keys: &'k KeyRing, head: ChainHead) -> Self {
        Self {
            keys,
            s: CheckState {
                end_seq: head.seq,
                check_head: true,
                range: None,
                archived_through: None,
                head,
                expected_seq: 1,
                prev: ZERO_HMAC.to_vec(),
                checked: 0,
                key_ids: BTreeSet::new(),
                signatures: SignatureCounts::default(),
                expect_key: None,
                retired: Vec::new(),
                stretches: Vec::new(),
                open: None,
                ours: false,
                buf: Vec::with_capacity(1024),
            },
        }
    }

    /// Rows checked so far.
    pub fn checked(&self) -> u64 {
        self.s.checked
    }

    /// How the rows that passed so far were signed.
    pub fn signatures(&self) -> SignatureCounts {
        self.s.signatures
    }

    fn authentic_at(&mut self, row: &AuditRecord, seq: i64) -> bool {
        let Some(key) = self.keys.get(&row.key_id) else {
            return false;
        };
        if seq == row.seq {
            return key.verify(row, &mut self.s.buf);
        }
        let mut moved = row.clone();
        moved.seq = seq;
        key.verify(&moved, &mut self.s.buf)
    }

    /// Whether `row` looks inserted in front of `next`: `next` is authentic one seq earlier
    /// than stored and follows the row before `row`.
    fn inserted_before(&mut self, row: &AuditRecord, next: Option<&AuditRecord>) -> bool {
        match next {
            Some(n) if n.seq == row.seq + 1 && n.prev_hmac == self.s.prev => {
                self.authentic_at(n, row.seq)
            }
            _ => false,
        }
    }

    /// Checks the next row; `next` is the row after it, if already fetched (used to tell an
    /// inserted row from a modified one).
    pub fn check(&mut self, row: &AuditRecord, next: Option<&AuditRecord>) -> Result<(), Finding> {
        let seal = row_seal(self.keys, row, &mut self.s.buf);
        let sig = crate::signing::judge(row, self.keys.signers());
        self.check_sealed(row, next, seal, sig)
    }

    /// [`Self::check`] with the row's seal already judged against the ring at its stored seq.
    /// Only a failing row costs further HMACs here.
    fn check_sealed(
        &mut self,
        row: &AuditRecord,
        next: Option<&AuditRecord>,
        seal: RowSeal,
        sig: SigVerdict,
    ) -> Result<(), Finding> {
        let e = self.s.expected_seq;
        let bad = |seq, reason, detail: String| {
            Err(Finding {
                seq,
                reason,
                detail,
            })
        };
        if row.seq < e {
            return bad(
                row.seq,
                Reason::ReorderedRows,
                format!("seq {} appears after seq {}", row.seq, e - 1),
            );
        }
        if row.seq > e {
            let detail = if row.seq == e + 1 {
                format!(
                    "seq {e} is missing: the next row present is seq {}",
                    row.seq
                )
            } else {
                format!("seqs {e} to {} are missing", row.seq - 1)
            };
            return bad(e, Reason::MissingRow, detail);
        }
        if row.seq > self.s.head.seq {
            return bad(
                row.seq,
                Reason::InsertedRow,
                format!(
                    "the chain head ends at seq {}, yet a row is stored at seq {}",
                    self.s.head.seq, row.seq
                ),
            );
        }
        if !self.s.key_ids.contains(&row.key_id) {
            self.s.key_ids.insert(row.key_id.clone());
        }
        if self.keys.get(&row.key_id).is_none() {
            if let RowSeal::Relabelled { sealed_with } = &seal {
                return bad(
                    row.seq,
                    Reason::ModifiedRow,
                    format!(
                        "the row is sealed with the configured key {sealed_with}, but its key_id was rewritten to {}",
                        row.key_id
                    ),
                );
            }
            if self.inserted_before(row, next) {
                return bad(row.seq, Reason::InsertedRow, "a row sealed with a foreign key was inserted here; the rows after it were renumbered".into());
            }
            if !self.s.ours || self.s.open.is_some() {
                // Nothing so far is ours (the chain may have been written with another secret),
                // or the chain was rotated to a key that is not configured.
                return self.foreign_row(row);
            }
            return bad(
                row.seq,
                Reason::UnknownKey,
                format!(
                    "the row is sealed with key {}, which is not among the configured keys (current {}); if the secret was rotated, set GOVERNANCE_AUDIT_SECRET_PREVIOUS to the earlier one",
                    row.key_id,
                    self.keys.current().key_id()
                ),
            );
        }
        if seal != RowSeal::Sealed {
            let lo = (row.seq - REORDER_WINDOW).max(1);
            let hi = row.seq + REORDER_WINDOW;
            if let Some(t) = (lo..=hi)
                .filter(|t| *t != row.seq)
                .find(|t| self.authentic_at(row, *t))
            {
                return bad(
                    row.seq,
                    Reason::ReorderedRows,
                    format!("the row stored at seq {} was written as seq {t}", row.seq),
                );
            }
            if self.inserted_before(row, next) {
                return bad(row.seq, Reason::InsertedRow, "this row was never sealed by the chain; the rows after it were renumbered to make room".into());
            }
            if let Some(id) = self.stripped_signer(row) {
                return bad(
                    row.seq,
                    Reason::StrippedSignature,
                    format!(
                        "the row was sealed as signed by {id}; its signature and signer were removed"
                    ),
                );
            }
            return bad(
                row.seq,
                Reason::ModifiedRow,
                "the row's contents do not match its HMAC".into(),
            );
        }
        if row.prev_hmac != self.s.prev {
            return bad(
                row.seq,
                Reason::Fork,
                format!(
                    "the row is authentic but does not follow seq {}: another branch or a replaced predecessor",
                    row.seq - 1
                ),
            );
        }
        if let Some(f) = &self.s.open
            && self.s.expect_key.is_none()
        {
            // Rows no configured key seals, then one that a configured key seals, with no
            // marker proven by a configured key in between: the chain changes keys unmarked.
            return bad(
                row.seq,
                Reason::UnmarkedKeyChange,
                format!(
                    "seqs {} to {} are sealed with key {}, which is not configured, and this row with the configured key {} without a {} marker",
                    f.first,
                    f.last,
                    f.key_ids
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    row.key_id,
                    ROTATION_KIND
                ),
            );
        }
        self.check_key_sequence(row)?;
        self.check_signature(row, sig)?;
        self.s.ours = true;
        self.s.prev.clone_from(&row.row_hmac);
        self.s.expected_seq += 1;
        self.s.checked += 1;
        Ok(())
    }

    /// A row that names no configured key and that none seals, while no row so far was proven
    /// ours: it is not checked (its secret is not configured), but it must still follow the
    /// row before it, and a rotation marker in it that a configured key proves hands the chain
    /// over to that key.
    fn foreign_row(&mut self, row: &AuditRecord) -> Result<(), Finding> {
        if row.prev_hmac != self.s.prev {
            return Err(Finding {
                seq: row.seq,
                reason: Reason::Fork,
                detail: format!(
                    "the row does not follow seq {}: its prev_hmac is not that row's row_hmac (rows are linked whatever key sealed them)",
                    row.seq - 1
                ),
            });
        }
        let mut rotated_to = None;
        if row.kind == ROTATION_KIND {
            match check_marker(row, self.keys) {
                Ok(to) => rotated_to = Some(to),
                Err(MarkerError::BadProof) => {
                    return Err(Finding {
                        seq: row.seq,
                        reason: Reason::ForgedRotation,
                        detail: "the marker names a configured key, but its proof does not verify under it: it was not made by a holder of that key".into(),
                    });
                }
                // A rotation between keys that are not configured, or not a marker at all.
                Err(MarkerError::UnknownNewKey(_) | MarkerError::Malformed(_)) => {}
            }
        }
        let mut stretch = self
            .s
            .open
            .take()
            .unwrap_or_else(|| Stretch::new(row.seq, None));
        stretch.last = row.seq;
        if !stretch.key_ids.contains(&row.key_id) {
            stretch.key_ids.insert(row.key_id.clone());
        }
        match rotated_to {
            Some(to) => {
                // Proven by a configured key: the chain is that key's from here on.
                stretch.closed_by = Some(row.seq);
                self.s.stretches.push(stretch);
                self.s.ours = true;
                self.s.retired.push((row.key_id.clone(), row.seq));
                self.s.expect_key = Some(to);
            }
            None => self.s.open = Some(stretch),
        }
        self.s.prev.clone_from(&row.row_hmac);
        self.s.expected_seq += 1;
        Ok(())
    }

    /// The registered signer whose id, put back, makes the row authentic: its signature and
    /// signer were stripped.
    fn stripped_signer(&mut self, row: &AuditRecord) -> Option<String> {
        if row.signer_key_id.is_some() {
            return None;
        }
        let key = self.keys.get(&row.key_id)?;
        let mut probe = row.clone();
        let ids: Vec<String> = self.keys.signers().keys().cloned().collect();
        ids.into_iter().find(|id| {
            probe.signer_key_id = Some(id.clone());
            key.verify(&probe, &mut self.s.buf)
        })
    }

    /// Signature rules, for an authentic, linked row.
    fn check_signature(&mut self, row: &AuditRecord, sig: SigVerdict) -> Result<(), Finding> {
        let signer = row.signer_key_id.as_deref().unwrap_or("-");
        let (reason, detail) = match sig {
            SigVerdict::Valid => {
                self.s.signatures.signed += 1;
                return Ok(());
            }
            SigVerdict::Unsigned => {
                self.s.signatures.unsigned += 1;
                return Ok(());
            }
            SigVerdict::UnsignedLocalFailure => {
                self.s.signatures.unsigned_local_failure += 1;
                return Ok(());
            }
            SigVerdict::Stripped => (
                Reason::StrippedSignature,
                format!("the row was sealed as signed by {signer}, but carries no signature"),
            ),
            SigVerdict::Unregistered => (
                Reason::UnregisteredSigner,
                format!("the row is signed by {signer}, which is not registered in signer_keys"),
            ),
            SigVerdict::Revoked => (
                Reason::RevokedSigner,
                format!("the row is signed by {signer}, which was revoked before the row's time"),
            ),
            SigVerdict::Invalid => (
                Reason::BadSignature,
                format!(
                    "the signature by {signer} does not verify over the row's HMAC (status {})",
                    row.signature_status
                ),
            ),
        };
        Err(Finding {
            seq: row.seq,
            reason,
            detail,
        })
    }

    /// Rotation rules, for an authentic, linked row: the key may only change right after a
    /// valid `chain.key_rotated` marker, to the key the marker names; a retired key never seals
    /// again.
    fn check_key_sequence(&mut self, row: &AuditRecord) -> Result<(), Finding> {
        let bad = |reason, detail: String| {
            Err(Finding {
                seq: row.seq,
                reason,
                detail,
            })
        };
        if let Some(expect) = &self.s.expect_key
            && *expect != row.key_id
        {
            if let Some((_, at)) = self.s.retired.iter().find(|(k, _)| *k == row.key_id) {
                return bad(
                    Reason::RetiredKey,
                    format!(
                        "the row is sealed with key {}, which the rotation at seq {at} retired; rows after it must be sealed with {expect} (a writer still runs with the old secret)",
                        row.key_id
                    ),
                );
            }
            return bad(
                Reason::UnmarkedKeyChange,
                format!(
                    "the sealing key changes from {expect} to {} without a {} marker",
                    row.key_id,
                    crate::rotation::ROTATION_KIND
                ),
            );
        }
        if row.kind != crate::rotation::ROTATION_KIND {
            self.s.expect_key = Some(row.key_id.clone());
            return Ok(());
        }
        match crate::rotation::check_marker(row, self.keys) {
            Ok(to) => {
                self.s.retired.push((row.key_id.clone(), row.seq));
                self.s.expect_key = Some(to);
                Ok(())
            }
            Err(crate::rotation::MarkerError::BadProof) => bad(
                Reason::ForgedRotation,
                "the marker's proof does not verify under the new key: it was not made by a holder of that key".into(),
            ),
            Err(crate::rotation::MarkerError::Malformed(m)) => bad(Reason::ForgedRotation, m),
            Err(crate::rotation::MarkerError::UnknownNewKey(k)) => {
                // A marker of ours to a key that is not configured: the rows from here on
                // cannot be checked (the new secret is missing), which is no finding.
                let mut stretch = Stretch::new(row.seq, Some(row.seq));
                stretch.key_ids.insert(k.clone());
                self.s.open = Some(stretch);
                self.s.retired.push((row.key_id.clone(), row.seq));
                self.s.expect_key = Some(k);
                Ok(())
            }
        }
    }

    /// Ends the check once every row up to the head has been fed.
    pub fn finish(&self) -> Result<(), Finding> {
        self.s.finish()
    }

    /// The rows fed so far that no configured key can check, when nothing in them is evidence
    /// for a configured key (see [`ChainReport::unverifiable`]).
    pub fn unverifiable(&self) -> Option<Unverifiable> {
        self.s.unverifiable(self.keys)
    }
}

impl CheckState {
    fn finish(&self) -> Result<(), Finding> {
        let last = self.expected_seq - 1;
        if last < self.end_seq {
            let detail = if self.check_head {
                format!(
                    "the chain head is at seq {} but rows stop at seq {last}: the tail was cut off",
                    self.head.seq
                )
            } else {
                format!(
                    "the range ends at seq {} but rows stop at seq {last}",
                    self.end_seq
                )
            };
            return Err(Finding {
                seq: self.expected_seq,
                reason: Reason::MissingRow,
                detail,
            });
        }
        if self.check_head && self.prev != self.head.head_hmac {
            return Err(Finding {
                seq: self.head.seq,
                reason: Reason::HeadMismatch,
                detail: "the head row's HMAC is not the last row's HMAC".into(),
            });
        }
        Ok(())
    }

    fn unverifiable(&self, keys: &KeyRing) -> Option<Unverifiable> {
        let mut all = self.stretches.clone();
        all.extend(self.open.clone());
        Unverifiable::new(&all, keys)
    }

    fn report(self, finding: Option<Finding>, keys: &KeyRing) -> ChainReport {
        let unverifiable = match &finding {
            None => self.unverifiable(keys),
            Some(_) => None,
        };
        ChainReport {
            unverifiable,
            chain_id: self.head.chain_id,
            events_checked: self.checked + u64::from(finding.is_some()),
            head_seq: self.head.seq,
            key_ids: self.key_ids,
            signatures: self.signatures,
            range: self.range,
            archived_through: self.archived_through,
            finding,
        }
    }
}

/// Pages read ahead of the one being checked. With the page being read, the page being checked
/// and the one row held back, at most `PAGES_AHEAD + 2` pages of one chain are in memory,
/// however long the chain.
const PAGES_AHEAD: usize = 2;
/// Rows one worker thread seals at a time (smaller pieces cost more in scheduling than they
/// gain in balance).
const SEAL_PIECE: usize = 64;

/// The thread pool that recomputes HMACs: `threads` threads, or one per core.
pub(crate) fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool, AuditError> {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .thread_name(|i| format!("gov-verify-{i}"))
        .panic_handler(|_| tracing::error!("a chain verification thread panicked"))
        .build()
        .map_err(|_| AuditError::Internal("could not start the chain verification threads"))
}

/// Runs `f` on the pool and waits for it without blocking the async thread.
async fn on_pool<T: Send + 'static>(
    pool: &rayon::ThreadPool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuditError> {
    let (tx, rx) = oneshot::channel();
    pool.spawn(move || {
        let _ = tx.send(f());
    });
    rx.await
        .map_err(|_| AuditError::Internal("a chain verification thread stopped"))
}

/// The last row of a page with its recomputed seal, held back until the next page shows the row
/// after it.
type HeldRow = Option<(AuditRecord, (RowSeal, SigVerdict))>;

/// Checks one page: every row's seal is recomputed in parallel on the current pool, then the
/// rows are checked in order with those results. The page's last row is held back in `held`
/// (after `held`'s previous row is checked against this page's first).
fn check_page(
    check: &mut ChainCheck<'_>,
    held: &mut HeldRow,
    mut page: Vec<AuditRecord>,
) -> Result<(), Finding> {
    let keys = check.keys;
    let mut ok: Vec<(RowSeal, SigVerdict)> = page
        .par_iter()
        .with_min_len(SEAL_PIECE)
        .map_init(
            || Vec::with_capacity(1024),
            |buf, r| {
                (
                    row_seal(keys, r, buf),
                    crate::signing::judge(r, keys.signers()),
                )
            },
        )
        .collect();
    if let Some((row, (row_seal, sig))) = held.take() {
        check.check_sealed(&row, page.first(), row_seal, sig)?;
    }
    for (i, pair) in page.windows(2).enumerate() {
        let (seal, sig) = ok[i].clone();
        check.check_sealed(&pair[0], Some(&pair[1]), seal, sig)?;
    }
    if let (Some(last), Some(last_ok)) = (page.pop(), ok.pop()) {
        *held = Some((last, last_ok));
    }
    Ok(())
}

/// Aborts a task when dropped (so an early return stops the page reader).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Verifies one chain (or the range of it that `opts` names), streaming pages of rows: a reader
/// task fetches pages ahead while the pool recomputes the seals of the current one.
pub(crate) async fn verify_chain(
    store: &Store,
    keys: &Arc<KeyRing>,
    head: ChainHead,
    opts: &VerifyOptions,
    pool: &rayon::ThreadPool,
) -> Result<ChainReport, AuditError> {
    let ring: &KeyRing = keys;
    let chain = head.chain_id.clone();
    let head_seq = head.seq;
    // Rows archived and removed by a recorded cut are not there to check: verification starts
    // after the last cut, linked to the seal it recorded (only the owner may record one).
    let cut = store.retention_cuts(&chain).await?.pop();
    let floor = cut.as_ref().map_or(0, |c| c.through_seq);
    let start = opts.from_seq.unwrap_or(1).max(floor + 1);
    if let Some(to) = opts.to_seq
        && to <= floor
    {
        return Err(AuditError::InvalidOptions(format!(
            "seq 1 to {floor} of chain {chain:?} were archived and removed (governance archive): \
             a range must end after seq {floor}"
        )));
    }
    let end = opts.to_seq.map_or(head_seq, |t| t.min(head_seq));
    let to_head = opts.to_seq.is_none_or(|t| t >= head_seq);
    let total = u64::try_from(end - start + 1).unwrap_or(0);
    let mut check = ChainCheck::new(keys, head);
    check.s.expected_seq = start;
    check.s.end_seq = end;
    check.s.check_head = to_head;
    check.s.range = opts.is_range().then_some((start, end));
    check.s.archived_through = cut.as_ref().map(|c| c.through_seq);
    let mut state = check.s;
    let progress = |checked| {
        if let Some(p) = &opts.progress {
            p(VerifyProgress {
                chain_id: chain.clone(),
                checked,
                total,
            });
        }
    };

    // A range that starts past the head holds no row of this chain; only rows stored beyond the
    // head are looked for.
    if start <= head_seq || start == 1 || cut.is_some() {
        if let Some(c) = cut.as_ref().filter(|c| start == c.through_seq + 1) {
            state.prev.clone_from(&c.row_hmac);
        } else if start > 1 {
            // The first row of the range must follow the stored row before it.
            let before = store.read_chain_page(&chain, start - 2, 1).await?;
            match before.into_iter().next() {
                Some(p) if p.seq == start - 1 => state.prev = p.row_hmac,
                _ => {
                    let f = Finding {
                        seq: start - 1,
                        reason: Reason::MissingRow,
                        detail: format!(
                            "seq {} is missing: the first row of the range, seq {start}, cannot be linked to it",
                            start - 1
                        ),
                    };
                    return Ok(state.report(Some(f), ring));
                }
            }
        }
        progress(0);
        let (tx, mut rx) = mpsc::channel(PAGES_AHEAD);
        let _reader = AbortOnDrop(tokio::spawn(read_pages(
            store.clone(),
            chain.clone(),
            start - 1,
            end,
            tx,
        )));
        let mut held: HeldRow = None;
        while let Some(page) = rx.recv().await {
            let page = page?;
            let keys = Arc::clone(keys);
            let (s, h, result) = on_pool(pool, move || {
                let mut check = ChainCheck {
                    keys: &keys,
                    s: state,
                };
                let result = check_page(&mut check, &mut held, page);
                (check.s, held, result)
            })
            .await?;
            (state, held) = (s, h);
            if let Err(f) = result {
                return Ok(state.report(Some(f), ring));
            }
            progress(state.checked);
        }
        if let Some((row, (row_seal, sig))) = held {
            let keys = Arc::clone(keys);
            let (s, result) = on_pool(pool, move || {
                let mut check = ChainCheck {
                    keys: &keys,
                    s: state,
                };
                let result = check.check_sealed(&row, None, row_seal, sig);
                (check.s, result)
            })
            .await?;
            state = s;
            if let Err(f) = result {
                return Ok(state.report(Some(f), ring));
            }
            progress(state.checked);
        }
        if let Err(f) = state.finish() {
            return Ok(state.report(Some(f), ring));
        }
    }
    if to_head {
        // A row beyond the head that the head does not know of was inserted behind its back.
        // Read the row first, then the head, so a concurrent append is never mistaken for one.
        let beyond = store.read_chain_page(&chain, head_seq, 1).await?;
        if let Some(row) = beyond.first() {
            let now = store.chain_head(&chain).await?;
            if now.is_none_or(|h| h.seq == head_seq) {
                let f = Finding {
                    seq: row.seq,
                    reason: Reason::InsertedRow,
                    detail: format!(
                        "the chain head ends at seq {head_seq}, yet a row is stored at seq {}",
                        row.seq
                    ),
                };
                return Ok(state.report(Some(f), ring));
            }
        }
    }
    Ok(state.report(None, ring))
}

/// Reads pages of rows after seq `after` up to seq `end` into `tx`, in order, until there are
/// no more, the receiver is gone, or a read fails (the error is sent on).
async fn read_pages(
    store: Store,
    chain: String,
    mut after: i64,
    end: i64,
    tx: mpsc::Sender<Result<Vec<AuditRecord>, AuditError>>,
) {
    while after < end {
        let upto = after.saturating_add(i64::from(PAGE_ROWS)).min(end);
        match store.read_chain_window(&chain, after, upto).await {
            Ok(rows) => {
                // A window with no rows is a gap (rows deleted); the checker reports it when
                // it meets the next row, or at the end.
                after = upto;
                if !rows.is_empty() && tx.send(Ok(rows)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{AuditSecret, ChainKey};
    use gov_core::AuditEvent;

    const A: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
    const B: &str = "3b8f1d2c9a4e7f60b5c1d8e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2";

    fn key(s: &str) -> ChainKey {
        AuditSecret::parse(s).unwrap().chain_key()
    }

    /// A sealed chain of `n` rows and its head.
    fn chain(k: &ChainKey, n: i64) -> (Vec<AuditRecord>, ChainHead) {
        let mut prev = ZERO_HMAC.to_vec();
        let mut rows = Vec::new();
        for seq in 1..=n {
            let ev = AuditEvent::builder("a", "tool.call")
                .payload(seq)
                .build()
                .unwrap();
            let mut r = AuditRecord::unsealed(&ev, seq, &prev, k.key_id());
            r.row_hmac = k.seal(&r).to_vec();
            prev.clone_from(&r.row_hmac);
            rows.push(r);
        }
        let head = ChainHead {
            chain_id: "default".into(),
            seq: n,
            head_hmac: prev,
        };
        (rows, head)
    }

    fn run(ring: &KeyRing, rows: &[AuditRecord], head: ChainHead) -> Result<u64, Finding> {
        let mut c = ChainCheck::new(ring, head);
        for (i, r) in rows.iter().enumerate() {
            c.check(r, rows.get(i + 1))?;
        }
        c.finish()?;
        Ok(c.checked())
    }

    fn reseal(k: &ChainKey, r: &mut AuditRecord) {
        r.row_hmac = k.seal(r).to_vec();
    }

    #[test]
    fn a_clean_chain_passes() {
        let k = key(A);
        let (rows, head) = chain(&k, 10);
        assert_eq!(run(&KeyRing::new(k), &rows, head), Ok(10));
    }

    #[test]
    fn each_tampering_is_named() {
        let k = key(A);
        let ring = KeyRing::new(k.clone());
        let (rows, head) = chain(&k, 10);
        let expect = |rows: &[AuditRecord], head: ChainHead, seq: i64, reason: Reason| {
            let f = run(&ring, rows, head).unwrap_err();
            assert_eq!((f.seq, f.reason), (seq, reason), "{f}");
        };

        let mut modified = rows.clone();
        modified[3].payload = "99".into();
        expect(&modified, head.clone(), 4, Reason::ModifiedRow);

        let mut missing = rows.clone();
        missing.remove(5);
        expect(&missing, head.clone(), 6, Reason::MissingRow);

        let mut cut = rows.clone();
        cut.truncate(7);
        expect(&cut, head.clone(), 8, Reason::MissingRow);

        let mut swapped = rows.clone();
        swapped.swap(2, 3);
        swapped[2].seq = 3;
        swapped[3].seq = 4;
        expect(&swapped, head.clone(), 3, Reason::ReorderedRows);

        let mut inserted = rows.clone();
        let mut forged = rows[4].clone();
        forged.payload = "\"forged\"".into();
        inserted.insert(4, forged);
        for (i, r) in inserted.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        let mut longer = head.clone();
        longer.seq = 11;
        expect(&inserted, longer, 5, Reason::InsertedRow);

        let mut foreign = rows.clone();
        let b = key(B);
        foreign[6].key_id = b.key_id().to_owned();
        reseal(&b, &mut foreign[6]);
        expect(&foreign, head.clone(), 7, Reason::UnknownKey);

        let mut forked = rows.clone();
        forked[8].prev_hmac = vec![1; 32];
        reseal(&k, &mut forked[8]);
        expect(&forked, head.clone(), 9, Reason::Fork);

        let mut bad_head = head.clone();
        bad_head.head_hmac = vec![2; 32];
        expect(&rows, bad_head, 10, Reason::HeadMismatch);
    }

    /// The same check as `run`, page by page as `verify_chain` runs it: each page's seals
    /// recomputed in parallel, the last row of each page held back for the next.
    fn run_paged(
        ring: &KeyRing,
        rows: &[AuditRecord],
        head: ChainHead,
        page: usize,
    ) -> Result<u64, Finding> {
        let pool = thread_pool(Some(2)).unwrap();
        pool.install(|| {
            let mut c = ChainCheck::new(ring, head);
            let mut held = None;
            for p in rows.chunks(page) {
                check_page(&mut c, &mut held, p.to_vec())?;
            }
            if let Some((row, (seal, sig))) = held {
                c.check_sealed(&row, None, seal, sig)?;
            }
            c.finish()?;
            Ok(c.checked())
        })
    }

    #[test]
    fn paged_parallel_checks_find_what_row_by_row_checks_find() {
        let k = key(A);
        let ring = KeyRing::new(k.clone());
        let (rows, head) = chain(&k, 10);
        let mut cases = vec![(rows.clone(), head.clone())];

        let mut modified = rows.clone();
        modified[3].payload = "99".into();
        cases.push((modified, head.clone()));

        let mut missing = rows.clone();
        missing.remove(5);
        cases.push((missing, head.clone()));

        let mut cut = rows.clone();
        cut.truncate(7);
        cases.push((cut, head.clone()));

        let mut swapped = rows.clone();
        swapped.swap(2, 3);
        swapped[2].seq = 3;
        swapped[3].seq = 4;
        cases.push((swapped, head.clone()));

        // Inserted rows at every position, so the row after the forged one is sometimes on the
        // next page.
        for at in 1..9 {
            let mut inserted = rows.clone();
            let mut forged = rows[at].clone();
            forged.payload = "\"forged\"".into();
            inserted.insert(at, forged);
            for (i, r) in inserted.iter_mut().enumerate() {
                r.seq = i as i64 + 1;
            }
            let mut longer = head.clone();
            longer.seq = 11;
            cases.push((inserted, longer));
        }

        let mut foreign = rows.clone();
        let b = key(B);
        foreign[6].key_id = b.key_id().to_owned();
        reseal(&b, &mut foreign[6]);
        cases.push((foreign, head.clone()));

        let mut forked = rows.clone();
        forked[8].prev_hmac = vec![1; 32];
        reseal(&k, &mut forked[8]);
        cases.push((forked, head.clone()));

        let mut bad_head = head.clone();
        bad_head.head_hmac = vec![2; 32];
        cases.push((rows.clone(), bad_head));

        for (i, (rows, head)) in cases.iter().enumerate() {
            let want = run(&ring, rows, head.clone());
            for page in [1, 2, 3, 4, 5, 7, 64] {
                let got = run_paged(&ring, rows, head.clone(), page);
                assert_eq!(got, want, "case {i}, pages of {page}");
            }
        }
    }

    /// The verdict of checking `rows` row by row, with what the check left unverified.
    fn verdict(
        ring: &KeyRing,
        rows: &[AuditRecord],
        head: ChainHead,
    ) -> Result<Option<Unverifiable>, Finding> {
        let mut c = ChainCheck::new(ring, head);
        for (i, r) in rows.iter().enumerate() {
            c.check(r, rows.get(i + 1))?;
        }
        c.finish()?;
        Ok(c.unverifiable())
    }

    #[test]
    fn a_chain_sealed_with_another_secret_is_unverifiable_not_tampered() {
        let (a, b) = (key(A), key(B));
        let (rows, head) = chain(&a, 6);
        let theirs = KeyRing::new(b.clone());
        let u = verdict(&theirs, &rows, head.clone())
            .expect("no finding")
            .expect("unverifiable");
        assert_eq!(u.seqs, vec![(1, 6)]);
        assert_eq!(u.key_ids.iter().collect::<Vec<_>>(), vec![a.key_id()]);
        assert!(
            u.advice.contains(a.key_id()) && u.advice.contains(b.key_id()),
            "{}",
            u.advice
        );
        assert!(u.advice.contains("GOVERNANCE_AUDIT_SECRET"), "{}", u.advice);
        // The same with the paged, parallel driver.
        let paged = run_paged(&theirs, &rows, head.clone(), 4);
        assert_eq!(paged, Ok(0), "no row is checked, none is a finding");
        // Links, gaps and the head are checked whatever key sealed the rows.
        let mut gap = rows.clone();
        gap.remove(2);
        let f = verdict(&theirs, &gap, head.clone()).unwrap_err();
        assert_eq!((f.seq, f.reason), (3, Reason::MissingRow), "{f}");
        let mut bad_head = head.clone();
        bad_head.head_hmac = vec![3; 32];
        let f = verdict(&theirs, &rows, bad_head).unwrap_err();
        assert_eq!(f.reason, Reason::HeadMismatch, "{f}");
        let mut cut = rows.clone();
        cut[3].row_hmac = vec![4; 32];
        let f = verdict(&theirs, &cut, head).unwrap_err();
        assert_eq!((f.seq, f.reason), (5, Reason::Fork), "{f}");
    }

    #[test]
    fn a_rewritten_key_id_is_tampering_not_another_secret() {
        let a = key(A);
        let ring = KeyRing::new(a.clone());
        let (rows, head) = chain(&a, 5);
        for at in [0, 2, 4] {
            let mut relabelled = rows.clone();
            relabelled[at].key_id = key(B).key_id().to_owned();
            let f = verdict(&ring, &relabelled, head.clone()).unwrap_err();
            assert_eq!(
                (f.seq, f.reason),
                (at as i64 + 1, Reason::ModifiedRow),
                "{f}"
            );
            assert!(f.detail.contains("key_id was rewritten"), "{f}");
            for page in [1, 2, 3] {
                assert_eq!(
                    run_paged(&ring, &relabelled, head.clone(), page),
                    Err(f.clone())
                );
            }
        }
        // Every key_id rewritten: each row is still proven ours.
        let mut all = rows.clone();
        for r in &mut all {
            r.key_id = "hk1_ffffffffffffffffffffffff".into();
        }
        let f = verdict(&ring, &all, head.clone()).unwrap_err();
        assert_eq!((f.seq, f.reason), (1, Reason::ModifiedRow), "{f}");
        // A single row claiming our key among another secret's rows is a finding too.
        let b = key(B);
        let (theirs, their_head) = chain(&b, 4);
        let mut claimed = theirs.clone();
        claimed[2].key_id = a.key_id().to_owned();
        let f = verdict(&ring, &claimed, their_head).unwrap_err();
        assert_eq!((f.seq, f.reason), (3, Reason::ModifiedRow), "{f}");
    }

    #[test]
    fn rows_of_ours_after_another_secrets_rows_are_an_unmarked_key_change() {
        // A writer with secret A appended to a chain that secret B started.
        let (a, b) = (key(A), key(B));
        let (mut rows, _) = chain(&b, 3);
        let mut prev = rows[2].row_hmac.clone();
        for seq in 4..=5 {
            let ev = AuditEvent::builder("a", "tool.call")
                .payload(seq)
                .build()
                .unwrap();
            let mut r = AuditRecord::unsealed(&ev, seq, &prev, a.key_id());
            r.row_hmac = a.seal(&r).to_vec();
            prev.clone_from(&r.row_hmac);
            rows.push(r);
        }
        let head = ChainHead {
            chain_id: "default".into(),
            seq: 5,
            head_hmac: prev,
        };
        let f = verdict(&KeyRing::new(a.clone()), &rows, head.clone()).unwrap_err();
        assert_eq!((f.seq, f.reason), (4, Reason::UnmarkedKeyChange), "{f}");
        // Seen from B's side, the foreign rows come after ours: an unknown key.
        let f = verdict(&KeyRing::new(b), &rows, head).unwrap_err();
        assert_eq!((f.seq, f.reason), (4, Reason::UnknownKey), "{f}");
    }

    #[test]
    fn rows_before_a_proven_rotation_to_our_key_need_the_earlier_secret() {
        let (a, b) = (key(A), key(B));
        let (mut rows, _) = chain(&a, 3);
        let marker = crate::rotation::marker_event("default", &a, &b, "alice", "yearly").unwrap();
        let mut m = AuditRecord::unsealed(&marker, 4, &rows[2].row_hmac, a.key_id());
        m.row_hmac = a.seal(&m).to_vec();
        let mut prev = m.row_hmac.clone();
        rows.push(m);
        for seq in 5..=6 {
            let ev = AuditEvent::builder("a", "tool.call")
                .payload(seq)
                .build()
                .unwrap();
            let mut r = AuditRecord::unsealed(&ev, seq, &prev, b.key_id());
            r.row_hmac = b.seal(&r).to_vec();
            prev.clone_from(&r.row_hmac);
            rows.push(r);
        }
        let head = ChainHead {
            chain_id: "default".into(),
            seq: 6,
            head_hmac: prev,
        };
        let both = KeyRing::with_previous(b.clone(), [a.clone()]);
        assert_eq!(verdict(&both, &rows, head.clone()), Ok(None));
        let u = verdict(&KeyRing::new(b.clone()), &rows, head.clone())
            .expect("no finding")
            .expect("the rows before the marker");
        assert_eq!(u.seqs, vec![(1, 4)]);
        assert!(
            u.advice.contains("rotated to a configured key at seq 4"),
            "{}",
            u.advice
        );
        assert!(
            u.advice.contains("GOVERNANCE_AUDIT_SECRET_PREVIOUS"),
            "{}",
            u.advice
        );
        // Holding only the old key: the rows from the marker on need the new secret.
        let u = verdict(&KeyRing::new(a.clone()), &rows, head.clone())
            .expect("no finding")
            .expect("the rows from the marker");
        assert_eq!(u.seqs, vec![(4, 6)]);
        assert!(u.key_ids.contains(b.key_id()), "{u:?}");
        assert!(u.advice.contains("rotated at seq 4 to key"), "{}", u.advice);
        // Tampering after the marker is still found.
        let mut edited = rows.clone();
        edited[5].payload = "7".into();
        let f = verdict(&KeyRing::new(b.clone()), &edited, head.clone()).unwrap_err();
        assert_eq!((f.seq, f.reason), (6, Reason::ModifiedRow), "{f}");
        // A forged proof naming our key is tampering, not a missing secret.
        let mut forged = rows.clone();
        let mut p: serde_json::Value = serde_json::from_str(&forged[3].payload).unwrap();
        p["proof"] = hex::encode([0u8; 32]).into();
        forged[3].payload = p.to_string();
        let f = verdict(&KeyRing::new(b), &forged, head).unwrap_err();
        assert_eq!((f.seq, f.reason), (4, Reason::ForgedRotation), "{f}");
    }

    #[test]
    fn options_refuse_bad_ranges_and_zero_threads() {
        let refused = |o: VerifyOptions| match o.validate() {
            Err(AuditError::InvalidOptions(m)) => m,
            other => panic!("{o:?} gave {other:?}"),
        };
        let range = |from, to| VerifyOptions {
            from_seq: from,
            to_seq: to,
            ..VerifyOptions::default()
        };
        assert!(refused(range(Some(0), None)).contains("seq 1 or later, not 0"));
        assert!(refused(range(None, Some(-3))).contains("not -3"));
        assert!(refused(range(Some(9), Some(5))).contains("after its end"));
        let zero = VerifyOptions {
            threads: Some(0),
            ..VerifyOptions::default()
        };
        assert!(refused(zero).contains("thread"));
        assert!(range(Some(5), Some(5)).validate().is_ok());
        assert!(VerifyOptions::default().validate().is_ok());
        assert!(!VerifyOptions::default().is_range());
        let shown = format!(
            "{:?}",
            VerifyOptions {
                progress: Some(Arc::new(|_| {})),
                ..VerifyOptions::default()
            }
        );
        assert!(shown.contains("Fn(VerifyProgress)"), "{shown}");
    }
}
