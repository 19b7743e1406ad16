//! Signer public keys and stored checkpoints.

use sqlx::FromRow;
use time::OffsetDateTime;

use super::PgStore;
use crate::backend::SignerStore;
use crate::{CheckpointRow, CosignatureRow, Result, SignerKeyRow};

#[derive(FromRow)]
struct SignerRow {
    signer_key_id: String,
    public_key: Vec<u8>,
    label: String,
    created_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

#[derive(FromRow)]
struct CpRow {
    chain_id: String,
    seq: i64,
    head_hmac: Vec<u8>,
    signed_at: OffsetDateTime,
    signer_key_id: String,
    signature: Vec<u8>,
}

impl SignerStore for PgStore {
    async fn register_signer(&self, id: &str, public_key: &[u8], label: &str) -> Result<bool> {
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO signer_keys (signer_key_id, public_key, label) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(public_key)
        .bind(label)
        .execute(&self.pool())
        .await?;
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT public_key FROM signer_keys WHERE signer_key_id = $1")
                .bind(id)
                .fetch_optional(&self.pool())
                .await?;
        Ok(stored.as_deref() == Some(public_key))
    }

    async fn import_signer(&self, row: &SignerKeyRow) -> Result<bool> {
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO signer_keys (signer_key_id, public_key, label, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&row.signer_key_id)
        .bind(&row.public_key)
        .bind(&row.label)
        .bind(row.created_at)
        .bind(row.revoked_at)
        .execute(&self.pool())
        .await?;
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT public_key FROM signer_keys WHERE signer_key_id = $1")
                .bind(&row.signer_key_id)
                .fetch_optional(&self.pool())
                .await?;
        Ok(stored.as_deref() == Some(&row.public_key[..]))
    }

    async fn signer_keys(&self) -> Result<Vec<SignerKeyRow>> {
        let rows: Vec<SignerRow> = sqlx::query_as(
            "SELECT signer_key_id, public_key, label, created_at, revoked_at \
             FROM signer_keys ORDER BY signer_key_id",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SignerKeyRow {
                signer_key_id: r.signer_key_id,
                public_key: r.public_key,
                label: r.label,
                created_at: r.created_at,
                revoked_at: r.revoked_at,
            })
            .collect())
    }

    async fn revoke_signer(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE signer_keys SET revoked_at = now() \
             WHERE signer_key_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO checkpoints (chain_id, seq, head_hmac, signed_at, signer_key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&c.chain_id)
        .bind(c.seq)
        .bind(&c.head_hmac)
        .bind(c.signed_at)
        .bind(&c.signer_key_id)
        .bind(&c.signature)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn checkpoints(&self, chain_id: &str) -> Result<Vec<CheckpointRow>> {
        let rows: Vec<CpRow> = sqlx::query_as(
            "SELECT chain_id, seq, head_hmac, signed_at, signer_key_id, signature \
             FROM checkpoints WHERE chain_id = $1 ORDER BY seq, signer_key_id",
        )
        .bind(chain_id)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| CheckpointRow {
                chain_id: r.chain_id,
                seq: r.seq,
                head_hmac: r.head_hmac,
                signed_at: r.signed_at,
                signer_key_id: r.signer_key_id,
                signature: r.signature,
            })
            .collect())
    }
    async fn put_cosignature(&self, c: &CosignatureRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO witness_cosignatures (chain_id, origin, tree_size, root_hash, \
             witness_name, witness_key, cosigned_at, signature) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&c.chain_id)
        .bind(&c.origin)
        .bind(c.tree_size)
        .bind(&c.root_hash)
        .bind(&c.witness_name)
        .bind(&c.witness_key)
        .bind(c.cosigned_at)
        .bind(&c.signature)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn cosignatures(&self, chain_id: &str) -> Result<Vec<CosignatureRow>> {
        type Row = (String, String, i64, Vec<u8>, String, Vec<u8>, i64, Vec<u8>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT chain_id, origin, tree_size, root_hash, witness_name, witness_key, \
             cosigned_at, signature FROM witness_cosignatures WHERE chain_id = $1 \
             ORDER BY tree_size, witness_name, cosigned_at",
        )
        .bind(chain_id)
        .fetch_all(&self.pool())
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
