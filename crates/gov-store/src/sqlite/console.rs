//! Console sign-in sessions on SQLite, stored by the SHA-256 of their token.

use gov_core::OperatorRole;

use super::{SqliteStore, from_us, now_us, to_us};
use crate::backend::SessionStore;
use crate::{ConsoleSession, NewSession, Result, StoreError, VerificationRow};

impl SessionStore for SqliteStore {
    async fn insert_session(&self, n: &NewSession<'_>) -> Result<bool> {
        let now = now_us();
        // One write transaction (the database's write lock): a reset, disable or role change
        // (`update_operator`) commits wholly before or after it.
        let (_turn, mut tx) = self.write_tx().await?;
        // Expired sessions are swept on each sign-in, so the table never grows without bound.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Only for the account as it was authenticated.
        let r = sqlx::query(
            "INSERT INTO console_sessions (token_hash, username, csrf_token, created_at, expires_at) \
             SELECT ?, username, ?, ?, ? FROM operators \
             WHERE username = ? AND password_hash = ? AND role = ? AND NOT disabled",
        )
        .bind(n.token_hash)
        .bind(n.csrf_token)
        .bind(now)
        .bind(to_us(n.expires_at))
        .bind(n.username)
        .bind(n.password_hash)
        .bind(n.role.as_str())
        .execute(&mut *tx)
        .await?;
        let started = r.rows_affected() == 1;
        if started {
            sqlx::query(
                "INSERT INTO console_sign_ins (username, signed_in_at) VALUES (?, ?) \
                 ON CONFLICT (username) DO UPDATE SET signed_in_at = excluded.signed_in_at",
            )
            .bind(n.username)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(started)
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<ConsoleSession>> {
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT s.username, o.role, s.csrf_token, s.expires_at \
             FROM console_sessions s JOIN operators o USING (username) \
             WHERE s.token_hash = ? AND s.expires_at > ? AND NOT o.disabled",
        )
        .bind(token_hash)
        .bind(now_us())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(username, role, csrf_token, expires)| {
            Ok(ConsoleSession {
                username,
                role: OperatorRole::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt("operator role".into()))?,
                csrf_token,
                expires_at: from_us(expires)?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = ?")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn last_sign_ins(&self) -> Result<Vec<(String, time::OffsetDateTime)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT username, signed_in_at FROM console_sign_ins ORDER BY username")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(u, at)| Ok((u, from_us(at)?)))
            .collect()
    }

    async fn put_verification(&self, row: &VerificationRow) -> Result<()> {
        let (_turn, mut tx) = self.write_tx().await?;
        let id = sqlx::query(
            "INSERT INTO chain_verifications (started_at, finished_at, status, summary) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(to_us(row.started_at))
        .bind(now_us())
        .bind(&row.status)
        .bind(&row.summary)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        sqlx::query("DELETE FROM chain_verifications WHERE id <= ?")
            .bind(id - 1000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn last_verification(&self) -> Result<Option<VerificationRow>> {
        let row: Option<(i64, String, String)> = sqlx::query_as(
            "SELECT started_at, status, summary FROM chain_verifications \
             ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(at, status, summary)| {
            Ok(VerificationRow {
                started_at: from_us(at)?,
                status,
                summary,
            })
        })
        .transpose()
    }
}
