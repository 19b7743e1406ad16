//! A backend-neutral test database: the same test runs against PostgreSQL or SQLite.
//!
//! [`TestStore::new`] gives a fresh, migrated database of the chosen [`TestBackend`]: a
//! [`TestDb`] clone of the Postgres template, or a SQLite file of its own in a directory under
//! the system's temporary directory, removed when the `TestStore` is dropped. Raw SQL runs
//! through [`TestStore::exec`] (the schema's guards apply, as for any careless tool) or
//! [`TestStore::tamper`] (the guards bypassed, as an attacker with database access would). This
//! module knows connections and trigger bypasses, never the governance schema's semantics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::TestDb;

/// Which storage backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// A database cloned from the migrated Postgres template (see [`TestDb`]).
    Postgres,
    /// An embedded SQLite file, migrated when created.
    Sqlite,
    /// A Postgres database as for [`TestBackend::Postgres`], reached through a private
    /// PgBouncer in session mode (see [`crate::Bouncer`]). Its [`TestStore::app_url`] is refused
    /// by the pooler (the role is switched with a startup parameter PgBouncer does not carry).
    PgBouncer,
}

impl TestBackend {
    /// `postgres` or `sqlite`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
            Self::PgBouncer => "pgbouncer",
        }
    }
}

impl std::fmt::Display for TestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fresh, migrated database of either backend for one test; removed when dropped.
#[derive(Debug)]
pub struct TestStore {
    inner: Inner,
    /// The pooler in front of a Postgres database, and the owner's URL through it.
    pooled: Option<(crate::Bouncer, String)>,
}

#[derive(Debug)]
enum Inner {
    Postgres(TestDb),
    Sqlite(SqliteFile),
}

/// A SQLite database file in a directory of its own, removed on drop.
#[derive(Debug)]
struct SqliteFile {
    dir: PathBuf,
    path: PathBuf,
    url: String,
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        // Handles still open on the file keep working on Unix; the directory goes either way.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TestStore {
    /// A fresh database of `backend`, migrated and ready for `Governance::connect`.
    pub async fn new(backend: TestBackend) -> Self {
        let inner = match backend {
            TestBackend::Postgres | TestBackend::PgBouncer => Inner::Postgres(TestDb::new().await),
            TestBackend::Sqlite => Inner::Sqlite(new_sqlite().await),
        };
        let pooled = match (&inner, backend) {
            (Inner::Postgres(db), TestBackend::PgBouncer) => {
                let server = crate::server_url();
                let bouncer = tokio::task::spawn_blocking(move || {
                    crate::Bouncer::start(&server, crate::PoolMode::Session, 20)
                })
                .await
                .expect("start pgbouncer");
                let through = bouncer.url_for(db.url());
                Some((bouncer, through))
            }
            _ => None,
        };
        Self { inner, pooled }
    }

    /// The backend of this database.
    pub fn backend(&self) -> TestBackend {
        match self.inner {
            Inner::Postgres(_) if self.pooled.is_some() => TestBackend::PgBouncer,
            Inner::Postgres(_) => TestBackend::Postgres,
            Inner::Sqlite(_) => TestBackend::Sqlite,
        }
    }

    /// The URL of the database as its owner: the Postgres superuser, or the SQLite file
    /// (`sqlite:///abs/path/governance.db`).
    pub fn url(&self) -> &str {
        if let Some((_, through)) = &self.pooled {
            return through;
        }
        match &self.inner {
            Inner::Postgres(db) => db.url(),
            Inner::Sqlite(f) => &f.url,
        }
    }

    /// The URL an agent's service connects with: the least-privilege application role on
    /// Postgres. SQLite has no roles (whoever can open the file can write it), so there this
    /// is [`Self::url`].
    pub fn app_url(&self) -> String {
        if let (Some((bouncer, _)), Inner::Postgres(db)) = (&self.pooled, &self.inner) {
            return bouncer.url_for(&db.app_url());
        }
        match &self.inner {
            Inner::Postgres(db) => db.app_url(),
            Inner::Sqlite(f) => f.url.clone(),
        }
    }

    /// The Postgres test database, when this is one (for backend-specific checks).
    pub fn postgres(&self) -> Option<&TestDb> {
        match &self.inner {
            Inner::Postgres(db) => Some(db),
            Inner::Sqlite(_) => None,
        }
    }

    /// The SQLite file, when this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Postgres(_) => None,
            Inner::Sqlite(f) => Some(&f.path),
        }
    }

    /// Runs one statement as the owner, with every trigger in force; the rows it touched, or
    /// the database's error message.
    pub async fn exec(&self, sql: &str) -> Result<u64, String> {
        let stmt = sqlx::AssertSqlSafe(sql.to_owned());
        match &self.inner {
            Inner::Postgres(db) => {
                let pool = db.admin_pool().await;
                let r = sqlx::query(stmt).execute(&pool).await;
                pool.close().await;
                r.map(|d| d.rows_affected()).map_err(|e| e.to_string())
            }
            Inner::Sqlite(f) => {
                let pool = sqlite_pool(&f.path).await;
                let r = sqlx::query(stmt).execute(&pool).await;
                pool.close().await;
                r.map(|d| d.rows_affected()).map_err(|e| e.to_string())
            }
        }
    }

    /// Runs `statements` in one transaction with the append-only guards bypassed, as an
    /// attacker with database access would, and panics naming the statement that fails. On
    /// Postgres: `SET LOCAL session_replication_role = replica`. On SQLite: the guarding
    /// triggers (those that `RAISE`) are dropped, the statements run, and the triggers are
    /// created again from their stored text, all inside the transaction, so no other
    /// connection ever sees the schema unguarded.
    pub async fn tamper(&self, statements: &[&str]) {
        match &self.inner {
            Inner::Postgres(db) => db.tamper(statements).await,
            Inner::Sqlite(f) => {
                let pool = sqlite_pool(&f.path).await;
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .expect("begin immediate");
                let guards: Vec<(String, String)> = sqlx::query_as(
                    "SELECT name, sql FROM sqlite_master \
                     WHERE type = 'trigger' AND sql LIKE '%RAISE(%' ORDER BY name",
                )
                .fetch_all(&mut *tx)
                .await
                .expect("list the guarding triggers");
                for (name, _) in &guards {
                    let drop = format!("DROP TRIGGER \"{name}\"");
                    sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("drop trigger {name}: {e}"));
                }
                for s in statements {
                    sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{s}: {e}"));
                }
                for (name, sql) in guards {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("restore trigger {name}: {e}"));
                }
                tx.commit().await.expect("commit");
                pool.close().await;
            }
        }
    }

    /// A SQL literal of `bytes` in this backend's dialect (`decode('…', 'hex')` or `x'…'`).
    pub fn bytes_sql(&self, bytes: &[u8]) -> String {
        let hex = hex::encode(bytes);
        match self.inner {
            Inner::Postgres(_) => format!("decode('{hex}', 'hex')"),
            Inner::Sqlite(_) => format!("x'{hex}'"),
        }
    }
}

async fn new_sqlite() -> SqliteFile {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).expect("random name");
    let dir = std::env::temp_dir().join(format!("gov-sqlite-{}", hex::encode(rnd)));
    std::fs::create_dir_all(&dir).expect("a directory for the test's SQLite file");
    let path = dir.join("governance.db");
    let url = format!("sqlite://{}", path.display());
    let file = SqliteFile { dir, path, url };
    let opts = gov_store::StoreOptions {
        max_connections: 1,
        create_if_missing: true,
        ..gov_store::StoreOptions::default()
    };
    let store = gov_store::Store::connect(&file.url, &opts)
        .await
        .unwrap_or_else(|e| panic!("cannot open the test SQLite file: {e}"));
    store
        .migrate()
        .await
        .unwrap_or_else(|e| panic!("cannot migrate the test SQLite file: {e}"));
    store.close().await;
    file
}

async fn sqlite_pool(path: &Path) -> SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .expect("open the test SQLite file")
}
