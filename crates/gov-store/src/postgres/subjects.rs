//! Data subjects' wrapped keys and their erasure on Postgres.
//!
//! An erasure and a key's insertion take the same transaction-scoped advisory lock per subject
//! (the erasure here, the insertion in the trigger `governance_subject_key_guard`), so a key
//! inserted while an erasure runs is either deleted by it or refused after it.

use super::PgStore;
use crate::backend::{ErasureEvent, SubjectStore};
use crate::{Result, Sealer, StoreError, SubjectKeyRow};

/// The SQLSTATE the key guard raises for an erased subject.
const ERASED: &str = "GV001";

fn refused_as_erased(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(ERASED))
}

impl SubjectStore for PgStore {
    async fn put_subject_key(&self, row: &SubjectKeyRow) -> Result<bool> {
        // language=PostgreSQL
        let r = sqlx::query(
            "INSERT INTO subject_keys (subject, kid, wrapped) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&row.subject)
        .bind(&row.kid)
        .bind(&row.wrapped)
        .execute(&self.pool())
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if refused_as_erased(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn subject_keys(&self, subjects: &[String]) -> Result<Vec<SubjectKeyRow>> {
        // language=PostgreSQL
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT subject, kid, wrapped FROM subject_keys WHERE subject = ANY($1) \
             ORDER BY subject, kid",
        )
        .bind(subjects)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(subject, kid, wrapped)| SubjectKeyRow {
                subject,
                kid,
                wrapped,
            })
            .collect())
    }

    async fn subject_erased(&self, subject: &str) -> Result<bool> {
        // language=PostgreSQL
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erased_subjects WHERE subject = $1)")
                .bind(subject)
                .fetch_one(&self.pool())
                .await?,
        )
    }

    async fn holds_subject_state(&self) -> Result<bool> {
        // language=PostgreSQL
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM subject_keys) OR EXISTS (SELECT 1 FROM erased_subjects)",
        )
        .fetch_one(&self.pool())
        .await?)
    }

    async fn erase_subject(
        &self,
        subject: &str,
        event: ErasureEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<u64> {
        let denied = |e: sqlx::Error| {
            match StoreError::from(e) {
            StoreError::PermissionDenied(_) => StoreError::PermissionDenied(
                "only the schema owner may erase a data subject; the application role cannot delete keys"
                    .into(),
            ),
            other => other,
        }
        };
        let mut tx = self.pool().begin().await?;
        // language=PostgreSQL
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('governance/subject/' || $1, 0))",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        // language=PostgreSQL
        sqlx::query("INSERT INTO erased_subjects (subject) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(subject)
            .execute(&mut *tx)
            .await
            .map_err(denied)?;
        // language=PostgreSQL
        let deleted = sqlx::query("DELETE FROM subject_keys WHERE subject = $1")
            .bind(subject)
            .execute(&mut *tx)
            .await
            .map_err(denied)?
            .rows_affected();
        let event = event(deleted).map_err(StoreError::InvalidArgument)?;
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
        Ok(deleted)
    }
}
