//! Cedar policy sets on SQLite: versions appended with their event in one write transaction.
//! SQLite has no roles, so whoever can write the file can apply a set.

use super::{SqliteStore, from_us, now_us};
use crate::backend::{PolicyEvent, PolicyStore};
use crate::{NewPolicySet, PolicySetRow, Result, Sealer, StoreError};

type Row = (String, i64, Option<String>, String, String, String, i64);

impl PolicyStore for SqliteStore {
    async fn policy_sets(&self) -> Result<Vec<PolicySetRow>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT slot, version, policies, settings, hash, applied_by, applied_at \
             FROM policy_sets p WHERE version = \
             (SELECT MAX(version) FROM policy_sets q WHERE q.slot = p.slot) ORDER BY slot",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(PolicySetRow {
                    slot: r.0,
                    version: r.1,
                    policies: r.2,
                    settings: r.3,
                    hash: r.4,
                    applied_by: r.5,
                    applied_at: from_us(r.6)?,
                })
            })
            .collect()
    }

    async fn apply_policy_set(
        &self,
        set: &NewPolicySet,
        event: PolicyEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<i64> {
        let (_turn, mut tx) = self.write_tx().await?;
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO policy_sets (slot, version, policies, settings, hash, applied_by, applied_at) \
             SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4, ?5, ?6 FROM policy_sets \
             WHERE slot = ?1 RETURNING version",
        )
        .bind(&set.slot)
        .bind(&set.policies)
        .bind(&set.settings)
        .bind(&set.hash)
        .bind(&set.applied_by)
        .bind(now_us())
        .fetch_one(&mut *tx)
        .await?;
        let event = event(version).map_err(StoreError::InvalidArgument)?;
        super::audit::append_in(
            &mut tx,
            event.chain_id.as_str(),
            key_id,
            std::slice::from_ref(&event),
            seal,
        )
        .await?;
        tx.commit().await?;
        self.written().await;
        Ok(version)
    }
}
