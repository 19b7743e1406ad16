//! Export: the chains' heads, signer keys and checkpoints are read first ([`Export::prepare`]),
//! then the rows are streamed page by page up to those heads ([`Export::write`]), so memory
//! stays flat however long the chain and rows appended meanwhile are left for the next export.
//! The rows' links are checked while they stream ([`ChainLinks`]), so a broken chain is refused
//! rather than written; seals themselves are the verifier's work.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use gov_audit::{Finding, Reason};
use gov_core::{ChainHead, ChainId, ChainLinks, LinkBreak};
use gov_store::CheckpointRow;
use gov_store::SignerKeyRow;

use super::format::{
    CheckpointLine, EndLine, FORMAT, Header, HeaderChain, Hex, Instant, Line, RowLine, SignerLine,
    StartsAfter, VERSION, to_line,
};
use super::{Progress, TransferError};
use crate::Error;
use crate::admin::Admin;

/// Rows read per round trip.
const PAGE_ROWS: i64 = 2_000;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportReport {
    /// Each chain exported and the head its rows end at.
    pub chains: Vec<ChainHead>,
    /// Rows written.
    pub rows: u64,
    /// Signer keys written.
    pub signers: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

/// An export whose chains, heads, signer keys and checkpoints are read, ready to write.
#[derive(Debug, Clone)]
pub struct Export {
    chains: Vec<ChainHead>,
    /// Per chain (in the order of `chains`): the last seq archived by a retention cut and its
    /// seal, when there is one; its rows start after it.
    starts: Vec<Option<(i64, Vec<u8>)>>,
    signers: Vec<SignerKeyRow>,
    checkpoints: Vec<CheckpointRow>,
    source: &'static str,
}

impl Export {
    /// Reads what the export holds: `chains` (every chain when empty) up to their heads now,
    /// the signer keys and the checkpoints up to those heads. Refuses an unmigrated source, an
    /// invalid or unknown chain, a chain with rows but no head row, and a source with no chain.
    pub async fn prepare(admin: &Admin, chains: &[String]) -> Result<Self, TransferError> {
        for c in chains {
            ChainId::new(c.as_str()).map_err(Error::from)?;
        }
        admin
            .check_schema()
            .await
            .map_err(|e| TransferError::SourceNotReady(Box::new(e)))?;
        // Refuse up front rather than move chains whose personal fields would read as erased.
        if admin.holds_subject_state().await? {
            return Err(TransferError::SubjectKeysNotCarried);
        }
        // Heads first: every row up to them was written after its signer was registered, so the
        // signer keys read next cover them.
        let heads: BTreeMap<String, ChainHead> = admin
            .chain_heads()
            .await?
            .into_iter()
            .map(|h| (h.chain_id.clone(), h))
            .collect();
        let with_rows: BTreeSet<String> = admin.chain_ids().await?.into_iter().collect();
        let wanted: BTreeSet<&str> = chains.iter().map(String::as_str).collect();
        let known: BTreeSet<&str> = heads
            .keys()
            .map(String::as_str)
            .chain(with_rows.iter().map(String::as_str))
            .collect();
        if let Some(name) = wanted.iter().find(|name| !known.contains(*name)) {
            return Err(TransferError::NoSuchChain {
                chain: (*name).to_owned(),
            });
        }
        let mut selected: Vec<ChainHead> = Vec::new();
        for name in known {
            if !wanted.is_empty() && !wanted.contains(name) {
                continue;
            }
            match heads.get(name) {
                Some(h) => selected.push(h.clone()),
                None => {
                    return Err(broken(
                        name,
                        1,
                        Reason::HeadMismatch,
                        "it has rows but no head row".into(),
                    ));
                }
            }
        }
        if selected.is_empty() {
            return Err(TransferError::NothingToExport);
        }
        let signers = admin.signer_keys().await?;
        let signer_ids: BTreeSet<&str> = signers.iter().map(|s| s.signer_key_id.as_str()).collect();
        let mut checkpoints = Vec::new();
        let mut starts = Vec::with_capacity(selected.len());
        for h in &selected {
            let start = admin
                .retention_cuts(&h.chain_id)
                .await?
                .pop()
                .map(|c| (c.through_seq, c.row_hmac));
            let floor = start.as_ref().map_or(0, |s| s.0);
            // A checkpoint signed after the heads were read, or by a signer registered since,
            // lies beyond this export; one inside an archived segment went with its archive.
            checkpoints.extend(
                admin
                    .checkpoints(&h.chain_id)
                    .await?
                    .into_iter()
                    .filter(|c| {
                        c.seq > floor
                            && c.seq <= h.seq
                            && signer_ids.contains(c.signer_key_id.as_str())
                    }),
            );
            starts.push(start);
        }
        Ok(Self {
            chains: selected,
            starts,
            signers,
            checkpoints,
            source: admin.backend(),
        })
    }

    /// The chains exported and their heads.
    pub fn chains(&self) -> &[ChainHead] {
        &self.chains
    }

    /// Where each chain's rows start: after the seq its last retention cut archived (0: at
    /// seq 1), in the order of [`Self::chains`].
    pub fn starts_after(&self) -> Vec<i64> {
        self.starts
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.0))
            .collect()
    }

    /// Ends the export of the one chain it holds at row `seq` (the segment `governance
    /// archive` writes): its head becomes that row, checkpoints beyond it are left out.
    /// Refuses a row that is not there or not after the chain's last cut.
    pub async fn through(mut self, admin: &Admin, seq: i64) -> Result<Self, TransferError> {
        let ([head], [start]) = (self.chains.as_mut_slice(), self.starts.as_slice()) else {
            return Err(TransferError::from(Error::Config(
                "an export ends at a seq only for one chain".into(),
            )));
        };
        let floor = start.as_ref().map_or(0, |s| s.0);
        let row = admin.export_page(&head.chain_id, seq - 1, 1).await?;
        match row.into_iter().next() {
            Some(r) if r.seq == seq && seq > floor && seq <= head.seq => {
                head.seq = seq;
                head.head_hmac = r.row_hmac;
            }
            _ => {
                return Err(TransferError::from(Error::Config(format!(
                    "chain {} holds no row {seq} to end the export at (its rows run from seq {} to {})",
                    head.chain_id,
                    floor + 1,
                    head.seq
                ))));
            }
        }
        let end = seq;
        self.checkpoints.retain(|c| c.seq <= end);
        Ok(self)
    }

    /// Writes the file to `out` (flushed at the end), reading the rows from `admin` (the
    /// database [`Self::prepare`] read). A chain whose stored rows do not link up is refused
    /// ([`TransferError::Broken`]) with what was written so far left incomplete (no end line):
    /// write to a temporary file and keep it only when this succeeds.
    pub async fn write(
        &self,
        admin: &Admin,
        out: &mut (dyn Write + Send),
        progress: &dyn Progress,
    ) -> Result<ExportReport, TransferError> {
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            exported_at: Instant(time::OffsetDateTime::now_utc()),
            generator: concat!("governance ", env!("CARGO_PKG_VERSION")).into(),
            source: self.source.into(),
            chains: self
                .chains
                .iter()
                .zip(&self.starts)
                .map(|(h, start)| HeaderChain {
                    chain_id: h.chain_id.clone(),
                    seq: h.seq,
                    head_hmac: Hex(h.head_hmac.clone()),
                    starts_after: start.as_ref().map(|(seq, hmac)| StartsAfter {
                        seq: *seq,
                        row_hmac: Hex(hmac.clone()),
                    }),
                })
                .collect(),
        };
        let total: i64 = self
            .chains
            .iter()
            .zip(self.starts_after())
            .map(|(h, floor)| h.seq - floor)
            .sum();
        progress.rows(u64::try_from(total).unwrap_or(0));
        put(out, &header)?;
        for s in &self.signers {
            put(out, &Line::Signer(SignerLine::from(s)))?;
        }
        let mut rows: u64 = 0;
        for (h, start) in self.chains.iter().zip(&self.starts) {
            rows += stream_chain(admin, h, start.as_ref(), out, progress).await?;
        }
        progress.rows_done();
        for c in &self.checkpoints {
            put(out, &Line::Checkpoint(CheckpointLine::from(c)))?;
        }
        let end = EndLine {
            rows,
            signers: Some(self.signers.len() as u64),
            checkpoints: Some(self.checkpoints.len() as u64),
        };
        put(out, &Line::End(end))?;
        out.flush().map_err(TransferError::Write)?;
        Ok(ExportReport {
            chains: self.chains.clone(),
            rows,
            signers: self.signers.len() as u64,
            checkpoints: self.checkpoints.len() as u64,
        })
    }
}

/// Writes one chain's rows up to its head, checking their links; returns how many.
async fn stream_chain(
    admin: &Admin,
    h: &ChainHead,
    start: Option<&(i64, Vec<u8>)>,
    out: &mut (dyn Write + Send),
    progress: &dyn Progress,
) -> Result<u64, TransferError> {
    // After a retention cut the rows start past it, linked to the seal the cut recorded.
    let mut links = start.map_or_else(ChainLinks::new, |(seq, hmac)| ChainLinks::at(*seq, hmac));
    let mut rows = 0;
    while links.seq() < h.seq {
        let after = links.seq();
        let limit = u32::try_from((h.seq - after).min(PAGE_ROWS)).unwrap_or(2_000);
        let page = admin.export_page(&h.chain_id, after, limit).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            if r.seq > h.seq {
                break;
            }
            let before = links.seq();
            match links.push(r) {
                Ok(()) => {}
                Err(LinkBreak::Gap { expected, found }) => {
                    return Err(broken(
                        &h.chain_id,
                        expected,
                        Reason::MissingRow,
                        format!("row {expected} is missing (the next stored row is {found})"),
                    ));
                }
                Err(LinkBreak::Fork { seq }) => {
                    return Err(broken(
                        &h.chain_id,
                        seq,
                        Reason::Fork,
                        format!("row {seq} does not name row {before}'s seal as its predecessor"),
                    ));
                }
            }
            put(out, &Line::Row(Box::new(RowLine::from(r))))?;
            rows += 1;
        }
        progress.advance(page.len() as u64);
    }
    if links.seq() < h.seq {
        return Err(broken(
            &h.chain_id,
            links.seq() + 1,
            Reason::MissingRow,
            format!(
                "the head row says seq {} but the rows end at seq {}",
                h.seq,
                links.seq()
            ),
        ));
    }
    if !links.ends_at(h.seq, &h.head_hmac) {
        return Err(broken(
            &h.chain_id,
            h.seq,
            Reason::HeadMismatch,
            "the head row's HMAC is not the last row's seal".into(),
        ));
    }
    Ok(rows)
}

/// A chain whose rows do not link up.
fn broken(chain: &str, seq: i64, reason: Reason, detail: String) -> TransferError {
    TransferError::Broken {
        chain: chain.to_owned(),
        finding: Finding {
            seq,
            reason,
            detail: format!(
                "chain {chain}: {detail}; nothing usable was exported (`governance verify --chain {chain}` shows the damage)"
            ),
        },
    }
}

/// Writes `v` as one line.
fn put<T: serde::Serialize>(out: &mut (dyn Write + Send), v: &T) -> Result<(), TransferError> {
    let text = to_line(v).map_err(TransferError::Encode)?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .map_err(TransferError::Write)
}
