//! The store's error enum. sqlx errors are mapped here, at the boundary; their text, which can
//! hold SQL, is never shown.

use thiserror::Error;

/// A storage failure, classified so callers can act on it (exit codes, fail-closed decisions).
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database URL could not be used.
    #[error("the database URL is not valid: {0}")]
    InvalidUrl(String),
    /// The server could not be reached (refused, timed out, closed, shutting down).
    #[error(
        "the database is unreachable ({0}); check that it is running and the URL's host and port"
    )]
    Unavailable(String),
    /// The disk holding the database is full (SQLite's `SQLITE_FULL`, Postgres's
    /// `disk_full`): storage is out of reach for writes until space is freed, so observation
    /// is spooled as in any outage.
    #[error(
        "storage unavailable: the disk holding the database is full; free space on it (writes resume by themselves once there is room)"
    )]
    DiskFull,
    /// The server refused the credentials.
    #[error("the database refused the credentials in the URL; check the user name and password")]
    AuthFailed,
    /// The database named in the URL does not exist.
    #[error(
        "the database named in the URL does not exist; create it (for a SQLite file, `governance migrate` creates it) or fix the URL"
    )]
    NoSuchDatabase,
    /// The schema is missing or older than this build.
    #[error("the database is not migrated for this version ({0}); run `governance migrate`")]
    NotMigrated(String),
    /// The connected role lacks a privilege it needs.
    #[error("the database role lacks a privilege: {0}")]
    PermissionDenied(String),
    /// A write conflicted with the chain's constraints (a fork or a duplicate).
    #[error("the write conflicts with the audit chain: {0}")]
    Conflict(String),
    /// A chain's head is not where an import found it when it checked the file: something else
    /// appended to the chain in between. Nothing of the chain was written.
    #[error(
        "chain {chain} was appended to after the import checked it (its head moved from seq {expected} to seq {found}); nothing of it was imported"
    )]
    ChainMoved {
        /// The chain.
        chain: String,
        /// The head seq the import checked.
        expected: i64,
        /// The head seq found when it began writing.
        found: i64,
    },
    /// A connection pooler between this process and the database (PgBouncer, a cloud proxy)
    /// refuses what the connection needs, or hands consecutive statements to different server
    /// sessions where they must share one. A configuration to change, never a data error.
    #[error(
        "the connection pooler in front of the database cannot carry this connection: {0} (docs/scaling.md, \"Connection poolers\")"
    )]
    Pooler(String),
    /// An argument was refused before it reached the database.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A stored value could not be read back.
    #[error("a stored value could not be decoded: {0}")]
    Corrupt(String),
    /// Any other database error. Its text (which can quote SQL, constraint names or values) is
    /// neither displayed nor exposed as `source()`, so no error chain prints it; it is logged at
    /// debug level where it occurs, and kept here for programmatic inspection.
    #[error("database error{}", code.as_deref().map(|c| format!(" (code {c})")).unwrap_or_default())]
    Database {
        /// The SQLSTATE, when the server gave one.
        code: Option<String>,
        /// The underlying error. Not a `source()`: never printed by error chains.
        inner: Box<sqlx::Error>,
    },
}

impl StoreError {
    /// Whether the failure means storage is (for now) out of reach, as opposed to a refusal.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::DiskFull)
    }
}

/// What [`StoreError::Unavailable`] says when a SQLite file stayed locked by another writer.
pub(crate) const SQLITE_BUSY: &str = "the database file stayed locked by another writer";

/// `Result` with [`enum@StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Configuration(src) => {
                let msg = src.to_string();
                // Never echo anything that could be the URL or hold a password.
                if msg.contains("://") || msg.contains('@') {
                    Self::InvalidUrl("it could not be parsed".into())
                } else {
                    Self::InvalidUrl(msg)
                }
            }
            sqlx::Error::Io(io) => Self::Unavailable(io.kind().to_string()),
            sqlx::Error::Tls(_) => Self::Unavailable("TLS handshake failed".into()),
            sqlx::Error::PoolTimedOut => {
                Self::Unavailable("timed out waiting for a connection".into())
            }
            sqlx::Error::PoolClosed => Self::Unavailable("the connection pool is closed".into()),
            sqlx::Error::WorkerCrashed => Self::Unavailable("the connection worker stopped".into()),
            sqlx::Error::Protocol(_) => Self::Unavailable("the connection broke".into()),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                Self::Corrupt("a column had an unexpected type or value".into())
            }
            sqlx::Error::Database(ref db)
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() =>
            {
                // SQLite's extended result codes (https://sqlite.org/rescode.html).
                let code = db.code().map(|c| c.into_owned());
                let primary = code
                    .as_deref()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                match (code.as_deref(), primary) {
                    (Some("2067" | "1555"), _) => Self::Conflict(
                        "a row with this seq, predecessor or event id already exists".into(),
                    ),
                    // RAISE(ABORT) in a trigger: an append-only or forward-only guard.
                    (Some("1811"), _) => Self::PermissionDenied(
                        "the table refuses this change (it is append-only)".into(),
                    ),
                    (_, Some(13)) => Self::DiskFull,
                    (_, Some(5 | 6)) => Self::Unavailable(SQLITE_BUSY.into()),
                    (_, Some(14)) => Self::Unavailable(
                        "the database file cannot be opened; check the path and its directory's permissions".into(),
                    ),
                    (_, Some(8)) => Self::PermissionDenied(
                        "the database file is read-only for this process".into(),
                    ),
                    (_, Some(26 | 11)) => {
                        Self::Corrupt("the file is not a governance SQLite database".into())
                    }
                    (_, Some(1)) if db.message().starts_with("no such table") => {
                        Self::NotMigrated("a governance table is missing".into())
                    }
                    _ => {
                        tracing::debug!(error = %e, "database error");
                        Self::Database {
                            code,
                            inner: Box::new(e),
                        }
                    }
                }
            }
            sqlx::Error::Database(ref db) => {
                let code = db.code().map(|c| c.into_owned());
                match code.as_deref() {
                    Some("28P01" | "28000") => Self::AuthFailed,
                    // disk_full, out_of_memory
                    Some("53100") => Self::DiskFull,
                    Some("3D000") => Self::NoSuchDatabase,
                    Some("42P01") => Self::NotMigrated("a governance table is missing".into()),
                    // A pooler refusing a startup parameter it does not know (PgBouncer says
                    // "unsupported startup parameter: NAME"; only the name is repeated).
                    Some("08P01") if db.message().starts_with("unsupported startup parameter") => {
                        let name = db
                            .message()
                            .rsplit(':')
                            .next()
                            .map(str::trim)
                            .filter(|n| {
                                !n.is_empty()
                                    && n.len() <= 64
                                    && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            })
                            .unwrap_or("unknown");
                        Self::Pooler(format!(
                            "it refuses the connection parameter `{name}`; remove it from the URL, or list it in the pooler's ignore_startup_parameters"
                        ))
                    }
                    // invalid_sql_statement_name / duplicate_prepared_statement on the driver's
                    // own statements: a pooler in transaction mode moved this connection to
                    // another server session between two statements.
                    Some("26000" | "42P05") if db.message().contains("sqlx_s_") => Self::Pooler(
                        "the connection's prepared statements vanished or collided between calls, as behind a pooler in transaction mode (PgBouncer pool_mode=transaction before 1.21); use session mode, PgBouncer 1.21 or later with max_prepared_statements, or a direct connection".into(),
                    ),
                    Some("42501") => Self::PermissionDenied(
                        "the statement needs a privilege this role does not have".into(),
                    ),
                    // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
                    Some(c)
                        if c.starts_with("08")
                            || matches!(c, "57P01" | "57P02" | "57P03" | "53300") =>
                    {
                        Self::Unavailable(format!("SQLSTATE {c}"))
                    }
                    // read_only_sql_transaction: a standby, or a primary made read-only
                    // (demoted, fenced): writes need another server, nothing is wrong with
                    // the data.
                    Some("25006") => Self::Unavailable(
                        "the server is read-only (a standby, or a primary being demoted): writes need the primary".into(),
                    ),
                    // query_canceled: a statement_timeout, or cancelled by an operator.
                    Some("57014") => Self::Unavailable(
                        "the statement was cancelled (statement_timeout, or by an operator)".into(),
                    ),
                    Some("23505") => Self::Conflict(
                        "a row with this seq, predecessor or event id already exists".into(),
                    ),
                    _ => {
                        tracing::debug!(error = %e, "database error");
                        Self::Database {
                            code,
                            inner: Box::new(e),
                        }
                    }
                }
            }
            e => {
                tracing::debug!(error = %e, "database error");
                Self::Database {
                    code: None,
                    inner: Box::new(e),
                }
            }
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            sqlx::migrate::MigrateError::VersionMissing(v) => Self::NotMigrated(format!(
                "the database has migration {v}, which this build does not know; use a newer governance"
            )),
            sqlx::migrate::MigrateError::VersionMismatch(v) => {
                Self::NotMigrated(format!("migration {v} was changed after it was applied"))
            }
            other => Self::NotMigrated(other.to_string()),
        }
    }
}
