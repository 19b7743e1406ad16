//! Retention (AI Act Art. 19 and 26(6): logs kept at least six months): a chain's oldest rows
//! are archived to a file (the export format) and then removed, and what remains still
//! verifies. `governance archive` runs these steps; docs/scaling.md, "Retention", says why each
//! one is there.
//!
//! 1. [`plan`] finds the segment: the rows after the chain's last cut up to the last one that
//!    occurred before a limit (never younger than the minimum age), ending at a multiple of
//!    [`CUT_ALIGN`] rows so that the Merkle tree's tiles of what remains never need a removed
//!    row.
//! 2. The caller verifies the chain and writes the archive (`Export::prepare(..).through(..)`).
//! 3. [`cut`] stores every full tree tile up to the cut, computes the tree's frontier there, and
//!    records the cut and removes the rows in one transaction under the chain's head lock
//!    (refused unless row `through_seq` is still the row the archive ends with).

use time::OffsetDateTime;

use gov_core::ChainId;
use gov_store::RetentionCut;

use crate::admin::Admin;
use crate::{Error, Governance, Result};

/// A cut ends at a multiple of this many rows: the width of a Merkle tree tile, so every tile of
/// the rows that remain starts after the cut.
pub const CUT_ALIGN: i64 = gov_audit::proofs::TILE_WIDTH as i64;

/// The minimum age of archived rows unless told otherwise: six months (Art. 19(1) and 26(6)
/// ask for at least six months).
pub const DEFAULT_MIN_AGE: time::Duration = time::Duration::days(183);

/// Rows read per round trip while planning.
const PAGE: u32 = 2_000;

/// What a cut would archive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// The chain.
    pub chain_id: String,
    /// The seq the segment starts after (the last cut, 0 without one).
    pub starts_after: i64,
    /// The segment's last seq (a multiple of [`CUT_ALIGN`]).
    pub through_seq: i64,
    /// The chain's head seq when planned.
    pub head_seq: i64,
    /// When the segment's newest row occurred.
    #[serde(with = "time::serde::rfc3339")]
    pub newest: OffsetDateTime,
}

impl Segment {
    /// Rows in the segment.
    pub fn rows(&self) -> i64 {
        self.through_seq - self.starts_after
    }
}

/// Finds the segment of `chain` to archive: the rows after its last cut that all occurred
/// before `before`, up to `through` when given, ending at a multiple of [`CUT_ALIGN`]. Refuses
/// (a configuration error naming the reason) when there is no such segment, or when `through`
/// names rows that occurred at or after `before`.
pub async fn plan(
    admin: &Admin,
    chain: &str,
    before: OffsetDateTime,
    through: Option<i64>,
) -> Result<Segment> {
    ChainId::new(chain)?;
    let head = admin
        .chain_heads()
        .await?
        .into_iter()
        .find(|h| h.chain_id == chain)
        .ok_or_else(|| Error::Config(format!("there is no chain {chain:?}")))?;
    let starts_after = admin
        .retention_cuts(chain)
        .await?
        .pop()
        .map_or(0, |c| c.through_seq);
    let want = through.unwrap_or(head.seq);
    if want > head.seq {
        return Err(Error::Config(format!(
            "chain {chain:?} ends at seq {}: --through-seq {want} is beyond it",
            head.seq
        )));
    }
    // The last seq whose row, and every row before it in the segment, occurred before `before`.
    let mut last_old = starts_after;
    let mut newest = OffsetDateTime::UNIX_EPOCH;
    'scan: while last_old < want {
        let page = admin.export_page(chain, last_old, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for r in page {
            if r.seq > want {
                break 'scan;
            }
            if r.seq != last_old + 1 {
                return Err(Error::Config(format!(
                    "row {} of chain {chain:?} is missing: run governance verify",
                    last_old + 1
                )));
            }
            if r.occurred_at >= before {
                if through.is_some() {
                    return Err(Error::Config(format!(
                        "row {} of chain {chain:?} occurred at {}, after the limit {}: it is too recent to archive (see --min-age-days)",
                        r.seq, r.occurred_at, before
                    )));
                }
                break 'scan;
            }
            newest = newest.max(r.occurred_at);
            last_old = r.seq;
        }
    }
    let through_seq = last_old - last_old.rem_euclid(CUT_ALIGN);
    if through.is_some_and(|t| t != through_seq) {
        return Err(Error::Config(format!(
            "a cut ends at a multiple of {CUT_ALIGN} rows (the Merkle tree's tile width): use --through-seq {through_seq} or another multiple"
        )));
    }
    if through_seq <= starts_after {
        return Err(Error::Config(format!(
            "chain {chain:?} has fewer than {CUT_ALIGN} rows after seq {starts_after} that occurred before {before}: nothing to archive"
        )));
    }
    Ok(Segment {
        chain_id: chain.to_owned(),
        starts_after,
        through_seq,
        head_seq: head.seq,
        newest,
    })
}

/// What [`cut`] records besides the segment.
#[derive(Debug, Clone)]
pub struct CutRecord<'a> {
    /// `row_hmac` of the archive's last row (row `through_seq`).
    pub row_hmac: &'a [u8],
    /// SHA-256 of the archive file, lowercase hex.
    pub archive_sha256: &'a str,
    /// Who cuts.
    pub operator: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// Stores the chain's full tree tiles up to the cut, computes the tree's frontier there, then
/// in one transaction under the chain's head lock: appends the sealed `chain.archived` event
/// that names the cut, records the cut and removes rows `..=segment.through_seq`. Returns the
/// rows removed and the event's seq. Run as the schema owner (the application role may neither
/// record a cut nor delete), with the chain's audit secret, after the archive is written.
pub async fn cut(gov: &Governance, segment: &Segment, what: &CutRecord<'_>) -> Result<(i64, i64)> {
    use gov_core::events::SystemEvent as _;
    let inner = &gov.inner;
    let store = &inner.store;
    let chain = segment.chain_id.as_str();
    gov_core::AgentId::new(what.operator)?;
    if what.reason.trim().is_empty() {
        return Err(Error::Config("give the cut a reason".into()));
    }
    // Every full tile up to the head, written now while the rows are there: proofs of the rows
    // that remain read the removed part of the tree from them.
    gov_audit::proofs::ChainTree::open(store, chain).await?;
    let full = u64::try_from(segment.through_seq).unwrap_or(0) / gov_audit::proofs::TILE_WIDTH;
    let stored = store.tree_tile_indices(chain, 0).await?;
    if (stored.len() as u64) < full {
        return Err(Error::Config(
            "the chain's tree tiles could not be stored (the connected role may not write them): archive as the schema owner".into(),
        ));
    }
    let frontier = gov_audit::proofs::frontier_from_rows(
        store,
        chain,
        u64::try_from(segment.through_seq).unwrap_or(0),
    )
    .await?;
    let record = RetentionCut {
        chain_id: chain.to_owned(),
        through_seq: segment.through_seq,
        row_hmac: what.row_hmac.to_vec(),
        tree_frontier: frontier,
        rows_removed: 0,
        record_seq: 0,
        archive_sha256: what.archive_sha256.to_owned(),
        operator: what.operator.to_owned(),
        reason: what.reason.to_owned(),
        cut_at: OffsetDateTime::now_utc(),
    };
    let make = |rows: u64| {
        gov_core::events::ChainArchived {
            from_seq: segment.starts_after + 1,
            through_seq: segment.through_seq,
            row_hmac: hex::encode(what.row_hmac),
            rows,
            archive_sha256: what.archive_sha256.to_owned(),
            reason: what.reason.to_owned(),
            operator: what.operator.to_owned(),
        }
        .event(gov_core::events::RETENTION_AGENT)
        .chain(chain)
        .build()
    };
    make(0)?;
    inner.audit.ensure_writable(chain).await?;
    let sealer = inner.audit.sealer();
    let seal = |r: &mut gov_core::AuditRecord| sealer.seal(r);
    let build = |n: u64| make(n).map_err(|e| e.to_string());
    Ok(store
        .cut_chain(&record, &build, sealer.key().key_id(), &seal)
        .await?)
}
