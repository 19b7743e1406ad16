//! `governance erase`: destroy a data subject's keys (crypto-shredding) and record the erasure.

use std::process::ExitCode;

use crate::cli::{EraseArgs, Global};
use crate::output::Out;

pub(crate) async fn run(args: EraseArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&url, secret).await?;
    let r = gov
        .audit()
        .erase_subject(&args.subject, &args.operator, &args.reason)
        .await;
    gov.close().await;
    let keys = r?;
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "erased",
            "subject": args.subject,
            "keys_destroyed": keys,
        }));
    } else {
        out.line(format!(
            "erased subject {}: {keys} key(s) destroyed; its personal fields now read as {}",
            args.subject,
            gov_sdk::ERASED
        ));
    }
    Ok(ExitCode::SUCCESS)
}
