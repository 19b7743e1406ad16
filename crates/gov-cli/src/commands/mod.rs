//! One module per command: each has a `run` whose body is an SDK call plus rendering.

pub(crate) mod approvals;
pub(crate) mod archive;
pub(crate) mod budget;
pub(crate) mod checkpoint;
pub(crate) mod completions;
pub(crate) mod console;
pub(crate) mod demo;
pub(crate) mod erase;
pub(crate) mod evidence;
pub(crate) mod export;
pub(crate) mod gateway;
pub(crate) mod import;
pub(crate) mod migrate;
pub(crate) mod notify;
pub(crate) mod policy;
pub(crate) mod prove;
pub(crate) mod report;
pub(crate) mod rotate;
pub(crate) mod siem;
pub(crate) mod tail;
pub(crate) mod verify;
pub(crate) mod witness;

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use gov_sdk::{AuditSecret, Governance};

use crate::cli::{Global, SecretArgs};

/// The database a command works on, resolved once from the arguments: the URL from the flag
/// or environment, or without one the local SQLite database in the platform's data directory
/// (created, migrated and announced when resolved). What depends on which it is (the local
/// database's kept secret, the migrations applied to open it) is asked of this value.
#[derive(Debug)]
pub(crate) struct Target {
    /// The database URL.
    pub(crate) url: String,
    /// Set when the local database is in use.
    local: Option<crate::local::Opened>,
}

impl Target {
    /// Resolves the database from `global`.
    pub(crate) async fn resolve(global: &Global) -> anyhow::Result<Self> {
        Ok(match &global.database_url {
            Some(url) => Self {
                url: url.clone(),
                local: None,
            },
            None => {
                let opened = crate::local::open().await?;
                Self {
                    url: opened.url.clone(),
                    local: Some(opened),
                }
            }
        })
    }

    /// The migrations applied to the local database when it was opened (created or upgraded),
    /// so a command does not then report a schema it just migrated as "current"; `None` when
    /// none were, or the database is not the local one.
    pub(crate) fn migrated_here(&self) -> Option<u64> {
        self.local.as_ref().map(|l| l.migrated).filter(|n| *n > 0)
    }

    /// The audit secret from `--audit-secret-file` or `GOVERNANCE_AUDIT_SECRET`; on the local
    /// database, the secret kept beside it (by `governance demo`) when neither is set.
    pub(crate) fn audit_secret(&self, args: &SecretArgs) -> anyhow::Result<AuditSecret> {
        let text = match &args.audit_secret_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the audit secret file {}", path.display()))
                .map_err(|e| anyhow::Error::new(gov_sdk::Error::Config(format!("{e:#}"))))?,
            None => match std::env::var(gov_sdk::ENV_AUDIT_SECRET) {
                Ok(text) => text,
                Err(_) => match self.local.as_ref().map(|_| crate::local::kept_secret()) {
                    Some(kept) => match kept? {
                        Some(secret) => return Ok(secret),
                        None => String::new(),
                    },
                    None => String::new(),
                },
            },
        };
        Ok(AuditSecret::parse(&text).map_err(gov_sdk::Error::from)?)
    }
}

/// Connects the SDK handle.
pub(crate) async fn connect(url: &str, secret: AuditSecret) -> anyhow::Result<Governance> {
    Ok(Governance::builder()
        .database_url(url)
        .audit_secret_parsed(secret)
        .previous_audit_secrets_from_env()
        .listen_url_from_env()
        // Operator tools make no LLM calls: a long `tail` or `console serve` would otherwise warn
        // that no LLM client is wrapped.
        .warn_on_no_wrappers(false)
        // Nor do they spool: an operator action while storage is out of reach fails (exit 3),
        // and no command adopts a service's spool into the chain.
        .spool(false)
        // Operator tools verify chains, whatever key sealed them (`verify` says which chains
        // the configured keys cannot check); anything they append checks its chain's head
        // first, as every SDK append does.
        .check_chains_on_connect(Vec::<String>::new())
        .connect()
        .await?)
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so the
/// file is either the old one or the whole new one.
pub(crate) fn write_atomically(path: &Path, text: &str, what: &str) -> anyhow::Result<()> {
    let mut file = AtomicFile::create(path, what)?;
    file.write_all(text.as_bytes())
        .map_err(|e| file.error(&e))?;
    file.commit()
}

/// The mode of every file the CLI writes (reports, exports, checkpoints): readable and writable
/// by its owner only, since they carry the record; share one deliberately with `chmod`.
#[cfg(unix)]
pub(crate) const OUTPUT_MODE: u32 = 0o600;

/// A file written through a temporary file beside it and renamed into place by
/// [`AtomicFile::commit`]; dropped uncommitted, the temporary file is removed and `path` is
/// left as it was. Writes are buffered, so it can stream a large output.
///
/// The temporary file is created by the `tempfile` crate: a random name, opened with
/// `O_CREAT | O_EXCL` (so a file or symlink planted at any name is never opened, let alone
/// followed), mode [`OUTPUT_MODE`]. The rename replaces whatever `path` names, a symlink
/// included, and never writes through it.
pub(crate) struct AtomicFile {
    path: std::path::PathBuf,
    dir: std::path::PathBuf,
    what: String,
    file: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
}

impl AtomicFile {
    /// Creates the temporary file for `path`; `what` names the content in errors.
    pub(crate) fn create(path: &Path, what: &str) -> anyhow::Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| config_error(format!("--output {} names no file", path.display())))?;
        let mut this = Self {
            path: path.to_path_buf(),
            dir,
            what: what.to_owned(),
            file: None,
        };
        let mut builder = tempfile::Builder::new();
        builder.suffix(".tmp");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            builder.permissions(std::fs::Permissions::from_mode(OUTPUT_MODE));
        }
        // `.report.json` + random characters + `.tmp`: beside the target, so the rename stays
        // on one file system.
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        builder.prefix(&prefix);
        let file = builder.tempfile_in(&this.dir).map_err(|e| this.error(&e))?;
        this.file = Some(std::io::BufWriter::with_capacity(1 << 16, file));
        Ok(this)
    }

    /// The error for a failed write, naming the file and the fix.
    pub(crate) fn error(&self, e: &std::io::Error) -> anyhow::Error {
        config_error(format!(
            "cannot write {} to {}: {e}; choose a writable path with --output",
            self.what,
            self.path.display()
        ))
    }

    /// Flushes, syncs and renames the temporary file into place (then syncs the directory, so
    /// the rename is durable too).
    pub(crate) fn commit(mut self) -> anyhow::Result<()> {
        let result = (|| {
            let Some(file) = self.file.take() else {
                return Err(std::io::Error::other("the file is closed"));
            };
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.as_file().sync_all()?;
            file.persist(&self.path).map_err(|e| e.error)?;
            #[cfg(unix)]
            std::fs::File::open(&self.dir)?.sync_all()?;
            Ok(())
        })();
        result.map_err(|e| self.error(&e))
    }
}

impl std::io::Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("the file is closed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

pub(crate) fn config_error(message: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::Config(message))
}
