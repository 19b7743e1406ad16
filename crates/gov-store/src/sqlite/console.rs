//! Console sign-in sessions on SQLite, stored by the SHA-256 of their token.

use gov_core::OperatorRole;
use time::OffsetDateTime;

use super::{SqliteStore, from_us, now_us, to_us};
use crate::backend::SessionStore;
use crate::{ConsoleSession, Result, StoreError};

impl SessionStore for SqliteStore {
    async fn insert_session(
        &self,
        token_hash: &[u8],
        username: &str,
        csrf_token: &str,
        expires_at: OffsetDateTime,
    ) -> Result<()> {
        let now = now_us();
        let (_turn, mut tx) = self.write_tx().await?;
        // Expired sessions are swept on each sign-in, so the table never grows without bound.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, username, csrf_token, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(token_hash)
        .bind(username)
        .bind(csrf_token)
        .bind(now)
        .bind(to_us(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
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
}
