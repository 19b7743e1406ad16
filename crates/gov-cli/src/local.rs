//! The zero-setup local database: when no database URL is given anywhere, the CLI (and the
//! console it serves) use a SQLite file in the platform's data directory
//! (`$XDG_DATA_HOME/governance/governance.db` on Linux, `~/Library/Application Support/…` on
//! macOS), say where it is, and migrate it. The demo keeps its generated audit secret beside
//! it, and other commands on the local database fall back to that secret, so `governance demo`
//! then `governance verify` works with nothing configured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gov_sdk::AuditSecret;
use gov_sdk::admin::Admin;

/// Set once the local database is in use (so the kept local secret may be used).
static USING_LOCAL: AtomicBool = AtomicBool::new(false);

/// How many migrations this run applied to the local database (0: none, or not local).
static MIGRATED_HERE: AtomicU64 = AtomicU64::new(0);

/// The migrations this run applied to the local database when it created or upgraded it, so a
/// command does not then report a schema it just migrated as "current".
pub(crate) fn migrated_here() -> Option<u64> {
    match MIGRATED_HERE.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

fn config(message: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::Config(message))
}

/// The directory for governance's local files.
pub(crate) fn data_dir() -> anyhow::Result<PathBuf> {
    dirs::data_dir().map(|d| d.join("governance")).ok_or_else(|| {
        config(
            "no data directory to keep a local database in (HOME is not set); set GOVERNANCE_DATABASE_URL=sqlite:///path/to/governance.db or a postgres:// URL".into(),
        )
    })
}

/// The local database's path.
pub(crate) fn database_path() -> anyhow::Result<PathBuf> {
    Ok(data_dir()?.join("governance.db"))
}

/// Where a generated secret for the local database is kept (mode 600).
pub(crate) fn secret_path() -> anyhow::Result<PathBuf> {
    Ok(data_dir()?.join("demo-audit-secret"))
}

/// Whether this run uses the local database.
pub(crate) fn in_use() -> bool {
    USING_LOCAL.load(Ordering::Relaxed)
}

/// Creates the data directory (mode 700: it holds the local database and the demo's secret)
/// when missing; an existing one is left as it is.
pub(crate) fn ensure_data_dir() -> anyhow::Result<PathBuf> {
    let dir = data_dir()?;
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(&dir).map_err(|e| {
            config(format!(
                "cannot create {}: {e}; set GOVERNANCE_DATABASE_URL to a database you can write (and GOVERNANCE_AUDIT_SECRET)",
                dir.display()
            ))
        })?;
    }
    Ok(dir)
}

/// The local database's URL, created (mode 600, in a directory of mode 700) and migrated;
/// announced on stderr (stdout stays clean for `--json`).
pub(crate) async fn database_url() -> anyhow::Result<String> {
    let path = database_path()?;
    // The file holds operator password hashes and the whole record: only its owner may read it.
    ensure_data_dir()?;
    let url = format!("sqlite://{}", path.display());
    let created = Admin::ensure_database(&url).await?;
    let admin = Admin::connect(&url).await?;
    if !admin.schema_is_current().await? {
        let m = admin.migrate().await?;
        MIGRATED_HERE.store(m.applied as u64, Ordering::Relaxed);
    }
    admin.close().await;
    USING_LOCAL.store(true, Ordering::Relaxed);
    eprintln!(
        "governance: {} the local SQLite database {} (set GOVERNANCE_DATABASE_URL or --database-url to use Postgres)",
        if created { "created" } else { "using" },
        path.display()
    );
    Ok(url)
}

/// The secret kept for the local database, if one was generated (by `governance demo`).
pub(crate) fn kept_secret() -> anyhow::Result<Option<AuditSecret>> {
    if !in_use() {
        return Ok(None);
    }
    let path = secret_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            AuditSecret::parse(&text).map_err(gov_sdk::Error::from)?,
        )),
        Err(_) => Ok(None),
    }
}
