//! The zero-setup local database: when no database URL is given anywhere, the CLI (and the
//! console it serves) use a SQLite file in the platform's data directory
//! (`$XDG_DATA_HOME/governance/governance.db` on Linux, `~/Library/Application Support/…` on
//! macOS), say where it is, and migrate it. The demo keeps its generated audit secret beside
//! it, and other commands on the local database fall back to that secret, so `governance demo`
//! then `governance verify` works with nothing configured.

use std::path::PathBuf;

use gov_sdk::AuditSecret;
use gov_sdk::admin::Admin;

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

/// The local database, as opened by [`open`].
#[derive(Debug)]
pub(crate) struct Opened {
    /// Its URL.
    pub(crate) url: String,
    /// How many migrations opening it applied (0: it was current).
    pub(crate) migrated: u64,
}

/// Opens the local database: created (mode 600, in a directory of mode 700) when missing and
/// migrated when not current; announced on stderr (stdout stays clean for `--json`).
pub(crate) async fn open() -> anyhow::Result<Opened> {
    let path = database_path()?;
    // The file holds operator password hashes and the whole record: only its owner may read it.
    ensure_data_dir()?;
    let url = format!("sqlite://{}", path.display());
    let created = Admin::ensure_database(&url).await?;
    let admin = Admin::connect(&url).await?;
    let mut migrated = 0;
    if !admin.schema_is_current().await? {
        migrated = admin.migrate().await?.applied as u64;
    }
    admin.close().await;
    eprintln!(
        "governance: {} the local SQLite database {} (set GOVERNANCE_DATABASE_URL or --database-url to use Postgres)",
        if created { "created" } else { "using" },
        path.display()
    );
    Ok(Opened { url, migrated })
}

/// The secret kept for the local database, if one was generated (by `governance demo`).
pub(crate) fn kept_secret() -> anyhow::Result<Option<AuditSecret>> {
    let path = secret_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            AuditSecret::parse(&text).map_err(gov_sdk::Error::from)?,
        )),
        Err(_) => Ok(None),
    }
}
