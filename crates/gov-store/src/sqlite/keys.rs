//! Agents' gateway keys on SQLite (no roles: whoever opens the file is the owner).

use super::{SqliteStore, from_us, now_us};
use crate::backend::GatewayKeyStore;
use crate::{GatewayKeyInfo, GatewayKeyRow, Result};

impl GatewayKeyStore for SqliteStore {
    async fn add_gateway_key(&self, row: &GatewayKeyRow) -> Result<()> {
        let (_turn, mut tx) = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO gateway_keys (id, agent_id, key_hash, label, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&row.id)
        .bind(&row.agent)
        .bind(&row.key_hash)
        .bind(&row.label)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn gateway_keys(&self, agent: Option<&str>) -> Result<Vec<GatewayKeyInfo>> {
        let rows: Vec<(String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, agent_id, label, created_at, revoked_at FROM gateway_keys \
             WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY created_at, id",
        )
        .bind(agent)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(id, agent, label, created, revoked)| {
                Ok(GatewayKeyInfo {
                    id,
                    agent,
                    label,
                    created_at: from_us(created)?,
                    revoked_at: revoked.map(from_us).transpose()?,
                })
            })
            .collect()
    }

    async fn revoke_gateway_key(&self, id: &str) -> Result<bool> {
        let (_turn, mut tx) = self.write_tx().await?;
        let r = sqlx::query(
            "UPDATE gateway_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(now_us())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn gateway_key(&self, id: &str) -> Result<Option<(String, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT agent_id, key_hash FROM gateway_keys WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }
}
