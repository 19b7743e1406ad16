//! `governance verify`: verify one chain or all of them.

use std::process::ExitCode;

use owo_colors::OwoColorize;

use crate::cli::{Global, VerifyArgs};
use crate::output::Out;

pub(crate) async fn run(args: VerifyArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let url = super::database_url(global)?;
    let secret = super::audit_secret(&args.secret)?;
    let gov = super::connect(&url, secret).await?;
    let report = match &args.chain {
        Some(c) => {
            let chain = gov.audit().verify_named(c).await?;
            gov_sdk::VerifyReport {
                events_checked: chain.events_checked,
                chains: vec![chain],
            }
        }
        None => gov.audit().verify_all().await?,
    };
    gov.close().await;
    let clean = report.is_clean();
    if out.json() {
        let mut v = serde_json::to_value(&report)?;
        v["status"] = serde_json::json!(if clean { "clean" } else { "tampered" });
        out.emit_json(&v);
    } else {
        for c in &report.chains {
            match &c.finding {
                None => out.line(format!(
                    "{} chain {}: {} events, seq 1..{}",
                    "ok".green().bold(),
                    c.chain_id,
                    c.events_checked,
                    c.head_seq
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
        let n = report.chains.len();
        out.line(format!(
            "verified {} event{} in {n} chain{}: {}",
            report.events_checked,
            if report.events_checked == 1 { "" } else { "s" },
            if n == 1 { "" } else { "s" },
            if clean {
                "clean".green().to_string()
            } else {
                "TAMPERED".red().bold().to_string()
            }
        ));
    }
    if let Some((chain, f)) = report.first_finding() {
        out.warn(format!(
            "tampered: chain {chain} seq {}: {}: {}",
            f.seq,
            f.reason.as_str(),
            f.detail
        ));
        return Ok(ExitCode::from(crate::EXIT_TAMPERED));
    }
    Ok(ExitCode::SUCCESS)
}
