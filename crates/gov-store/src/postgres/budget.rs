//! Budget queries. Reservation, settlement and tracking are single calls of the functions in
//! the budgets migration, so each is atomic and costs one round trip.

use std::time::Duration;

use gov_core::{
    AgentId, BudgetCounter, BudgetDenial, BudgetPolicy, BudgetRefusal, BudgetStatus, MicroUsd,
    ModelUsage, TokenUsage,
};
use sqlx::FromRow;
use uuid::Uuid;

use super::PgStore;
use crate::{Result, StoreError};

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(FromRow)]
struct StatusRow {
    has_policy: bool,
    per_session_micros: Option<i64>,
    per_day_micros: Option<i64>,
    per_session_tokens: Option<i64>,
    per_day_tokens: Option<i64>,
    max_session_seconds: Option<i64>,
    s_spent: Option<i64>,
    s_reserved: Option<i64>,
    s_spent_tokens: Option<i64>,
    s_reserved_tokens: Option<i64>,
    s_age_us: Option<i64>,
    d_spent: Option<i64>,
    d_reserved: Option<i64>,
    d_spent_tokens: Option<i64>,
    d_reserved_tokens: Option<i64>,
}

#[derive(FromRow)]
struct UsageRow {
    model: String,
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    micros: i64,
}

impl PgStore {
    pub(crate) async fn put_budget_policy(&self, p: &BudgetPolicy) -> Result<()> {
        let tokens = |t: Option<u64>| t.map(to_i64);
        // language=PostgreSQL
        sqlx::query(
            "INSERT INTO budget_policies (agent_id, per_session_micros, per_day_micros, per_session_tokens, \
                 per_day_tokens, max_session_seconds) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (agent_id) DO UPDATE SET per_session_micros = $2, per_day_micros = $3, \
                 per_session_tokens = $4, per_day_tokens = $5, max_session_seconds = $6, updated_at = now()",
        )
        .bind(p.agent_id.as_str())
        .bind(p.per_session.map(|m| m.0))
        .bind(p.per_day.map(|m| m.0))
        .bind(tokens(p.per_session_tokens))
        .bind(tokens(p.per_day_tokens))
        .bind(p.max_session_duration.map(|d| to_i64(d.as_secs().max(1))))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn delete_budget_policy(&self, agent: &str) -> Result<bool> {
        // language=PostgreSQL
        let r = sqlx::query("DELETE FROM budget_policies WHERE agent_id = $1")
            .bind(agent)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn reserve(
        &self,
        id: Uuid,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        tokens: i64,
        ttl: Duration,
        allow_unbudgeted: bool,
    ) -> Result<Result<(), BudgetRefusal>> {
        // language=PostgreSQL
        let (ok, reason, cap, used): (bool, Option<String>, Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT * FROM governance_reserve($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(id)
                .bind(agent)
                .bind(session)
                .bind(model)
                .bind(micros)
                .bind(tokens)
                .bind(to_i64(ttl.as_secs().max(1)))
                .bind(allow_unbudgeted)
                .fetch_one(&self.pool)
                .await?;
        if ok {
            return Ok(Ok(()));
        }
        let denial = reason
            .as_deref()
            .and_then(BudgetDenial::parse)
            .ok_or_else(|| StoreError::Corrupt("unexpected budget refusal".into()))?;
        Ok(Err(BudgetRefusal { denial, cap, used }))
    }

    pub(crate) async fn settle(
        &self,
        id: Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
    ) -> Result<String> {
        // language=PostgreSQL
        let outcome: String =
            sqlx::query_scalar("SELECT governance_settle($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(micros)
                .bind(to_i64(usage.input_tokens))
                .bind(to_i64(usage.output_tokens))
                .bind(to_i64(usage.cached_input_tokens))
                .bind(release)
                .fetch_one(&self.pool)
                .await?;
        Ok(outcome)
    }

    pub(crate) async fn track(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<()> {
        // language=PostgreSQL
        sqlx::query("SELECT governance_track($1, $2, $3, $4, $5, $6, $7)")
            .bind(agent)
            .bind(session)
            .bind(model)
            .bind(micros)
            .bind(to_i64(usage.input_tokens))
            .bind(to_i64(usage.output_tokens))
            .bind(to_i64(usage.cached_input_tokens))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn budget_status(&self, agent: &str, session: &str) -> Result<BudgetStatus> {
        // One round trip: policy, session counter and today's counter.
        // language=PostgreSQL
        let r: StatusRow = sqlx::query_as(
            "SELECT p.agent_id IS NOT NULL AS has_policy, p.per_session_micros, p.per_day_micros, \
                    p.per_session_tokens, p.per_day_tokens, p.max_session_seconds, \
                    s.spent_micros AS s_spent, s.reserved_micros AS s_reserved, \
                    s.spent_tokens AS s_spent_tokens, s.reserved_tokens AS s_reserved_tokens, \
                    (extract(epoch FROM now() - s.started_at) * 1000000)::bigint AS s_age_us, \
                    d.spent_micros AS d_spent, d.reserved_micros AS d_reserved, \
                    d.spent_tokens AS d_spent_tokens, d.reserved_tokens AS d_reserved_tokens \
             FROM (SELECT $1::text AS agent_id) a \
             LEFT JOIN budget_policies p ON p.agent_id = a.agent_id \
             LEFT JOIN budget_counters s ON s.agent_id = a.agent_id AND s.period = 's:' || $2::text \
             LEFT JOIN budget_counters d ON d.agent_id = a.agent_id \
                 AND d.period = 'd:' || ((now() AT TIME ZONE 'UTC')::date)::text",
        )
        .bind(agent)
        .bind(session)
        .fetch_one(&self.pool)
        .await?;
        let policy = if r.has_policy {
            let tokens = |t: Option<i64>| t.map(|v| u64::try_from(v).unwrap_or(0));
            Some(BudgetPolicy {
                agent_id: AgentId::new(agent)
                    .map_err(|e| StoreError::InvalidArgument(e.to_string()))?,
                per_session: r.per_session_micros.map(MicroUsd),
                per_day: r.per_day_micros.map(MicroUsd),
                per_session_tokens: tokens(r.per_session_tokens),
                per_day_tokens: tokens(r.per_day_tokens),
                max_session_duration: r
                    .max_session_seconds
                    .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
            })
        } else {
            None
        };
        let counter = |spent: Option<i64>,
                       reserved: Option<i64>,
                       st: Option<i64>,
                       rt: Option<i64>| BudgetCounter {
            spent: MicroUsd(spent.unwrap_or(0)),
            reserved: MicroUsd(reserved.unwrap_or(0)),
            spent_tokens: st.unwrap_or(0),
            reserved_tokens: rt.unwrap_or(0),
        };
        Ok(BudgetStatus {
            policy,
            session: counter(
                r.s_spent,
                r.s_reserved,
                r.s_spent_tokens,
                r.s_reserved_tokens,
            ),
            day: counter(
                r.d_spent,
                r.d_reserved,
                r.d_spent_tokens,
                r.d_reserved_tokens,
            ),
            session_age: r
                .s_age_us
                .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))),
        })
    }

    pub(crate) async fn usage_today(&self, agent: &str) -> Result<Vec<ModelUsage>> {
        // language=PostgreSQL
        let rows: Vec<UsageRow> = sqlx::query_as(
            "SELECT model, calls, input_tokens, output_tokens, cached_tokens, micros FROM budget_usage \
             WHERE agent_id = $1 AND day = (now() AT TIME ZONE 'UTC')::date ORDER BY micros DESC, model",
        )
        .bind(agent)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ModelUsage {
                model: r.model,
                calls: r.calls,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cached_tokens: r.cached_tokens,
                cost: MicroUsd(r.micros),
            })
            .collect())
    }

    pub(crate) async fn usage_today_all(&self) -> Result<Vec<(String, ModelUsage)>> {
        // language=PostgreSQL
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT agent_id, model, calls, input_tokens, output_tokens, cached_tokens, micros \
             FROM budget_usage WHERE day = (now() AT TIME ZONE 'UTC')::date \
             ORDER BY agent_id, micros DESC, model",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(agent, model, calls, input_tokens, output_tokens, cached_tokens, micros)| {
                    (
                        agent,
                        ModelUsage {
                            model,
                            calls,
                            input_tokens,
                            output_tokens,
                            cached_tokens,
                            cost: MicroUsd(micros),
                        },
                    )
                },
            )
            .collect())
    }
}
