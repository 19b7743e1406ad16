//! Data subjects' wrapped keys and their erasure on SQLite. Writes are serialised
//! (`BEGIN IMMEDIATE`), so the key guard trigger and an erasure never interleave.

use super::{SqliteStore, now_us};
use crate::backend::{ErasureEvent, SubjectStore};
use crate::{Result, Sealer, StoreError, SubjectKeyRow};

fn refused_as_erased(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains("data subject was erased"))
}

impl SubjectStore for SqliteStore {
    async fn put_subject_key(&self, row: &SubjectKeyRow) -> Result<bool> {
        let (_turn, mut tx) = self.write_tx().await?;
        let r = sqlx::query(
            "INSERT INTO subject_keys (subject, kid, wrapped, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&row.subject)
        .bind(&row.kid)
        .bind(&row.wrapped)
        .bind(now_us())
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(e) if refused_as_erased(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn subject_keys(&self, subjects: &[String]) -> Result<Vec<SubjectKeyRow>> {
        let mut out = Vec::new();
        for subject in subjects {
            let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
                "SELECT kid, wrapped FROM subject_keys WHERE subject = ? ORDER BY kid",
            )
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
            out.extend(rows.into_iter().map(|(kid, wrapped)| SubjectKeyRow {
                subject: subject.clone(),
                kid,
                wrapped,
            }));
        }
        Ok(out)
    }

    async fn subject_erased(&self, subject: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erased_subjects WHERE subject = ?)")
                .bind(subject)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn holds_subject_state(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM subject_keys) OR EXISTS (SELECT 1 FROM erased_subjects)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn erase_subject(
        &self,
        subject: &str,
        event: ErasureEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<u64> {
        let (_turn, mut tx) = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO erased_subjects (subject, erased_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(subject)
        .bind(now_us())
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM subject_keys WHERE subject = ?")
            .bind(subject)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let event = event(deleted).map_err(StoreError::InvalidArgument)?;
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
        Ok(deleted)
    }
}
