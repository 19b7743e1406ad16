//! The chain verifier: streams rows in seq order with bounded memory, recomputes each HMAC,
//! checks links, gaps and the head row, and names the first bad seq and why.

use std::collections::BTreeSet;

use gov_core::{AuditRecord, ChainHead, ZERO_HMAC};
use gov_store::Store;
use serde::Serialize;

use crate::AuditError;
use crate::keys::KeyRing;

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
    /// The first problem, if any.
    pub finding: Option<Finding>,
}

impl ChainReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.finding.is_none()
    }
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

    /// The first chain with a problem.
    pub fn first_finding(&self) -> Option<(&str, &Finding)> {
        self.chains
            .iter()
            .find_map(|c| c.finding.as_ref().map(|f| (c.chain_id.as_str(), f)))
    }
}

/// Pure, incremental verification of one chain: feed rows in seq order, then `finish`.
pub struct ChainCheck<'k> {
    keys: &'k KeyRing,
    head: ChainHead,
    expected_seq: i64,
    prev: Vec<u8>,
    checked: u64,
    key_ids: BTreeSet<String>,
    buf: Vec<u8>,
}

impl<'k> ChainCheck<'k> {
    /// Starts checking a chain whose head row is `head`.
    pub fn new(keys: &'k KeyRing, head: ChainHead) -> Self {
        Self {
            keys,
            head,
            expected_seq: 1,
            prev: ZERO_HMAC.to_vec(),
            checked: 0,
            key_ids: BTreeSet::new(),
            buf: Vec::with_capacity(1024),
        }
    }

    /// Rows checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    fn authentic_at(&mut self, row: &AuditRecord, seq: i64) -> bool {
        let Some(key) = self.keys.get(&row.key_id) else {
            return false;
        };
        if seq == row.seq {
            return key.verify(row, &mut self.buf);
        }
        let mut moved = row.clone();
        moved.seq = seq;
        key.verify(&moved, &mut self.buf)
    }

    /// Whether `row` looks inserted in front of `next`: `next` is authentic one seq earlier
    /// than stored and follows the row before `row`.
    fn inserted_before(&mut self, row: &AuditRecord, next: Option<&AuditRecord>) -> bool {
        match next {
            Some(n) if n.seq == row.seq + 1 && n.prev_hmac == self.prev => {
                self.authentic_at(n, row.seq)
            }
            _ => false,
        }
    }

    /// Checks the next row; `next` is the row after it, if already fetched (used to tell an
    /// inserted row from a modified one).
    pub fn check(&mut self, row: &AuditRecord, next: Option<&AuditRecord>) -> Result<(), Finding> {
        let e = self.expected_seq;
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
        if row.seq > self.head.seq {
            return bad(
                row.seq,
                Reason::InsertedRow,
                format!(
                    "the chain head ends at seq {}, yet a row is stored at seq {}",
                    self.head.seq, row.seq
                ),
            );
        }
        self.key_ids.insert(row.key_id.clone());
        if self.keys.get(&row.key_id).is_none() {
            if self.inserted_before(row, next) {
                return bad(row.seq, Reason::InsertedRow, "a row sealed with a foreign key was inserted here; the rows after it were renumbered".into());
            }
            return bad(
                row.seq,
                Reason::UnknownKey,
                format!(
                    "the row is sealed with key {}, which is not the configured key ({}); if the secret was rotated, configure the earlier one",
                    row.key_id,
                    self.keys.current().key_id()
                ),
            );
        }
        if !self.authentic_at(row, row.seq) {
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
            return bad(
                row.seq,
                Reason::ModifiedRow,
                "the row's contents do not match its HMAC".into(),
            );
        }
        if row.prev_hmac != self.prev {
            return bad(
                row.seq,
                Reason::Fork,
                format!(
                    "the row is authentic but does not follow seq {}: another branch or a replaced predecessor",
                    row.seq - 1
                ),
            );
        }
        self.prev.clone_from(&row.row_hmac);
        self.expected_seq += 1;
        self.checked += 1;
        Ok(())
    }

    /// Ends the check once every row up to the head has been fed.
    pub fn finish(&self) -> Result<(), Finding> {
        let last = self.expected_seq - 1;
        if last < self.head.seq {
            return Err(Finding {
                seq: self.expected_seq,
                reason: Reason::MissingRow,
                detail: format!(
                    "the chain head is at seq {} but rows stop at seq {last}: the tail was cut off",
                    self.head.seq
                ),
            });
        }
        if self.prev != self.head.head_hmac {
            return Err(Finding {
                seq: self.head.seq,
                reason: Reason::HeadMismatch,
                detail: "the head row's HMAC is not the last row's HMAC".into(),
            });
        }
        Ok(())
    }

    fn report(self, finding: Option<Finding>) -> ChainReport {
        ChainReport {
            chain_id: self.head.chain_id,
            events_checked: self.checked + u64::from(finding.is_some()),
            head_seq: self.head.seq,
            key_ids: self.key_ids,
            finding,
        }
    }
}

/// Verifies one chain from seq 1 to its head, streaming pages of rows.
pub(crate) async fn verify_chain(
    store: &Store,
    keys: &KeyRing,
    head: ChainHead,
) -> Result<ChainReport, AuditError> {
    let chain = head.chain_id.clone();
    let head_seq = head.seq;
    let mut check = ChainCheck::new(keys, head);
    let mut page = fetch(store, &chain, 0, head_seq).await?;
    while let Some(last) = page.last() {
        // Fetch the next page while this one is verified.
        let next_fetch = {
            let (store, chain, after) = (store.clone(), chain.clone(), last.seq);
            tokio::spawn(async move { fetch(&store, &chain, after, head_seq).await })
        };
        for pair in page.windows(2) {
            if let Err(f) = check.check(&pair[0], Some(&pair[1])) {
                next_fetch.abort();
                return Ok(check.report(Some(f)));
            }
        }
        let next = next_fetch
            .await
            .map_err(|_| AuditError::Internal("the page reader stopped"))??;
        if let Some(last) = page.last()
            && let Err(f) = check.check(last, next.first())
        {
            return Ok(check.report(Some(f)));
        }
        page = next;
    }
    if let Err(f) = check.finish() {
        return Ok(check.report(Some(f)));
    }
    // A row beyond the head that the head does not know of was inserted behind its back. Read
    // the row first, then the head, so a concurrent append is never mistaken for one.
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
            return Ok(check.report(Some(f)));
        }
    }
    Ok(check.report(None))
}

/// The next page of rows after `after`, never past the head the verification started from
/// (rows appended meanwhile are left for the next run).
async fn fetch(
    store: &Store,
    chain: &str,
    after: i64,
    head_seq: i64,
) -> Result<Vec<AuditRecord>, AuditError> {
    if after >= head_seq {
        return Ok(Vec::new());
    }
    let mut rows = store.read_chain_page(chain, after, PAGE_ROWS).await?;
    if let Some(pos) = rows.iter().position(|r| r.seq > head_seq) {
        rows.truncate(pos);
    }
    Ok(rows)
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
}
