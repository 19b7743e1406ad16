//! `governance archive`: retention. Plans the segment of a chain's oldest rows, verifies the
//! chain, writes the segment to a new file in the export format (synced, then renamed into
//! place), and only then records the cut and removes the rows
//! ([`gov_sdk::admin::retention`]). The chain is verified again afterwards, from the cut.

use std::io::Write;
use std::process::ExitCode;

use gov_sdk::admin::Admin;
use gov_sdk::admin::retention::{self, CutRecord, Segment};
use gov_sdk::admin::transfer::{Export, TransferError};
use sha2::{Digest as _, Sha256};

use crate::cli::{ArchiveArgs, Global};
use crate::output::Out;
use crate::when::{DayEdge, parse_time};

pub(crate) async fn run(args: ArchiveArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    gov_sdk::ChainId::new(args.chain.as_str()).map_err(|e| {
        super::config_error(format!(
            "--chain {:?} is not a valid chain id: {e}",
            args.chain
        ))
    })?;
    if let Some(path) = &args.output
        && std::fs::symlink_metadata(path).is_ok()
    {
        return Err(super::config_error(format!(
            "--output {} exists: an archive is never written over another file; choose a new name",
            path.display()
        )));
    }
    let now = time::OffsetDateTime::now_utc();
    let oldest_allowed = now - time::Duration::days(i64::from(args.min_age_days));
    let before = match &args.before {
        Some(b) => parse_time("--before", b, now, DayEdge::Start)
            .map_err(super::config_error)?
            .min(oldest_allowed),
        None => oldest_allowed,
    };
    let target = super::Target::resolve(global).await?;
    let admin = Admin::connect(&target.url).await?;
    let result = archive(&args, &target, &admin, before, out).await;
    admin.close().await;
    result
}

async fn archive(
    args: &ArchiveArgs,
    target: &super::Target,
    admin: &Admin,
    before: time::OffsetDateTime,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let segment = retention::plan(admin, &args.chain, before, args.through_seq).await?;
    if args.dry_run {
        say_plan(&segment, before, out);
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(path), Some(reason)) = (&args.output, &args.reason) else {
        return Err(super::config_error(
            "--output and --reason are needed unless --dry-run".into(),
        ));
    };
    // Nothing happens to a chain that does not verify clean.
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&target.url, secret).await?;
    let result = archive_verified(args, admin, &gov, &segment, path, reason, out).await;
    gov.close().await;
    result
}

async fn archive_verified(
    args: &ArchiveArgs,
    admin: &Admin,
    gov: &gov_sdk::Governance,
    segment: &Segment,
    path: &std::path::Path,
    reason: &str,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let report = gov.audit().verify_named(&args.chain).await?;
    match report.verdict() {
        gov_sdk::Verdict::Clean => {}
        gov_sdk::Verdict::Tampered => {
            if let Some(f) = &report.finding {
                out.warn(format!(
                    "chain {} is TAMPERED at seq {} ({}): {}; nothing was archived",
                    report.chain_id,
                    f.seq,
                    f.reason.as_str(),
                    f.detail
                ));
            }
            return Ok(ExitCode::from(crate::EXIT_TAMPERED));
        }
        gov_sdk::Verdict::Unverifiable => {
            return Err(super::config_error(format!(
                "chain {} holds rows the configured audit secret cannot check: configure its secret (GOVERNANCE_AUDIT_SECRET_PREVIOUS for an older one); nothing was archived",
                args.chain
            )));
        }
    }
    // The archive, whole and synced before anything is removed.
    let export = Export::prepare(admin, std::slice::from_ref(&args.chain))
        .await?
        .through(admin, segment.through_seq)
        .await?;
    let row_hmac = export
        .chains()
        .first()
        .map(|h| h.head_hmac.clone())
        .ok_or_else(|| super::config_error("the export holds no chain".into()))?;
    let mut file = Hashing {
        inner: super::AtomicFile::create(path, "the archive")?,
        hash: Sha256::new(),
    };
    let progress = crate::progress::Transfer::new(out, "archiving");
    let written = export.write(admin, &mut file, &progress).await;
    let written = match written {
        Ok(w) => w,
        Err(TransferError::Write(e)) => return Err(file.inner.error(&e)),
        Err(e) => return Err(e.into()),
    };
    let sha256 = hex::encode(file.hash.finalize());
    file.inner.commit()?;
    let (removed, record_seq) = retention::cut(
        gov,
        segment,
        &CutRecord {
            row_hmac: &row_hmac,
            archive_sha256: &sha256,
            operator: &args.operator,
            reason,
        },
    )
    .await?;
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "archived",
            "chain": segment.chain_id,
            "from_seq": segment.starts_after + 1,
            "through_seq": segment.through_seq,
            "rows_archived": written.rows,
            "rows_removed": removed,
            "output": path.display().to_string(),
            "archive_sha256": sha256,
            "record_seq": record_seq,
        }));
    } else {
        out.line(format!(
            "archived chain {} seq {}..{} ({} rows) to {}\n  sha256 {sha256}\n  removed {removed} rows, recorded as the chain.archived event at seq {record_seq}; `governance verify --chain {}` checks the rest from seq {}",
            segment.chain_id,
            segment.starts_after + 1,
            segment.through_seq,
            written.rows,
            path.display(),
            segment.chain_id,
            segment.through_seq + 1,
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn say_plan(s: &Segment, before: time::OffsetDateTime, out: &Out) {
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "planned",
            "chain": s.chain_id,
            "from_seq": s.starts_after + 1,
            "through_seq": s.through_seq,
            "rows": s.rows(),
            "head_seq": s.head_seq,
            "before": before.to_string(),
        }));
    } else {
        out.line(format!(
            "would archive chain {} seq {}..{} ({} rows, every one before {before}); the chain's head is at seq {}",
            s.chain_id,
            s.starts_after + 1,
            s.through_seq,
            s.rows(),
            s.head_seq
        ));
    }
}

/// A writer that hashes what it passes on.
struct Hashing {
    inner: super::AtomicFile,
    hash: Sha256,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
