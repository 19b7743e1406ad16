//! Cedar policy sets on Postgres: versions appended by the schema owner (the application role
//! holds SELECT only, so its INSERT fails with a permission error), with their event.

use super::PgStore;
use crate::backend::{PolicyEvent, PolicyStore};
use crate::{NewPolicySet, PolicySetRow, Result, Sealer, StoreError};

type Row = (
    String,
    i64,
    Option<String>,
    String,
    String,
    String,
    time::OffsetDateTime,
);

impl PolicyStore for PgStore {
    async fn policy_sets(&self) -> Result<Vec<PolicySetRow>> {
        // language=PostgreSQL
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT DISTINCT ON (slot) slot, version, policies, settings, hash, applied_by, \
             applied_at FROM policy_sets ORDER BY slot, version DESC",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    async fn apply_policy_set(
        &self,
        set: &NewPolicySet,
        event: PolicyEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<i64> {
        let denied = |e: sqlx::Error| {
            match StoreError::from(e) {
            StoreError::PermissionDenied(_) => StoreError::PermissionDenied(
                "only the schema owner may apply a policy set; the application role may only read them"
                    .into(),
            ),
            other => other,
        }
        };
        let mut tx = self.pool().begin().await?;
        // One writer per slot at a time, so versions follow each other.
        // language=PostgreSQL
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('governance/policy_set/' || $1, 0))",
        )
        .bind(&set.slot)
        .execute(&mut *tx)
        .await?;
        // language=PostgreSQL
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO policy_sets (slot, version, policies, settings, hash, applied_by) \
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5 FROM policy_sets \
             WHERE slot = $1 RETURNING version",
        )
        .bind(&set.slot)
        .bind(&set.policies)
        .bind(&set.settings)
        .bind(&set.hash)
        .bind(&set.applied_by)
        .fetch_one(&mut *tx)
        .await
        .map_err(denied)?;
        let event = event(version).map_err(StoreError::InvalidArgument)?;
        let sealed = super::heads::Recording::new(seal);
        super::audit::append_in(
            &mut tx,
            event.chain_id.as_str(),
            key_id,
            std::slice::from_ref(&event),
            &|row| sealed.seal(row),
        )
        .await?;
        tx.commit().await?;
        self.heads.committed(event.chain_id.as_str(), sealed.last());
        Ok(version)
    }
}

fn row(r: Row) -> PolicySetRow {
    PolicySetRow {
        slot: r.0,
        version: r.1,
        policies: r.2,
        settings: r.3,
        hash: r.4,
        applied_by: r.5,
        applied_at: r.6,
    }
}
