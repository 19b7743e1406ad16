//! Import, in two passes. The first checks the whole file and the target before anything is
//! written: the header and version, every line's shape, the links between each chain's rows
//! ([`ChainLinks`]), the trailer's counts, that signer ids do not clash, and that each chain is
//! empty in the target or already holds a prefix of the file's rows (those are skipped, so a
//! stopped import resumes). The second writes signer keys, then each chain's rows in one
//! transaction fenced on the head the first pass found ([`Admin::begin_chain_import`]; sent in
//! batches of at most [`BATCH_ROWS`]; the chain's head is held until the commit, so a service
//! appending to it waits, and a chain appended to since the check is refused with nothing of it
//! written), then checkpoints. Seals are not checked here (that needs the audit secret):
//! [`verify_imported`] does it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};

use gov_core::{AuditRecord, ChainHead, ChainId, ChainLinks, LinkBreak};
use gov_store::{ChainImport, SignerKeyRow, StoreError};

use super::format::{FORMAT, Header, Line, MAX_LINE_BYTES, VERSION};
use super::{ChainStep, Damage, ImportFile, Progress, TransferError, Written};
use crate::admin::Admin;
use crate::{ChainReport, Error, Governance, VerifyOptions};

/// Rows per statement (a chain's rows are one transaction however many batches they take).
const BATCH_ROWS: usize = 1_000;

/// What became of one chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportedChain {
    /// The chain.
    pub chain_id: String,
    /// The file's head of this chain.
    pub head_seq: i64,
    /// Rows already in the target (seq 1..=skipped), left as they were.
    pub skipped: u64,
    /// Rows written by this import.
    pub imported: u64,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The target's backend: `postgres` or `sqlite`.
    pub target: &'static str,
    /// Each chain of the file, in the file's order.
    pub chains: Vec<ImportedChain>,
    /// Signer keys written.
    pub signers_imported: u64,
    /// Signer keys the target already held with the same public key.
    pub signers_present: u64,
    /// Checkpoints written (already stored ones are kept as they are).
    pub checkpoints: u64,
}

impl ImportReport {
    /// Rows written.
    pub fn rows(&self) -> u64 {
        self.chains.iter().map(|c| c.imported).sum()
    }

    /// Rows the target already held.
    pub fn skipped(&self) -> u64 {
        self.chains.iter().map(|c| c.skipped).sum()
    }
}

/// Imports `file` into `admin`'s database: checks it whole, then writes it (see the module
/// documentation). Every refusal of the file or the target comes before anything is written; a
/// failure while writing says what was written ([`TransferError::Stopped`]: running the same
/// import again continues it) or that a chain moved under it ([`TransferError::Moved`]).
pub async fn import(
    admin: &Admin,
    file: &ImportFile,
    progress: &dyn Progress,
) -> Result<ImportReport, TransferError> {
    admin
        .check_schema()
        .await
        .map_err(|e| TransferError::TargetNotReady(Box::new(e)))?;
    progress.checking(file.name());
    let plan = check(admin, file).await;
    progress.checked();
    let plan = plan?;
    let mut written = Written::default();
    if let Err(e) = write(admin, file, &plan, &mut written, progress).await {
        let moved = match &e {
            TransferError::Chain { source, .. } => match &**source {
                Error::Store(s) => match &**s {
                    StoreError::ChainMoved { chain, .. } => Some(chain.clone()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        let source = Box::new(e);
        return Err(match moved {
            // Running the same import again cannot succeed: the chain now holds rows the file
            // does not have.
            Some(chain) => TransferError::Moved {
                chain,
                written,
                source,
            },
            None => TransferError::Stopped { written, source },
        });
    }
    let chains = plan
        .skip_upto
        .iter()
        .map(|(chain, head, skip)| ImportedChain {
            chain_id: chain.clone(),
            head_seq: *head,
            skipped: u64::try_from(*skip).unwrap_or(0),
            imported: written
                .rows
                .get(chain)
                .map(|(a, b)| u64::try_from(b - a + 1).unwrap_or(0))
                .unwrap_or(0),
        })
        .collect();
    Ok(ImportReport {
        target: admin.backend(),
        chains,
        signers_imported: written.signers,
        signers_present: plan.signers_present.len() as u64,
        checkpoints: written.checkpoints,
    })
}

/// Verifies, with `gov` (connected to the target with the audit secret the rows were sealed
/// with), each chain the import held rows of.
pub async fn verify_imported(
    gov: &Governance,
    report: &ImportReport,
) -> Result<Vec<ChainReport>, TransferError> {
    let mut reports = Vec::new();
    for c in report.chains.iter().filter(|c| c.head_seq > 0) {
        let r = gov
            .audit()
            .verify_with(Some(&c.chain_id), &VerifyOptions::default())
            .await
            .map_err(|source| TransferError::Unverified {
                chain: c.chain_id.clone(),
                source: Box::new(source),
            })?;
        reports.extend(r.chains);
    }
    Ok(reports)
}

/// The file's lines, one at a time, each at most [`MAX_LINE_BYTES`].
struct Lines {
    reader: BufReader<std::fs::File>,
    buf: String,
    number: u64,
    name: String,
}

impl Lines {
    fn open(file: &ImportFile) -> Result<Self, TransferError> {
        let f = std::fs::File::open(file.path()).map_err(|error| TransferError::ReadFile {
            file: file.name().to_owned(),
            error,
        })?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, f),
            buf: String::new(),
            number: 0,
            name: file.name().to_owned(),
        })
    }

    /// The next line without its line end, or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<&str>, TransferError> {
        self.buf.clear();
        let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_line(&mut self.buf)
            .map_err(|e| {
                let why = match e.kind() {
                    std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_owned(),
                    _ => e.to_string(),
                };
                self.refuse(Damage::Unreadable {
                    line: self.number + 1,
                    why,
                })
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        if !self.buf.ends_with('\n') && self.buf.len() > MAX_LINE_BYTES {
            return Err(self.refuse(Damage::TooLong { line: self.number }));
        }
        let line = self.buf.trim_end_matches('\n').trim_end_matches('\r');
        Ok(Some(line))
    }

    /// The file refused as damaged.
    fn refuse(&self, damage: Damage) -> TransferError {
        TransferError::Damaged {
            file: self.name.clone(),
            damage,
        }
    }

    /// The next line parsed, with its number.
    fn next_parsed(&mut self) -> Result<Option<(u64, Line)>, TransferError> {
        let parsed = match self.next_line()? {
            None => return Ok(None),
            Some(text) => serde_json::from_str::<Line>(text),
        };
        match parsed {
            Ok(line) => Ok(Some((self.number, line))),
            Err(e) => Err(self.refuse(Damage::NotALine {
                line: self.number,
                why: e.to_string(),
            })),
        }
    }
}

/// Reads and checks line 1.
fn read_header(lines: &mut Lines) -> Result<Header, TransferError> {
    let name = lines.name.clone();
    let not_export = |why: String| TransferError::NotAnExport {
        file: name.clone(),
        why,
    };
    let Some(text) = lines.next_line()? else {
        return Err(not_export("it is empty".into()));
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| not_export("line 1 is not a JSON header".into()))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not_export(format!("line 1 has no \"format\":\"{FORMAT}\"")));
    }
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(VERSION) => {}
        Some(version) => {
            return Err(TransferError::Version {
                file: name.clone(),
                version,
            });
        }
        None => return Err(TransferError::NoVersion { file: name.clone() }),
    }
    let header: Header =
        serde_json::from_value(value).map_err(|e| lines.refuse(Damage::Header(e.to_string())))?;
    let mut seen = BTreeSet::new();
    for c in &header.chains {
        if let Err(e) = ChainId::new(c.chain_id.as_str()) {
            return Err(lines.refuse(Damage::BadChainId {
                chain: c.chain_id.clone(),
                why: e.to_string(),
            }));
        }
        if !seen.insert(c.chain_id.as_str()) {
            return Err(lines.refuse(Damage::ChainTwice {
                chain: c.chain_id.clone(),
            }));
        }
        if c.seq < 0 || c.head_hmac.0.len() != 32 {
            return Err(lines.refuse(Damage::BadHead {
                chain: c.chain_id.clone(),
            }));
        }
    }
    Ok(header)
}

/// One chain as the first pass sees it.
#[derive(Debug)]
struct ChainCheck {
    /// The header's head.
    head_seq: i64,
    head_hmac: Vec<u8>,
    /// The rows read so far.
    links: ChainLinks,
    /// The seq the file's rows of the chain start after (0: they start at seq 1).
    starts_after: i64,
    /// The target's head of this chain (0: empty or absent).
    target_seq: i64,
    target_hmac: Vec<u8>,
    /// The file's seal at the target's head seq, when the file reaches it.
    seal_at_target: Option<Vec<u8>>,
}

/// What the second pass writes.
#[derive(Debug)]
struct Plan {
    /// Per chain, in header order: (chain, the file's head seq, rows up to this seq are already
    /// in the target).
    skip_upto: Vec<(String, i64, i64)>,
    /// Per chain: the target's head as the check found it (seq 0 when empty or absent), which
    /// the chain's import is fenced on.
    target_heads: BTreeMap<String, (i64, Vec<u8>)>,
    /// Signer ids already registered in the target with the same key.
    signers_present: BTreeSet<String>,
}

/// Where a file section may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Signers,
    Rows,
    Checkpoints,
}

/// The first pass: checks the file and the target; writes nothing.
async fn check(admin: &Admin, file: &ImportFile) -> Result<Plan, TransferError> {
    let mut lines = Lines::open(file)?;
    let header = read_header(&mut lines)?;
    let target_heads: BTreeMap<String, ChainHead> = admin
        .chain_heads()
        .await?
        .into_iter()
        .map(|h| (h.chain_id.clone(), h))
        .collect();
    let target_signers: BTreeMap<String, SignerKeyRow> = admin
        .signer_keys()
        .await?
        .into_iter()
        .map(|s| (s.signer_key_id.clone(), s))
        .collect();
    let mut chains: BTreeMap<String, ChainCheck> = BTreeMap::new();
    for c in &header.chains {
        let (target_seq, target_hmac) = match target_heads.get(&c.chain_id) {
            Some(h) => (h.seq, h.head_hmac.clone()),
            None => (0, vec![0; 32]),
        };
        let (links, starts_after) = match &c.starts_after {
            Some(s) if s.seq > 0 => (ChainLinks::at(s.seq, &s.row_hmac.0), s.seq),
            _ => (ChainLinks::new(), 0),
        };
        // A file that continues the chain after an archived segment links to the target's head
        // when the target holds the chain up to there.
        let seal_at_target = (starts_after > 0 && target_seq == starts_after)
            .then(|| c.starts_after.as_ref().map(|s| s.row_hmac.0.clone()))
            .flatten();
        chains.insert(
            c.chain_id.clone(),
            ChainCheck {
                head_seq: c.seq,
                head_hmac: c.head_hmac.0.clone(),
                links,
                starts_after,
                target_seq,
                target_hmac,
                seal_at_target,
            },
        );
    }
    let mut file_signers: BTreeSet<String> = BTreeSet::new();
    let mut signers_present = BTreeSet::new();
    let (mut rows, mut checkpoints) = (0_u64, 0_u64);
    let mut section = Section::Signers;
    let mut ended = false;
    while let Some((line, parsed)) = lines.next_parsed()? {
        let malformed = |why: String| Damage::Malformed { line, why };
        match parsed {
            Line::Signer(s) => {
                if section > Section::Signers {
                    return Err(lines.refuse(Damage::OutOfOrder {
                        line,
                        what: "a signer line after the rows",
                    }));
                }
                let row = s.to_row().map_err(|e| lines.refuse(malformed(e)))?;
                if !file_signers.insert(row.signer_key_id.clone()) {
                    return Err(lines.refuse(Damage::SignerTwice {
                        line,
                        signer: row.signer_key_id,
                    }));
                }
                if let Some(t) = target_signers.get(&row.signer_key_id) {
                    if t.public_key != row.public_key {
                        return Err(TransferError::SignerClash {
                            signer: row.signer_key_id,
                        });
                    }
                    signers_present.insert(row.signer_key_id);
                }
            }
            Line::Row(r) => {
                if section > Section::Rows {
                    return Err(lines.refuse(Damage::OutOfOrder {
                        line,
                        what: "a row after the checkpoints",
                    }));
                }
                section = Section::Rows;
                let rec = r.into_record().map_err(|e| lines.refuse(malformed(e)))?;
                let Some(c) = chains.get_mut(&rec.chain_id) else {
                    return Err(lines.refuse(Damage::UnlistedChain {
                        line,
                        what: "row",
                        chain: rec.chain_id,
                    }));
                };
                let after = c.links.seq();
                let broken = match c.links.push(&rec) {
                    Ok(()) => None,
                    Err(LinkBreak::Gap { .. }) => Some(Damage::Gap {
                        line,
                        chain: rec.chain_id.clone(),
                        seq: rec.seq,
                        after,
                    }),
                    Err(LinkBreak::Fork { .. }) => Some(Damage::Fork {
                        line,
                        chain: rec.chain_id.clone(),
                        seq: rec.seq,
                        after,
                    }),
                };
                if let Some(damage) = broken {
                    return Err(lines.refuse(damage));
                }
                if rec.seq > c.head_seq {
                    return Err(lines.refuse(Damage::BeyondHead {
                        line,
                        chain: rec.chain_id,
                        seq: rec.seq,
                        head: c.head_seq,
                    }));
                }
                if rec.seq == c.target_seq {
                    c.seal_at_target = Some(rec.row_hmac);
                }
                rows += 1;
            }
            Line::Checkpoint(cp) => {
                section = Section::Checkpoints;
                let row = cp.to_row().map_err(|e| lines.refuse(malformed(e)))?;
                let Some(c) = chains.get(&row.chain_id) else {
                    return Err(lines.refuse(Damage::UnlistedChain {
                        line,
                        what: "checkpoint",
                        chain: row.chain_id,
                    }));
                };
                if row.seq > c.head_seq {
                    return Err(lines.refuse(Damage::CheckpointBeyondHead {
                        line,
                        chain: row.chain_id,
                        seq: row.seq,
                        head: c.head_seq,
                    }));
                }
                if !file_signers.contains(&row.signer_key_id)
                    && !target_signers.contains_key(&row.signer_key_id)
                {
                    return Err(lines.refuse(Damage::UnknownSigner {
                        line,
                        signer: row.signer_key_id,
                    }));
                }
                checkpoints += 1;
            }
            Line::End(end) => {
                let counts = [
                    ("rows", Some(end.rows), rows),
                    ("signers", end.signers, file_signers.len() as u64),
                    ("checkpoints", end.checkpoints, checkpoints),
                ];
                for (what, said, found) in counts {
                    if let Some(said) = said
                        && said != found
                    {
                        return Err(lines.refuse(Damage::Count { what, said, found }));
                    }
                }
                ended = true;
                break;
            }
        }
    }
    if !ended {
        return Err(TransferError::CutOff {
            file: lines.name.clone(),
            lines: lines.number,
        });
    }
    if let Some(text) = lines.next_line()?
        && !text.trim().is_empty()
    {
        return Err(lines.refuse(Damage::AfterEnd { line: lines.number }));
    }
    let mut skip_upto = Vec::new();
    let mut fences = BTreeMap::new();
    for hc in &header.chains {
        let Some(c) = chains.get(&hc.chain_id) else {
            continue;
        };
        if !c.links.ends_at(c.head_seq, &c.head_hmac) {
            return Err(lines.refuse(Damage::HeadMismatch {
                chain: hc.chain_id.clone(),
                head: c.head_seq,
                ends_at: c.links.seq(),
            }));
        }
        let skip = already_there(admin, &hc.chain_id, c).await?;
        skip_upto.push((hc.chain_id.clone(), c.head_seq, skip));
        fences.insert(hc.chain_id.clone(), (c.target_seq, c.target_hmac.clone()));
    }
    Ok(Plan {
        skip_upto,
        target_heads: fences,
        signers_present,
    })
}

/// How many of the file's rows of `chain` the target already holds (they are skipped), or a
/// refusal when the target's chain is another one under the same id.
async fn already_there(admin: &Admin, chain: &str, c: &ChainCheck) -> Result<i64, TransferError> {
    if c.starts_after > 0 && c.target_seq < c.starts_after {
        return Err(TransferError::EarlierArchiveFirst {
            chain: chain.to_owned(),
            starts_after: c.starts_after,
            first: c.starts_after + 1,
            target_seq: c.target_seq,
        });
    }
    if c.target_seq == 0 || c.head_seq == 0 {
        return Ok(0);
    }
    let same = if c.target_seq <= c.head_seq {
        c.seal_at_target.as_deref() == Some(c.target_hmac.as_slice())
    } else {
        // The target is further along: it must hold the file's last row.
        let row = admin.export_page(chain, c.head_seq - 1, 1).await?;
        row.first()
            .is_some_and(|r| r.seq == c.head_seq && r.row_hmac == c.links.seal())
    };
    if same {
        return Ok(c.target_seq.min(c.head_seq));
    }
    Err(TransferError::AnotherChain {
        chain: chain.to_owned(),
        target_seq: c.target_seq,
        at: c.target_seq.min(c.head_seq),
    })
}

/// A chain whose import transaction is open.
struct Open {
    chain: String,
    import: ChainImport,
    /// The first seq it writes.
    first: i64,
}

/// The second pass: signers, each chain's rows in one transaction, checkpoints.
async fn write(
    admin: &Admin,
    file: &ImportFile,
    plan: &Plan,
    written: &mut Written,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let skip: BTreeMap<&str, i64> = plan
        .skip_upto
        .iter()
        .map(|(c, _, s)| (c.as_str(), *s))
        .collect();
    let mut fences = plan.target_heads.clone();
    let total: i64 = plan.skip_upto.iter().map(|(_, h, s)| h - s).sum();
    progress.rows(u64::try_from(total).unwrap_or(0));
    let mut lines = Lines::open(file)?;
    // Checked by the first pass.
    lines.next_line()?;
    // One batch at a time: a chain's rows are sent when the batch is full, when the next row
    // belongs to another chain, and before the checkpoints, so memory holds one batch at most.
    // A chain's rows are committed together when its last row has been sent.
    let mut open: Option<Open> = None;
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH_ROWS);
    while let Some((line, parsed)) = lines.next_parsed()? {
        let malformed = |why: String| Damage::Malformed { line, why };
        match parsed {
            Line::Signer(s) => {
                if plan.signers_present.contains(&s.signer_key_id) {
                    continue;
                }
                let row = s.to_row().map_err(|e| lines.refuse(malformed(e)))?;
                if !admin.import_signer(&row).await? {
                    return Err(TransferError::SignerChanged {
                        signer: row.signer_key_id,
                    });
                }
                written.signers += 1;
            }
            Line::Row(r) => {
                let rec = r.into_record().map_err(|e| lines.refuse(malformed(e)))?;
                if rec.seq <= skip.get(rec.chain_id.as_str()).copied().unwrap_or(0) {
                    continue;
                }
                if open.as_ref().is_some_and(|o| o.chain != rec.chain_id) {
                    finish(&mut open, &mut batch, written, &mut fences, progress).await?;
                }
                if open.is_none() {
                    let (seq, hmac) = fences
                        .get(&rec.chain_id)
                        .cloned()
                        .unwrap_or((0, vec![0; 32]));
                    let import = admin
                        .begin_chain_import(&rec.chain_id, (seq, &hmac))
                        .await
                        .map_err(|source| TransferError::Chain {
                            chain: rec.chain_id.clone(),
                            step: ChainStep::Begin,
                            source: Box::new(source),
                        })?;
                    open = Some(Open {
                        chain: rec.chain_id.clone(),
                        import,
                        first: rec.seq,
                    });
                }
                batch.push(rec);
                if batch.len() >= BATCH_ROWS
                    && let Some(o) = open.as_mut()
                {
                    send(o, &mut batch, progress).await?;
                }
            }
            Line::Checkpoint(cp) => {
                finish(&mut open, &mut batch, written, &mut fences, progress).await?;
                let row = cp.to_row().map_err(|e| lines.refuse(malformed(e)))?;
                admin.put_checkpoint(&row).await?;
                written.checkpoints += 1;
            }
            Line::End(_) => break,
        }
    }
    finish(&mut open, &mut batch, written, &mut fences, progress).await?;
    progress.rows_done();
    Ok(())
}

/// Sends the batch (rows of the open chain, in seq order) inside its transaction.
async fn send(
    open: &mut Open,
    batch: &mut Vec<AuditRecord>,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Ok(());
    };
    let (from, to) = (first.seq, last.seq);
    open.import
        .rows(batch)
        .await
        .map_err(|e| TransferError::Chain {
            chain: open.chain.clone(),
            step: ChainStep::Rows { from, to },
            source: Box::new(Error::from(e)),
        })?;
    progress.advance(batch.len() as u64);
    batch.clear();
    Ok(())
}

/// Sends what is left of the open chain's rows and commits them all.
async fn finish(
    open: &mut Option<Open>,
    batch: &mut Vec<AuditRecord>,
    written: &mut Written,
    fences: &mut BTreeMap<String, (i64, Vec<u8>)>,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let Some(mut o) = open.take() else {
        return Ok(());
    };
    send(&mut o, batch, progress).await?;
    let (seq, hmac) = o.import.head();
    let head = (seq, hmac.to_vec());
    o.import.commit().await.map_err(|e| TransferError::Chain {
        chain: o.chain.clone(),
        step: ChainStep::Commit,
        source: Box::new(Error::from(e)),
    })?;
    let entry = written
        .rows
        .entry(o.chain.clone())
        .or_insert((o.first, head.0));
    entry.1 = head.0;
    // Rows of this chain later in the file continue from here.
    fences.insert(o.chain, head);
    Ok(())
}
