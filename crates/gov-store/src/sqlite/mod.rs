//! The embedded SQLite backend: one file (or memory), the same typed operations as Postgres.
//!
//! Writers take the database's write lock at the start of each transaction (`BEGIN
//! IMMEDIATE`), so a budget check and its reservation, or a chain head and the rows appended
//! after it, cannot interleave with another writer in this or any other process. WAL journal
//! with `synchronous=FULL`: a commit is on disk when it returns, as on Postgres. Times are
//! stored as microseconds since the Unix epoch, so they round-trip exactly (the audit seal
//! covers `occurred_at`).

mod audit;
mod budget;
mod console;
mod enforce;
mod gates;
mod keys;
mod llm;
mod policies;
mod retention;
mod signers;
mod subjects;
mod tree;
mod workflows;

pub(crate) use audit::{head_in, import_in};

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::{Listener, MigrateReport, Notice, Privileges, Result, StoreError, StoreOptions};

/// Migrations for SQLite, embedded from `migrations/sqlite`.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How often a listener looks for notifications written by other processes. Writes made
/// through this process wake its listeners at once.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long notifications are kept. A listener that falls further behind is told it lost
/// messages ([`Notice::Lost`]) and resyncs, as after a lost Postgres connection.
pub const NOTIFICATION_RETENTION: Duration = Duration::from_secs(600);

/// What the handles on one database file in this process share.
#[derive(Debug)]
struct Shared {
    /// Bumped after each committed write, so listeners in this process (on any handle on the
    /// same file) wake without waiting for their poll.
    wake: watch::Sender<u64>,
    /// Writers in this process take turns here before asking SQLite for the write lock, so
    /// they queue in order instead of sleeping in SQLite's busy handler; writers in other
    /// processes still meet at the file's lock.
    turn: Arc<tokio::sync::Mutex<()>>,
}

static SHARED: LazyLock<Mutex<HashMap<String, Arc<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn shared_for(key: &str) -> Arc<Shared> {
    let mut map = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key.to_owned())
        .or_insert_with(|| {
            Arc::new(Shared {
                wake: watch::Sender::new(0),
                turn: Arc::new(tokio::sync::Mutex::new(())),
            })
        })
        .clone()
}

/// A pool of connections to one SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    shared: Arc<Shared>,
    last_prune: Arc<AtomicI64>,
    /// The clock the rules run on.
    pub(crate) clock: crate::Clock,
    /// See [`crate::StoreOptions::call_timeout`].
    pub(crate) deadline: Option<Duration>,
}

/// Microseconds since the Unix epoch, now.
pub(crate) fn now_us() -> i64 {
    to_us(OffsetDateTime::now_utc())
}

/// A time as microseconds since the Unix epoch (Postgres keeps microseconds too).
pub(crate) fn to_us(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Microseconds since the Unix epoch as a UTC time.
pub(crate) fn from_us(us: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|_| StoreError::Corrupt("a stored time is out of range".into()))
}

/// The UTC day of a time in microseconds since the epoch, `YYYY-MM-DD` (the day budgets count
/// against).
pub(crate) fn day_of(us: i64) -> String {
    let d = from_us(us).unwrap_or(OffsetDateTime::UNIX_EPOCH).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The options for `url`: `sqlite://path`, `sqlite:path`, `sqlite::memory:`.
fn options(url: &str) -> Result<SqliteConnectOptions> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or("");
    let (path, _) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(StoreError::InvalidUrl(
            "it names no file; expected sqlite:///path/to/governance.db or sqlite::memory:".into(),
        ));
    }
    SqliteConnectOptions::from_str(url).map_err(StoreError::from)
}

fn is_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// The mode of a database file this crate creates: its owner's only. The file holds operator
/// password hashes and the whole record; SQLite gives its `-wal` and `-shm` files the same mode.
#[cfg(unix)]
pub(crate) const FILE_MODE: u32 = 0o600;

/// The mode of a directory this crate creates to hold a database file.
#[cfg(unix)]
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates the database file at `path` (empty: SQLite makes a database of it on first use) with
/// mode [`FILE_MODE`], and its missing directories with mode [`DIR_MODE`]. The file is created
/// exclusively (`O_CREAT|O_EXCL`, which never follows a symlink planted at the name); an
/// existing file is left as it is. Returns whether it was created.
fn create_file(path: &std::path::Path) -> Result<bool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(DIR_MODE);
        }
        builder.create(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the database directory {} ({})",
                dir.display(),
                e.kind()
            ))
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(FILE_MODE);
    }
    match options.open(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create the database file {} ({})",
            path.display(),
            e.kind()
        ))),
    }
}

/// Creates the database file (and its directory) when missing. Returns whether it was created.
pub(crate) async fn ensure_database(url: &str) -> Result<bool> {
    if is_memory(url) {
        return Ok(false);
    }
    let path = options(url)?.get_filename().to_path_buf();
    create_file(&path)
}

/// SQLite's "database is busy" or "locked" (primary codes 5 and 6).
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// Whether a connection coming back to the pool may be handed out again: not when a transaction
/// is still open on it. A transaction dropped after a failure is rolled back by a queued
/// `ROLLBACK`; when SQLite had already rolled it back itself (as it does on `SQLITE_FULL` and
/// some I/O errors), that `ROLLBACK` fails and the connection would stay marked as inside a
/// transaction, so every later `BEGIN IMMEDIATE` on it would fail: such a connection is closed
/// (the pool opens a fresh one), and closing it rolls back whatever SQLite still holds.
async fn clean_after_release(conn: &mut sqlx::SqliteConnection) -> bool {
    use sqlx::Connection as _;
    if !conn.is_in_transaction() {
        return true;
    }
    // Let a queued rollback run, then look again.
    if conn.ping().await.is_err() {
        return false;
    }
    if conn.is_in_transaction() {
        tracing::debug!("a SQLite connection left inside a failed transaction is closed");
        return false;
    }
    true
}

impl SqliteStore {
    /// Opens the database named by `url`; a missing file is created (mode 600, its missing
    /// directories 700) only with [`StoreOptions::create_if_missing`], else refused.
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Self> {
        let memory = is_memory(url);
        let connect = options(url)?;
        if !memory && !connect.get_filename().exists() {
            if !opts.create_if_missing {
                return Err(StoreError::NoSuchDatabase);
            }
            create_file(connect.get_filename())?;
        }
        // SQLite itself never creates a file here (whatever the URL's `mode=` says): a file
        // that vanished since the check above is an error, not a new database of default mode.
        let connect = connect
            .create_if_missing(memory)
            .foreign_keys(true)
            .busy_timeout(opts.acquire_timeout.max(Duration::from_secs(5)))
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Full);
        let key = if memory {
            // Each `sqlite::memory:` URL is its own database.
            format!("memory:{}", connect.get_filename().display())
        } else {
            let path: PathBuf = connect.get_filename().to_path_buf();
            std::fs::canonicalize(&path)
                .unwrap_or(path)
                .display()
                .to_string()
        };
        // An in-memory database lives as long as a connection to it: keep exactly one, forever.
        let options = SqlitePoolOptions::new()
            .max_connections(if memory {
                1
            } else {
                opts.max_connections.max(2)
            })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .acquire_timeout(opts.acquire_timeout)
            .test_before_acquire(false)
            .after_release(|conn, _| Box::pin(async move { Ok(clean_after_release(conn).await) }));
        // The first connection sets WAL mode, which SQLite may refuse at once (without waiting
        // for the busy timeout) while another process creates or migrates a new file: retry.
        let deadline =
            tokio::time::Instant::now() + opts.acquire_timeout.max(Duration::from_secs(5));
        let pool = loop {
            match options.clone().connect_with(connect.clone()).await {
                Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        Ok(Self {
            pool,
            shared: shared_for(&key),
            last_prune: Arc::new(AtomicI64::new(0)),
            clock: opts.clock.clone(),
            deadline: opts.call_timeout,
        })
    }

    /// The underlying pool (tests and embedding services).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction holding the database's write lock from its first statement,
    /// after this process's earlier writers (keep the turn until the transaction ends).
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<(
        tokio::sync::OwnedMutexGuard<()>,
        Transaction<'static, Sqlite>,
    )> {
        let turn = self.shared.turn.clone().lock_owned().await;
        Ok((turn, self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// Wakes this process's listeners after a committed write, and now and then prunes
    /// notifications past their retention.
    pub(crate) async fn written(&self) {
        self.shared.wake.send_modify(|v| *v = v.wrapping_add(1));
        let now = now_us();
        let last = self.last_prune.load(Ordering::Relaxed);
        if now - last > 60_000_000
            && self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let horizon = now - i64::try_from(NOTIFICATION_RETENTION.as_micros()).unwrap_or(0);
            // Best effort: a busy database just keeps its notifications a little longer.
            let _ = sqlx::query("DELETE FROM notifications WHERE at < ?")
                .bind(horizon)
                .execute(&self.pool)
                .await;
        }
    }

    /// One try at [`Backend::migrate`].
    async fn migrate_once(&self) -> Result<MigrateReport> {
        // sqlx takes no lock for SQLite migrations, so two processes migrating a new file at
        // once both applied the first migration and one failed ("table already exists"). All
        // migrations run in one `BEGIN EXCLUSIVE` transaction on one connection (each
        // migration a savepoint inside it): a second migrate waits for the first (up to the
        // busy timeout), then finds every migration applied.
        let mut conn = self.pool.acquire().await?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN EXCLUSIVE").await?;
        let before = applied_versions_in(&mut tx).await.unwrap_or_default();
        MIGRATOR.run(&mut *tx).await?;
        let after = applied_versions_in(&mut tx).await?;
        tx.commit().await?;
        Ok(crate::migrate_report(&before, &after, &MIGRATOR))
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        let mut conn = self.pool.acquire().await?;
        applied_versions_in(&mut conn).await
    }
}

/// The migrations applied to the database `conn` is on.
async fn applied_versions_in(conn: &mut sqlx::SqliteConnection) -> Result<Vec<i64>> {
    let rows = sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from))
        .collect()
}

impl Backend for SqliteStore {
    async fn migrate(&self) -> Result<MigrateReport> {
        // SQLite may answer BUSY at once (not after its busy timeout) while another process
        // migrates a new file: try again until it is done, for as long as a write would wait.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.migrate_once().await {
                Err(StoreError::Unavailable(m))
                    if m == crate::error::SQLITE_BUSY && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn check_schema(&self) -> Result<()> {
        crate::judge_schema(self.applied_versions().await, &MIGRATOR)
    }

    async fn ensure_app_role(&self, _role: &str, _password: Option<&str>) -> Result<()> {
        Err(StoreError::InvalidArgument(
            "SQLite has no roles, so there is no application role to create; use Postgres for least-privilege roles (see docs/storage.md)".into(),
        ))
    }

    async fn privileges(&self) -> Result<Privileges> {
        // Whoever can write the file can change anything in it: the triggers refuse updates
        // and deletes, but can be dropped. Reported as it is.
        Ok(Privileges {
            role: "sqlite file".into(),
            superuser: false,
            owns_audit_table: true,
            can_update: false,
            can_delete: false,
            can_truncate: false,
            has_roles: false,
        })
    }

    async fn listen(&self, channels: &[&str]) -> Result<Listener> {
        let last_id: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'notifications'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(Listener::sqlite(Poller {
            pool: self.pool.clone(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            last_id: last_id.unwrap_or(0),
            buffer: VecDeque::new(),
            wake: self.shared.wake.subscribe(),
        }))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn instance(&self) -> Result<crate::Instance> {
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM governance_instance")
            .fetch_one(&self.pool)
            .await?;
        let file: Option<String> =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_optional(&self.pool)
                .await?;
        let locator = match file.filter(|f| !f.is_empty()) {
            // The same file under another name (a symlink, a relative path) is the same place.
            Some(f) => {
                let path = std::fs::canonicalize(&f).unwrap_or_else(|_| PathBuf::from(&f));
                format!("sqlite:{}", path.display())
            }
            None => "sqlite:memory".to_owned(),
        };
        Ok(crate::Instance { id, locator })
    }
}

/// A listener on SQLite: reads the notification table by id, woken by this process's writes
/// and otherwise every [`POLL_INTERVAL`].
pub(crate) struct Poller {
    pool: SqlitePool,
    channels: Vec<String>,
    last_id: i64,
    buffer: VecDeque<Notice>,
    wake: watch::Receiver<u64>,
}

impl Poller {
    pub(crate) async fn recv(&mut self) -> Result<Notice> {
        loop {
            if let Some(n) = self.buffer.pop_front() {
                return Ok(n);
            }
            self.wake.borrow_and_update();
            let rows: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT id, channel, payload FROM notifications WHERE id > ? ORDER BY id LIMIT 512",
            )
            .bind(self.last_id)
            .fetch_all(&self.pool)
            .await?;
            if let Some((first, _, _)) = rows.first() {
                // Ids are given in commit order (one writer at a time, and a rolled-back insert
                // gives its id back), so a hole means rows were pruned before they were read.
                if *first > self.last_id + 1 && self.last_id > 0 {
                    self.buffer.push_back(Notice::Lost);
                }
            }
            for (id, channel, payload) in rows {
                self.last_id = id;
                if self.channels.contains(&channel) {
                    self.buffer.push_back(Notice::Message { channel, payload });
                }
            }
            if !self.buffer.is_empty() {
                continue;
            }
            // Nothing new: wait for a local write or the next poll.
            let _ = tokio::time::timeout(POLL_INTERVAL, self.wake.changed()).await;
        }
    }
}
