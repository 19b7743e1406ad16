//! The coverage registry of wrapped LLM clients: insert once, read all. Never updates a row.

use sqlx::FromRow;
use time::OffsetDateTime;

use super::PgStore;
use crate::backend::RegistryStore;
use crate::{LlmClientRow, Result};

#[derive(FromRow)]
struct Row {
    provider: String,
    wrapper: String,
    model_family: String,
    host_digest: String,
    registered_at: OffsetDateTime,
}

impl RegistryStore for PgStore {
    async fn register_llm_client(&self, c: &LlmClientRow) -> Result<bool> {
        // language=PostgreSQL
        let done = sqlx::query(
            "INSERT INTO llm_clients (provider, wrapper, model_family, host_digest) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&c.provider)
        .bind(&c.wrapper)
        .bind(&c.model_family)
        .bind(&c.host_digest)
        .execute(&self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn llm_clients(&self) -> Result<Vec<LlmClientRow>> {
        // language=PostgreSQL
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT provider, wrapper, model_family, host_digest, registered_at FROM llm_clients \
             ORDER BY registered_at, provider, wrapper, model_family, host_digest",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| LlmClientRow {
                provider: r.provider,
                wrapper: r.wrapper,
                model_family: r.model_family,
                host_digest: r.host_digest,
                registered_at: r.registered_at,
            })
            .collect())
    }
}
