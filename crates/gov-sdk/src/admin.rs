//! Administration that needs no audit secret: migrations, the application role, privileges.
//! Run as the role that owns the schema (not as the application role).

use gov_store::{MigrateReport, Privileges, Store, StoreOptions};

use crate::Result;

/// Default name of the least-privilege application role.
pub const DEFAULT_APP_ROLE: &str = "governance_app";

/// A connection for administrative work.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
}

impl Admin {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = StoreOptions {
            max_connections: 2,
            ..StoreOptions::default()
        };
        Ok(Self {
            store: Store::connect(url, &opts).await?,
        })
    }

    /// Creates the database named in `url` if it does not exist (first runs, demos). Returns
    /// whether it was created.
    pub async fn ensure_database(url: &str) -> Result<bool> {
        Ok(Store::ensure_database(url).await?)
    }

    /// Applies pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<MigrateReport> {
        Ok(self.store.migrate().await?)
    }

    /// Whether the schema is current for this build (nothing to migrate).
    pub async fn schema_is_current(&self) -> Result<bool> {
        match self.store.check_schema().await {
            Ok(()) => Ok(true),
            Err(gov_store::StoreError::NotMigrated(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the application role if needed and grants it INSERT and SELECT on the audit
    /// rows and nothing more. `password` is set on the role when given.
    pub async fn ensure_app_role(&self, role: &str, password: Option<&str>) -> Result<()> {
        Ok(self.store.ensure_app_role(role, password).await?)
    }

    /// What the connected role may do to the audit tables.
    pub async fn privileges(&self) -> Result<Privileges> {
        Ok(self.store.privileges().await?)
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.store.close().await;
    }
}
