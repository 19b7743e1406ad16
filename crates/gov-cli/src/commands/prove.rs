//! `governance prove`: inclusion and consistency proofs from a chain's Merkle tree, and their
//! offline check. The proofs are [`gov_sdk::admin::Admin`]'s; the check is
//! [`gov_sdk::tree::Proof::verify`], which needs no database and no secret.

use std::process::ExitCode;

use gov_sdk::admin::Admin;
use gov_sdk::tree::{ConsistencyProof, InclusionProof, Proof};
use gov_sdk::{ChainId, ErrorKind};

use crate::cli::{Global, ProveArgs};
use crate::output::Out;

pub(crate) async fn run(args: ProveArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.verify {
        return verify(path, out);
    }
    ChainId::new(args.chain.as_str()).map_err(|e| {
        super::config_error(format!(
            "--chain {:?} is not a valid chain id: {e}",
            args.chain
        ))
    })?;
    let target = super::Target::resolve(global).await?;
    let admin = Admin::connect(&target.url).await?;
    let result = match (args.seq, args.from, args.to) {
        (Some(seq), _, _) => admin
            .prove_inclusion(&args.chain, seq, args.size)
            .await
            .map(Proof::Inclusion),
        (None, Some(from), Some(to)) => admin
            .prove_consistency(&args.chain, from, to)
            .await
            .map(Proof::Consistency),
        _ => Err(gov_sdk::Error::Config(
            "say what to prove: --seq N, or --from S1 --to S2".into(),
        )),
    };
    admin.close().await;
    let proof = result?;
    if out.json() {
        out.emit_json(&proof.to_json());
    } else {
        match &proof {
            Proof::Inclusion(p) => inclusion_text(p, out),
            Proof::Consistency(p) => consistency_text(p, out),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hashes(label: &str, hs: &[[u8; 32]], out: &Out) {
    if hs.is_empty() {
        out.line(format!("{label:<11}(none)"));
    }
    for (i, h) in hs.iter().enumerate() {
        let l = if i == 0 { label } else { "" };
        out.line(format!("{l:<11}{}", hex(h)));
    }
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn inclusion_text(p: &InclusionProof, out: &Out) {
    out.line(format!(
        "row {} of chain {} is leaf {} of the tree of size {}",
        p.seq, p.chain_id, p.leaf_index, p.tree_size
    ));
    out.line(format!("{:<11}{}", "leaf hash", hex(&p.leaf_hash)));
    out.line(format!("{:<11}{}", "tree size", p.tree_size));
    out.line(format!("{:<11}{}", "root", hex(&p.root)));
    hashes("proof", &p.proof, out);
}

fn consistency_text(p: &ConsistencyProof, out: &Out) {
    out.line(format!(
        "the tree of size {} of chain {} is a prefix of the tree of size {}",
        p.from_size, p.chain_id, p.to_size
    ));
    out.line(format!("{:<11}{}", "from root", hex(&p.from_root)));
    out.line(format!("{:<11}{}", "to root", hex(&p.to_root)));
    hashes("proof", &p.proof, out);
}

fn verify(path: &std::path::Path, out: &Out) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        super::config_error(format!(
            "cannot read the proof file {}: {e}",
            path.display()
        ))
    })?;
    let proof = Proof::from_json(&text).map_err(|e| super::config_error(e.to_string()))?;
    let what = match &proof {
        Proof::Inclusion(p) => format!(
            "row {} of chain {} is leaf {} of the tree of size {} with root {}",
            p.seq,
            p.chain_id,
            p.leaf_index,
            p.tree_size,
            hex(&p.root)
        ),
        Proof::Consistency(p) => format!(
            "the tree of size {} of chain {} (root {}) is a prefix of the tree of size {} (root {})",
            p.from_size,
            p.chain_id,
            hex(&p.from_root),
            p.to_size,
            hex(&p.to_root)
        ),
    };
    match proof.verify() {
        Ok(()) => {
            if out.json() {
                out.emit_json(&serde_json::json!({ "status": "ok", "proves": what }));
            } else {
                out.line(format!("the proof holds: {what}"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let err = anyhow::anyhow!("the proof does not hold: {e}");
            out.error(&err, ErrorKind::Tampered, crate::EXIT_TAMPERED);
            Ok(ExitCode::from(crate::EXIT_TAMPERED))
        }
    }
}
