//! `governance rotate-chain-key`: append a key-rotation marker to each chain.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use gov_sdk::AuditSecret;

use crate::cli::{Global, RotateArgs};
use crate::output::Out;

/// Environment variable holding the new secret.
pub(crate) const ENV_NEW_SECRET: &str = "GOVERNANCE_AUDIT_SECRET_NEW";

fn config(message: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::Config(message))
}

/// The new secret: `GOVERNANCE_AUDIT_SECRET_NEW`, else a prompt on a terminal, else the first
/// line of standard input.
fn new_secret() -> anyhow::Result<AuditSecret> {
    let text = match std::env::var(ENV_NEW_SECRET) {
        Ok(t) => t,
        Err(_) if std::io::stdin().is_terminal() => {
            rpassword::prompt_password("New audit secret (hex or base64): ")
                .map_err(|e| config(format!("cannot read the new secret: {e}")))?
        }
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                config(format!(
                    "cannot read the new secret from standard input: {e}"
                ))
            })?;
            line
        }
    };
    if text.trim().is_empty() {
        return Err(config(format!(
            "no new audit secret: set {ENV_NEW_SECRET} or pipe it on standard input (`openssl rand -hex 32 | governance rotate-chain-key`)"
        )));
    }
    AuditSecret::parse(&text).map_err(|e| config(format!("the new audit secret is refused: {e}")))
}

pub(crate) async fn run(args: RotateArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    if let Some(c) = &args.chain {
        gov_sdk::ChainId::new(c).map_err(gov_sdk::Error::from)?;
    }
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let secret = target.audit_secret(&args.secret)?;
    let new = new_secret()?;
    let gov = super::connect(&url, secret).await?;
    let chains = match &args.chain {
        Some(c) => vec![c.clone()],
        None => gov.audit().chain_ids().await?,
    };
    if chains.is_empty() {
        gov.close().await;
        return Err(config(
            "there is no chain to rotate: the database holds no audit events".into(),
        ));
    }
    // Never rotate over a problem: the marker would sit on top of it. Nor rotate a chain the
    // current secret cannot check: the marker would be sealed with a key that never sealed it.
    for c in &chains {
        let report = gov.audit().verify_named(c).await?;
        if !report.is_clean() {
            gov.close().await;
            let code = super::verify::conclude(out, std::slice::from_ref(&report));
            out.warn(format!("chain {c} is not clean: nothing was rotated"));
            return Ok(code);
        }
    }
    let old_key = gov.audit().key_id().to_owned();
    let mut rotated = Vec::new();
    for c in &chains {
        let at = gov
            .audit()
            .rotate_key(c, &new, &args.operator, &args.reason)
            .await?;
        rotated.push(serde_json::json!({ "chain": c, "seq": at.seq }));
        if !out.json() {
            out.line(format!(
                "rotated chain {c} at seq {}: {old_key} -> {}",
                at.seq,
                new.chain_key().key_id()
            ));
        }
    }
    gov.close().await;
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "rotated",
            "from_key_id": old_key,
            "to_key_id": new.chain_key().key_id(),
            "chains": rotated,
        }));
    } else {
        out.line(
            "next: run every writer with GOVERNANCE_AUDIT_SECRET=<the new secret> and GOVERNANCE_AUDIT_SECRET_PREVIOUS=<the old one>; a row sealed with the old key from now on fails verification as a retired key",
        );
    }
    Ok(ExitCode::SUCCESS)
}
