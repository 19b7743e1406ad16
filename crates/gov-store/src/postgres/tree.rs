//! The tiles of each chain's Merkle tree.

use super::PgStore;
use crate::backend::TreeStore;
use crate::{Result, StoreError, TreeTile};

fn idx(v: u64) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| StoreError::InvalidArgument(format!("tile index {v} is too large")))
}

fn tile((level, i, hashes, root): (i16, i64, Vec<u8>, Vec<u8>)) -> Result<TreeTile> {
    Ok(TreeTile {
        level: u8::try_from(level)
            .map_err(|_| StoreError::Corrupt(format!("a tree tile has level {level}")))?,
        idx: u64::try_from(i)
            .map_err(|_| StoreError::Corrupt(format!("a tree tile has index {i}")))?,
        hashes,
        root,
    })
}

impl TreeStore for PgStore {
    async fn tree_tile_indices(&self, chain_id: &str, level: u8) -> Result<Vec<u64>> {
        let rows: Vec<i64> = sqlx::query_scalar(
            "SELECT idx FROM audit_tree_tiles WHERE chain_id = $1 AND level = $2 ORDER BY idx",
        )
        .bind(chain_id)
        .bind(i16::from(level))
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|i| u64::try_from(i).ok())
            .collect())
    }

    async fn tree_tiles(
        &self,
        chain_id: &str,
        level: u8,
        from: u64,
        to: u64,
        with_hashes: bool,
    ) -> Result<Vec<TreeTile>> {
        let rows: Vec<(i16, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT level, idx, CASE WHEN $5 THEN hashes ELSE ''::bytea END, root \
             FROM audit_tree_tiles WHERE chain_id = $1 AND level = $2 AND idx >= $3 AND idx <= $4 \
             ORDER BY idx",
        )
        .bind(chain_id)
        .bind(i16::from(level))
        .bind(idx(from)?)
        .bind(idx(to)?)
        .bind(with_hashes)
        .fetch_all(&self.pool())
        .await?;
        rows.into_iter().map(tile).collect()
    }

    async fn put_tree_tiles(&self, chain_id: &str, tiles: &[TreeTile]) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for t in tiles {
            sqlx::query(
                "INSERT INTO audit_tree_tiles (chain_id, level, idx, hashes, root) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(chain_id)
            .bind(i16::from(t.level))
            .bind(idx(t.idx)?)
            .bind(&t.hashes)
            .bind(&t.root)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
