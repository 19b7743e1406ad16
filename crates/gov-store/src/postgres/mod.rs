//! The PostgreSQL backend: pool, migrations, the application role, and the audit queries.

mod audit;
mod budget;
mod console;
mod enforce;
mod gates;
mod heads;
mod hosts;
mod keys;
mod llm;
mod policies;
mod retention;
mod signers;
mod subjects;
mod tree;
mod workflows;

pub(crate) use audit::{import_locked, lock_head};

use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Row};
use std::sync::{Arc, RwLock};

use crate::backend::Backend;
use crate::{Listener, MigrateReport, Privileges, Result, StoreError, StoreOptions};

/// Migrations for PostgreSQL, embedded from `migrations/postgres`.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// A pool of connections to one PostgreSQL database (on the server of the URL's list that
/// satisfies its `target_session_attrs`: see `hosts`).
#[derive(Debug, Clone)]
pub struct PgStore {
    current: Arc<RwLock<hosts::Current>>,
    /// The chain heads this process last saw (the optimistic appends').
    heads: Arc<heads::Heads>,
    /// One connection kept warm for the hot reads (see [`PgStore::warm`]).
    warm: Arc<std::sync::Mutex<Option<(u64, sqlx::PgConnection)>>>,
    /// The clock the rules run on (passed to the functions as `p_now`).
    pub(crate) clock: crate::Clock,
    /// See [`StoreOptions::call_timeout`].
    pub(crate) deadline: Option<std::time::Duration>,
    /// Where a fresh pool comes from when a call passes its deadline (none for a pool handed
    /// in by [`PgStore::from_pool`]).
    renew: Option<Arc<(hosts::Target, StoreOptions)>>,
    /// Where the listener connects, when not on the pool's server ([`StoreOptions::listen_url`]).
    listen: Option<Arc<(hosts::Target, StoreOptions)>>,
}

fn valid_role_name(role: &str) -> bool {
    let mut chars = role.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && role.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Creates the database named in `url` if it does not exist, connecting to the server's
/// `postgres` database to do so. Returns whether it was created.
pub(crate) async fn ensure_database(url: &str) -> Result<bool> {
    use sqlx::Connection;
    let target = hosts::parse(url, "governance")?;
    let (i, probe) = hosts::resolve(&target, std::time::Duration::from_secs(10)).await?;
    let _ = probe.close().await;
    let opts: PgConnectOptions = target.servers[i].clone();
    let name = opts
        .get_database()
        .ok_or_else(|| StoreError::InvalidUrl("it names no database".into()))?
        .to_owned();
    let mut conn = sqlx::PgConnection::connect_with(&opts.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let stmt: String = sqlx::query_scalar("SELECT format('CREATE DATABASE %I', $1::text)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut conn)
            .await?;
    }
    let _ = conn.close().await;
    Ok(!exists)
}

impl PgStore {
    /// Connects (one connection is opened at once, so an unreachable server fails here).
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Self> {
        use sqlx::Connection;
        let target = hosts::parse(url, &opts.application_name)?;
        let listen = opts
            .listen_url
            .as_deref()
            .map(|u| {
                hosts::parse(u, &opts.application_name).map_err(|e| match e {
                    StoreError::InvalidUrl(why) => {
                        StoreError::InvalidUrl(format!("the listen URL: {why}"))
                    }
                    other => other,
                })
            })
            .transpose()?
            .map(|t| Arc::new((t, opts.clone())));
        // One direct attempt first (on each server in turn, for a list): the pool would retry
        // a refused connection until its timeout and then report only the timeout, hiding the
        // cause.
        let (server, probe) = hosts::resolve(&target, opts.acquire_timeout).await?;
        // The pool's first connection is this one's successor: keep the probe's open until the
        // pool has its own, so a server that accepts one connection accepts the next.
        let pool = hosts::pool_for(&target, server, opts);
        let first = pool.acquire().await;
        let _ = probe.close().await;
        drop(first?);
        let store = Self {
            current: Arc::new(RwLock::new(hosts::Current {
                pool,
                server,
                generation: 0,
            })),
            heads: Arc::default(),
            warm: Arc::default(),
            clock: opts.clock.clone(),
            deadline: opts.call_timeout,
            renew: Some(Arc::new((target.clone(), opts.clone()))),
            listen,
        };
        hosts::start_monitor(&store.current, target, opts.clone());
        Ok(store)
    }

    /// Wraps an existing pool (tests and embedding services).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            current: Arc::new(RwLock::new(hosts::Current {
                pool,
                server: 0,
                generation: 0,
            })),
            heads: Arc::default(),
            warm: Arc::default(),
            clock: crate::Clock::system(),
            deadline: None,
            renew: None,
            listen: None,
        }
    }

    /// Which pool is in use (see [`Self::retire`]).
    pub(crate) fn generation(&self) -> u64 {
        hosts::read(&self.current).generation
    }

    /// Replaces pool `generation` by a fresh one: a call on it passed its deadline.
    pub(crate) fn retire(&self, generation: u64) {
        if let Some(renew) = &self.renew {
            hosts::retire(&self.current, generation, &renew.0, &renew.1);
        }
    }

    /// Records the head an import committed (the optimistic appends' cache).
    pub(crate) fn imported(&self, chain_id: &str, head: (i64, Vec<u8>)) {
        self.heads.committed(chain_id, Some(head));
    }

    /// The pool in use (on a multi-host URL, the monitor may move it to another server: take
    /// it again for each piece of work rather than keeping it).
    pub fn pool(&self) -> PgPool {
        hosts::read(&self.current).pool.clone()
    }

    /// A connection for a hot read (a budget check, a gate's state): the one kept warm when no
    /// other call is using it, else one from the pool. Sequential callers so reuse one warm
    /// backend instead of rotating through the pool's least recently used ones. Give it back
    /// with [`Warm::keep`] once the read succeeded; dropped instead (an error, a cancelled
    /// call), it is closed, and the next hot read takes a fresh one from the pool. A connection
    /// of a retired pool is never reused. The warm connection is one more than the pool's
    /// `max_connections`.
    ///
    /// A kept connection may have died since (a server restart, a terminated backend): a read
    /// that fails on one is retried once on a fresh connection ([`Warm::reused`]).
    pub(crate) async fn warm(&self) -> Result<Warm<'_>> {
        let generation = self.generation();
        let kept = self
            .warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|(g, _)| *g == generation);
        match kept {
            Some((_, c)) => Ok(Warm {
                slot: &self.warm,
                generation,
                conn: Some(c),
                reused: true,
            }),
            None => self.warm_fresh().await,
        }
    }

    /// [`Self::warm`] on a connection fresh from the pool (detached: it is this store's, outside
    /// the pool's count, so that holding it never holds up the pool, whose closing waits for
    /// every pooled connection to come back).
    pub(crate) async fn warm_fresh(&self) -> Result<Warm<'_>> {
        let generation = self.generation();
        let conn = self.pool().acquire().await?.detach();
        Ok(Warm {
            slot: &self.warm,
            generation,
            conn: Some(conn),
            reused: false,
        })
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        // language=PostgreSQL
        let rows =
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.pool())
                .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from))
            .collect()
    }
}

impl Backend for PgStore {
    async fn migrate(&self) -> Result<MigrateReport> {
        let before = self.applied_versions().await.unwrap_or_default();
        MIGRATOR.run(&self.pool()).await.map_err(|e| match StoreError::from(e) {
            StoreError::PermissionDenied(_) => StoreError::PermissionDenied(
                "this role may not change the schema; run `governance migrate` as the role that owns the database, not the application role".into(),
            ),
            other => other,
        })?;
        let after = self.applied_versions().await?;
        Ok(crate::migrate_report(&before, &after, &MIGRATOR))
    }

    async fn check_schema(&self) -> Result<()> {
        crate::judge_schema(self.applied_versions().await, &MIGRATOR)
    }

    async fn ensure_app_role(&self, role: &str, password: Option<&str>) -> Result<()> {
        if !valid_role_name(role) {
            return Err(StoreError::InvalidArgument(format!(
                "role name {:?} must be 1 to 63 characters of a-z, 0-9 and _, starting with a letter or _",
                role.chars().take(64).collect::<String>()
            )));
        }
        // The name is validated above, so it is safe to place in the statement.
        let create = format!(
            "DO $$ BEGIN \
               CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
             END $$"
        );
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&self.pool())
            .await?;
        let row = sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&self.pool())
            .await?;
        if row.try_get::<bool, _>(0)? || row.try_get::<bool, _>(1)? {
            return Err(StoreError::InvalidArgument(format!(
                "role {role} exists and is a superuser or bypasses row security; pick another name for the application role"
            )));
        }
        if let Some(pw) = password {
            let stmt: String = sqlx::query_scalar(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
            )
            .bind(role)
            .bind(pw)
            .fetch_one(&self.pool())
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(stmt))
                .execute(&self.pool())
                .await?;
        }
        sqlx::query("SELECT governance_grant_app_role($1)")
            .bind(role)
            .execute(&self.pool())
            .await?;
        Ok(())
    }

    async fn privileges(&self) -> Result<Privileges> {
        // language=PostgreSQL
        let row = sqlx::query(
            "SELECT current_user::text, \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    pg_has_role(current_user, (SELECT tableowner FROM pg_tables \
                        WHERE schemaname = current_schema() AND tablename = 'audit_events'), 'USAGE'), \
                    has_table_privilege('audit_events', 'UPDATE'), \
                    has_table_privilege('audit_events', 'DELETE'), \
                    has_table_privilege('audit_events', 'TRUNCATE')",
        )
        .fetch_one(&self.pool())
        .await?;
        Ok(Privileges {
            role: row.try_get(0)?,
            superuser: row.try_get::<Option<bool>, _>(1)?.unwrap_or(false),
            owns_audit_table: row.try_get::<Option<bool>, _>(2)?.unwrap_or(false),
            can_update: row.try_get(3)?,
            can_delete: row.try_get(4)?,
            can_truncate: row.try_get(5)?,
            has_roles: true,
        })
    }

    async fn listen(&self, channels: &[&str]) -> Result<Listener> {
        Ok(Listener::postgres(self.listen_channels(channels).await?))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool()).await?;
        Ok(())
    }

    async fn close(&self) {
        let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((_, conn)) = warm {
            use sqlx::Connection;
            let _ = conn.close().await;
        }
        self.pool().close().await;
    }

    async fn instance(&self) -> Result<crate::Instance> {
        // language=PostgreSQL
        let (id, name): (uuid::Uuid, String) =
            sqlx::query_as("SELECT id, current_database()::text FROM governance_instance")
                .fetch_one(&self.pool())
                .await?;
        Ok(crate::Instance {
            id,
            locator: format!("postgres:{name}"),
        })
    }
}

/// Runs the hot read `$read` (an expression using the connection `$c` that yields a future of
/// `Result<T, sqlx::Error>`) on the warm connection ([`PgStore::warm`]), once more on a fresh one
/// when a kept connection fails (it may have died since it was kept). Evaluates to `Result<T>`.
/// (A macro: an async closure borrowing the connection would make the caller's future lose
/// `Send`.)
macro_rules! hot {
    ($store:expr, |$c:ident| $read:expr) => {{
        let mut warm = $store.warm().await?;
        let first = {
            let $c = warm.conn()?;
            $read.await
        };
        match first {
            Ok(v) => {
                warm.keep();
                Ok::<_, $crate::StoreError>(v)
            }
            Err(_) if warm.reused => {
                drop(warm);
                let mut warm = $store.warm_fresh().await?;
                let v = {
                    let $c = warm.conn()?;
                    $read.await?
                };
                warm.keep();
                Ok(v)
            }
            Err(e) => Err($crate::StoreError::from(e)),
        }
    }};
}
pub(crate) use hot;

/// A connection lent by [`PgStore::warm`].
pub(crate) struct Warm<'a> {
    slot: &'a std::sync::Mutex<Option<(u64, sqlx::PgConnection)>>,
    generation: u64,
    conn: Option<sqlx::PgConnection>,
    /// Whether the connection was kept from an earlier read (it may have died since).
    pub(crate) reused: bool,
}

impl Warm<'_> {
    /// The connection.
    pub(crate) fn conn(&mut self) -> Result<&mut sqlx::PgConnection> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("a warm connection used after it was kept".into()))
    }

    /// Keeps the connection warm for the next hot read (unless another one already is).
    pub(crate) fn keep(mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((self.generation, conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_role_name;

    #[test]
    fn role_names_are_plain_identifiers() {
        assert!(valid_role_name("governance_app"));
        assert!(valid_role_name("_x1"));
        for bad in ["", "1abc", "App", "a-b", "a;drop role x", &"a".repeat(64)] {
            assert!(!valid_role_name(bad), "{bad}");
        }
    }
}
