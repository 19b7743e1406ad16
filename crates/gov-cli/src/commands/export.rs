//! `governance export`: write audit chains, their signer keys and checkpoints as a versioned
//! JSON Lines file that `governance import` reads into another database. The work is
//! [`gov_sdk::admin::transfer::Export`]'s; this command picks the destination (standard output,
//! or a file replaced whole only when the export is complete) and renders the summary.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use gov_sdk::ChainId;
use gov_sdk::admin::Admin;
use gov_sdk::admin::transfer::{Export, ExportReport, FORMAT, TransferError, VERSION};

use crate::cli::{ExportArgs, Global};
use crate::output::Out;

pub(crate) async fn run(args: ExportArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    for c in &args.chain {
        ChainId::new(c.as_str()).map_err(|e| {
            super::config_error(format!("--chain {c:?} is not a valid chain id: {e}"))
        })?;
    }
    let target = super::Target::resolve(global).await?;
    let admin = Admin::connect(&target.url).await?;
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

async fn export(admin: &Admin, args: &ExportArgs, out: &Out) -> anyhow::Result<ExportReport> {
    let export = Export::prepare(admin, &args.chain).await?;
    let mut sink = Sink::open(args.output.as_deref())?;
    let progress = crate::progress::Transfer::new(out, "exporting");
    let written = export.write(admin, sink.writer(), &progress).await;
    match written {
        Ok(report) => {
            sink.finish()?;
            Ok(report)
        }
        Err(TransferError::Write(e)) => Err(sink.error(&e)),
        Err(e) => Err(e.into()),
    }
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

    fn writer(&mut self) -> &mut (dyn Write + Send) {
        match self {
            Self::Stdout(w) => w,
            Self::File(f) => f,
        }
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
