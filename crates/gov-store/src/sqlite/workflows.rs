//! Approval workflows on SQLite: the same tables as on Postgres, with the rules of
//! `gov_core::rules` (`may_escalate`, `may_expire`) applied in `BEGIN IMMEDIATE` transactions
//! on the store's clock. Deliveries are leased in one write transaction, so runners never take
//! the same one at once.

use gov_core::rules::transitions;
use gov_core::{AuditEvent, GateRecord, GateStatus, WorkflowRoute, WorkflowSpec};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::append_in;
use super::gates::{GATE_COLUMNS, GateRow, gate};
use super::{SqliteStore, from_us, to_us};
use crate::backend::WorkflowStore;
use crate::{
    GateTransition, NewNotification, NotificationOutcome, NotificationRecord, Result, Sealer,
    StoreError, VoteRecord,
};

type WorkflowRow = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

type NotificationRow = (
    i64,
    Uuid,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    Option<i64>,
);

const NOTIFICATION_COLUMNS: &str = "id, request_id, event, channel, status, attempts, \
     next_attempt_at, last_error, created_at, delivered_at";

fn notification(r: NotificationRow) -> Result<NotificationRecord> {
    Ok(NotificationRecord {
        id: r.0,
        request_id: r.1,
        event: r.2,
        channel: r.3,
        status: r.4,
        attempts: u32::try_from(r.5).unwrap_or(0),
        next_attempt_at: from_us(r.6)?,
        last_error: r.7,
        created_at: from_us(r.8)?,
        delivered_at: r.9.map(from_us).transpose()?,
    })
}

fn secs(v: Option<u64>) -> Option<i64> {
    v.map(|s| i64::try_from(s).unwrap_or(i64::MAX))
}

fn gates(rows: Vec<GateRow>) -> Result<Vec<GateRecord>> {
    rows.into_iter().map(gate).collect()
}

impl WorkflowStore for SqliteStore {
    async fn set_operator_groups(&self, username: &str, groups: &[String]) -> Result<bool> {
        let (_turn, mut tx) = self.write_tx().await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT username FROM operators WHERE username = ?")
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM operator_groups WHERE username = ?")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        for g in groups {
            sqlx::query(
                "INSERT OR IGNORE INTO operator_groups (group_name, username) VALUES (?, ?)",
            )
            .bind(g)
            .bind(username)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn operator_groups(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT group_name, username FROM operator_groups ORDER BY group_name, username",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn put_workflow(&self, w: &WorkflowSpec, by: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO approval_workflows (name, quorum, approver_group, escalate_to, \
                 escalate_after_secs, timeout_secs, updated_by, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET quorum = excluded.quorum, \
                 approver_group = excluded.approver_group, escalate_to = excluded.escalate_to, \
                 escalate_after_secs = excluded.escalate_after_secs, \
                 timeout_secs = excluded.timeout_secs, updated_by = excluded.updated_by, \
                 updated_at = excluded.updated_at",
        )
        .bind(&w.name)
        .bind(i64::from(w.quorum))
        .bind(&w.approver_group)
        .bind(&w.escalate_to)
        .bind(secs(w.escalate_after_secs))
        .bind(secs(w.timeout_secs))
        .bind(by)
        .bind(super::now_us())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_workflow(&self, name: &str) -> Result<bool> {
        let (_turn, mut tx) = self.write_tx().await?;
        let used: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM approval_routes WHERE workflow = ? LIMIT 1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if used.is_some() {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "a route still names the workflow {name}; remove its routes first"
            )));
        }
        let r = sqlx::query("DELETE FROM approval_workflows WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    async fn workflows(&self) -> Result<Vec<WorkflowSpec>> {
        let rows: Vec<WorkflowRow> = sqlx::query_as(
            "SELECT name, quorum, approver_group, escalate_to, escalate_after_secs, timeout_secs \
             FROM approval_workflows ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| WorkflowSpec {
                name: r.0,
                quorum: u32::try_from(r.1).unwrap_or(1),
                approver_group: r.2,
                escalate_to: r.3,
                escalate_after_secs: r.4.and_then(|s| u64::try_from(s).ok()),
                timeout_secs: r.5.and_then(|s| u64::try_from(s).ok()),
            })
            .collect())
    }

    async fn put_route(&self, r: &WorkflowRoute) -> Result<()> {
        let (_turn, mut tx) = self.write_tx().await?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM approval_workflows WHERE name = ?")
                .bind(&r.workflow)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "no workflow named {}",
                r.workflow
            )));
        }
        sqlx::query(
            "INSERT INTO approval_routes (agent_id, tool, workflow) VALUES (?, ?, ?) \
             ON CONFLICT (agent_id, tool) DO UPDATE SET workflow = excluded.workflow",
        )
        .bind(&r.agent_id)
        .bind(&r.tool)
        .bind(&r.workflow)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_route(&self, agent: &str, tool: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM approval_routes WHERE agent_id = ? AND tool = ?")
            .bind(agent)
            .bind(tool)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn routes(&self) -> Result<Vec<WorkflowRoute>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT agent_id, tool, workflow FROM approval_routes ORDER BY agent_id, tool",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(agent_id, tool, workflow)| WorkflowRoute {
                agent_id,
                tool,
                workflow,
            })
            .collect())
    }

    async fn gate_votes(&self, id: Uuid) -> Result<Vec<VoteRecord>> {
        let rows: Vec<(String, bool, String, i64)> = sqlx::query_as(
            "SELECT operator, approve, reason, voted_at FROM approval_votes \
             WHERE request_id = ? ORDER BY voted_at, operator",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(operator, approve, reason, at)| {
                Ok(VoteRecord {
                    operator,
                    approve,
                    reason,
                    voted_at: from_us(at)?,
                })
            })
            .collect()
    }

    async fn due_gates(&self) -> Result<(Vec<GateRecord>, Vec<GateRecord>)> {
        let now = self.clock.now_us();
        let sql = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests WHERE status = 'pending' \
             AND escalate_to IS NOT NULL AND escalated_at IS NULL AND escalates_at <= ? \
             AND expires_at >= ? ORDER BY escalates_at LIMIT 500"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        let escalate = gates(rows)?;
        let sql = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests WHERE status = 'pending' \
             AND expires_at < ? ORDER BY expires_at LIMIT 500"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok((escalate, gates(rows)?))
    }

    async fn transition_gate(
        &self,
        id: Uuid,
        t: GateTransition,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        let (_turn, mut tx) = self.write_tx().await?;
        let now = self.clock.now_us();
        type Row = (String, i64, Option<String>, Option<i64>, Option<i64>);
        let r: Option<Row> = sqlx::query_as(
            "SELECT status, expires_at, escalate_to, escalates_at, escalated_at \
             FROM gate_requests WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let status = r
            .as_ref()
            .map(|r| {
                GateStatus::parse(&r.0).ok_or_else(|| StoreError::Corrupt("gate status".into()))
            })
            .transpose()?;
        let expires_at = r.as_ref().map_or(0, |r| r.1);
        let verdict = match t {
            GateTransition::Escalate => transitions::may_escalate(
                status,
                expires_at,
                r.as_ref().and_then(|r| r.2.as_deref()),
                r.as_ref().and_then(|r| r.3),
                r.as_ref().is_some_and(|r| r.4.is_some()),
                now,
            ),
            GateTransition::Expire => transitions::may_expire(status, expires_at, now),
        };
        if let Err(why) = verdict {
            tx.rollback().await?;
            return Ok(why.into());
        }
        match t {
            GateTransition::Escalate => {
                sqlx::query("UPDATE gate_requests SET escalated_at = ? WHERE id = ?")
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            GateTransition::Expire => {
                sqlx::query(
                    "UPDATE gate_requests SET status = 'denied', decided_at = ?, \
                         decision_reason = 'expired undecided', expired_at = ? WHERE id = ?",
                )
                .bind(now)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
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

    async fn recent_gates(&self, since: OffsetDateTime) -> Result<Vec<GateRecord>> {
        let since = to_us(since);
        let sql = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests \
             WHERE requested_at >= ? OR escalated_at >= ? OR expired_at >= ? \
                OR (status = 'pending' AND expires_at >= ?) \
             ORDER BY requested_at LIMIT 5000"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(since)
            .bind(since)
            .bind(since)
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        gates(rows)
    }

    async fn enqueue_notifications(&self, rows: &[NewNotification]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let (_turn, mut tx) = self.write_tx().await?;
        let now = self.clock.now_us();
        let mut n = 0;
        for r in rows {
            n += sqlx::query(
                "INSERT OR IGNORE INTO approval_notifications (request_id, event, channel, \
                     next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(r.request_id)
            .bind(&r.event)
            .bind(&r.channel)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn claim_notifications(
        &self,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        let (_turn, mut tx) = self.write_tx().await?;
        let now = self.clock.now_us();
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM approval_notifications \
             WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id \
             LIMIT ?"
        );
        let rows: Vec<NotificationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for mut r in rows {
            sqlx::query(
                "UPDATE approval_notifications SET next_attempt_at = ?, attempts = attempts + 1 \
                 WHERE id = ?",
            )
            .bind(until)
            .bind(r.0)
            .execute(&mut *tx)
            .await?;
            r.5 += 1;
            r.6 = until;
            out.push(notification(r)?);
        }
        tx.commit().await?;
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    async fn finish_notification(&self, id: i64, outcome: &NotificationOutcome) -> Result<()> {
        let now = self.clock.now_us();
        let q = match outcome {
            NotificationOutcome::Delivered => sqlx::query(
                "UPDATE approval_notifications SET status = 'delivered', delivered_at = ?, \
                     last_error = NULL WHERE id = ?",
            )
            .bind(now)
            .bind(id),
            NotificationOutcome::Retry { error, at } => sqlx::query(
                "UPDATE approval_notifications SET next_attempt_at = ?, last_error = ? \
                 WHERE id = ? AND status = 'pending'",
            )
            .bind(to_us(*at))
            .bind(error)
            .bind(id),
            NotificationOutcome::Dead { error } => sqlx::query(
                "UPDATE approval_notifications SET status = 'dead', last_error = ? \
                 WHERE id = ? AND status = 'pending'",
            )
            .bind(error)
            .bind(id),
        };
        q.execute(&self.pool).await?;
        Ok(())
    }

    async fn notifications(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM approval_notifications \
             WHERE (? IS NULL OR status = ?) ORDER BY id DESC LIMIT ?"
        );
        let rows: Vec<NotificationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(status)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(notification).collect()
    }
}
