//! `governance export`: write audit chains, their signer keys and checkpoints as a versioned
//! JSON Lines file (see `crate::transfer`) that `governance import` reads into another database.
//!
//! Rows are streamed page by page, so memory stays flat however long the chain; they are copied
//! as sealed, so no audit secret is needed. The rows' links (consecutive seqs, each `prev_hmac`
//! the previous seal, the last seal the head) are checked while they stream, so a broken chain
//! is refused rather than written; seals themselves are `governance verify`'s work.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use gov_sdk::admin::Admin;
use gov_sdk::{ChainHead, ChainId, Finding, Reason};

use crate::cli::{ExportArgs, Global};
use crate::output::Out;
use crate::transfer::{
    CheckpointLine, EndLine, FORMAT, Header, HeaderChain, Hex, Instant, Line, RowLine, SignerLine,
    VERSION, to_line,
};

/// Rows read per round trip.
const PAGE_ROWS: i64 = 2_000;

/// What was written.
struct Summary {
    chains: Vec<HeaderChain>,
    rows: u64,
    signers: u64,
    checkpoints: u64,
}

pub(crate) async fn run(args: ExportArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    for c in &args.chain {
        ChainId::new(c.as_str()).map_err(|e| {
            super::config_error(format!("--chain {c:?} is not a valid chain id: {e}"))
        })?;
    }
    let url = super::database_url(global).await?;
    let admin = Admin::connect(&url).await?;
    let result = export(&admin, &args, out).await;
    admin.close().await;
    let summary = result?;
    let what = format!(
        "{} chain{} ({} row{}), {} signer{} and {} checkpoint{}",
        summary.chains.len(),
        plural(summary.chains.len() as u64),
        summary.rows,
        plural(summary.rows),
        summary.signers,
        plural(summary.signers),
        summary.checkpoints,
        plural(summary.checkpoints),
    );
    match &args.output {
        // stdout holds the export itself: the summary goes to stderr, as text.
        None => {
            if !out.json() {
                out.warn(format!("exported {what}"));
            }
        }
        Some(path) if out.json() => out.emit_json(&serde_json::json!({
            "status": "ok",
            "output": path.display().to_string(),
            "format": FORMAT,
            "version": VERSION,
            "chains": summary.chains,
            "rows": summary.rows,
            "signers": summary.signers,
            "checkpoints": summary.checkpoints,
        })),
        Some(path) => {
            out.line(format!("exported {what} to {}", path.display()));
            for c in &summary.chains {
                out.line(format!("  chain {}: seq 1..{}", c.chain_id, c.seq));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A chain whose rows do not link up: exit 1, like a tampered chain.
fn broken(chain: &str, seq: i64, reason: Reason, detail: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::ChainBroken(Finding {
        seq,
        reason,
        detail: format!(
            "chain {chain}: {detail}; nothing usable was exported (`governance verify --chain {chain}` shows the damage)"
        ),
    }))
}

async fn export(admin: &Admin, args: &ExportArgs, out: &Out) -> anyhow::Result<Summary> {
    admin
        .check_schema()
        .await
        .context("the source database cannot be exported")?;
    // Heads first: every row up to them was written after its signer was registered, so the
    // signer keys read next cover them.
    let heads: BTreeMap<String, ChainHead> = admin
        .chain_heads()
        .await?
        .into_iter()
        .map(|h| (h.chain_id.clone(), h))
        .collect();
    let with_rows: BTreeSet<String> = admin.chain_ids().await?.into_iter().collect();
    let mut chains: Vec<ChainHead> = Vec::new();
    let wanted: BTreeSet<&str> = args.chain.iter().map(String::as_str).collect();
    let known: BTreeSet<&str> = heads
        .keys()
        .map(String::as_str)
        .chain(with_rows.iter().map(String::as_str))
        .collect();
    for name in &wanted {
        if !known.contains(name) {
            return Err(super::config_error(format!(
                "no audit chain named {name} exists in the source database"
            )));
        }
    }
    for name in known {
        if !wanted.is_empty() && !wanted.contains(name) {
            continue;
        }
        match heads.get(name) {
            Some(h) => chains.push(h.clone()),
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
    if chains.is_empty() {
        return Err(super::config_error(
            "the source database holds no audit chain: nothing to export (check --database-url)"
                .into(),
        ));
    }
    let signers = admin.signer_keys().await?;
    let signer_ids: BTreeSet<&str> = signers.iter().map(|s| s.signer_key_id.as_str()).collect();
    let mut checkpoints = Vec::new();
    for h in &chains {
        // A checkpoint signed after the heads were read, or by a signer registered since, lies
        // beyond this export.
        checkpoints.extend(
            admin
                .checkpoints(&h.chain_id)
                .await?
                .into_iter()
                .filter(|c| c.seq <= h.seq && signer_ids.contains(c.signer_key_id.as_str())),
        );
    }
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        exported_at: Instant(time::OffsetDateTime::now_utc()),
        generator: format!("governance {}", env!("CARGO_PKG_VERSION")),
        source: admin.backend().into(),
        chains: chains
            .iter()
            .map(|h| HeaderChain {
                chain_id: h.chain_id.clone(),
                seq: h.seq,
                head_hmac: Hex(h.head_hmac.clone()),
            })
            .collect(),
    };

    let mut sink = Sink::open(args.output.as_deref())?;
    let total: i64 = chains.iter().map(|h| h.seq).sum();
    let bar = crate::progress::bar(out, u64::try_from(total).unwrap_or(0), "exporting");
    sink.put(&header)?;
    for s in &signers {
        sink.put(&Line::Signer(SignerLine::from(s)))?;
    }
    let mut rows: u64 = 0;
    for h in &chains {
        let mut after = 0_i64;
        let mut prev: Vec<u8> = vec![0; 32];
        while after < h.seq {
            let limit = u32::try_from((h.seq - after).min(PAGE_ROWS)).unwrap_or(2_000);
            let page = admin.export_page(&h.chain_id, after, limit).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                if r.seq > h.seq {
                    break;
                }
                if r.seq != after + 1 {
                    return Err(broken(
                        &h.chain_id,
                        after + 1,
                        Reason::MissingRow,
                        format!(
                            "row {} is missing (the next stored row is {})",
                            after + 1,
                            r.seq
                        ),
                    ));
                }
                if r.prev_hmac != prev {
                    return Err(broken(
                        &h.chain_id,
                        r.seq,
                        Reason::Fork,
                        format!(
                            "row {} does not name row {}'s seal as its predecessor",
                            r.seq, after
                        ),
                    ));
                }
                sink.put(&Line::Row(Box::new(RowLine::from(r))))?;
                after = r.seq;
                prev.clone_from(&r.row_hmac);
                rows += 1;
            }
            bar.inc(page.len() as u64);
        }
        if after < h.seq {
            return Err(broken(
                &h.chain_id,
                after + 1,
                Reason::MissingRow,
                format!(
                    "the head row says seq {} but the rows end at seq {after}",
                    h.seq
                ),
            ));
        }
        if h.seq > 0 && prev != h.head_hmac {
            return Err(broken(
                &h.chain_id,
                h.seq,
                Reason::HeadMismatch,
                "the head row's HMAC is not the last row's seal".into(),
            ));
        }
    }
    bar.finish_and_clear();
    for c in &checkpoints {
        sink.put(&Line::Checkpoint(CheckpointLine::from(c)))?;
    }
    let end = EndLine {
        rows,
        signers: Some(signers.len() as u64),
        checkpoints: Some(checkpoints.len() as u64),
    };
    sink.put(&Line::End(end))?;
    sink.finish()?;
    Ok(Summary {
        chains: header.chains,
        rows,
        signers: signers.len() as u64,
        checkpoints: checkpoints.len() as u64,
    })
}

/// Where the lines go: stdout, or a file replaced whole when the export is complete.
enum Sink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(super::AtomicFile),
}

impl Sink {
    fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        Ok(match path {
            None => Self::Stdout(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            )),
            Some(p) => Self::File(super::AtomicFile::create(p, "the export")?),
        })
    }

    /// Writes `v` as one line.
    fn put<T: serde::Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        let text = to_line(v)
            .map_err(|e| super::config_error(format!("cannot encode a line of the export: {e}")))?;
        self.line(&text)
    }

    fn line(&mut self, text: &str) -> anyhow::Result<()> {
        let r = match self {
            Self::Stdout(w) => w
                .write_all(text.as_bytes())
                .and_then(|()| w.write_all(b"\n")),
            Self::File(f) => f
                .write_all(text.as_bytes())
                .and_then(|()| f.write_all(b"\n")),
        };
        r.map_err(|e| self.error(&e))
    }

    fn error(&self, e: &std::io::Error) -> anyhow::Error {
        match self {
            Self::Stdout(_) => {
                super::config_error(format!("cannot write the export to standard output: {e}"))
            }
            Self::File(f) => f.error(e),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::Stdout(mut w) => w.flush().map_err(|e| {
                super::config_error(format!("cannot write the export to standard output: {e}"))
            }),
            Self::File(f) => f.commit(),
        }
    }
}
