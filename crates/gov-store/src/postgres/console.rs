//! Console sign-in sessions, stored by the SHA-256 of their token.

use time::OffsetDateTime;

use super::PgStore;
use crate::backend::SessionStore;
use crate::{ConsoleSession, Result, StoreError};
use gov_core::OperatorRole;

impl SessionStore for PgStore {
    async fn insert_session(
        &self,
        token_hash: &[u8],
        username: &str,
        csrf_token: &str,
        expires_at: OffsetDateTime,
    ) -> Result<()> {
        // Expired sessions are swept on each sign-in, so the table never grows without bound.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, username, csrf_token, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(username)
        .bind(csrf_token)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<ConsoleSession>> {
        let row: Option<(String, String, String, OffsetDateTime)> = sqlx::query_as(
            "SELECT s.username, o.role, s.csrf_token, s.expires_at \
             FROM console_sessions s JOIN operators o USING (username) \
             WHERE s.token_hash = $1 AND s.expires_at > now() AND NOT o.disabled",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(username, role, csrf_token, expires_at)| {
            Ok(ConsoleSession {
                username,
                role: OperatorRole::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt("operator role".into()))?,
                csrf_token,
                expires_at,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
