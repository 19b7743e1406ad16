//! Scope policies and agent presence (heartbeats and halts), and the notification listener.

use std::time::Duration;

use gov_core::{AgentId, AgentPresence, AuditEvent, ScopePolicy};
use sqlx::FromRow;
use sqlx::postgres::PgListener;
use time::OffsetDateTime;
use uuid::Uuid;

use super::PgStore;
use crate::backend::EnforceStore;
use crate::{HaltSwitch, OversightRecord, Result, Sealer, StoreError};

#[derive(FromRow)]
struct PolicyRow {
    agent_id: String,
    allowed_tools: Vec<String>,
    allowed_apis: Vec<String>,
    hidden_tools: Vec<String>,
}

impl TryFrom<PolicyRow> for ScopePolicy {
    type Error = StoreError;
    fn try_from(r: PolicyRow) -> Result<Self> {
        Ok(ScopePolicy {
            agent_id: AgentId::new(r.agent_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            allowed_tools: r.allowed_tools.into_iter().collect(),
            allowed_apis: r.allowed_apis.into_iter().collect(),
            hidden_tools: r.hidden_tools.into_iter().collect(),
        })
    }
}

#[derive(FromRow)]
struct PresenceRow {
    agent_id: String,
    since_heartbeat_us: Option<i64>,
    halted: bool,
    halted_by: Option<String>,
    halt_reason: Option<String>,
    resumed_by: Option<String>,
}

impl From<PresenceRow> for AgentPresence {
    fn from(r: PresenceRow) -> Self {
        AgentPresence {
            agent_id: r.agent_id,
            since_heartbeat: r
                .since_heartbeat_us
                .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))),
            halted: r.halted,
            halted_by: r.halted_by,
            halt_reason: r.halt_reason,
            resumed_by: r.resumed_by,
        }
    }
}

const PRESENCE_COLUMNS: &str = "agent_id, \
    (extract(epoch FROM (now() - last_heartbeat)) * 1000000)::bigint AS since_heartbeat_us, \
    halted, halted_by, halt_reason, resumed_by";

impl PgStore {
    /// A dedicated listening connection on `channels`: on the pool's server, or on the listen
    /// URL's ([`crate::StoreOptions::listen_url`]) once it is shown to reach this database.
    pub(crate) async fn listen_channels(&self, channels: &[&str]) -> Result<PgListener> {
        let mut l = match &self.listen {
            None => PgListener::connect_with(&self.pool()).await?,
            Some(listen) => {
                let server = self.listen_server().await?.unwrap_or_default();
                let opts = crate::StoreOptions {
                    max_connections: 2,
                    ..listen.1.clone()
                };
                PgListener::connect_with(&super::hosts::pool_for(&listen.0, server, &opts)).await?
            }
        };
        l.listen_all(channels.iter().copied()).await?;
        Ok(l)
    }

    /// Which server of the listen URL the listener would use, once it is shown to hold this
    /// database (the same `governance_instance`, database name and cluster as the pool's);
    /// `None` without a listen URL.
    pub(crate) async fn listen_server(&self) -> Result<Option<usize>> {
        use sqlx::Connection as _;
        let Some(listen) = &self.listen else {
            return Ok(None);
        };
        let (server, mut probe) =
            super::hosts::resolve(&listen.0, listen.1.acquire_timeout).await?;
        // The same governance instance, in the same database of the same cluster (a database
        // cloned from another keeps its instance id; a physical standby keeps the cluster's
        // system identifier).
        // language=PostgreSQL
        let identity = "SELECT (SELECT id FROM governance_instance), current_database()::text, \
                        (SELECT system_identifier FROM pg_control_system())";
        type Identity = (Option<Uuid>, String, i64);
        let theirs: Option<Identity> = sqlx::query_as(identity).fetch_one(&mut probe).await.ok();
        let _ = probe.close().await;
        let ours: Identity = sqlx::query_as(identity).fetch_one(&self.pool()).await?;
        if ours.0.is_none() || theirs.as_ref() != Some(&ours) {
            return Err(StoreError::InvalidUrl(
                "the listen URL reaches another database than the database URL, so notifications (halts, scope changes, decisions) would never arrive: point it at the same database, directly (not through the pooler)".into(),
            ));
        }
        Ok(Some(server))
    }
}

impl EnforceStore for PgStore {
    async fn put_scope_policy(&self, p: &ScopePolicy) -> Result<()> {
        let v = |s: &std::collections::BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO scope_policies (agent_id, allowed_tools, allowed_apis, hidden_tools) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id) DO UPDATE SET allowed_tools = $2, allowed_apis = $3, \
                 hidden_tools = $4, updated_at = now()",
        )
        .bind(p.agent_id.as_str())
        .bind(v(&p.allowed_tools))
        .bind(v(&p.allowed_apis))
        .bind(v(&p.hidden_tools))
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn delete_scope_policy(&self, agent: &str) -> Result<bool> {
        // language=PostgreSQL
        let r = sqlx::query("DELETE FROM scope_policies WHERE agent_id = $1")
            .bind(agent)
            .execute(&self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn scope_policy(&self, agent: &str) -> Result<Option<ScopePolicy>> {
        // language=PostgreSQL
        let row: Option<PolicyRow> = sqlx::query_as(
            "SELECT agent_id, allowed_tools, allowed_apis, hidden_tools FROM scope_policies WHERE agent_id = $1",
        )
        .bind(agent)
        .fetch_optional(&self.pool())
        .await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn scope_policies(&self) -> Result<Vec<ScopePolicy>> {
        // language=PostgreSQL
        let rows: Vec<PolicyRow> = sqlx::query_as(
            "SELECT agent_id, allowed_tools, allowed_apis, hidden_tools FROM scope_policies ORDER BY agent_id",
        )
        .fetch_all(&self.pool())
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn heartbeat(&self, agent: &str) -> Result<()> {
        // A heartbeat never touches the halt columns: only a resume clears a halt.
        // language=PostgreSQL
        sqlx::query("SELECT governance_heartbeat($1)")
            .bind(agent)
            .execute(&self.pool())
            .await?;
        Ok(())
    }

    async fn service_halt(&self, agent: &str, actor: &str, reason: &str) -> Result<bool> {
        // language=PostgreSQL
        let changed: bool = sqlx::query_scalar("SELECT governance_service_halt($1, $2, $3)")
            .bind(agent)
            .bind(actor)
            .bind(reason)
            .fetch_one(&self.pool())
            .await?;
        Ok(changed)
    }

    async fn operator_switch(
        &self,
        s: &HaltSwitch<'_>,
        events: (&AuditEvent, &AuditEvent),
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<bool> {
        // governance_halt (with an operator's name) and governance_resume are for operator
        // connections: the application role has EXECUTE on neither.
        let mut tx = self.pool().begin().await?;
        let q = if s.halt {
            // language=PostgreSQL
            sqlx::query_scalar("SELECT governance_halt($1, $2, $3)")
                .bind(s.agent)
                .bind(s.operator)
                .bind(s.reason)
        } else {
            // language=PostgreSQL
            sqlx::query_scalar("SELECT governance_resume($1, $2)")
                .bind(s.agent)
                .bind(s.operator)
        };
        let changed: bool = q.fetch_one(&mut *tx).await.map_err(|e| match StoreError::from(e) {
            StoreError::PermissionDenied(_) => StoreError::PermissionDenied(
                "only an operator connection may halt for an operator or resume an agent; the application role cannot"
                    .into(),
            ),
            other => other,
        })?;
        let event = if changed { events.0 } else { events.1 };
        let oversight = super::gates::Oversight {
            operator: s.operator,
            request_id: None,
            reason: s.reason,
        };
        self.commit_oversight(tx, event, &oversight, key_id, seal)
            .await?;
        Ok(changed)
    }

    async fn oversight_records(&self, event_ids: &[Uuid]) -> Result<Vec<OversightRecord>> {
        // language=PostgreSQL
        type Row = (
            Uuid,
            String,
            String,
            String,
            Option<Uuid>,
            String,
            OffsetDateTime,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT event_id, kind, agent_id, operator, request_id, reason, decided_at \
                 FROM oversight_decisions WHERE event_id = ANY($1)",
        )
        .bind(event_ids)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(event_id, kind, agent_id, operator, request_id, reason, decided_at)| {
                    OversightRecord {
                        event_id,
                        kind,
                        agent_id,
                        operator,
                        request_id,
                        reason,
                        decided_at,
                    }
                },
            )
            .collect())
    }

    async fn is_halted(&self, agent: &str) -> Result<bool> {
        // language=PostgreSQL
        let halted: Option<bool> =
            sqlx::query_scalar("SELECT halted FROM agent_presence WHERE agent_id = $1")
                .bind(agent)
                .fetch_optional(&self.pool())
                .await?;
        Ok(halted.unwrap_or(false))
    }

    async fn presence(&self, agent: &str) -> Result<Option<AgentPresence>> {
        let sql = format!("SELECT {PRESENCE_COLUMNS} FROM agent_presence WHERE agent_id = $1");
        let row: Option<PresenceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(agent)
            .fetch_optional(&self.pool())
            .await?;
        Ok(row.map(Into::into))
    }

    async fn presences(&self) -> Result<Vec<AgentPresence>> {
        let sql = format!("SELECT {PRESENCE_COLUMNS} FROM agent_presence ORDER BY agent_id");
        let rows: Vec<PresenceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool())
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
