//! One module per command: each has a `run` whose body is an SDK call plus rendering.

pub(crate) mod budget;
pub(crate) mod checkpoint;
pub(crate) mod completions;
pub(crate) mod console;
pub(crate) mod demo;
pub(crate) mod migrate;
pub(crate) mod report;
pub(crate) mod rotate;
pub(crate) mod tail;
pub(crate) mod verify;

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use gov_sdk::{AuditSecret, Governance};

use crate::cli::{Global, SecretArgs};

/// The database URL from the flag or environment, or an error that says how to set one.
pub(crate) fn database_url(global: &Global) -> anyhow::Result<String> {
    global.database_url.clone().ok_or_else(|| {
        anyhow::Error::new(gov_sdk::Error::Config(
            "no database URL: pass --database-url or set GOVERNANCE_DATABASE_URL=postgres://user:password@host:5432/database".into(),
        ))
    })
}

/// The audit secret from `--audit-secret-file` or `GOVERNANCE_AUDIT_SECRET`.
pub(crate) fn audit_secret(args: &SecretArgs) -> anyhow::Result<AuditSecret> {
    let text = match &args.audit_secret_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the audit secret file {}", path.display()))
            .map_err(|e| anyhow::Error::new(gov_sdk::Error::Config(format!("{e:#}"))))?,
        None => std::env::var(gov_sdk::ENV_AUDIT_SECRET).unwrap_or_default(),
    };
    Ok(AuditSecret::parse(&text).map_err(gov_sdk::Error::from)?)
}

/// Connects the SDK handle.
pub(crate) async fn connect(url: &str, secret: AuditSecret) -> anyhow::Result<Governance> {
    Ok(Governance::builder()
        .database_url(url)
        .audit_secret_parsed(secret)
        .previous_audit_secrets_from_env()
        // Operator tools make no LLM calls: a long `tail` or `console serve` would otherwise warn
        // that no LLM client is wrapped.
        .warn_on_no_wrappers(false)
        .connect()
        .await?)
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so the
/// file is either the old one or the whole new one.
pub(crate) fn write_atomically(path: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    let fail = |e: std::io::Error| {
        config_error(format!(
            "cannot write {what} to {}: {e}; choose a writable path with --output",
            path.display()
        ))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| config_error(format!("--output {} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(())
}

fn config_error(message: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::Config(message))
}
