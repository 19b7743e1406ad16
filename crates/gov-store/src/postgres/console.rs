//! Console sign-in sessions, stored by the SHA-256 of their token.

use time::OffsetDateTime;

use super::PgStore;
use crate::backend::SessionStore;
use crate::{ConsoleSession, NewSession, Result, StoreError, VerificationRow};
use gov_core::OperatorRole;

impl SessionStore for PgStore {
    async fn insert_session(&self, n: &NewSession<'_>) -> Result<bool> {
        // Expired sessions are swept on each sign-in, so the table never grows without bound.
        // language=PostgreSQL
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
            .execute(&self.pool())
            .await?;
        // Only for the account as it was authenticated, under a share lock on its row: a reset,
        // disable or role change (`update_operator`) either waits for this session and then
        // deletes it, or commits first and this inserts nothing.
        // language=PostgreSQL
        // The sign-in is recorded with the session, in the same statement.
        // language=PostgreSQL
        let r = sqlx::query(
            "WITH s AS (INSERT INTO console_sessions (token_hash, username, csrf_token, expires_at) \
                 SELECT $1, username, $3, $4 FROM operators \
                 WHERE username = $2 AND password_hash = $5 AND role = $6 AND NOT disabled \
                 FOR SHARE \
                 RETURNING username, created_at) \
             INSERT INTO console_sign_ins (username, signed_in_at) \
             SELECT username, created_at FROM s \
             ON CONFLICT (username) DO UPDATE SET signed_in_at = excluded.signed_in_at",
        )
        .bind(n.token_hash)
        .bind(n.username)
        .bind(n.csrf_token)
        .bind(n.expires_at)
        .bind(n.password_hash)
        .bind(n.role.as_str())
        .execute(&self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<ConsoleSession>> {
        let row: Option<(String, String, String, OffsetDateTime)> = sqlx::query_as(
            "SELECT s.username, o.role, s.csrf_token, s.expires_at \
             FROM console_sessions s JOIN operators o USING (username) \
             WHERE s.token_hash = $1 AND s.expires_at > now() AND NOT o.disabled",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool())
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
            .execute(&self.pool())
            .await?;
        Ok(())
    }

    async fn last_sign_ins(&self) -> Result<Vec<(String, OffsetDateTime)>> {
        // language=PostgreSQL
        Ok(
            sqlx::query_as("SELECT username, signed_in_at FROM console_sign_ins ORDER BY username")
                .fetch_all(&self.pool())
                .await?,
        )
    }

    async fn put_verification(&self, row: &VerificationRow) -> Result<()> {
        // language=PostgreSQL
        sqlx::query(
            "WITH i AS (INSERT INTO chain_verifications (started_at, status, summary) \
                 VALUES ($1, $2, $3) RETURNING id) \
             DELETE FROM chain_verifications \
             WHERE id <= (SELECT id FROM i) - 1000",
        )
        .bind(row.started_at)
        .bind(&row.status)
        .bind(&row.summary)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn last_verification(&self) -> Result<Option<VerificationRow>> {
        // language=PostgreSQL
        let row: Option<(OffsetDateTime, String, String)> = sqlx::query_as(
            "SELECT started_at, status, summary FROM chain_verifications \
             ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool())
        .await?;
        Ok(row.map(|(started_at, status, summary)| VerificationRow {
            started_at,
            status,
            summary,
        }))
    }
}
