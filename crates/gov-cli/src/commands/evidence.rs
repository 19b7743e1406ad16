//! `governance evidence export|verify`: the offline evidence bundle. Export gathers the rows,
//! checkpoint and cosignatures through the SDK (`Audit::evidence`) and the report through
//! gov-report, then seals the bundle; verify is `gov_sdk::bundle::verify`, which needs no
//! database and no secret.

use std::process::ExitCode;

use gov_report::ReportRequest;
use gov_sdk::bundle::{self, Bundle, Period, Pins};
use gov_sdk::note::{TYPE_COSIGNATURE_V1, TYPE_ED25519, Vkey};
use gov_sdk::{ChainId, ErrorKind, Signer};

use crate::cli::{EvidenceCommand, EvidenceExportArgs, EvidenceVerifyArgs, Global};
use crate::output::{Out, plural};
use crate::when::{DayEdge, parse_time};

use super::config_error;

pub(crate) async fn run(
    cmd: EvidenceCommand,
    global: &Global,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    match cmd {
        EvidenceCommand::Export(args) => export(args, global, out).await,
        EvidenceCommand::Verify(args) => verify(&args, out),
    }
}

async fn export(args: EvidenceExportArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let now = super::report::now()?;
    let from = args
        .from
        .as_deref()
        .map(|t| parse_time("--from", t, now, DayEdge::Start))
        .transpose()
        .map_err(config_error)?;
    let to = args
        .to
        .as_deref()
        .map(|t| parse_time("--to", t, now, DayEdge::End))
        .transpose()
        .map_err(config_error)?
        .unwrap_or(now);
    if from.is_some_and(|f| f >= to) {
        return Err(config_error(
            "--from must be before --to (the period runs from --from, included, to --to, excluded)"
                .into(),
        ));
    }
    ChainId::new(args.chain.as_str()).map_err(|e| {
        config_error(format!(
            "--chain {:?} is not a valid chain id: {e}",
            args.chain
        ))
    })?;
    let url = args.signing_key.as_deref().ok_or_else(|| {
        config_error("no signing key: pass the log's key with --signing-key file:///path (or env://VAR), or set GOVERNANCE_SIGNING_KEY".into())
    })?;
    let signer = Signer::load(url, "evidence").map_err(|e| config_error(e.to_string()))?;
    let log_name = args.log_name.as_deref().ok_or_else(|| {
        config_error("the bundle's checkpoint needs the log's name: pass --log-name example.com/governance (or set GOVERNANCE_LOG_NAME)".into())
    })?;
    let period = Period { from, to };
    let target = super::Target::resolve(global).await?;
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&target.url, secret).await?;
    let generator = format!("governance {}", env!("CARGO_PKG_VERSION"));
    let bar = crate::progress::spinner(out);
    bar.set_message("reading the period's events and proving them");
    let evidence = gov
        .audit()
        .evidence(&args.chain, &period, &signer, log_name)
        .await;
    let report = match &evidence {
        Ok(_) => {
            bar.set_message("verifying the chain and writing the report");
            let req = ReportRequest {
                from,
                to,
                chain: Some(args.chain.clone()),
                generated_at: now,
                generator: generator.clone(),
            };
            Some(gov_report::collect(&gov, &req, &|_| {}).await)
        }
        Err(_) => None,
    };
    bar.finish_and_clear();
    gov.close().await;
    let evidence = evidence?;
    let report = report.ok_or(gov_sdk::Error::Config("no report".into()))??;
    if report.verification.status != "clean" {
        let err = anyhow::anyhow!(
            "chain {} does not verify ({}): no bundle was written; run governance verify --chain {}",
            args.chain,
            report.verification.status,
            args.chain
        );
        out.error(&err, ErrorKind::Tampered, crate::EXIT_TAMPERED);
        return Ok(ExitCode::from(crate::EXIT_TAMPERED));
    }
    let report = serde_json::to_value(&report)?;
    let b = Bundle::assemble(&evidence, period, report, &generator, now);
    let file = b.seal(&signer)?;
    // The file is checked as a verifier will check it, keys pinned: a bundle that would not
    // verify (the chain moved between the pass and the report) is never written.
    let pins = Pins {
        log: Some(evidence.log.clone()),
        witnesses: evidence.witnesses.clone(),
    };
    let v = bundle::verify(&file, &pins).map_err(|e| {
        config_error(format!(
            "the bundle made does not verify ({}): {e}; events of the period may have been appended during the export: run it again",
            e.reason()
        ))
    })?;
    let text =
        String::from_utf8(file).map_err(|_| config_error("the bundle is not UTF-8".into()))?;
    super::write_atomically(&args.output, &text, "the evidence bundle")?;
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "written",
            "output": args.output.display().to_string(),
            "chain_id": v.chain_id,
            "events": v.events,
            "events_in_period": v.events_in_period,
            "first_seq": v.first_seq,
            "last_seq": v.last_seq,
            "tree_size": v.tree_size,
            "root": v.root,
            "log_vkey": v.log_vkey,
            "witnesses": v.witnesses,
        }));
    } else {
        out.line(format!(
            "wrote the evidence bundle {}: {} of chain {} (seqs {} to {}, {} in the period), proven at tree size {} with {}",
            args.output.display(),
            plural(v.events, "event", "events"),
            v.chain_id,
            v.first_seq,
            v.last_seq,
            v.events_in_period,
            v.tree_size,
            plural(v.witnesses.len() as u64, "witness cosignature", "witness cosignatures"),
        ));
        out.line(format!("log key: {}", v.log_vkey));
    }
    Ok(ExitCode::SUCCESS)
}

fn key(text: &str, sig_type: u8, flag: &str) -> anyhow::Result<Vkey> {
    let k = Vkey::parse(text).map_err(|e| config_error(format!("{flag}: {e}")))?;
    if k.sig_type != sig_type {
        return Err(config_error(format!(
            "{flag} {text:?} is a key of type {:#04x}, expected {sig_type:#04x}",
            k.sig_type
        )));
    }
    Ok(k)
}

fn verify(args: &EvidenceVerifyArgs, out: &Out) -> anyhow::Result<ExitCode> {
    let pins = Pins {
        log: args
            .log_key
            .as_deref()
            .map(|k| key(k, TYPE_ED25519, "--log-key"))
            .transpose()?,
        witnesses: args
            .witness_key
            .iter()
            .map(|k| key(k, TYPE_COSIGNATURE_V1, "--witness-key"))
            .collect::<anyhow::Result<_>>()?,
    };
    let bytes = std::fs::read(&args.file).map_err(|e| {
        config_error(format!(
            "cannot read the bundle {}: {e}",
            args.file.display()
        ))
    })?;
    match bundle::verify(&bytes, &pins) {
        Ok(v) => {
            if out.json() {
                let mut j = serde_json::to_value(&v)?;
                if let Some(o) = j.as_object_mut() {
                    o.insert("status".into(), "ok".into());
                }
                out.emit_json(&j);
            } else {
                out.line(format!(
                    "the evidence bundle verifies: {} of chain {} (seqs {} to {}, {} in the period), tree size {}, root {}",
                    plural(v.events, "event", "events"),
                    v.chain_id,
                    v.first_seq,
                    v.last_seq,
                    v.events_in_period,
                    v.tree_size,
                    v.root
                ));
                out.line("it proves:");
                for p in &v.proves {
                    out.line(format!("  - {p}"));
                }
                out.line("it does not prove:");
                for p in &v.does_not_prove {
                    out.line(format!("  - {p}"));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let err = anyhow::anyhow!("the evidence bundle does not verify ({}): {e}", e.reason());
            out.warn(format!("error: {err:#}"));
            if out.json() {
                out.emit_json(&serde_json::json!({
                    "status": "failed",
                    "kind": ErrorKind::Tampered.as_str(),
                    "exit_code": crate::EXIT_TAMPERED,
                    "reason": e.reason(),
                    "message": e.to_string(),
                }));
            }
            Ok(ExitCode::from(crate::EXIT_TAMPERED))
        }
    }
}
