//! `governance checkpoint`: sign each chain's head, store it and print it.

use std::process::ExitCode;

use gov_sdk::{CheckpointFile, Signer};

use crate::cli::{CheckpointArgs, Global};
use crate::output::Out;

fn config(message: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::Config(message))
}

pub(crate) async fn run(
    args: CheckpointArgs,
    global: &Global,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    if let Some(c) = &args.chain {
        gov_sdk::ChainId::new(c).map_err(gov_sdk::Error::from)?;
    }
    let url = args.signing_key.as_deref().ok_or_else(|| {
        config("no signing key: pass --signing-key file:///path (or env://VAR), or set GOVERNANCE_SIGNING_KEY".into())
    })?;
    // Here a key that cannot be loaded is an error: a checkpoint is only worth its signature.
    let signer = Signer::load(url, "checkpoint").map_err(|e| config(format!("{e}")))?;
    let target = super::Target::resolve(global).await?;
    let db = target.url.clone();
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&db, secret).await?;
    let chains = match &args.chain {
        Some(c) => vec![c.clone()],
        None => gov.audit().chain_ids().await?,
    };
    if chains.is_empty() {
        gov.close().await;
        return Err(config(
            "there is no chain to checkpoint: the database holds no audit events".into(),
        ));
    }
    let mut file = CheckpointFile {
        format: gov_sdk::CHECKPOINT_FILE_FORMAT.to_owned(),
        checkpoints: Vec::new(),
    };
    for c in &chains {
        let cp = gov.audit().checkpoint_with(c, &signer).await;
        let cp = match cp {
            Ok(cp) => cp,
            Err(e) => {
                gov.close().await;
                return Err(e.into());
            }
        };
        file.checkpoints.push(cp);
    }
    gov.close().await;
    let text = serde_json::to_string_pretty(&file)? + "\n";
    if let Some(path) = &args.output {
        super::write_atomically(path, &text, "the checkpoints")?;
    }
    if out.json() {
        out.emit_json(&serde_json::to_value(&file)?);
    } else if args.output.is_some() {
        for cp in &file.checkpoints {
            out.line(format!(
                "signed chain {} at seq {} with {}",
                cp.chain_id, cp.seq, cp.signer_key_id
            ));
        }
    } else {
        out.line(text.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}
