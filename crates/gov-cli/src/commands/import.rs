//! `governance import`: read a file written by `governance export` (see `crate::transfer`) into
//! this database.
//!
//! Two passes. The first checks the whole file and the target before anything is written: the
//! header and version, every line's shape, the links between each chain's rows, the trailer's
//! counts, that signer ids do not clash, and that each chain is empty in the target or already
//! holds a prefix of the file's rows (those are skipped, so a stopped import resumes). The
//! second writes signer keys, then each chain's rows in one transaction fenced on the head the
//! first pass found (sent in batches of at most [`BATCH_ROWS`]; the chain's head is held until
//! the commit, so a service appending to it waits, and a chain appended to since the check is
//! refused with nothing of it written), then checkpoints. Seals are not
//! checked here (that needs the audit secret): `--verify`, or `governance verify`, does it.
//! Standard input is copied to a private temporary file first, so it can be read twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use gov_sdk::admin::{Admin, SignerKeyRow};
use gov_sdk::{AuditRecord, ChainId};
use owo_colors::OwoColorize;

use crate::cli::{Global, ImportArgs};
use crate::output::Out;
use crate::transfer::{FORMAT, Header, Line, MAX_LINE_BYTES, VERSION};

/// Rows per statement (a chain's rows are one transaction however many batches they take).
const BATCH_ROWS: usize = 1_000;

pub(crate) async fn run(args: ImportArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let url = super::database_url(global).await?;
    // With --verify, a missing or weak secret is refused before anything is written.
    let secret = match args.verify {
        true => Some(super::audit_secret(&args.secret)?),
        false => None,
    };
    let input = Input::open(&args.input)?;
    let admin = Admin::connect(&url).await?;
    let result = import(&admin, &input, out).await;
    let target = admin.backend();
    admin.close().await;
    drop(input);
    let summary = result?;
    let verified = match secret {
        Some(secret) => Some(verify(&url, secret, &summary).await?),
        None => None,
    };
    render(out, target, &summary, verified.as_deref())?;
    Ok(match &verified {
        Some(chains) => super::verify::conclude(out, chains),
        None => ExitCode::SUCCESS,
    })
}

/// What became of one chain.
#[derive(Debug, Clone, serde::Serialize)]
struct ChainOutcome {
    chain_id: String,
    /// The file's head of this chain.
    head_seq: i64,
    /// Rows already in the target (seq 1..=skipped), left as they were.
    skipped: u64,
    /// Rows written by this import.
    imported: u64,
}

/// What the import did.
#[derive(Debug, Default)]
struct Summary {
    chains: Vec<ChainOutcome>,
    signers_imported: u64,
    signers_present: u64,
    checkpoints: u64,
}

impl Summary {
    fn rows(&self) -> u64 {
        self.chains.iter().map(|c| c.imported).sum()
    }

    fn skipped(&self) -> u64 {
        self.chains.iter().map(|c| c.skipped).sum()
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn render(
    out: &Out,
    target: &str,
    s: &Summary,
    verified: Option<&[gov_sdk::ChainReport]>,
) -> anyhow::Result<()> {
    if out.json() {
        let verdict = verified.map(|chains| {
            chains
                .iter()
                .map(gov_sdk::ChainReport::verdict)
                .max()
                .unwrap_or(gov_sdk::Verdict::Clean)
        });
        let verify = match verified {
            Some(chains) => serde_json::json!({
                "status": verdict.unwrap_or(gov_sdk::Verdict::Clean).as_str(),
                "chains": serde_json::to_value(chains)?,
            }),
            None => serde_json::Value::Null,
        };
        out.emit_json(&serde_json::json!({
            "status": match verdict {
                Some(gov_sdk::Verdict::Tampered) => "tampered",
                Some(gov_sdk::Verdict::Unverifiable) => "unverifiable",
                Some(gov_sdk::Verdict::Clean) | None => "ok",
            },
            "target": target,
            "chains": serde_json::to_value(&s.chains)?,
            "rows": s.rows(),
            "skipped_rows": s.skipped(),
            "signers": s.signers_imported,
            "signers_present": s.signers_present,
            "checkpoints": s.checkpoints,
            "verify": verify,
        }));
        return Ok(());
    }
    out.line(format!(
        "imported {} row{} of {} chain{}, {} signer key{} and {} checkpoint{} into the {target} database",
        s.rows(),
        plural(s.rows()),
        s.chains.len(),
        plural(s.chains.len() as u64),
        s.signers_imported,
        plural(s.signers_imported),
        s.checkpoints,
        plural(s.checkpoints),
    ));
    for c in &s.chains {
        let skipped = i64::try_from(c.skipped).unwrap_or(i64::MAX);
        let mut parts = Vec::new();
        if c.skipped > 0 {
            parts.push(format!("seq 1..{skipped} already there"));
        }
        if c.imported > 0 {
            parts.push(format!("seq {}..{} imported", skipped + 1, c.head_seq));
        }
        if parts.is_empty() {
            parts.push("no rows".into());
        }
        out.line(format!(
            "  chain {}: {}; head at seq {}",
            c.chain_id,
            parts.join(", "),
            c.head_seq
        ));
    }
    if s.signers_present > 0 {
        out.line(format!(
            "  {} signer key{} already registered",
            s.signers_present,
            plural(s.signers_present)
        ));
    }
    for c in verified.unwrap_or_default() {
        match &c.finding {
            None if let Some(u) = &c.unverifiable => out.line(format!(
                "{} chain {}: {} sealed with key {} (not configured)",
                "UNVERIFIABLE".yellow().bold(),
                c.chain_id,
                u.rows(),
                u.key_ids
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => out.line(format!(
                "{} chain {}: {} verified",
                "ok".green().bold(),
                c.chain_id,
                crate::output::plural(c.events_checked, "event", "events")
            )),
            Some(f) => out.line(format!(
                "{} chain {}: first bad seq {} ({})",
                "TAMPERED".red().bold(),
                c.chain_id,
                f.seq,
                f.reason.as_str()
            )),
        }
    }
    Ok(())
}

/// Verifies the chains the file held, in the target.
async fn verify(
    url: &str,
    secret: gov_sdk::AuditSecret,
    s: &Summary,
) -> anyhow::Result<Vec<gov_sdk::ChainReport>> {
    let gov = super::connect(url, secret).await?;
    let mut reports = Vec::new();
    for c in s.chains.iter().filter(|c| c.head_seq > 0) {
        let r = gov
            .audit()
            .verify_with(Some(&c.chain_id), &gov_sdk::VerifyOptions::default())
            .await;
        match r {
            Ok(r) => reports.extend(r.chains),
            Err(e) => {
                gov.close().await;
                return Err(anyhow::Error::new(e).context(format!(
                    "the import is complete, but chain {} could not be verified",
                    c.chain_id
                )));
            }
        }
    }
    gov.close().await;
    Ok(reports)
}

/// The file to read: a named file, or standard input copied to a private temporary file.
struct Input {
    path: PathBuf,
    name: String,
    /// Standard input's copy (random name, mode 600, created exclusively by `tempfile`),
    /// removed when dropped.
    _temporary: Option<tempfile::TempPath>,
}

impl Input {
    fn open(arg: &Path) -> anyhow::Result<Self> {
        if arg != Path::new("-") {
            let name = arg.display().to_string();
            std::fs::File::open(arg).map_err(|e| {
                super::config_error(format!("cannot read the export file {name}: {e}"))
            })?;
            return Ok(Self {
                path: arg.to_path_buf(),
                name,
                _temporary: None,
            });
        }
        if std::io::stdin().is_terminal() {
            return Err(super::config_error(
                "no export to read: pass --input FILE, or pipe one in (`governance export | governance import`)".into(),
            ));
        }
        let fail = |e: std::io::Error| {
            super::config_error(format!(
                "cannot copy standard input to a temporary file in {} (set TMPDIR to a writable directory with room for the export): {e}",
                std::env::temp_dir().display()
            ))
        };
        let mut file = tempfile::Builder::new()
            .prefix("governance-import-")
            .suffix(".jsonl")
            .tempfile()
            .map_err(fail)?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file).map_err(fail)?;
        file.as_file().sync_all().map_err(fail)?;
        let temporary = file.into_temp_path();
        Ok(Self {
            path: temporary.to_path_buf(),
            name: "standard input".into(),
            _temporary: Some(temporary),
        })
    }

    fn lines(&self) -> anyhow::Result<Lines> {
        let file = std::fs::File::open(&self.path).map_err(|e| {
            super::config_error(format!("cannot read the export file {}: {e}", self.name))
        })?;
        Ok(Lines {
            reader: BufReader::with_capacity(1 << 16, file),
            buf: String::new(),
            number: 0,
            name: self.name.clone(),
        })
    }
}

/// The file's lines, one at a time, each at most [`MAX_LINE_BYTES`].
struct Lines {
    reader: BufReader<std::fs::File>,
    buf: String,
    number: u64,
    name: String,
}

impl Lines {
    /// The next line without its line end, or `None` at the end of the file.
    fn next_line(&mut self) -> anyhow::Result<Option<&str>> {
        self.buf.clear();
        let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX) + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_line(&mut self.buf)
            .map_err(|e| {
                let what = match e.kind() {
                    std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_owned(),
                    _ => e.to_string(),
                };
                self.refuse(&format!("line {} cannot be read: {what}", self.number + 1))
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        if !self.buf.ends_with('\n') && self.buf.len() > MAX_LINE_BYTES {
            return Err(self.refuse(&format!(
                "line {} is longer than {MAX_LINE_BYTES} bytes, which no export line is",
                self.number
            )));
        }
        let line = self.buf.trim_end_matches('\n').trim_end_matches('\r');
        Ok(Some(line))
    }

    /// A refusal naming the file and the fix.
    fn refuse(&self, what: &str) -> anyhow::Error {
        super::config_error(format!(
            "{}: {what}; it is not a whole file written by `governance export` (export again); nothing was imported",
            self.name
        ))
    }

    /// The next line parsed, with its number.
    fn next_parsed(&mut self) -> anyhow::Result<Option<(u64, Line)>> {
        let parsed = match self.next_line()? {
            None => return Ok(None),
            Some(text) => serde_json::from_str::<Line>(text),
        };
        match parsed {
            Ok(line) => Ok(Some((self.number, line))),
            Err(e) => Err(self.refuse(&format!(
                "line {} is not a valid export line ({e})",
                self.number
            ))),
        }
    }
}

/// Reads and checks line 1.
fn read_header(lines: &mut Lines) -> anyhow::Result<Header> {
    let not_export = |name: &str, why: &str| {
        super::config_error(format!(
            "{name} is not a governance export ({why}); write one with `governance export --output FILE`"
        ))
    };
    let name = lines.name.clone();
    let Some(text) = lines.next_line()? else {
        return Err(not_export(&name, "it is empty"));
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| not_export(&name, "line 1 is not a JSON header"))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not_export(
            &name,
            &format!("line 1 has no \"format\":\"{FORMAT}\""),
        ));
    }
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(VERSION) => {}
        Some(v) => {
            let hint = if v > VERSION {
                "import it with the governance release that exported it, or a newer one"
            } else {
                "export it again with this governance"
            };
            return Err(super::config_error(format!(
                "{name} is a governance export of version {v}, which governance {} does not read (it reads version {VERSION}): {hint}; nothing was imported",
                env!("CARGO_PKG_VERSION")
            )));
        }
        None => {
            return Err(super::config_error(format!(
                "{name} has no valid \"version\" in its header (governance {} reads version {VERSION}): export it again; nothing was imported",
                env!("CARGO_PKG_VERSION")
            )));
        }
    }
    let header: Header = serde_json::from_value(value)
        .map_err(|e| lines.refuse(&format!("its header (line 1) is malformed: {e}")))?;
    let mut seen = BTreeSet::new();
    for c in &header.chains {
        if let Err(e) = ChainId::new(c.chain_id.as_str()) {
            return Err(lines.refuse(&format!(
                "the header names chain {:?}, which is not a valid chain id ({e})",
                c.chain_id
            )));
        }
        if !seen.insert(c.chain_id.as_str()) {
            return Err(lines.refuse(&format!("the header names chain {} twice", c.chain_id)));
        }
        if c.seq < 0 || c.head_hmac.0.len() != 32 {
            return Err(lines.refuse(&format!(
                "the header's head of chain {} is malformed",
                c.chain_id
            )));
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
    /// The last row read, and its seal.
    last_seq: i64,
    last_hmac: Vec<u8>,
    /// The target's head of this chain (0: empty or absent).
    target_seq: i64,
    target_hmac: Vec<u8>,
    /// The file's seal at the target's head seq, when the file reaches it.
    seal_at_target: Option<Vec<u8>>,
}

/// What the second pass writes.
#[derive(Debug)]
struct Plan {
    /// Per chain, in header order: rows up to this seq are already in the target.
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
async fn check(admin: &Admin, input: &Input) -> anyhow::Result<Plan> {
    let mut lines = input.lines()?;
    let header = read_header(&mut lines)?;
    let target_heads: BTreeMap<String, gov_sdk::ChainHead> = admin
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
        chains.insert(
            c.chain_id.clone(),
            ChainCheck {
                head_seq: c.seq,
                head_hmac: c.head_hmac.0.clone(),
                last_seq: 0,
                last_hmac: vec![0; 32],
                target_seq,
                target_hmac,
                seal_at_target: None,
            },
        );
    }
    let mut file_signers: BTreeSet<String> = BTreeSet::new();
    let mut signers_present = BTreeSet::new();
    let (mut rows, mut checkpoints) = (0_u64, 0_u64);
    let mut section = Section::Signers;
    let mut ended = false;
    while let Some((n, line)) = lines.next_parsed()? {
        let out_of_order = |what: &str| lines.refuse(&format!("line {n}: {what}"));
        match line {
            Line::Signer(s) => {
                if section > Section::Signers {
                    return Err(out_of_order("a signer line after the rows"));
                }
                let row = s
                    .to_row()
                    .map_err(|e| lines.refuse(&format!("line {n}: {e}")))?;
                if !file_signers.insert(row.signer_key_id.clone()) {
                    return Err(lines.refuse(&format!(
                        "line {n}: signer {} appears twice",
                        row.signer_key_id
                    )));
                }
                if let Some(t) = target_signers.get(&row.signer_key_id) {
                    if t.public_key != row.public_key {
                        return Err(super::config_error(format!(
                            "signer {} is registered in the target database with another public key, so the file's rows signed under that id could not be verified here; nothing was imported",
                            row.signer_key_id
                        )));
                    }
                    signers_present.insert(row.signer_key_id);
                }
            }
            Line::Row(r) => {
                if section > Section::Rows {
                    return Err(out_of_order("a row after the checkpoints"));
                }
                section = Section::Rows;
                let rec = r
                    .into_record()
                    .map_err(|e| lines.refuse(&format!("line {n}: {e}")))?;
                let Some(c) = chains.get_mut(&rec.chain_id) else {
                    return Err(lines.refuse(&format!(
                        "line {n}: a row of chain {:?}, which the header does not list",
                        rec.chain_id
                    )));
                };
                if rec.seq != c.last_seq + 1 {
                    return Err(lines.refuse(&format!(
                        "line {n}: row {} of chain {} follows row {} (rows must run 1, 2, 3, … with none missing)",
                        rec.seq, rec.chain_id, c.last_seq
                    )));
                }
                if rec.prev_hmac != c.last_hmac {
                    return Err(lines.refuse(&format!(
                        "line {n}: row {} of chain {} does not name the seal of row {} as its predecessor",
                        rec.seq, rec.chain_id, c.last_seq
                    )));
                }
                if rec.seq > c.head_seq {
                    return Err(lines.refuse(&format!(
                        "line {n}: row {} of chain {} lies beyond the head the header gives (seq {})",
                        rec.seq, rec.chain_id, c.head_seq
                    )));
                }
                if rec.seq == c.target_seq {
                    c.seal_at_target = Some(rec.row_hmac.clone());
                }
                c.last_seq = rec.seq;
                c.last_hmac = rec.row_hmac;
                rows += 1;
            }
            Line::Checkpoint(cp) => {
                section = Section::Checkpoints;
                let row = cp
                    .to_row()
                    .map_err(|e| lines.refuse(&format!("line {n}: {e}")))?;
                let Some(c) = chains.get(&row.chain_id) else {
                    return Err(lines.refuse(&format!(
                        "line {n}: a checkpoint of chain {:?}, which the header does not list",
                        row.chain_id
                    )));
                };
                if row.seq > c.head_seq {
                    return Err(lines.refuse(&format!(
                        "line {n}: a checkpoint of chain {} at seq {}, beyond the exported head (seq {})",
                        row.chain_id, row.seq, c.head_seq
                    )));
                }
                if !file_signers.contains(&row.signer_key_id)
                    && !target_signers.contains_key(&row.signer_key_id)
                {
                    return Err(lines.refuse(&format!(
                        "line {n}: a checkpoint signed by {}, a signer the file does not hold",
                        row.signer_key_id
                    )));
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
                        return Err(lines.refuse(&format!(
                            "its end line counts {said} {what} but the file holds {found}"
                        )));
                    }
                }
                ended = true;
                break;
            }
        }
    }
    if !ended {
        return Err(super::config_error(format!(
            "{} ends after line {} without its end line: the export was cut off (interrupted, or copied in part); export again; nothing was imported",
            lines.name, lines.number
        )));
    }
    if let Some(text) = lines.next_line()?
        && !text.trim().is_empty()
    {
        return Err(lines.refuse(&format!("line {} follows the end line", lines.number)));
    }
    let mut skip_upto = Vec::new();
    let mut fences = BTreeMap::new();
    for hc in &header.chains {
        let Some(c) = chains.get(&hc.chain_id) else {
            continue;
        };
        if c.last_seq != c.head_seq || (c.head_seq > 0 && c.last_hmac != c.head_hmac) {
            return Err(lines.refuse(&format!(
                "the header gives chain {} a head at seq {}, but its rows end at seq {}{}",
                hc.chain_id,
                c.head_seq,
                c.last_seq,
                if c.last_seq == c.head_seq {
                    " with another seal"
                } else {
                    ""
                }
            )));
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
async fn already_there(admin: &Admin, chain: &str, c: &ChainCheck) -> anyhow::Result<i64> {
    if c.target_seq == 0 || c.head_seq == 0 {
        return Ok(0);
    }
    let same = if c.target_seq <= c.head_seq {
        c.seal_at_target.as_deref() == Some(c.target_hmac.as_slice())
    } else {
        // The target is further along: it must hold the file's last row.
        let row = admin.export_page(chain, c.head_seq - 1, 1).await?;
        row.first()
            .is_some_and(|r| r.seq == c.head_seq && r.row_hmac == c.last_hmac)
    };
    if same {
        return Ok(c.target_seq.min(c.head_seq));
    }
    Err(super::config_error(format!(
        "chain {chain} already has rows in the target database (up to seq {}) that the file does not continue: \
         it is another chain under the same id (the seals at seq {} differ). Import into a database without \
         chain {chain}, or export again without it (`governance export --chain …`); nothing was imported",
        c.target_seq,
        c.target_seq.min(c.head_seq)
    )))
}

/// Rows written so far, to say exactly where a failed import stopped.
#[derive(Debug, Default)]
struct Written {
    /// Per chain: (first seq written, last seq written).
    rows: BTreeMap<String, (i64, i64)>,
    signers: u64,
    checkpoints: u64,
}

impl Written {
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .rows
            .iter()
            .map(|(c, (a, b))| format!("chain {c} seq {a}..{b}"))
            .collect();
        if parts.is_empty() {
            parts.push("no rows".into());
        }
        format!(
            "{} were imported, with {} signer key{} and {} checkpoint{}",
            parts.join(", "),
            self.signers,
            plural(self.signers),
            self.checkpoints,
            plural(self.checkpoints)
        )
    }
}

async fn import(admin: &Admin, input: &Input, out: &Out) -> anyhow::Result<Summary> {
    admin.check_schema().await.context(
        "the target database is not ready for an import (run `governance migrate` against it first)",
    )?;
    let spinner = crate::progress::spinner(out);
    spinner.set_message(format!("checking {}", input.name));
    let plan = check(admin, input).await;
    spinner.finish_and_clear();
    let plan = plan?;
    let mut written = Written::default();
    let result = write(admin, input, &plan, &mut written, out).await;
    if let Err(e) = result {
        let moved = e
            .chain()
            .find_map(|c| match c.downcast_ref::<gov_sdk::Error>() {
                Some(gov_sdk::Error::Store(s)) => match &**s {
                    gov_sdk::admin::StoreError::ChainMoved { chain, .. } => Some(chain.clone()),
                    _ => None,
                },
                _ => None,
            });
        return Err(match moved {
            // Running the same import again cannot succeed: the chain now holds rows the file
            // does not have.
            Some(chain) => e.context(format!(
                "the import was refused: a service is appending to chain {chain} in the target database; \
                 import a chain only where nothing writes to it yet (stop its writers, or import into a \
                 new database before pointing services at it); {}",
                written.describe()
            )),
            None => e.context(format!(
                "the import stopped: {}; run the same import again to continue (rows already there are skipped)",
                written.describe()
            )),
        });
    }
    let chains = plan
        .skip_upto
        .iter()
        .map(|(chain, head, skip)| ChainOutcome {
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
    Ok(Summary {
        chains,
        signers_imported: written.signers,
        signers_present: plan.signers_present.len() as u64,
        checkpoints: written.checkpoints,
    })
}

/// The second pass: signers, each chain's rows in one transaction, checkpoints.
async fn write(
    admin: &Admin,
    input: &Input,
    plan: &Plan,
    written: &mut Written,
    out: &Out,
) -> anyhow::Result<()> {
    let skip: BTreeMap<&str, i64> = plan
        .skip_upto
        .iter()
        .map(|(c, _, s)| (c.as_str(), *s))
        .collect();
    let mut fences = plan.target_heads.clone();
    let total: i64 = plan.skip_upto.iter().map(|(_, h, s)| h - s).sum();
    let bar = crate::progress::bar(out, u64::try_from(total).unwrap_or(0), "importing");
    let mut lines = input.lines()?;
    // Checked by the first pass.
    lines.next_line()?;
    // One batch at a time: a chain's rows are sent when the batch is full, when the next row
    // belongs to another chain, and before the checkpoints, so memory holds one batch at most.
    // A chain's rows are committed together when its last row has been sent.
    let mut open: Option<Open> = None;
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH_ROWS);
    while let Some((_, line)) = lines.next_parsed()? {
        match line {
            Line::Signer(s) => {
                if plan.signers_present.contains(&s.signer_key_id) {
                    continue;
                }
                let row = s.to_row().map_err(|e| lines.refuse(&e))?;
                if !admin.import_signer(&row).await? {
                    return Err(super::config_error(format!(
                        "signer {} was registered in the target database with another public key while the import ran",
                        row.signer_key_id
                    )));
                }
                written.signers += 1;
            }
            Line::Row(r) => {
                let rec = r.into_record().map_err(|e| lines.refuse(&e))?;
                if rec.seq <= skip.get(rec.chain_id.as_str()).copied().unwrap_or(0) {
                    continue;
                }
                if open.as_ref().is_some_and(|o| o.chain != rec.chain_id) {
                    finish(&mut open, &mut batch, written, &mut fences, &bar).await?;
                }
                if open.is_none() {
                    let (seq, hmac) = fences
                        .get(&rec.chain_id)
                        .cloned()
                        .unwrap_or((0, vec![0; 32]));
                    let import = admin
                        .begin_chain_import(&rec.chain_id, (seq, &hmac))
                        .await
                        .with_context(|| {
                            format!("chain {}: nothing of it was imported", rec.chain_id)
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
                    send(o, &mut batch, &bar).await?;
                }
            }
            Line::Checkpoint(cp) => {
                finish(&mut open, &mut batch, written, &mut fences, &bar).await?;
                let row = cp.to_row().map_err(|e| lines.refuse(&e))?;
                admin.put_checkpoint(&row).await?;
                written.checkpoints += 1;
            }
            Line::End(_) => break,
        }
    }
    finish(&mut open, &mut batch, written, &mut fences, &bar).await?;
    bar.finish_and_clear();
    Ok(())
}

/// A chain whose import transaction is open.
struct Open {
    chain: String,
    import: gov_sdk::admin::ChainImport,
    /// The first seq it writes.
    first: i64,
}

/// Sends the batch (rows of the open chain, in seq order) inside its transaction.
async fn send(
    open: &mut Open,
    batch: &mut Vec<AuditRecord>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Ok(());
    };
    let (from, to) = (first.seq, last.seq);
    open.import
        .rows(batch)
        .await
        .map_err(gov_sdk::Error::from)
        .with_context(|| {
            format!(
                "chain {}: rows {from}..{to} could not be imported; nothing of the chain was",
                open.chain
            )
        })?;
    bar.inc(batch.len() as u64);
    batch.clear();
    Ok(())
}

/// Sends what is left of the open chain's rows and commits them all.
async fn finish(
    open: &mut Option<Open>,
    batch: &mut Vec<AuditRecord>,
    written: &mut Written,
    fences: &mut BTreeMap<String, (i64, Vec<u8>)>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let Some(mut o) = open.take() else {
        return Ok(());
    };
    send(&mut o, batch, bar).await?;
    let (seq, hmac) = o.import.head();
    let head = (seq, hmac.to_vec());
    o.import
        .commit()
        .await
        .map_err(gov_sdk::Error::from)
        .with_context(|| {
            format!(
                "chain {}: its rows could not be committed; nothing of it was imported",
                o.chain
            )
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
