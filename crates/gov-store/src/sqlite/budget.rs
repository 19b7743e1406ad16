//! Budgets on SQLite: the rules of `gov_core::rules` (which the Postgres functions run too),
//! applied between this file's reads and writes in `BEGIN IMMEDIATE` transactions, at the
//! store's clock. Holding the database's write lock from the first statement,
//! a check of the caps and the reservation that follows cannot interleave with any other
//! writer, in this process or another, so concurrent callers never overspend.

use std::time::Duration;

use gov_core::rules::{self, Caps, ReservationState, SettleOnceRoute};
use gov_core::{
    AgentId, AuditEvent, BudgetCounter, BudgetPolicy, BudgetRefusal, BudgetStatus, MicroUsd,
    ModelUsage, TokenUsage,
};
use sqlx::{FromRow, SqliteConnection};
use uuid::Uuid;

use super::audit::append_in;
use super::{SqliteStore, day_of, now_us};
use crate::backend::BudgetStore;
use crate::{Reserve, Result, Sealer, StoreError};

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(FromRow, Default)]
struct Counter {
    spent_micros: i64,
    reserved_micros: i64,
    spent_tokens: i64,
    reserved_tokens: i64,
    started_at: i64,
}

#[derive(FromRow)]
struct PolicyRow {
    per_session_micros: Option<i64>,
    per_day_micros: Option<i64>,
    per_session_tokens: Option<i64>,
    per_day_tokens: Option<i64>,
    max_session_seconds: Option<i64>,
}

#[derive(FromRow)]
struct DayBudgetRow {
    agent_id: String,
    per_session_micros: Option<i64>,
    per_day_micros: Option<i64>,
    per_session_tokens: Option<i64>,
    per_day_tokens: Option<i64>,
    max_session_seconds: Option<i64>,
    spent_micros: i64,
    reserved_micros: i64,
    spent_tokens: i64,
    reserved_tokens: i64,
}

impl DayBudgetRow {
    fn into_parts(self) -> Result<(BudgetPolicy, BudgetCounter)> {
        let tokens = |t: Option<i64>| t.map(|v| u64::try_from(v).unwrap_or(0));
        let policy = BudgetPolicy {
            agent_id: AgentId::new(&self.agent_id)
                .map_err(|e| StoreError::Corrupt(format!("budget policy: {e}")))?,
            per_session: self.per_session_micros.map(MicroUsd),
            per_day: self.per_day_micros.map(MicroUsd),
            per_session_tokens: tokens(self.per_session_tokens),
            per_day_tokens: tokens(self.per_day_tokens),
            max_session_duration: self
                .max_session_seconds
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
        };
        let day = BudgetCounter {
            spent: MicroUsd(self.spent_micros),
            reserved: MicroUsd(self.reserved_micros),
            spent_tokens: self.spent_tokens,
            reserved_tokens: self.reserved_tokens,
        };
        Ok((policy, day))
    }
}

#[derive(FromRow)]
struct Reservation {
    agent_id: String,
    session_id: String,
    day: String,
    /// When it was made (microseconds; its UTC day is `day`).
    created_at: i64,
    model: String,
    micros: i64,
    tokens: i64,
    outcome: Option<String>,
}

async fn policy(conn: &mut SqliteConnection, agent: &str) -> Result<Option<PolicyRow>> {
    Ok(sqlx::query_as(
        "SELECT per_session_micros, per_day_micros, per_session_tokens, per_day_tokens, \
             max_session_seconds FROM budget_policies WHERE agent_id = ?",
    )
    .bind(agent)
    .fetch_optional(&mut *conn)
    .await?)
}

async fn counter(
    conn: &mut SqliteConnection,
    agent: &str,
    period: &str,
) -> Result<Option<Counter>> {
    Ok(sqlx::query_as(
        "SELECT spent_micros, reserved_micros, spent_tokens, reserved_tokens, started_at \
         FROM budget_counters WHERE agent_id = ? AND period = ?",
    )
    .bind(agent)
    .bind(period)
    .fetch_optional(&mut *conn)
    .await?)
}

async fn ensure_counters(
    conn: &mut SqliteConnection,
    agent: &str,
    day: &str,
    session: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO budget_counters (agent_id, period, started_at) VALUES (?1, ?2, ?4), (?1, ?3, ?4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(agent)
    .bind(format!("d:{day}"))
    .bind(format!("s:{session}"))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds to (or with negative amounts, takes from) the reserved amounts of both counters.
async fn add_reserved(
    conn: &mut SqliteConnection,
    agent: &str,
    day: &str,
    session: &str,
    micros: i64,
    tokens: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE budget_counters SET reserved_micros = reserved_micros + ?, \
             reserved_tokens = reserved_tokens + ? \
         WHERE agent_id = ? AND period IN (?, ?)",
    )
    .bind(micros)
    .bind(tokens)
    .bind(agent)
    .bind(format!("d:{day}"))
    .bind(format!("s:{session}"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Closes the agent's reservations whose time ran out and returns their amounts.
async fn expire(conn: &mut SqliteConnection, agent: &str, now: i64) -> Result<()> {
    let expired: Vec<(Uuid, String, String, i64, i64)> = sqlx::query_as(
        "UPDATE budget_reservations SET closed_at = ?1, outcome = 'expired' \
         WHERE agent_id = ?2 AND closed_at IS NULL AND expires_at < ?1 \
         RETURNING id, session_id, day, micros, tokens",
    )
    .bind(now)
    .bind(agent)
    .fetch_all(&mut *conn)
    .await?;
    for (_, session, day, micros, tokens) in expired {
        add_reserved(conn, agent, &day, &session, -micros, -tokens).await?;
    }
    Ok(())
}

/// Records spend on both counters and in the usage by model, per day and per hour (`at`'s,
/// whose UTC day is `day`).
#[allow(clippy::too_many_arguments)]
async fn record_spend(
    conn: &mut SqliteConnection,
    agent: &str,
    day: &str,
    at: i64,
    session: &str,
    model: &str,
    micros: i64,
    usage: &TokenUsage,
) -> Result<()> {
    let (input, output, cached) = (
        to_i64(usage.input_tokens),
        to_i64(usage.output_tokens),
        to_i64(usage.cached_input_tokens),
    );
    sqlx::query(
        "UPDATE budget_counters SET spent_micros = spent_micros + ?, \
             spent_tokens = spent_tokens + ? \
         WHERE agent_id = ? AND period IN (?, ?)",
    )
    .bind(micros)
    .bind(input.saturating_add(output))
    .bind(agent)
    .bind(format!("d:{day}"))
    .bind(format!("s:{session}"))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO budget_usage (agent_id, day, model, calls, input_tokens, output_tokens, \
             cached_tokens, micros) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7) \
         ON CONFLICT (agent_id, day, model) DO UPDATE SET calls = calls + 1, \
             input_tokens = input_tokens + ?4, output_tokens = output_tokens + ?5, \
             cached_tokens = cached_tokens + ?6, micros = micros + ?7",
    )
    .bind(agent)
    .bind(day)
    .bind(model)
    .bind(input)
    .bind(output)
    .bind(cached)
    .bind(micros)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO budget_usage_hourly (hour, agent_id, model, calls, input_tokens, \
             output_tokens, cached_tokens, micros) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7) \
         ON CONFLICT (hour, agent_id, model) DO UPDATE SET calls = calls + 1, \
             input_tokens = input_tokens + ?4, output_tokens = output_tokens + ?5, \
             cached_tokens = cached_tokens + ?6, micros = micros + ?7",
    )
    .bind(at - at.rem_euclid(HOUR_US))
    .bind(agent)
    .bind(model)
    .bind(input)
    .bind(output)
    .bind(cached)
    .bind(micros)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An hour in microseconds.
const HOUR_US: i64 = 3_600_000_000;

/// A reservation at `now` ([`rules::admit`], [`rules::check_caps`]).
async fn reserve_in(
    conn: &mut SqliteConnection,
    r: &Reserve<'_>,
    now: i64,
) -> Result<Result<(), BudgetRefusal>> {
    let day = day_of(now);
    expire(conn, r.agent, now).await?;
    let pol = policy(conn, r.agent).await?;
    if let Err(refusal) = rules::admit(pol.is_some(), r.allow_unbudgeted) {
        return Ok(Err(refusal));
    }
    ensure_counters(conn, r.agent, &day, r.session, now).await?;
    let d = counter(conn, r.agent, &format!("d:{day}")).await?;
    let s = counter(conn, r.agent, &format!("s:{}", r.session)).await?;
    if let Some(p) = pol {
        let started = s.as_ref().map(|c| c.started_at);
        let check = rules::check_caps(
            &p.caps(),
            &counter_of(s),
            started,
            &counter_of(d),
            now,
            r.micros,
            r.tokens,
        );
        if let Err(refusal) = check {
            return Ok(Err(refusal));
        }
    }
    add_reserved(conn, r.agent, &day, r.session, r.micros, r.tokens).await?;
    sqlx::query(
        "INSERT INTO budget_reservations (id, agent_id, session_id, day, model, micros, tokens, \
             created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.id)
    .bind(r.agent)
    .bind(r.session)
    .bind(&day)
    .bind(r.model)
    .bind(r.micros)
    .bind(r.tokens)
    .bind(now)
    .bind(rules::reservation_expires_at(now, r.ttl))
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

/// A settlement or release at `now` ([`rules::settle`]).
async fn settle_in(
    conn: &mut SqliteConnection,
    id: Uuid,
    micros: i64,
    usage: &TokenUsage,
    release: bool,
    now: i64,
) -> Result<String> {
    let r: Option<Reservation> = sqlx::query_as(
        "SELECT agent_id, session_id, day, created_at, model, micros, tokens, outcome \
         FROM budget_reservations WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let state = r
        .as_ref()
        .map(|r| {
            ReservationState::from_stored(r.outcome.as_deref())
                .ok_or_else(|| StoreError::Corrupt("reservation outcome".into()))
        })
        .transpose()?;
    let step = rules::settle(state, release);
    let Some(r) = r else {
        return Ok(step.outcome.as_str().into());
    };
    if step.return_hold {
        add_reserved(
            conn,
            &r.agent_id,
            &r.day,
            &r.session_id,
            -r.micros,
            -r.tokens,
        )
        .await?;
    }
    if let Some(state) = step.state {
        sqlx::query(
            "UPDATE budget_reservations SET outcome = ?, \
                 closed_at = CASE WHEN ? THEN ? ELSE closed_at END WHERE id = ?",
        )
        .bind(state.as_stored())
        .bind(step.close)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    if step.record_spend {
        record_spend(
            conn,
            &r.agent_id,
            &r.day,
            r.created_at,
            &r.session_id,
            &r.model,
            micros,
            usage,
        )
        .await?;
    }
    Ok(step.outcome.as_str().into())
}

/// Records spend without a reservation once per record `id`; whether it was new.
#[allow(clippy::too_many_arguments)]
async fn track_in(
    conn: &mut SqliteConnection,
    id: Uuid,
    agent: &str,
    session: &str,
    model: &str,
    micros: i64,
    usage: &TokenUsage,
    now: i64,
) -> Result<bool> {
    let fresh = sqlx::query(
        "INSERT INTO applied_records (record_id, applied_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if fresh {
        let day = day_of(now);
        ensure_counters(conn, agent, &day, session, now).await?;
        record_spend(conn, agent, &day, now, session, model, micros, usage).await?;
    }
    Ok(fresh)
}

impl PolicyRow {
    fn caps(&self) -> Caps {
        Caps {
            per_session_micros: self.per_session_micros,
            per_day_micros: self.per_day_micros,
            per_session_tokens: self.per_session_tokens,
            per_day_tokens: self.per_day_tokens,
            max_session_seconds: self.max_session_seconds,
        }
    }
}

fn counter_of(c: Option<Counter>) -> BudgetCounter {
    let c = c.unwrap_or_default();
    BudgetCounter {
        spent: MicroUsd(c.spent_micros),
        reserved: MicroUsd(c.reserved_micros),
        spent_tokens: c.spent_tokens,
        reserved_tokens: c.reserved_tokens,
    }
}

fn usage_of(
    (model, calls, input_tokens, output_tokens, cached_tokens, micros): (
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
    ),
) -> ModelUsage {
    ModelUsage {
        model,
        calls,
        input_tokens,
        output_tokens,
        cached_tokens,
        cost: MicroUsd(micros),
    }
}

impl BudgetStore for SqliteStore {
    async fn put_budget_policy(&self, p: &BudgetPolicy) -> Result<()> {
        let tokens = |t: Option<u64>| t.map(to_i64);
        sqlx::query(
            "INSERT INTO budget_policies (agent_id, per_session_micros, per_day_micros, \
                 per_session_tokens, per_day_tokens, max_session_seconds, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (agent_id) DO UPDATE SET per_session_micros = ?2, per_day_micros = ?3, \
                 per_session_tokens = ?4, per_day_tokens = ?5, max_session_seconds = ?6, updated_at = ?7",
        )
        .bind(p.agent_id.as_str())
        .bind(p.per_session.map(|m| m.0))
        .bind(p.per_day.map(|m| m.0))
        .bind(tokens(p.per_session_tokens))
        .bind(tokens(p.per_day_tokens))
        .bind(p.max_session_duration.map(|d| to_i64(d.as_secs().max(1))))
        .bind(now_us())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_budget_policy(&self, agent: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM budget_policies WHERE agent_id = ?")
            .bind(agent)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn reserve(&self, r: &Reserve<'_>) -> Result<Result<(), BudgetRefusal>> {
        let (_turn, mut tx) = self.write_tx().await?;
        let outcome = reserve_in(&mut tx, r, self.clock.now_us()).await?;
        // A refusal commits what it did too (expiring old reservations), as on Postgres.
        tx.commit().await?;
        Ok(outcome)
    }

    async fn reserve_logged(
        &self,
        r: &Reserve<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<Result<i64, BudgetRefusal>> {
        let (_turn, mut tx) = self.write_tx().await?;
        if let Err(refusal) = reserve_in(&mut tx, r, self.clock.now_us()).await? {
            tx.commit().await?;
            return Ok(Err(refusal));
        }
        let seqs = append_in(
            &mut tx,
            event.chain_id.as_str(),
            key_id,
            std::slice::from_ref(event),
            seal,
        )
        .await?;
        tx.commit().await?;
        self.written().await;
        seqs.first()
            .copied()
            .map(Ok)
            .ok_or_else(|| StoreError::Corrupt("an append returned no seq".into()))
    }

    async fn settle(
        &self,
        id: Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
    ) -> Result<String> {
        let (_turn, mut tx) = self.write_tx().await?;
        let outcome = settle_in(&mut tx, id, micros, usage, release, self.clock.now_us()).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn settle_logged(
        &self,
        id: Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<(String, i64)> {
        let (_turn, mut tx) = self.write_tx().await?;
        let outcome = settle_in(&mut tx, id, micros, usage, release, self.clock.now_us()).await?;
        let seqs = append_in(
            &mut tx,
            event.chain_id.as_str(),
            key_id,
            std::slice::from_ref(event),
            seal,
        )
        .await?;
        tx.commit().await?;
        self.written().await;
        let seq = seqs
            .first()
            .copied()
            .ok_or_else(|| StoreError::Corrupt("an append returned no seq".into()))?;
        Ok((outcome, seq))
    }

    async fn track(
        &self,
        id: Uuid,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<bool> {
        let (_turn, mut tx) = self.write_tx().await?;
        let fresh = track_in(
            &mut tx,
            id,
            agent,
            session,
            model,
            micros,
            usage,
            self.clock.now_us(),
        )
        .await?;
        if fresh {
            tx.commit().await?;
        } else {
            // Applied before: nothing to change (the transaction ends without a write).
            tx.rollback().await?;
        }
        Ok(fresh)
    }

    async fn settle_once(
        &self,
        id: Uuid,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<String> {
        let (_turn, mut tx) = self.write_tx().await?;
        // `rules::settle_once`, as `governance_settle_once` runs it on Postgres.
        let now = self.clock.now_us();
        let stored: Option<(Option<String>,)> =
            sqlx::query_as("SELECT outcome FROM budget_reservations WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let state = stored
            .map(|(o,)| {
                ReservationState::from_stored(o.as_deref())
                    .ok_or_else(|| StoreError::Corrupt("reservation outcome".into()))
            })
            .transpose()?;
        let outcome = match rules::settle_once(state) {
            SettleOnceRoute::AlreadySettled => "already_settled".to_owned(),
            SettleOnceRoute::Settle => settle_in(&mut tx, id, micros, usage, false, now).await?,
            SettleOnceRoute::Track => {
                if track_in(&mut tx, id, agent, session, model, micros, usage, now).await? {
                    "tracked".to_owned()
                } else {
                    "already_tracked".to_owned()
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn budget_status(&self, agent: &str, session: &str) -> Result<BudgetStatus> {
        let mut conn = self.pool.acquire().await?;
        let now = self.clock.now_us();
        let day = day_of(now);
        let pol = policy(&mut conn, agent).await?;
        // The session and day counters, less the holds that expired but were not closed yet
        // (expiry runs inside the next reservation): a crashed holder's reservation stops
        // blocking at its expiry. One statement, so counters and holds are one snapshot.
        let (s_period, d_period) = (format!("s:{session}"), format!("d:{day}"));
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT c.period, c.spent_micros, \
                 max(c.reserved_micros - coalesce(x.micros, 0), 0), c.spent_tokens, \
                 max(c.reserved_tokens - coalesce(x.tokens, 0), 0), c.started_at \
             FROM budget_counters c \
             LEFT JOIN (SELECT 's:' || session_id AS period, sum(micros) AS micros, \
                     sum(tokens) AS tokens FROM budget_reservations \
                 WHERE agent_id = ?1 AND closed_at IS NULL AND expires_at < ?4 \
                     AND session_id = ?5 GROUP BY session_id \
                 UNION ALL SELECT 'd:' || day, sum(micros), sum(tokens) FROM budget_reservations \
                 WHERE agent_id = ?1 AND closed_at IS NULL AND expires_at < ?4 AND day = ?6 \
                 GROUP BY day) x ON x.period = c.period \
             WHERE c.agent_id = ?1 AND c.period IN (?2, ?3)",
        )
        .bind(agent)
        .bind(&s_period)
        .bind(&d_period)
        .bind(now)
        .bind(session)
        .bind(&day)
        .fetch_all(&mut *conn)
        .await?;
        drop(conn);
        let pick = |period: &str| {
            rows.iter().find(|r| r.0 == period).map(|r| Counter {
                spent_micros: r.1,
                reserved_micros: r.2,
                spent_tokens: r.3,
                reserved_tokens: r.4,
                started_at: r.5,
            })
        };
        let (s, d) = (pick(&s_period), pick(&d_period));
        let policy = match pol {
            Some(p) => {
                let tokens = |t: Option<i64>| t.map(|v| u64::try_from(v).unwrap_or(0));
                Some(BudgetPolicy {
                    agent_id: AgentId::new(agent)
                        .map_err(|e| StoreError::InvalidArgument(e.to_string()))?,
                    per_session: p.per_session_micros.map(MicroUsd),
                    per_day: p.per_day_micros.map(MicroUsd),
                    per_session_tokens: tokens(p.per_session_tokens),
                    per_day_tokens: tokens(p.per_day_tokens),
                    max_session_duration: p
                        .max_session_seconds
                        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
                })
            }
            None => None,
        };
        let session_age = s
            .as_ref()
            .map(|c| Duration::from_micros(u64::try_from(now - c.started_at).unwrap_or(0)));
        Ok(BudgetStatus {
            policy,
            session: counter_of(s),
            day: counter_of(d),
            session_age,
        })
    }

    async fn day_budgets(&self) -> Result<Vec<(BudgetPolicy, BudgetCounter)>> {
        let day = day_of(self.clock.now_us());
        let rows: Vec<DayBudgetRow> = sqlx::query_as(
            "SELECT p.agent_id, p.per_session_micros, p.per_day_micros, p.per_session_tokens, \
                    p.per_day_tokens, p.max_session_seconds, \
                    coalesce(d.spent_micros, 0) AS spent_micros, \
                    coalesce(d.reserved_micros, 0) AS reserved_micros, \
                    coalesce(d.spent_tokens, 0) AS spent_tokens, \
                    coalesce(d.reserved_tokens, 0) AS reserved_tokens \
             FROM budget_policies p \
             LEFT JOIN budget_counters d ON d.agent_id = p.agent_id AND d.period = ? \
             ORDER BY p.agent_id",
        )
        .bind(format!("d:{day}"))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(DayBudgetRow::into_parts).collect()
    }

    async fn usage_today(&self, agent: &str) -> Result<Vec<ModelUsage>> {
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT model, calls, input_tokens, output_tokens, cached_tokens, micros FROM budget_usage \
             WHERE agent_id = ? AND day = ? ORDER BY micros DESC, model",
        )
        .bind(agent)
        .bind(day_of(self.clock.now_us()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(usage_of).collect())
    }

    async fn usage_today_all(&self) -> Result<Vec<(String, ModelUsage)>> {
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT agent_id, model, calls, input_tokens, output_tokens, cached_tokens, micros \
             FROM budget_usage WHERE day = ? ORDER BY agent_id, micros DESC, model",
        )
        .bind(day_of(self.clock.now_us()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(agent, model, calls, i, o, c, m)| (agent, usage_of((model, calls, i, o, c, m))))
            .collect())
    }

    async fn usage_between(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::Date, String, ModelUsage)>> {
        let fmt =
            |d: time::Date| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        let rows: Vec<DayUsageRow> = sqlx::query_as(
            "SELECT day, agent_id, model, calls, input_tokens, output_tokens, cached_tokens, micros \
             FROM budget_usage WHERE day BETWEEN ? AND ? \
             ORDER BY day, agent_id, micros DESC, model",
        )
        .bind(fmt(from))
        .bind(fmt(to))
        .fetch_all(&self.pool)
        .await?;
        let date = time::macros::format_description!("[year]-[month]-[day]");
        rows.into_iter()
            .map(|(day, agent, model, calls, i, o, c, m)| {
                let day = time::Date::parse(&day, &date)
                    .map_err(|_| StoreError::Corrupt("a budget_usage day".into()))?;
                Ok((day, agent, usage_of((model, calls, i, o, c, m))))
            })
            .collect()
    }

    async fn usage_by_hour(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::OffsetDateTime, String, ModelUsage)>> {
        let start = super::to_us(from.midnight().assume_utc());
        let end = super::to_us(to.next_day().unwrap_or(to).midnight().assume_utc());
        let rows: Vec<HourUsageRow> = sqlx::query_as(
            "SELECT hour, agent_id, model, calls, input_tokens, output_tokens, cached_tokens, \
                 micros FROM budget_usage_hourly WHERE hour >= ? AND hour < ? \
             ORDER BY hour, agent_id, micros DESC, model",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(hour, agent, model, calls, i, o, c, m)| {
                Ok((
                    super::from_us(hour)?,
                    agent,
                    usage_of((model, calls, i, o, c, m)),
                ))
            })
            .collect()
    }
}

/// A `budget_usage` row with its day: day, agent, model, calls, input, output and cached
/// tokens, micro-USD.
type DayUsageRow = (String, String, String, i64, i64, i64, i64, i64);

/// A `budget_usage_hourly` row: hour (microseconds), agent, model, calls, input, output and
/// cached tokens, micro-USD.
type HourUsageRow = (i64, String, String, i64, i64, i64, i64, i64);
