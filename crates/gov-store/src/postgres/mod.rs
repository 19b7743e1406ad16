//! The PostgreSQL backend: pool, migrations, the application role, and the audit queries.

mod audit;
mod budget;
mod console;
mod enforce;
mod gates;
mod heads;
mod llm;
mod signers;

pub(crate) use audit::{import_locked, lock_head};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::Backend;
use crate::{Listener, MigrateReport, Privileges, Result, StoreError, StoreOptions};

/// Migrations for PostgreSQL, embedded from `migrations/postgres`.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// A pool of connections to one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The chain heads this process last saw (the LLM path's optimistic appends).
    heads: Arc<heads::Heads>,
    /// The clock the rules run on (passed to the functions as `p_now`).
    pub(crate) clock: crate::Clock,
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
    let opts = PgConnectOptions::from_str(url)?;
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
        let connect = PgConnectOptions::from_str(url)?.application_name(&opts.application_name);
        // One direct attempt first: the pool would retry a refused connection until its
        // timeout and then report only the timeout, hiding the cause.
        let probe = tokio::time::timeout(
            opts.acquire_timeout,
            sqlx::PgConnection::connect_with(&connect),
        )
        .await
        .map_err(|_| StoreError::Unavailable("timed out connecting".into()))??;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .min_connections(0)
            .acquire_timeout(opts.acquire_timeout)
            // A ping before every checkout would double the cost of each check.
            .test_before_acquire(false)
            .connect_with(connect)
            .await?;
        let mut store = Self::from_pool(pool);
        store.clock = opts.clock.clone();
        Ok(store)
    }

    /// Wraps an existing pool (tests and embedding services).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            heads: Arc::default(),
            clock: crate::Clock::system(),
        }
    }

    /// Records the head an import committed (the optimistic appends' cache).
    pub(crate) fn imported(&self, chain_id: &str, head: (i64, Vec<u8>)) {
        self.heads.committed(chain_id, Some(head));
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        // language=PostgreSQL
        let rows =
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from))
            .collect()
    }
}

impl Backend for PgStore {
    async fn migrate(&self) -> Result<MigrateReport> {
        let before = self.applied_versions().await.unwrap_or_default();
        MIGRATOR.run(&self.pool).await.map_err(|e| match StoreError::from(e) {
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
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_one(&self.pool)
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
            .fetch_one(&self.pool)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(stmt))
                .execute(&self.pool)
                .await?;
        }
        sqlx::query("SELECT governance_grant_app_role($1)")
            .bind(role)
            .execute(&self.pool)
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
        .fetch_one(&self.pool)
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
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn instance(&self) -> Result<crate::Instance> {
        // language=PostgreSQL
        let (id, name): (uuid::Uuid, String) =
            sqlx::query_as("SELECT id, current_database()::text FROM governance_instance")
                .fetch_one(&self.pool)
                .await?;
        Ok(crate::Instance {
            id,
            locator: format!("postgres:{name}"),
        })
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
