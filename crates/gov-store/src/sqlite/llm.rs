//! The coverage registry of wrapped LLM clients on SQLite: insert once, read all.

use super::{SqliteStore, from_us, now_us};
use crate::backend::RegistryStore;
use crate::{LlmClientRow, Result};

impl RegistryStore for SqliteStore {
    async fn register_llm_client(&self, c: &LlmClientRow) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO llm_clients (provider, wrapper, model_family, host_digest, registered_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&c.provider)
        .bind(&c.wrapper)
        .bind(&c.model_family)
        .bind(&c.host_digest)
        .bind(now_us())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn llm_clients(&self) -> Result<Vec<LlmClientRow>> {
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT provider, wrapper, model_family, host_digest, registered_at FROM llm_clients \
             ORDER BY registered_at, provider, wrapper, model_family, host_digest",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(provider, wrapper, model_family, host_digest, at)| {
                Ok(LlmClientRow {
                    provider,
                    wrapper,
                    model_family,
                    host_digest,
                    registered_at: from_us(at)?,
                })
            })
            .collect()
    }
}
