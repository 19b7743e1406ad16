//! Scope policies and agent presence (heartbeats and halts) on SQLite. Changes are announced
//! by the schema's triggers, in the notification table.

use std::collections::BTreeSet;
use std::time::Duration;

use gov_core::{AgentId, AgentPresence, AuditEvent, ScopePolicy};
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::audit::append_in;
use super::{SqliteStore, from_us, now_us};
use crate::backend::EnforceStore;
use crate::{HaltSwitch, OversightRecord, Result, Sealer, StoreError};

type PolicyRow = (String, String, String, String);
type PresenceRow = (
    String,
    Option<i64>,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn set(json: &str) -> Result<BTreeSet<String>> {
    serde_json::from_str::<Vec<String>>(json)
        .map(|v| v.into_iter().collect())
        .map_err(|_| StoreError::Corrupt("a scope policy list is not a JSON array of text".into()))
}

fn json(s: &BTreeSet<String>) -> Result<String> {
    serde_json::to_string(s)
        .map_err(|_| StoreError::InvalidArgument("a scope policy list cannot be encoded".into()))
}

fn policy((agent_id, tools, apis, hidden): PolicyRow) -> Result<ScopePolicy> {
    Ok(ScopePolicy {
        agent_id: AgentId::new(agent_id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        allowed_tools: set(&tools)?,
        allowed_apis: set(&apis)?,
        hidden_tools: set(&hidden)?,
    })
}

fn presence(now: i64, r: PresenceRow) -> AgentPresence {
    let (agent_id, last_heartbeat, halted, halted_by, halt_reason, resumed_by) = r;
    AgentPresence {
        agent_id,
        since_heartbeat: last_heartbeat
            .map(|t| Duration::from_micros(u64::try_from(now - t).unwrap_or(0))),
        halted,
        halted_by,
        halt_reason,
        resumed_by,
    }
}

const PRESENCE_COLUMNS: &str =
    "agent_id, last_heartbeat, halted, halted_by, halt_reason, resumed_by";

impl EnforceStore for SqliteStore {
    async fn put_scope_policy(&self, p: &ScopePolicy) -> Result<()> {
        sqlx::query(
            "INSERT INTO scope_policies (agent_id, allowed_tools, allowed_apis, hidden_tools, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (agent_id) DO UPDATE SET allowed_tools = ?2, allowed_apis = ?3, \
                 hidden_tools = ?4, updated_at = ?5",
        )
        .bind(p.agent_id.as_str())
        .bind(json(&p.allowed_tools)?)
        .bind(json(&p.allowed_apis)?)
        .bind(json(&p.hidden_tools)?)
        .bind(now_us())
        .execute(&self.pool)
        .await?;
        self.written().await;
        Ok(())
    }

    async fn delete_scope_policy(&self, agent: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM scope_policies WHERE agent_id = ?")
            .bind(agent)
            .execute(&self.pool)
            .await?;
        self.written().await;
        Ok(r.rows_affected() > 0)
    }

    async fn scope_policy(&self, agent: &str) -> Result<Option<ScopePolicy>> {
        let row: Option<PolicyRow> = sqlx::query_as(
            "SELECT agent_id, allowed_tools, allowed_apis, hidden_tools FROM scope_policies WHERE agent_id = ?",
        )
        .bind(agent)
        .fetch_optional(&self.pool)
        .await?;
        row.map(policy).transpose()
    }

    async fn scope_policies(&self) -> Result<Vec<ScopePolicy>> {
        let rows: Vec<PolicyRow> = sqlx::query_as(
            "SELECT agent_id, allowed_tools, allowed_apis, hidden_tools FROM scope_policies ORDER BY agent_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(policy).collect()
    }

    async fn heartbeat(&self, agent: &str) -> Result<()> {
        // A heartbeat never touches the halt columns: only a resume clears a halt.
        let now = now_us();
        sqlx::query(
            "INSERT INTO agent_presence (agent_id, last_heartbeat, updated_at) VALUES (?1, ?2, ?2) \
             ON CONFLICT (agent_id) DO UPDATE SET last_heartbeat = ?2, updated_at = ?2",
        )
        .bind(agent)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // The first heartbeat of an agent announces it (the insert trigger).
        self.written().await;
        Ok(())
    }

    async fn service_halt(&self, agent: &str, actor: &str, reason: &str) -> Result<bool> {
        if !is_service_actor(actor) {
            return Err(StoreError::InvalidArgument(
                "a service halt is recorded under a governance: actor".into(),
            ));
        }
        let (_turn, mut tx) = self.write_tx().await?;
        let changed = switch_in(&mut tx, agent, true, actor, reason).await?;
        tx.commit().await?;
        self.written().await;
        Ok(changed)
    }

    async fn operator_switch(
        &self,
        s: &HaltSwitch<'_>,
        events: (&AuditEvent, &AuditEvent),
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<bool> {
        // SQLite has no roles: the SDK only calls this for an authenticated operator.
        let (_turn, mut tx) = self.write_tx().await?;
        let changed = switch_in(&mut tx, s.agent, s.halt, s.operator, s.reason).await?;
        let event = if changed { events.0 } else { events.1 };
        super::gates::insert_oversight(&mut tx, event, s.operator, None, s.reason).await?;
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
        Ok(changed)
    }

    async fn oversight_records(&self, event_ids: &[Uuid]) -> Result<Vec<OversightRecord>> {
        type Row = (Uuid, String, String, String, Option<Uuid>, String, i64);
        let mut out = Vec::new();
        for chunk in event_ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT event_id, kind, agent_id, operator, request_id, reason, decided_at \
                 FROM oversight_decisions WHERE event_id IN ({marks})"
            );
            let mut q = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for (event_id, kind, agent_id, operator, request_id, reason, at) in
                q.fetch_all(&self.pool).await?
            {
                out.push(OversightRecord {
                    event_id,
                    kind,
                    agent_id,
                    operator,
                    request_id,
                    reason,
                    decided_at: from_us(at)?,
                });
            }
        }
        Ok(out)
    }

    async fn is_halted(&self, agent: &str) -> Result<bool> {
        let halted: Option<bool> =
            sqlx::query_scalar("SELECT halted FROM agent_presence WHERE agent_id = ?")
                .bind(agent)
                .fetch_optional(&self.pool)
                .await?;
        Ok(halted.unwrap_or(false))
    }

    async fn presence(&self, agent: &str) -> Result<Option<AgentPresence>> {
        let sql = format!("SELECT {PRESENCE_COLUMNS} FROM agent_presence WHERE agent_id = ?");
        let row: Option<PresenceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(agent)
            .fetch_optional(&self.pool)
            .await?;
        let now = now_us();
        Ok(row.map(|r| presence(now, r)))
    }

    async fn presences(&self) -> Result<Vec<AgentPresence>> {
        let sql = format!("SELECT {PRESENCE_COLUMNS} FROM agent_presence ORDER BY agent_id");
        let rows: Vec<PresenceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        let now = now_us();
        Ok(rows.into_iter().map(|r| presence(now, r)).collect())
    }
}

/// The rule of `governance_service_halt`: `governance:` and a lower-case name.
fn is_service_actor(actor: &str) -> bool {
    actor.strip_prefix("governance:").is_some_and(|name| {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && name.len() <= 64
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    })
}

/// Halts or resumes in `tx`; whether the state changed.
async fn switch_in(
    tx: &mut SqliteConnection,
    agent: &str,
    halted: bool,
    by: &str,
    reason: &str,
) -> Result<bool> {
    let now = now_us();
    let was: Option<bool> =
        sqlx::query_scalar("SELECT halted FROM agent_presence WHERE agent_id = ?")
            .bind(agent)
            .fetch_optional(&mut *tx)
            .await?;
    // `gov_core::rules::halt` / `resume`: whether the state changed.
    let changed = if halted {
        gov_core::rules::halt(was)
    } else {
        gov_core::rules::resume(was)
    };
    if halted {
        sqlx::query(
            "INSERT INTO agent_presence (agent_id, halted, halted_by, halted_at, halt_reason, updated_at) \
             VALUES (?1, 1, ?2, ?3, ?4, ?3) \
             ON CONFLICT (agent_id) DO UPDATE SET halted = 1, halted_by = ?2, halted_at = ?3, \
                 halt_reason = ?4, updated_at = ?3",
        )
        .bind(agent)
        .bind(by)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "INSERT INTO agent_presence (agent_id, halted, resumed_by, resumed_at, updated_at) \
             VALUES (?1, 0, ?2, ?3, ?3) \
             ON CONFLICT (agent_id) DO UPDATE SET halted = 0, resumed_by = ?2, resumed_at = ?3, \
                 updated_at = ?3",
        )
        .bind(agent)
        .bind(by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(changed)
}
