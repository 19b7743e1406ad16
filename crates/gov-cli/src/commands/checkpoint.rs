//! `governance checkpoint`: sign each chain's head, store it and print it.

use std::process::ExitCode;

use gov_sdk::{CheckpointFile, Signer};

use crate::cli::{CheckpointArgs, CheckpointFormat, Global};
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
    let peers = args
        .witness
        .iter()
        .map(|w| super::witness::parse_peer(w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let format = if peers.is_empty() {
        args.format
    } else {
        CheckpointFormat::Note
    };
    let log_name = match (format, args.log_name.as_deref()) {
        (CheckpointFormat::Note, None) => {
            return Err(config(
                "a checkpoint note needs the log's name: pass --log-name example.com/governance (or set GOVERNANCE_LOG_NAME)".into(),
            ));
        }
        (_, name) => name.unwrap_or_default().to_owned(),
    };
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
    let mut notes = Vec::new();
    for c in &chains {
        let result = match format {
            CheckpointFormat::Json => gov.audit().checkpoint_with(c, &signer).await,
            CheckpointFormat::Note => gov
                .audit()
                .checkpoint_note(c, &signer, &log_name)
                .await
                .map(|(cp, note)| {
                    notes.push(note);
                    cp
                }),
        };
        match result {
            Ok(cp) => file.checkpoints.push(cp),
            Err(e) => {
                gov.close().await;
                return Err(e.into());
            }
        }
    }
    for cp in &mut notes {
        for peer in &peers {
            if let Err(e) = super::witness::push(&gov, peer, cp).await {
                gov.close().await;
                return Err(e);
            }
        }
    }
    gov.close().await;
    if format == CheckpointFormat::Note {
        return emit_notes(&notes, args.output.as_deref(), out);
    }
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

/// Prints (and writes) checkpoint notes: one after another, each ending with its signature
/// lines; with `--json`, one object of format `governance.checkpoint-notes.v1`.
fn emit_notes(
    notes: &[gov_sdk::NoteCheckpoint],
    output: Option<&std::path::Path>,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let text: String = notes.iter().map(|n| n.note.as_str()).collect();
    if let Some(path) = output {
        super::write_atomically(path, &text, "the checkpoint notes")?;
    }
    if out.json() {
        out.emit_json(&serde_json::json!({
            "format": gov_sdk::CHECKPOINT_NOTE_FORMAT,
            "checkpoints": notes,
        }));
    } else if output.is_some() {
        for n in notes {
            out.line(format!("signed {} at size {}", n.origin, n.size));
        }
    } else {
        out.line(text.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}
