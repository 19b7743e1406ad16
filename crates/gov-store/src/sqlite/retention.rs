//! Retention cuts on SQLite (`chain_retention`): the cut is recorded and its rows removed in one
//! `BEGIN IMMEDIATE` transaction, so no append interleaves. The delete trigger lets a row go
//! only when a recorded cut covers it.

use super::{SqliteStore, from_us, now_us};
use crate::backend::{ErasureEvent, RetentionStore};
use crate::{Result, RetentionCut, Sealer, StoreError};

type CutRow = (
    String,
    i64,
    Vec<u8>,
    Vec<u8>,
    i64,
    String,
    String,
    String,
    i64,
    i64,
);

impl RetentionStore for SqliteStore {
    async fn retention_cuts(&self, chain_id: &str) -> Result<Vec<RetentionCut>> {
        let rows: Vec<CutRow> = sqlx::query_as(
            "SELECT chain_id, through_seq, row_hmac, tree_frontier, rows_removed, archive_sha256, \
             operator, reason, cut_at, record_seq FROM chain_retention WHERE chain_id = ? \
             ORDER BY through_seq",
        )
        .bind(chain_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RetentionCut {
                    chain_id: r.0,
                    through_seq: r.1,
                    row_hmac: r.2,
                    tree_frontier: r.3,
                    rows_removed: r.4,
                    archive_sha256: r.5,
                    operator: r.6,
                    reason: r.7,
                    cut_at: from_us(r.8)?,
                    record_seq: r.9,
                })
            })
            .collect()
    }

    async fn cut_chain(
        &self,
        c: &RetentionCut,
        event: ErasureEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<(i64, i64)> {
        let (_turn, mut tx) = self.write_tx().await?;
        let head: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM chain_heads WHERE chain_id = ?")
                .bind(&c.chain_id)
                .fetch_optional(&mut *tx)
                .await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT max(through_seq) FROM chain_retention WHERE chain_id = ?")
                .bind(&c.chain_id)
                .fetch_one(&mut *tx)
                .await?;
        crate::retention_rules::check_cut(c, head, last)?;
        let hmac: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT row_hmac FROM audit_events WHERE chain_id = ? AND seq = ?")
                .bind(&c.chain_id)
                .bind(c.through_seq)
                .fetch_optional(&mut *tx)
                .await?;
        crate::retention_rules::check_row(c, hmac.as_deref())?;
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE chain_id = ? AND seq <= ?")
                .bind(&c.chain_id)
                .bind(c.through_seq)
                .fetch_one(&mut *tx)
                .await?;
        let event = event(u64::try_from(rows).unwrap_or(0)).map_err(StoreError::InvalidArgument)?;
        if event.chain_id.as_str() != c.chain_id {
            return Err(StoreError::InvalidArgument(
                "the archive's event names another chain".into(),
            ));
        }
        let seqs = super::audit::append_in(
            &mut tx,
            &c.chain_id,
            key_id,
            std::slice::from_ref(&event),
            seal,
        )
        .await?;
        let record_seq = seqs.first().copied().ok_or(StoreError::Conflict(
            "the archive's event was not appended; nothing was removed".into(),
        ))?;
        sqlx::query(
            "INSERT INTO chain_retention (chain_id, through_seq, row_hmac, tree_frontier, \
             rows_removed, archive_sha256, operator, reason, cut_at, record_seq) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.chain_id)
        .bind(c.through_seq)
        .bind(&c.row_hmac)
        .bind(&c.tree_frontier)
        .bind(rows)
        .bind(&c.archive_sha256)
        .bind(&c.operator)
        .bind(&c.reason)
        .bind(now_us())
        .bind(record_seq)
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query("DELETE FROM audit_events WHERE chain_id = ? AND seq <= ?")
            .bind(&c.chain_id)
            .bind(c.through_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if i64::try_from(removed).ok() != Some(rows) {
            return Err(StoreError::Conflict(
                "the rows changed while they were being removed; nothing was removed".into(),
            ));
        }
        tx.commit().await?;
        self.written().await;
        Ok((rows, record_seq))
    }
}
