//! Operators and gate requests on SQLite. Decisions and consumption apply `gov_core::rules`
//! (`may_decide`, `may_consume`, which the Postgres functions `governance_decide` /
//! `governance_consume` run too) at the store's clock, in write transactions; a decision
//! commits with its audit event. SQLite has no roles, so who may decide is enforced by
//! these rules (operator exists, enabled, not a viewer, not the requesting agent) and by the
//! console and CLI, not by the database.

use gov_core::rules::{self, ApprovalView, DecidingOperator, PendingView, Presented};
use gov_core::{AuditEvent, GateRecord, GateStatus, OperatorRole};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::append_in;
use super::{SqliteStore, from_us, now_us, to_us};
use crate::backend::GateStore;
use crate::{Decision, OperatorChange, OperatorRecord, Result, Sealer, StoreError};

type GateRow = (
    Uuid,
    String,
    Option<String>,
    String,
    Vec<u8>,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// (status, action_hash, token_hash, token_expires_at, agent_id, session_id)
type ConsumeRow = (
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<i64>,
    String,
    Option<String>,
);

const GATE_COLUMNS: &str = "id, agent_id, session_id, tool, action_hash, args, requested_at, expires_at, \
     status, decided_by, decision_reason, token_expires_at";

fn gate(r: GateRow) -> Result<GateRecord> {
    let (
        id,
        agent_id,
        session_id,
        tool,
        action_hash,
        args,
        requested_at,
        expires_at,
        status,
        decided_by,
        decision_reason,
        token_expires_at,
    ) = r;
    Ok(GateRecord {
        id,
        agent_id,
        session_id,
        tool,
        action_hash,
        args,
        requested_at: from_us(requested_at)?,
        expires_at: from_us(expires_at)?,
        status: GateStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt("gate status".into()))?,
        decided_by,
        decision_reason,
        token_expires_at: token_expires_at.map(from_us).transpose()?,
    })
}

fn role(r: &str) -> Result<OperatorRole> {
    OperatorRole::parse(r).ok_or_else(|| StoreError::Corrupt("operator role".into()))
}

impl GateStore for SqliteStore {
    async fn add_operator(
        &self,
        username: &str,
        role: OperatorRole,
        password_hash: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO operators (username, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(username)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(now_us())
        .execute(&self.pool)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("an operator named {username} already exists"))
            }
            other => other,
        })?;
        Ok(())
    }

    async fn operators(&self) -> Result<Vec<(String, OperatorRole, bool, OffsetDateTime)>> {
        let rows: Vec<(String, String, bool, i64)> = sqlx::query_as(
            "SELECT username, role, disabled, created_at FROM operators ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(u, r, d, c)| Ok((u, role(&r)?, d, from_us(c)?)))
            .collect()
    }

    async fn update_operator(&self, username: &str, change: &OperatorChange<'_>) -> Result<bool> {
        // One write transaction (the database's write lock): no sign-in interleaves with it.
        let (_turn, mut tx) = self.write_tx().await?;
        let r = sqlx::query(
            "UPDATE operators SET disabled = COALESCE(?, disabled), \
                 password_hash = COALESCE(?, password_hash), role = COALESCE(?, role) \
             WHERE username = ?",
        )
        .bind(change.disabled)
        .bind(change.password_hash)
        .bind(change.role.map(OperatorRole::as_str))
        .bind(username)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM console_sessions WHERE username = ?")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn operator(&self, username: &str) -> Result<Option<OperatorRecord>> {
        let row: Option<(String, String, String, bool)> = sqlx::query_as(
            "SELECT username, role, password_hash, disabled FROM operators WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(username, r, password_hash, disabled)| {
            Ok(OperatorRecord {
                username,
                role: role(&r)?,
                password_hash,
                disabled,
            })
        })
        .transpose()
    }

    async fn insert_gate_request(&self, g: &GateRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO gate_requests (id, agent_id, session_id, tool, action_hash, args, \
                 requested_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(g.id)
        .bind(&g.agent_id)
        .bind(&g.session_id)
        .bind(&g.tool)
        .bind(&g.action_hash)
        .bind(&g.args)
        .bind(to_us(g.requested_at))
        .bind(to_us(g.expires_at))
        .execute(&self.pool)
        .await?;
        self.written().await;
        Ok(())
    }

    async fn gate_request(&self, id: Uuid) -> Result<Option<GateRecord>> {
        let sql = format!("SELECT {GATE_COLUMNS} FROM gate_requests WHERE id = ?");
        let row: Option<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(gate).transpose()
    }

    async fn pending_gates(&self) -> Result<Vec<GateRecord>> {
        let sql = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests WHERE status = 'pending' AND expires_at > ? \
             ORDER BY requested_at"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.clock.now_us())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(gate).collect()
    }

    async fn decide_gate(
        &self,
        d: &Decision<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        let (_turn, mut tx) = self.write_tx().await?;
        let op: Option<(String, bool)> =
            sqlx::query_as("SELECT role, disabled FROM operators WHERE username = ?")
                .bind(d.operator)
                .fetch_optional(&mut *tx)
                .await?;
        let op = op
            .map(|(r, disabled)| {
                Ok::<_, StoreError>(DecidingOperator {
                    role: role(&r)?,
                    disabled,
                })
            })
            .transpose()?;
        let now = self.clock.now_us();
        // The request is read only once the operator may decide (as on Postgres).
        let request: Option<(String, String, i64)> = match op {
            Some(o) if !o.disabled && o.role >= OperatorRole::Operator => {
                sqlx::query_as(
                    "SELECT agent_id, status, expires_at FROM gate_requests WHERE id = ?",
                )
                .bind(d.id)
                .fetch_optional(&mut *tx)
                .await?
            }
            _ => None,
        };
        let request = request
            .as_ref()
            .map(|(agent, status, expires_at)| {
                Ok::<_, StoreError>(PendingView {
                    agent_id: agent,
                    status: GateStatus::parse(status)
                        .ok_or_else(|| StoreError::Corrupt("gate status".into()))?,
                    expires_at: *expires_at,
                })
            })
            .transpose()?;
        if let Err(why) = rules::may_decide(d.operator, op, || request, now) {
            tx.rollback().await?;
            return Ok(why.as_str().into());
        }
        sqlx::query(
            "UPDATE gate_requests SET status = ?, decided_by = ?, decided_at = ?, \
                 decision_reason = ?, token_hash = ?, token_expires_at = ? WHERE id = ?",
        )
        .bind(if d.approve { "approved" } else { "denied" })
        .bind(d.operator)
        .bind(now)
        .bind(d.reason)
        .bind(if d.approve { d.token_hash } else { None })
        .bind(if d.approve {
            d.token_expires_at.map(to_us)
        } else {
            None
        })
        .bind(d.id)
        .execute(&mut *tx)
        .await?;
        insert_oversight(&mut tx, event, d.operator, Some(d.id), d.reason).await?;
        append_in(
            &mut tx,
            event.chain_id.as_str(),
            key_id,
            std::slice::from_ref(event),
            seal,
        )
        .await?;
        tx.commit().await?;
        self.written().await;
        Ok("ok".into())
    }

    async fn consume_gate(
        &self,
        id: Uuid,
        token_hash: &[u8],
        action_hash: &[u8],
        agent: &str,
        session: Option<&str>,
    ) -> Result<String> {
        let (_turn, mut tx) = self.write_tx().await?;
        let r: Option<ConsumeRow> = sqlx::query_as(
            "SELECT status, action_hash, token_hash, token_expires_at, agent_id, session_id \
             FROM gate_requests WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let now = self.clock.now_us();
        let presented = Presented {
            token_hash,
            action_hash,
            agent_id: agent,
            session_id: session,
        };
        let view = r
            .as_ref()
            .map(|(status, action, stored, expires, asker, asked_in)| {
                Ok::<_, StoreError>(ApprovalView {
                    status: GateStatus::parse(status)
                        .ok_or_else(|| StoreError::Corrupt("gate status".into()))?,
                    agent_id: asker,
                    session_id: asked_in.as_deref(),
                    action_hash: action,
                    token_hash: stored.as_deref(),
                    token_expires_at: *expires,
                })
            })
            .transpose()?;
        let outcome = match rules::may_consume(view, &presented, now) {
            Err(why) => why.as_str(),
            Ok(()) => {
                sqlx::query(
                    "UPDATE gate_requests SET status = 'consumed', consumed_at = ? WHERE id = ?",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                "ok"
            }
        };
        tx.commit().await?;
        if outcome == "ok" {
            self.written().await;
        }
        Ok(outcome.into())
    }
}

/// Writes the oversight record backing `event` (a decision, halt or resume by `operator`) in the
/// operator path's transaction.
pub(crate) async fn insert_oversight(
    conn: &mut sqlx::SqliteConnection,
    event: &AuditEvent,
    operator: &str,
    request_id: Option<Uuid>,
    reason: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO oversight_decisions (event_id, kind, agent_id, operator, request_id, reason, \
             decided_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event.event_id.as_uuid())
    .bind(&event.kind)
    .bind(event.agent_id.as_str())
    .bind(operator)
    .bind(request_id)
    .bind(reason)
    .bind(now_us())
    .execute(conn)
    .await?;
    Ok(())
}
