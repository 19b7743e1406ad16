//! Signer public keys and stored checkpoints on SQLite.

use super::{SqliteStore, from_us, now_us, to_us};
use crate::backend::SignerStore;
use crate::{CheckpointRow, CosignatureRow, Result, SignerKeyRow};

type SignerRow = (String, Vec<u8>, String, i64, Option<i64>);
type CpRow = (String, i64, Vec<u8>, i64, String, Vec<u8>);

impl SqliteStore {
    async fn stored_key(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT public_key FROM signer_keys WHERE signer_key_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

impl SignerStore for SqliteStore {
    async fn register_signer(&self, id: &str, public_key: &[u8], label: &str) -> Result<bool> {
        sqlx::query(
            "INSERT INTO signer_keys (signer_key_id, public_key, label, created_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(public_key)
        .bind(label)
        .bind(now_us())
        .execute(&self.pool)
        .await?;
        Ok(self.stored_key(id).await?.as_deref() == Some(public_key))
    }

    async fn import_signer(&self, row: &SignerKeyRow) -> Result<bool> {
        sqlx::query(
            "INSERT INTO signer_keys (signer_key_id, public_key, label, created_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&row.signer_key_id)
        .bind(&row.public_key)
        .bind(&row.label)
        .bind(to_us(row.created_at))
        .bind(row.revoked_at.map(to_us))
        .execute(&self.pool)
        .await?;
        Ok(self.stored_key(&row.signer_key_id).await?.as_deref() == Some(&row.public_key[..]))
    }

    async fn signer_keys(&self) -> Result<Vec<SignerKeyRow>> {
        let rows: Vec<SignerRow> = sqlx::query_as(
            "SELECT signer_key_id, public_key, label, created_at, revoked_at \
             FROM signer_keys ORDER BY signer_key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(signer_key_id, public_key, label, created, revoked)| {
                Ok(SignerKeyRow {
                    signer_key_id,
                    public_key,
                    label,
                    created_at: from_us(created)?,
                    revoked_at: revoked.map(from_us).transpose()?,
                })
            })
            .collect()
    }

    async fn revoke_signer(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE signer_keys SET revoked_at = ? WHERE signer_key_id = ? AND revoked_at IS NULL",
        )
        .bind(now_us())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO checkpoints (chain_id, seq, head_hmac, signed_at, signer_key_id, signature) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&c.chain_id)
        .bind(c.seq)
        .bind(&c.head_hmac)
        .bind(to_us(c.signed_at))
        .bind(&c.signer_key_id)
        .bind(&c.signature)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn checkpoints(&self, chain_id: &str) -> Result<Vec<CheckpointRow>> {
        let rows: Vec<CpRow> = sqlx::query_as(
            "SELECT chain_id, seq, head_hmac, signed_at, signer_key_id, signature \
             FROM checkpoints WHERE chain_id = ? ORDER BY seq, signer_key_id",
        )
        .bind(chain_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(chain_id, seq, head_hmac, signed, signer_key_id, signature)| {
                    Ok(CheckpointRow {
                        chain_id,
                        seq,
                        head_hmac,
                        signed_at: from_us(signed)?,
                        signer_key_id,
                        signature,
                    })
                },
            )
            .collect()
    }
    async fn put_cosignature(&self, c: &CosignatureRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO witness_cosignatures (chain_id, origin, tree_size, root_hash, \
             witness_name, witness_key, cosigned_at, signature, recorded_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&c.chain_id)
        .bind(&c.origin)
        .bind(c.tree_size)
        .bind(&c.root_hash)
        .bind(&c.witness_name)
        .bind(&c.witness_key)
        .bind(c.cosigned_at)
        .bind(&c.signature)
        .bind(now_us())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn cosignatures(&self, chain_id: &str) -> Result<Vec<CosignatureRow>> {
        type Row = (String, String, i64, Vec<u8>, String, Vec<u8>, i64, Vec<u8>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT chain_id, origin, tree_size, root_hash, witness_name, witness_key, \
             cosigned_at, signature FROM witness_cosignatures WHERE chain_id = ? \
             ORDER BY tree_size, witness_name, cosigned_at",
        )
        .bind(chain_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CosignatureRow {
                chain_id: r.0,
                origin: r.1,
                tree_size: r.2,
                root_hash: r.3,
                witness_name: r.4,
                witness_key: r.5,
                cosigned_at: r.6,
                signature: r.7,
            })
            .collect())
    }
}
