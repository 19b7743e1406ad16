//! The tiles of each chain's Merkle tree on SQLite.

use super::SqliteStore;
use crate::backend::TreeStore;
use crate::{Result, StoreError, TreeTile};

fn idx(v: u64) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| StoreError::InvalidArgument(format!("tile index {v} is too large")))
}

fn tile((level, i, hashes, root): (i64, i64, Vec<u8>, Vec<u8>)) -> Result<TreeTile> {
    Ok(TreeTile {
        level: u8::try_from(level)
            .map_err(|_| StoreError::Corrupt(format!("a tree tile has level {level}")))?,
        idx: u64::try_from(i)
            .map_err(|_| StoreError::Corrupt(format!("a tree tile has index {i}")))?,
        hashes,
        root,
    })
}

impl TreeStore for SqliteStore {
    async fn tree_tile_indices(&self, chain_id: &str, level: u8) -> Result<Vec<u64>> {
        let rows: Vec<i64> = sqlx::query_scalar(
            "SELECT idx FROM audit_tree_tiles WHERE chain_id = ? AND level = ? ORDER BY idx",
        )
        .bind(chain_id)
        .bind(i64::from(level))
        .fetch_all(&self.pool)
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
        let rows: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT level, idx, CASE WHEN ? THEN hashes ELSE x'' END, root \
             FROM audit_tree_tiles WHERE chain_id = ? AND level = ? AND idx >= ? AND idx <= ? \
             ORDER BY idx",
        )
        .bind(with_hashes)
        .bind(chain_id)
        .bind(i64::from(level))
        .bind(idx(from)?)
        .bind(idx(to)?)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(tile).collect()
    }

    async fn put_tree_tiles(&self, chain_id: &str, tiles: &[TreeTile]) -> Result<()> {
        let (_turn, mut tx) = self.write_tx().await?;
        for t in tiles {
            sqlx::query(
                "INSERT INTO audit_tree_tiles (chain_id, level, idx, hashes, root) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(chain_id)
            .bind(i64::from(t.level))
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
