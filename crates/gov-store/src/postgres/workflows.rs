//! Approval workflows on Postgres: operators' groups, workflows and routes (the owner's
//! tables), votes, escalation and expiry (`governance_escalate`, `governance_expire_gate`, in a
//! transaction with their event), and the deliveries of `governance notify`, leased with
//! `FOR UPDATE SKIP LOCKED` so that several runners never take the same one at once.

use gov_core::{AuditEvent, GateRecord, WorkflowRoute, WorkflowSpec};
use time::OffsetDateTime;
use uuid::Uuid;

use super::PgStore;
use super::gates::{GATE_COLUMNS, GateRow, gate_records};
use crate::backend::WorkflowStore;
use crate::{
    GateTransition, NewNotification, NotificationOutcome, NotificationRecord, Result, Sealer,
    StoreError, VoteRecord,
};

type WorkflowRow = (
    String,
    i32,
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
    i32,
    OffsetDateTime,
    Option<String>,
    OffsetDateTime,
    Option<OffsetDateTime>,
);

const NOTIFICATION_COLUMNS: &str = "id, request_id, event, channel, status, attempts, \
     next_attempt_at, last_error, created_at, delivered_at";

fn notification(r: NotificationRow) -> NotificationRecord {
    NotificationRecord {
        id: r.0,
        request_id: r.1,
        event: r.2,
        channel: r.3,
        status: r.4,
        attempts: u32::try_from(r.5).unwrap_or(0),
        next_attempt_at: r.6,
        last_error: r.7,
        created_at: r.8,
        delivered_at: r.9,
    }
}

fn secs(v: Option<u64>) -> Option<i64> {
    v.map(|s| i64::try_from(s).unwrap_or(i64::MAX))
}

impl WorkflowStore for PgStore {
    async fn set_operator_groups(&self, username: &str, groups: &[String]) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        // language=PostgreSQL
        let exists: Option<String> =
            sqlx::query_scalar("SELECT username FROM operators WHERE username = $1 FOR UPDATE")
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(false);
        }
        // language=PostgreSQL
        sqlx::query("DELETE FROM operator_groups WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO operator_groups (group_name, username) \
             SELECT DISTINCT g, $1 FROM unnest($2::text[]) AS g",
        )
        .bind(username)
        .bind(groups)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn operator_groups(&self) -> Result<Vec<(String, String)>> {
        // language=PostgreSQL
        Ok(sqlx::query_as(
            "SELECT group_name, username FROM operator_groups ORDER BY group_name, username",
        )
        .fetch_all(&self.pool())
        .await?)
    }

    async fn put_workflow(&self, w: &WorkflowSpec, by: &str) -> Result<()> {
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO approval_workflows (name, quorum, approver_group, escalate_to, \
                 escalate_after_secs, timeout_secs, updated_by, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
             ON CONFLICT (name) DO UPDATE SET quorum = EXCLUDED.quorum, \
                 approver_group = EXCLUDED.approver_group, escalate_to = EXCLUDED.escalate_to, \
                 escalate_after_secs = EXCLUDED.escalate_after_secs, \
                 timeout_secs = EXCLUDED.timeout_secs, updated_by = EXCLUDED.updated_by, \
                 updated_at = EXCLUDED.updated_at",
        )
        .bind(&w.name)
        .bind(i32::try_from(w.quorum).unwrap_or(i32::MAX))
        .bind(&w.approver_group)
        .bind(&w.escalate_to)
        .bind(secs(w.escalate_after_secs))
        .bind(secs(w.timeout_secs))
        .bind(by)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn delete_workflow(&self, name: &str) -> Result<bool> {
        // language=PostgreSQL
        let r = sqlx::query("DELETE FROM approval_workflows WHERE name = $1")
            .bind(name)
            .execute(&self.pool())
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "a route still names the workflow {name}; remove its routes first"
                )),
                other => other,
            })?;
        Ok(r.rows_affected() > 0)
    }

    async fn workflows(&self) -> Result<Vec<WorkflowSpec>> {
        // language=PostgreSQL
        let rows: Vec<WorkflowRow> = sqlx::query_as(
            "SELECT name, quorum, approver_group, escalate_to, escalate_after_secs, timeout_secs \
             FROM approval_workflows ORDER BY name",
        )
        .fetch_all(&self.pool())
        .await?;
        Ok(rows.into_iter().map(workflow).collect())
    }

    async fn put_route(&self, r: &WorkflowRoute) -> Result<()> {
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO approval_routes (agent_id, tool, workflow) VALUES ($1, $2, $3) \
             ON CONFLICT (agent_id, tool) DO UPDATE SET workflow = EXCLUDED.workflow",
        )
        .bind(&r.agent_id)
        .bind(&r.tool)
        .bind(&r.workflow)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn delete_route(&self, agent: &str, tool: &str) -> Result<bool> {
        // language=PostgreSQL
        let r = sqlx::query("DELETE FROM approval_routes WHERE agent_id = $1 AND tool = $2")
            .bind(agent)
            .bind(tool)
            .execute(&self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn routes(&self) -> Result<Vec<WorkflowRoute>> {
        // language=PostgreSQL
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT agent_id, tool, workflow FROM approval_routes ORDER BY agent_id, tool",
        )
        .fetch_all(&self.pool())
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
        // language=PostgreSQL
        let rows: Vec<(String, bool, String, OffsetDateTime)> = sqlx::query_as(
            "SELECT operator, approve, reason, voted_at FROM approval_votes \
             WHERE request_id = $1 ORDER BY voted_at, operator",
        )
        .bind(id)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(operator, approve, reason, voted_at)| VoteRecord {
                operator,
                approve,
                reason,
                voted_at,
            })
            .collect())
    }

    async fn due_gates(&self) -> Result<(Vec<GateRecord>, Vec<GateRecord>)> {
        let now = self.clock.now();
        let escalate = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests WHERE status = 'pending' \
             AND escalate_to IS NOT NULL AND escalated_at IS NULL AND escalates_at <= $1 \
             AND expires_at >= $1 ORDER BY escalates_at LIMIT 500"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(escalate))
            .bind(now)
            .fetch_all(&self.pool())
            .await?;
        let escalate = gate_records(rows)?;
        let expire = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests WHERE status = 'pending' \
             AND expires_at < $1 ORDER BY expires_at LIMIT 500"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(expire))
            .bind(now)
            .fetch_all(&self.pool())
            .await?;
        Ok((escalate, gate_records(rows)?))
    }

    async fn transition_gate(
        &self,
        id: Uuid,
        t: GateTransition,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        let mut tx = self.pool().begin().await?;
        let now = self.clock.now();
        let outcome: String = match t {
            // language=PostgreSQL
            GateTransition::Escalate => {
                sqlx::query_scalar("SELECT governance_escalate($1, $2)")
                    .bind(id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?
            }
            GateTransition::Expire => {
                // language=PostgreSQL
                sqlx::query_scalar("SELECT governance_expire_gate($1, $2, $3)")
                    .bind(id)
                    .bind("expired undecided")
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        if outcome == "ok" {
            self.commit_event(tx, event, key_id, seal).await?;
        } else {
            tx.rollback().await?;
        }
        Ok(outcome)
    }

    async fn recent_gates(&self, since: OffsetDateTime) -> Result<Vec<GateRecord>> {
        let sql = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests \
             WHERE requested_at >= $1 OR escalated_at >= $1 OR expired_at >= $1 \
                OR (status = 'pending' AND expires_at >= $1) \
             ORDER BY requested_at LIMIT 5000"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(since)
            .fetch_all(&self.pool())
            .await?;
        gate_records(rows)
    }

    async fn enqueue_notifications(&self, rows: &[NewNotification]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.request_id).collect();
        let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
        let channels: Vec<&str> = rows.iter().map(|r| r.channel.as_str()).collect();
        // language=PostgreSQL
        let r = sqlx::query(
            "INSERT INTO approval_notifications (request_id, event, channel, next_attempt_at, \
                 created_at) \
             SELECT u.id, u.event, u.channel, $4, $4 \
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, event, channel) \
             ON CONFLICT (request_id, event, channel) DO NOTHING",
        )
        .bind(&ids)
        .bind(&events)
        .bind(&channels)
        .bind(self.clock.now())
        .execute(&self.pool())
        .await?;
        Ok(r.rows_affected())
    }

    async fn claim_notifications(
        &self,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        let now = self.clock.now();
        let sql = format!(
            "UPDATE approval_notifications SET next_attempt_at = $2, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM approval_notifications \
                 WHERE status = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {NOTIFICATION_COLUMNS}"
        );
        let rows: Vec<NotificationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(now + lease)
            .bind(i64::from(limit))
            .fetch_all(&self.pool())
            .await?;
        let mut out: Vec<NotificationRecord> = rows.into_iter().map(notification).collect();
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    async fn finish_notification(&self, id: i64, outcome: &NotificationOutcome) -> Result<()> {
        let now = self.clock.now();
        let q = match outcome {
            // language=PostgreSQL
            NotificationOutcome::Delivered => sqlx::query(
                "UPDATE approval_notifications SET status = 'delivered', delivered_at = $2, \
                     last_error = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(now),
            // language=PostgreSQL
            NotificationOutcome::Retry { error, at } => sqlx::query(
                "UPDATE approval_notifications SET next_attempt_at = $2, last_error = $3 \
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(*at)
            .bind(error),
            // language=PostgreSQL
            NotificationOutcome::Dead { error } => sqlx::query(
                "UPDATE approval_notifications SET status = 'dead', last_error = $2 \
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(error),
        };
        q.execute(&self.pool()).await?;
        Ok(())
    }

    async fn notifications(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM approval_notifications \
             WHERE ($1::text IS NULL OR status = $1) ORDER BY id DESC LIMIT $2"
        );
        let rows: Vec<NotificationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(status)
            .bind(i64::from(limit))
            .fetch_all(&self.pool())
            .await?;
        Ok(rows.into_iter().map(notification).collect())
    }
}

fn workflow(r: WorkflowRow) -> WorkflowSpec {
    WorkflowSpec {
        name: r.0,
        quorum: u32::try_from(r.1).unwrap_or(1),
        approver_group: r.2,
        escalate_to: r.3,
        escalate_after_secs: r.4.and_then(|s| u64::try_from(s).ok()),
        timeout_secs: r.5.and_then(|s| u64::try_from(s).ok()),
    }
}
