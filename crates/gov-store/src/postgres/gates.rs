//! Operators and gate requests. Decisions and consumption go through the SECURITY DEFINER
//! functions of the gates migration; a decision commits in one transaction with its audit event.

use gov_core::{AuditEvent, GateRecord, GateStatus, GateWorkflow, OperatorRole};
use sqlx::FromRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::PgStore;
use super::budget::{OPTIMISTIC_TRIES, TURN_PATIENCE, sealed_after, stale_head};
use crate::backend::GateStore;
use crate::{Decision, OperatorChange, OperatorRecord, Result, Sealer, StoreError};

#[derive(FromRow)]
pub(super) struct GateRow {
    id: Uuid,
    agent_id: String,
    session_id: Option<String>,
    tool: String,
    action_hash: Vec<u8>,
    args: String,
    requested_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    status: String,
    decided_by: Option<String>,
    decision_reason: Option<String>,
    token_expires_at: Option<OffsetDateTime>,
    workflow: Option<String>,
    quorum: i32,
    approvals: i32,
    approver_group: Option<String>,
    escalate_to: Option<String>,
    escalates_at: Option<OffsetDateTime>,
    escalated_at: Option<OffsetDateTime>,
    expired_at: Option<OffsetDateTime>,
    grant_id: Option<Uuid>,
}

impl TryFrom<GateRow> for GateRecord {
    type Error = StoreError;
    fn try_from(r: GateRow) -> Result<Self> {
        Ok(GateRecord {
            id: r.id,
            agent_id: r.agent_id,
            session_id: r.session_id,
            tool: r.tool,
            action_hash: r.action_hash,
            args: r.args,
            requested_at: r.requested_at,
            expires_at: r.expires_at,
            status: GateStatus::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt("gate status".into()))?,
            decided_by: r.decided_by,
            decision_reason: r.decision_reason,
            token_expires_at: r.token_expires_at,
            workflow: GateWorkflow {
                name: r.workflow,
                quorum: u32::try_from(r.quorum).unwrap_or(1),
                approvals: u32::try_from(r.approvals).unwrap_or(0),
                approver_group: r.approver_group,
                escalate_to: r.escalate_to,
                escalates_at: r.escalates_at,
                escalated_at: r.escalated_at,
                expired_at: r.expired_at,
                grant_id: r.grant_id,
            },
        })
    }
}

pub(super) const GATE_COLUMNS: &str = "id, agent_id, session_id, tool, action_hash, args, requested_at, expires_at, \
     status, decided_by, decision_reason, token_expires_at, workflow, quorum, approvals, \
     approver_group, escalate_to, escalates_at, escalated_at, expired_at, grant_id";

pub(super) fn gate_records(rows: Vec<GateRow>) -> Result<Vec<GateRecord>> {
    rows.into_iter().map(TryInto::try_into).collect()
}

impl GateStore for PgStore {
    async fn add_operator(
        &self,
        username: &str,
        role: OperatorRole,
        password_hash: &str,
    ) -> Result<()> {
        // language=PostgreSQL
        sqlx::query("INSERT INTO operators (username, role, password_hash) VALUES ($1, $2, $3)")
            .bind(username)
            .bind(role.as_str())
            .bind(password_hash)
            .execute(&self.pool())
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
        // language=PostgreSQL
        let rows: Vec<(String, String, bool, OffsetDateTime)> = sqlx::query_as(
            "SELECT username, role, disabled, created_at FROM operators ORDER BY username",
        )
        .fetch_all(&self.pool())
        .await?;
        rows.into_iter()
            .map(|(u, r, d, c)| {
                let role = OperatorRole::parse(&r)
                    .ok_or_else(|| StoreError::Corrupt("operator role".into()))?;
                Ok((u, role, d, c))
            })
            .collect()
    }

    async fn update_operator(&self, username: &str, change: &OperatorChange<'_>) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        // language=PostgreSQL
        let r = sqlx::query(
            "UPDATE operators SET disabled = COALESCE($2, disabled), \
                 password_hash = COALESCE($3, password_hash), role = COALESCE($4, role) \
             WHERE username = $1",
        )
        .bind(username)
        .bind(change.disabled)
        .bind(change.password_hash)
        .bind(change.role.map(OperatorRole::as_str))
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        // The UPDATE holds the account's row lock until commit: a sign-in that locked the row
        // first (`insert_session`) committed its session before this statement's snapshot, so it
        // is deleted here; one that comes after finds the changed row and starts nothing.
        // language=PostgreSQL
        sqlx::query("DELETE FROM console_sessions WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn operator(&self, username: &str) -> Result<Option<OperatorRecord>> {
        // language=PostgreSQL
        let row: Option<(String, String, String, bool)> = sqlx::query_as(
            "SELECT username, role, password_hash, disabled FROM operators WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool())
        .await?;
        row.map(|(username, role, password_hash, disabled)| {
            Ok(OperatorRecord {
                username,
                role: OperatorRole::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt("operator role".into()))?,
                password_hash,
                disabled,
            })
        })
        .transpose()
    }

    async fn insert_gate_request(&self, g: &GateRecord) -> Result<()> {
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO gate_requests (id, agent_id, session_id, tool, action_hash, args, requested_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(g.id)
        .bind(&g.agent_id)
        .bind(&g.session_id)
        .bind(&g.tool)
        .bind(&g.action_hash)
        .bind(&g.args)
        .bind(g.requested_at)
        .bind(g.expires_at)
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn gate_request(&self, id: Uuid) -> Result<Option<GateRecord>> {
        // A hot read (an agent waiting for its decision re-reads it when woken).
        let sql = format!("SELECT {GATE_COLUMNS} FROM gate_requests WHERE id = $1");
        let row = super::hot!(self, |c| {
            sqlx::query_as::<_, GateRow>(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .fetch_optional(c)
        })?;
        row.map(TryInto::try_into).transpose()
    }

    async fn pending_gates(&self) -> Result<Vec<GateRecord>> {
        let sql = format!(
            "SELECT {GATE_COLUMNS} FROM gate_requests WHERE status = 'pending' AND expires_at > $1 ORDER BY requested_at"
        );
        let rows: Vec<GateRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.clock.now())
            .fetch_all(&self.pool())
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// One round trip when the cached head is current (`governance_vote_logged`); else the
    /// transaction that locks the head itself.
    async fn decide_gate(
        &self,
        d: &Decision<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        let chain = event.chain_id.as_str();
        let tip = self.heads.tip(chain);
        {
            let _turn = tokio::time::timeout(TURN_PATIENCE, tip.turn.lock())
                .await
                .ok();
            let mut head = self.expected_head(&tip, chain).await?;
            for _ in 0..OPTIMISTIC_TRIES {
                let record = sealed_after(event, key_id, seal, &head);
                // language=PostgreSQL
                let q = sqlx::query_as(
                    "SELECT * FROM governance_vote_logged($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, \
                     $25, $26)",
                )
                .bind(d.id)
                .bind(d.operator)
                .bind(d.approve)
                .bind(d.reason)
                .bind(d.token_hash)
                .bind(d.token_expires_at)
                .bind(self.clock.now())
                .bind(d.final_vote)
                .bind(d.grant.map(|g| g.0))
                .bind(d.grant.map(|g| g.1))
                .bind(record.event_id.as_uuid())
                .bind(&record.kind)
                .bind(&record.agent_id)
                .bind(&record.chain_id)
                .bind(head.0)
                .bind(&head.1)
                .bind(record.occurred_at)
                .bind(&record.session_id)
                .bind(&record.actor)
                .bind(record.parent_event_id.map(|p| p.as_uuid()))
                .bind(&record.payload)
                .bind(&record.key_id)
                .bind(&record.row_hmac)
                .bind(&record.signature)
                .bind(&record.signer_key_id)
                .bind(&record.signature_status);
                let (outcome, seq, hmac): (String, Option<i64>, Option<Vec<u8>>) =
                    q.fetch_one(&self.pool()).await?;
                match outcome.as_str() {
                    "ok" | "voted" => {
                        tip.committed((head.0 + 1, record.row_hmac));
                        return Ok(outcome);
                    }
                    "stale" => {
                        head = stale_head(seq, hmac)?;
                        tip.observed(head.clone());
                    }
                    _ => return Ok(outcome),
                }
            }
        }
        self.decide_gate_locking(d, event, key_id, seal).await
    }

    async fn consume_gate(
        &self,
        id: Uuid,
        token_hash: &[u8],
        action_hash: &[u8],
        agent: &str,
        session: Option<&str>,
    ) -> Result<String> {
        // language=PostgreSQL
        let outcome: String =
            sqlx::query_scalar("SELECT governance_consume($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(token_hash)
                .bind(action_hash)
                .bind(agent)
                .bind(session)
                .bind(self.clock.now())
                .fetch_one(&self.pool())
                .await?;
        Ok(outcome)
    }
}

/// Who decided what, for [`PgStore::commit_oversight`].
pub(crate) struct Oversight<'a> {
    pub(crate) operator: &'a str,
    pub(crate) request_id: Option<Uuid>,
    pub(crate) reason: &'a str,
}

impl PgStore {
    /// [`GateStore::decide_gate`] in a transaction that locks the head itself: never stale.
    async fn decide_gate_locking(
        &self,
        d: &Decision<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        let mut tx = self.pool().begin().await?;
        // language=PostgreSQL
        let outcome: String = sqlx::query_scalar(
            "SELECT governance_vote($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(d.id)
        .bind(d.operator)
        .bind(d.approve)
        .bind(d.reason)
        .bind(d.token_hash)
        .bind(d.token_expires_at)
        .bind(self.clock.now())
        .bind(d.final_vote)
        .bind(event.event_id.as_uuid())
        .bind(d.grant.map(|g| g.0))
        .bind(d.grant.map(|g| g.1))
        .fetch_one(&mut *tx)
        .await?;
        match outcome.as_str() {
            "ok" => {
                let oversight = Oversight {
                    operator: d.operator,
                    request_id: Some(d.id),
                    reason: d.reason,
                };
                self.commit_oversight(tx, event, &oversight, key_id, seal)
                    .await?;
            }
            // A vote that does not decide: its approval_votes row backs its event.
            "voted" => self.commit_event(tx, event, key_id, seal).await?,
            _ => tx.rollback().await?,
        }
        Ok(outcome)
    }

    /// Finishes an operator path's transaction: the oversight record backing `event`, then
    /// `event` sealed onto its chain, then the commit (and the head cache).
    pub(crate) async fn commit_oversight(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        event: &AuditEvent,
        o: &Oversight<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<()> {
        insert_oversight(&mut tx, event, o.operator, o.request_id, o.reason).await?;
        self.commit_event(tx, event, key_id, seal).await
    }

    /// Finishes a transaction with `event` sealed onto its chain, then the commit (and the
    /// head cache).
    pub(crate) async fn commit_event(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<()> {
        let sealed = super::heads::Recording::new(seal);
        super::audit::append_in(
            &mut tx,
            event.chain_id.as_str(),
            key_id,
            std::slice::from_ref(event),
            &|row| sealed.seal(row),
        )
        .await?;
        tx.commit().await?;
        self.heads.committed(event.chain_id.as_str(), sealed.last());
        Ok(())
    }
}

/// Writes the oversight record backing `event` (a decision, halt or resume by `operator`) in the
/// operator path's transaction. The application role has no INSERT on the table.
async fn insert_oversight(
    conn: &mut sqlx::PgConnection,
    event: &AuditEvent,
    operator: &str,
    request_id: Option<Uuid>,
    reason: &str,
) -> Result<()> {
    // language=PostgreSQL
    sqlx::query(
        "INSERT INTO oversight_decisions (event_id, kind, agent_id, operator, request_id, reason) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.event_id.as_uuid())
    .bind(&event.kind)
    .bind(event.agent_id.as_str())
    .bind(operator)
    .bind(request_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}
