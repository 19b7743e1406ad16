//! Agents' gateway keys on Postgres. The owner writes and lists `gateway_keys`; the application
//! role only calls `governance_gateway_key(id)`, which answers for one unrevoked key.

use super::PgStore;
use crate::backend::GatewayKeyStore;
use crate::{GatewayKeyInfo, GatewayKeyRow, Result};

type KeyListRow = (
    String,
    String,
    String,
    time::OffsetDateTime,
    Option<time::OffsetDateTime>,
);

impl GatewayKeyStore for PgStore {
    async fn add_gateway_key(&self, row: &GatewayKeyRow) -> Result<()> {
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO gateway_keys (id, agent_id, key_hash, label) VALUES ($1, $2, $3, $4)",
        )
        .bind(&row.id)
        .bind(&row.agent)
        .bind(&row.key_hash)
        .bind(&row.label)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn gateway_keys(&self, agent: Option<&str>) -> Result<Vec<GatewayKeyInfo>> {
        // language=PostgreSQL
        let rows: Vec<KeyListRow> = sqlx::query_as(
            "SELECT id, agent_id, label, created_at, revoked_at FROM gateway_keys \
             WHERE $1::text IS NULL OR agent_id = $1 ORDER BY created_at, id",
        )
        .bind(agent)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(info).collect())
    }

    async fn revoke_gateway_key(&self, id: &str) -> Result<bool> {
        // language=PostgreSQL
        let r = sqlx::query(
            "UPDATE gateway_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn gateway_key(&self, id: &str) -> Result<Option<(String, Vec<u8>)>> {
        // language=PostgreSQL
        Ok(
            sqlx::query_as("SELECT agent_id, key_hash FROM governance_gateway_key($1)")
                .bind(id)
                .fetch_optional(&self.pool())
                .await?,
        )
    }
}

fn info((id, agent, label, created_at, revoked_at): KeyListRow) -> GatewayKeyInfo {
    GatewayKeyInfo {
        id,
        agent,
        label,
        created_at,
        revoked_at,
    }
}
