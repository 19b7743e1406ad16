//! Operators and gate requests on SQLite. Decisions and consumption apply `gov_core::rules`
//! (`may_decide`, `may_consume`, which the Postgres functions `governance_decide` /
//! `governance_consume` run too) at the store's clock, in write transactions; a decision
//! commits with its audit event. SQLite has no roles, so who may decide is enforced by
//! these rules (operator exists, enabled, not a viewer, not the requesting agent) and by the
//! console and CLI, not by the database.

use gov_core::rules::{
    self, ApprovalView, DecidingOperator, PendingView, Presented, VoteView, Voter,
};
use gov_core::{AuditEvent, GateRecord, GateStatus, GateWorkflow, OperatorRole};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::append_in;
use super::{SqliteStore, from_us, now_us, to_us};
use crate::backend::GateStore;
use crate::{Decision, OperatorChange, OperatorRecord, Result, Sealer, StoreError};

#[derive(sqlx::FromRow)]
pub(super) struct GateRow {
    id: Uuid,
    agent_id: String,
    session_id: Option<String>,
    tool: String,
    action_hash: Vec<u8>,
    args: String,
    requested_at: i64,
    expires_at: i64,
    status: String,
    decided_by: Option<String>,
    decision_reason: Option<String>,
    token_expires_at: Option<i64>,
    workflow: Option<String>,
    quorum: i64,
    approvals: i64,
    approver_group: Option<String>,
    escalate_to: Option<String>,
    escalates_at: Option<i64>,
    escalated_at: Option<i64>,
    expired_at: Option<i64>,
    grant_id: Option<Uuid>,
}

/// (status, action_hash, token_hash, token_expires_at, agent_id, session_id)
type ConsumeRow = (
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<i64>,
    String,
    Option<String>,
    Option<Uuid>,
);

/// (name, quorum, approver_group, escalate_to, escalate_after_secs, timeout_secs)
type WorkflowRow = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A route's agent and tool, then its workflow.
type RouteRow = (
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// (agent_id, status, expires_at, quorum, approvals, approver_group, escalate_to,
/// escalated_at, session_id, tool)
type VoteRow = (
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
);

pub(super) const GATE_COLUMNS: &str = "id, agent_id, session_id, tool, action_hash, args, requested_at, expires_at, \
     status, decided_by, decision_reason, token_expires_at, workflow, quorum, approvals, \
     approver_group, escalate_to, escalates_at, escalated_at, expired_at, grant_id";

pub(super) fn gate(r: GateRow) -> Result<GateRecord> {
    let opt = |t: Option<i64>| t.map(from_us).transpose();
    Ok(GateRecord {
        id: r.id,
        agent_id: r.agent_id,
        session_id: r.session_id,
        tool: r.tool,
        action_hash: r.action_hash,
        args: r.args,
        requested_at: from_us(r.requested_at)?,
        expires_at: from_us(r.expires_at)?,
        status: GateStatus::parse(&r.status)
            .ok_or_else(|| StoreError::Corrupt("gate status".into()))?,
        decided_by: r.decided_by,
        decision_reason: r.decision_reason,
        token_expires_at: opt(r.token_expires_at)?,
        workflow: GateWorkflow {
            name: r.workflow,
            quorum: u32::try_from(r.quorum).unwrap_or(1),
            approvals: u32::try_from(r.approvals).unwrap_or(0),
            approver_group: r.approver_group,
            escalate_to: r.escalate_to,
            escalates_at: opt(r.escalates_at)?,
            escalated_at: opt(r.escalated_at)?,
            expired_at: opt(r.expired_at)?,
            grant_id: r.grant_id,
        },
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
        // The workflow is resolved here, in the insert's write transaction, from the routes (as
        // the Postgres trigger does); whatever the record says of it is not used.
        let (_turn, mut tx) = self.write_tx().await?;
        let start = to_us(g.requested_at).max(now_us());
        let routes: Vec<(String, String, WorkflowRow)> = sqlx::query_as(
            "SELECT r.agent_id, r.tool, w.name, w.quorum, w.approver_group, w.escalate_to, \
                 w.escalate_after_secs, w.timeout_secs \
             FROM approval_routes r JOIN approval_workflows w ON w.name = r.workflow \
             WHERE (r.agent_id = ? OR r.agent_id = '*') AND (r.tool = ? OR r.tool = '*')",
        )
        .bind(&g.agent_id)
        .bind(&g.tool)
        .fetch_all(&mut *tx)
        .await
        .map(|rows: Vec<RouteRow>| {
            rows.into_iter()
                .map(|r| (r.0, r.1, (r.2, r.3, r.4, r.5, r.6, r.7)))
                .collect()
        })?;
        let chosen = routes
            .into_iter()
            .filter_map(|(a, t, w)| rules::route_rank(&a, &t, &g.agent_id, &g.tool).map(|k| (k, w)))
            .max_by_key(|(k, _)| *k)
            .map(|(_, w)| w);
        let mut expires_at = to_us(g.expires_at);
        let (mut name, mut quorum, mut group, mut escalate_to, mut escalates_at) =
            (None, 1_i64, None, None, None);
        if let Some((n, q, grp, esc, after, timeout)) = chosen {
            name = Some(n);
            quorum = q;
            group = grp;
            escalate_to = esc;
            escalates_at = after.map(|a| start.saturating_add(a.saturating_mul(1_000_000)));
            if let Some(t) = timeout {
                expires_at = expires_at.min(start.saturating_add(t.saturating_mul(1_000_000)));
            }
        }
        let grant: Option<(Uuid, String, i64)> = match &g.session_id {
            Some(session) => {
                sqlx::query_as(
                    "SELECT id, granted_by, expires_at FROM approval_grants \
                     WHERE agent_id = ? AND session_id = ? AND tool = ? AND expires_at > ? \
                     ORDER BY expires_at DESC LIMIT 1",
                )
                .bind(&g.agent_id)
                .bind(session)
                .bind(&g.tool)
                .bind(start)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };
        sqlx::query(
            "INSERT INTO gate_requests (id, agent_id, session_id, tool, action_hash, args, \
                 requested_at, expires_at, workflow, quorum, approver_group, escalate_to, \
                 escalates_at, status, grant_id, decided_by, decided_at, decision_reason, \
                 token_expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(g.id)
        .bind(&g.agent_id)
        .bind(&g.session_id)
        .bind(&g.tool)
        .bind(&g.action_hash)
        .bind(&g.args)
        .bind(to_us(g.requested_at))
        .bind(expires_at)
        .bind(name)
        .bind(quorum)
        .bind(group)
        .bind(escalate_to)
        .bind(escalates_at)
        .bind(if grant.is_some() {
            "approved"
        } else {
            "pending"
        })
        .bind(grant.as_ref().map(|x| x.0))
        .bind(grant.as_ref().map(|x| x.1.clone()))
        .bind(grant.as_ref().map(|_| start))
        .bind(grant.as_ref().map(|_| "approved for the session"))
        .bind(grant.as_ref().map(|x| x.2))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let request: Option<VoteRow> = match op {
            Some(o) if !o.disabled && o.role >= OperatorRole::Operator => {
                sqlx::query_as(
                    "SELECT agent_id, status, expires_at, quorum, approvals, approver_group, \
                         escalate_to, escalated_at, session_id, tool \
                     FROM gate_requests WHERE id = ?",
                )
                .bind(d.id)
                .fetch_optional(&mut *tx)
                .await?
            }
            _ => None,
        };
        let view = request
            .as_ref()
            .map(|r| {
                Ok::<_, StoreError>(PendingView {
                    agent_id: &r.0,
                    status: GateStatus::parse(&r.1)
                        .ok_or_else(|| StoreError::Corrupt("gate status".into()))?,
                    expires_at: r.2,
                })
            })
            .transpose()?;
        if let Err(why) = rules::may_decide(d.operator, op, || view, now) {
            tx.rollback().await?;
            return Ok(why.as_str().into());
        }
        let Some(r) = request else {
            tx.rollback().await?;
            return Ok("unknown_request".into());
        };
        let groups: Vec<String> =
            sqlx::query_scalar("SELECT group_name FROM operator_groups WHERE username = ?")
                .bind(d.operator)
                .fetch_all(&mut *tx)
                .await?;
        let voted: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM approval_votes WHERE request_id = ? AND operator = ?",
        )
        .bind(d.id)
        .bind(d.operator)
        .fetch_optional(&mut *tx)
        .await?;
        let w = VoteView {
            quorum: u32::try_from(r.3).unwrap_or(1),
            approvals: u32::try_from(r.4).unwrap_or(0),
            approver_group: r.5.as_deref(),
            escalate_to: r.6.as_deref(),
            escalated: r.7.is_some(),
        };
        let voter = Voter {
            groups: &groups,
            voted: voted.is_some(),
        };
        let decides = match rules::may_vote(&w, &voter, d.approve, d.final_vote) {
            Ok(f) => f,
            Err(why) => {
                tx.rollback().await?;
                return Ok(why.as_str().into());
            }
        };
        sqlx::query(
            "INSERT INTO approval_votes (request_id, operator, approve, reason, voted_at, \
                 event_id) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(d.id)
        .bind(d.operator)
        .bind(d.approve)
        .bind(d.reason)
        .bind(now)
        .bind(event.event_id.as_uuid())
        .execute(&mut *tx)
        .await?;
        if decides {
            sqlx::query(
                "UPDATE gate_requests SET status = ?, decided_by = ?, decided_at = ?, \
                     decision_reason = ?, token_hash = ?, token_expires_at = ?, \
                     approvals = approvals + ? WHERE id = ?",
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
            .bind(i64::from(d.approve))
            .bind(d.id)
            .execute(&mut *tx)
            .await?;
            if let (true, Some((grant, until))) = (d.approve, d.grant) {
                let Some(session) = r.8.as_deref() else {
                    tx.rollback().await?;
                    return Err(StoreError::InvalidArgument(
                        "a request without a session cannot be approved for its session".into(),
                    ));
                };
                sqlx::query(
                    "INSERT INTO approval_grants (id, agent_id, session_id, tool, request_id, \
                         granted_by, granted_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(grant)
                .bind(&r.0)
                .bind(session)
                .bind(&r.9)
                .bind(d.id)
                .bind(d.operator)
                .bind(now)
                .bind(to_us(until))
                .execute(&mut *tx)
                .await?;
            }
            insert_oversight(&mut tx, event, d.operator, Some(d.id), d.reason).await?;
        } else {
            sqlx::query("UPDATE gate_requests SET approvals = approvals + 1 WHERE id = ?")
                .bind(d.id)
                .execute(&mut *tx)
                .await?;
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
        Ok(if decides { "ok" } else { "voted" }.into())
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
            "SELECT status, action_hash, token_hash, token_expires_at, agent_id, session_id, \
                 grant_id FROM gate_requests WHERE id = ?",
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
            .map(
                |(status, action, stored, expires, asker, asked_in, grant)| {
                    Ok::<_, StoreError>(ApprovalView {
                        status: GateStatus::parse(status)
                            .ok_or_else(|| StoreError::Corrupt("gate status".into()))?,
                        agent_id: asker,
                        session_id: asked_in.as_deref(),
                        action_hash: action,
                        token_hash: stored.as_deref(),
                        token_expires_at: *expires,
                        granted: grant.is_some(),
                    })
                },
            )
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
