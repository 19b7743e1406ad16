//! `governance verify`: verify one chain or all of them, whole or a range of seqs, with a
//! progress bar on a terminal.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use owo_colors::OwoColorize;

use crate::cli::{Global, VerifyArgs};
use crate::output::Out;

/// Refuses a range the verifier cannot mean: a seq below 1, or `--from` after `--to`.
fn check_range(args: &VerifyArgs) -> anyhow::Result<()> {
    let refuse = |m: String| Err(anyhow::Error::new(gov_sdk::Error::Config(m)));
    for (flag, seq) in [("--from", args.from), ("--to", args.to)] {
        if let Some(s) = seq
            && s < 1
        {
            return refuse(format!("{flag} must be a seq of 1 or more, not {s}"));
        }
    }
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from > to
    {
        return refuse(format!(
            "--from {from} is after --to {to}: the range would be empty"
        ));
    }
    Ok(())
}

/// A bar on stderr, drawn only when stderr is a terminal and never with `--json`.
fn progress_bar(out: &Out) -> ProgressBar {
    if out.json() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{wide_bar}] {human_pos}/{human_len} events ({rate}, {eta} left)",
    ) {
        let style = style
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/s", HumanCount(s.per_sec() as u64));
            })
            .progress_chars("=> ");
        bar.set_style(style);
    }
    bar.set_message("verifying");
    bar
}

pub(crate) async fn run(args: VerifyArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    check_range(&args)?;
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&url, secret).await?;
    let bar = progress_bar(out);
    let shown = bar.clone();
    let current = Mutex::new(None::<String>);
    let opts = gov_sdk::VerifyOptions {
        from_seq: args.from,
        to_seq: args.to,
        threads: None,
        progress: Some(Arc::new(move |p: gov_sdk::VerifyProgress| {
            let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
            if current.as_deref() != Some(p.chain_id.as_str()) {
                shown.reset();
                shown.set_length(p.total);
                shown.set_message(format!("chain {}", p.chain_id));
                *current = Some(p.chain_id);
            }
            shown.set_position(p.checked);
        })),
    };
    let checkpoints = args.checkpoint.as_deref().map(read_checkpoints).transpose();
    let checkpoints = match checkpoints {
        Ok(c) => c,
        Err(e) => {
            gov.close().await;
            return Err(e);
        }
    };
    let report = gov.audit().verify_with(args.chain.as_deref(), &opts).await;
    bar.finish_and_clear();
    let report = match (report, &checkpoints) {
        (Ok(mut report), Some(file)) => {
            let held = hold_checkpoints(&gov, &mut report, file, args.chain.as_deref(), out).await;
            held.map(|()| report)
        }
        (r, _) => r.map_err(Into::into),
    };
    gov.close().await;
    let report = report?;
    let verdict = report.verdict();
    if out.json() {
        let mut v = serde_json::to_value(&report)?;
        v["status"] = serde_json::json!(verdict.as_str());
        if let Some(chains) = v["chains"].as_array_mut() {
            for (j, c) in chains.iter_mut().zip(&report.chains) {
                j["status"] = serde_json::json!(c.verdict().as_str());
            }
        }
        v["rotation_aware"] = serde_json::json!(gov_sdk::ROTATION_AWARE);
        out.emit_json(&v);
    } else {
        for c in &report.chains {
            let (first, last) = c
                .range
                .unwrap_or((c.archived_through.map_or(1, |a| a + 1), c.head_seq));
            let archived = c
                .archived_through
                .map(|a| format!(" (seq 1..{a} archived)"))
                .unwrap_or_default();
            match &c.finding {
                None if let Some(u) = &c.unverifiable => out.line(format!(
                    "{} chain {}: {} sealed with key {} (not configured){}",
                    "UNVERIFIABLE".yellow().bold(),
                    c.chain_id,
                    u.rows(),
                    u.key_ids
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    match c.events_checked {
                        0 => String::new(),
                        n => format!(
                            "; {} verified with the configured keys",
                            crate::output::plural(n, "event", "events")
                        ),
                    }
                )),
                None if first > last => out.line(format!(
                    "{} chain {}: no events from seq {first} (head at seq {})",
                    "--".dimmed(),
                    c.chain_id,
                    c.head_seq
                )),
                None => out.line(format!(
                    "{} chain {}: {}, seq {first}..{last}{}{archived}",
                    "ok".green().bold(),
                    c.chain_id,
                    crate::output::plural(c.events_checked, "event", "events"),
                    signatures(&c.signatures),
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
        let keys: std::collections::BTreeSet<&str> = report
            .chains
            .iter()
            .flat_map(|c| c.key_ids.iter().map(String::as_str))
            .collect();
        if keys.len() > 1 {
            out.line(format!(
                "keys      {} (rotation-aware: each row checked with the key its rotation markers allow)",
                keys.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        let n = report.chains.len();
        out.line(format!(
            "verified {} event{} in {n} chain{}: {}",
            report.events_checked,
            if report.events_checked == 1 { "" } else { "s" },
            if n == 1 { "" } else { "s" },
            match verdict {
                gov_sdk::Verdict::Clean => "clean".green().to_string(),
                gov_sdk::Verdict::Tampered => "TAMPERED".red().bold().to_string(),
                gov_sdk::Verdict::Unverifiable => "NOT VERIFIABLE with the configured keys"
                    .yellow()
                    .bold()
                    .to_string(),
            }
        ));
    }
    Ok(conclude(out, &report.chains))
}

/// Tells on stderr what the verdict over `chains` rests on (the first finding of a tampered
/// chain; for each chain the configured keys cannot check, which key its rows name and what to
/// set) and returns the exit code of the worst verdict: 1 tampered, 2 not verifiable with the
/// configured keys (a configuration problem), 0 clean. Tampering beats configuration, so a
/// missing secret for one chain never hides evidence of tampering in another.
pub(crate) fn conclude(out: &Out, chains: &[gov_sdk::ChainReport]) -> ExitCode {
    for c in chains {
        if let (gov_sdk::Verdict::Unverifiable, Some(u)) = (c.verdict(), &c.unverifiable) {
            out.warn(format!(
                "not verifiable with the configured keys: chain {}: {}",
                c.chain_id, u.advice
            ));
        }
    }
    if let Some((c, f)) = chains
        .iter()
        .find_map(|c| c.finding.as_ref().map(|f| (c, f)))
    {
        out.warn(format!(
            "tampered: chain {} seq {}: {}: {}",
            c.chain_id,
            f.seq,
            f.reason.as_str(),
            f.detail
        ));
    }
    match chains.iter().map(gov_sdk::ChainReport::verdict).max() {
        Some(gov_sdk::Verdict::Tampered) => {
            ExitCode::from(crate::exit_code_for(gov_sdk::ErrorKind::Tampered))
        }
        Some(gov_sdk::Verdict::Unverifiable) => {
            ExitCode::from(crate::exit_code_for(gov_sdk::ErrorKind::Config))
        }
        Some(gov_sdk::Verdict::Clean) | None => ExitCode::SUCCESS,
    }
}

/// How the rows were signed, when any were: ` (8 signed, 2 unsigned)`.
fn signatures(s: &gov_sdk::SignatureCounts) -> String {
    if s.signed == 0 && s.unsigned_local_failure == 0 {
        return String::new();
    }
    let mut parts = vec![format!("{} signed", s.signed)];
    if s.unsigned > 0 {
        parts.push(format!("{} unsigned", s.unsigned));
    }
    if s.unsigned_local_failure > 0 {
        parts.push(format!(
            "{} unsigned after a signer failure",
            s.unsigned_local_failure
        ));
    }
    format!(" ({})", parts.join(", "))
}

/// Reads a checkpoint file written by `governance checkpoint`.
fn read_checkpoints(path: &std::path::Path) -> anyhow::Result<gov_sdk::CheckpointFile> {
    let config = |m: String| anyhow::Error::new(gov_sdk::Error::Config(m));
    let text = std::fs::read_to_string(path).map_err(|e| {
        config(format!(
            "cannot read the checkpoint file {}: {e}",
            path.display()
        ))
    })?;
    let file: gov_sdk::CheckpointFile = serde_json::from_str(&text).map_err(|e| {
        config(format!(
            "{} is not a checkpoint file written by `governance checkpoint` ({e})",
            path.display()
        ))
    })?;
    if file.format != gov_sdk::CHECKPOINT_FILE_FORMAT {
        return Err(config(format!(
            "{} has format {:?}; this version reads {:?}",
            path.display(),
            file.format,
            gov_sdk::CHECKPOINT_FILE_FORMAT
        )));
    }
    Ok(file)
}

/// Checks each checkpoint of the file against the stored chain; a failure becomes the chain's
/// finding when the chain itself verified clean.
async fn hold_checkpoints(
    gov: &gov_sdk::Governance,
    report: &mut gov_sdk::VerifyReport,
    file: &gov_sdk::CheckpointFile,
    only: Option<&str>,
    out: &Out,
) -> anyhow::Result<()> {
    for cp in &file.checkpoints {
        if only.is_some_and(|c| c != cp.chain_id) {
            continue;
        }
        let finding = gov.audit().check_checkpoint(cp).await?;
        if finding.is_none() && !gov.audit().signer_registered(&cp.signer_key_id).await? {
            out.warn(format!(
                "note: the checkpoint of chain {} is signed by {}, which this database does not list as an active signer; trust it only if you trust the file",
                cp.chain_id, cp.signer_key_id
            ));
        }
        match report.chains.iter_mut().find(|c| c.chain_id == cp.chain_id) {
            Some(c) => {
                if c.finding.is_none() {
                    c.finding = finding;
                }
            }
            None => report.chains.push(gov_sdk::ChainReport {
                chain_id: cp.chain_id.clone(),
                events_checked: 0,
                head_seq: 0,
                key_ids: Default::default(),
                signatures: Default::default(),
                range: None,
                archived_through: None,
                unverifiable: None,
                finding: Some(finding.unwrap_or(gov_sdk::Finding {
                    seq: 1,
                    reason: gov_sdk::Reason::MissingRow,
                    detail: format!(
                        "the checkpoint covers chain {} up to seq {}, which was not verified here",
                        cp.chain_id, cp.seq
                    ),
                })),
            }),
        }
    }
    Ok(())
}
