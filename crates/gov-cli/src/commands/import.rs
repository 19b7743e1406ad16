//! `governance import`: read a file written by `governance export` into this database. The
//! work (two passes: the whole file and the target checked before anything is written, then
//! each chain fenced in one transaction) is [`gov_sdk::admin::transfer::import`]'s; this
//! command reads standard input into a private temporary file (the file is read twice),
//! verifies with `--verify`, and renders the report.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use gov_sdk::admin::Admin;
use gov_sdk::admin::transfer::{self, ImportFile, ImportReport};
use owo_colors::OwoColorize;

use crate::cli::{Global, ImportArgs};
use crate::output::Out;

pub(crate) async fn run(args: ImportArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let target = super::Target::resolve(global).await?;
    // With --verify, a missing or weak secret is refused before anything is written.
    let secret = match args.verify {
        true => Some(target.audit_secret(&args.secret)?),
        false => None,
    };
    let input = Input::open(&args.input)?;
    let admin = Admin::connect(&target.url).await?;
    let progress = crate::progress::Transfer::new(out, "importing");
    let result = transfer::import(&admin, &input.file, &progress).await;
    admin.close().await;
    drop(input);
    let report = result?;
    let verified = match secret {
        Some(secret) => {
            let gov = super::connect(&target.url, secret).await?;
            let chains = transfer::verify_imported(&gov, &report).await;
            gov.close().await;
            Some(chains?)
        }
        None => None,
    };
    render(out, &report, verified.as_deref())?;
    Ok(match &verified {
        Some(chains) => super::verify::conclude(out, chains),
        None => ExitCode::SUCCESS,
    })
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn render(
    out: &Out,
    s: &ImportReport,
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
            "target": s.target,
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
        "imported {} row{} of {} chain{}, {} signer key{} and {} checkpoint{} into the {} database",
        s.rows(),
        plural(s.rows()),
        s.chains.len(),
        plural(s.chains.len() as u64),
        s.signers_imported,
        plural(s.signers_imported),
        s.checkpoints,
        plural(s.checkpoints),
        s.target,
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

/// The file to read: a named file, or standard input copied to a private temporary file.
struct Input {
    file: ImportFile,
    /// Standard input's copy (random name, mode 600, created exclusively by `tempfile`),
    /// removed when dropped.
    _temporary: Option<tempfile::TempPath>,
}

impl Input {
    fn open(arg: &Path) -> anyhow::Result<Self> {
        if arg != Path::new("-") {
            return Ok(Self {
                file: ImportFile::open(arg)?,
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
            file: ImportFile::named(&temporary, "standard input")?,
            _temporary: Some(temporary),
        })
    }
}
