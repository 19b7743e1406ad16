//! Budget queries. Reservation, settlement and tracking are single calls of the functions in
//! the budgets migration, so each is atomic and costs one round trip. A reservation or a
//! settlement can also commit with an audit event (the guarded LLM path's `llm.request` and
//! `llm.response`), in one statement in autocommit: the row is sealed here after the head this
//! process last saw of the chain (`heads`), and `governance_reserve_logged` /
//! `governance_settle_logged` append it only if that is still the head, checked under the head
//! row's lock, which they take after the budget counters. A stale head changes nothing and
//! comes back with the current one: the row is resealed and sent again. After a few stale
//! answers in a row (another process appending all the while) the call falls back to a
//! transaction that locks the head itself, so it cannot be stale.

use std::time::Duration;

use gov_core::rules;
use gov_core::{
    AgentId, AuditEvent, AuditRecord, BudgetCounter, BudgetDenial, BudgetPolicy, BudgetRefusal,
    BudgetStatus, MicroUsd, ModelUsage, TokenUsage, ZERO_HMAC,
};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{FromRow, Postgres};
use uuid::Uuid;

use super::PgStore;
use super::audit::{append_locked, lock_head};
use super::heads::{Head, Recording, Tip};
use crate::backend::BudgetStore;
use crate::{Reserve, Result, Sealer, StoreError};

/// Stale answers in a row after which an append stops sealing ahead and locks the head instead.
pub(crate) const OPTIMISTIC_TRIES: usize = 3;

/// How long an append waits for this process's previous one-statement append to the same chain
/// before it seals against the head it knows anyway: a statement held up in the database (by a
/// lock another session holds) must not hold up every append of this process.
pub(crate) const TURN_PATIENCE: Duration = Duration::from_millis(20);

/// What `governance_reserve_logged` returns: outcome (`ok`, `refused`, `stale`), the refusal's
/// reason, cap and used, and the head (the appended row, or the current head when stale).
type ReserveLoggedRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

/// `event` sealed as the row after `head`.
pub(crate) fn sealed_after(
    event: &AuditEvent,
    key_id: &str,
    seal: Sealer<'_>,
    head: &Head,
) -> AuditRecord {
    let mut record = AuditRecord::unsealed(event, head.0 + 1, &head.1, key_id);
    seal(&mut record);
    record
}

/// Binds the chain, the expected head and the sealed row: the trailing parameters shared by
/// `governance_reserve_logged` and `governance_settle_logged`.
fn bind_row<'q, O>(
    q: QueryAs<'q, Postgres, O, PgArguments>,
    head: &'q Head,
    r: &'q AuditRecord,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    q.bind(&r.chain_id)
        .bind(head.0)
        .bind(&head.1)
        .bind(r.event_id.as_uuid())
        .bind(r.occurred_at)
        .bind(&r.agent_id)
        .bind(&r.session_id)
        .bind(&r.kind)
        .bind(&r.actor)
        .bind(r.parent_event_id.map(|p| p.as_uuid()))
        .bind(&r.payload)
        .bind(&r.key_id)
        .bind(&r.row_hmac)
        .bind(&r.signature)
        .bind(&r.signer_key_id)
        .bind(&r.signature_status)
}

/// The head a stale answer carries.
pub(crate) fn stale_head(seq: Option<i64>, hmac: Option<Vec<u8>>) -> Result<Head> {
    seq.zip(hmac)
        .ok_or_else(|| StoreError::Corrupt("a stale answer without the chain's head".into()))
}

/// The row `governance_reserve` returns, with the chain head the same statement locked (only
/// when the reservation held and the chain has a head row).
type ReserveRow = (
    bool,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

fn refusal(reason: Option<String>, cap: Option<i64>, used: Option<i64>) -> Result<BudgetRefusal> {
    let denial = reason
        .as_deref()
        .and_then(BudgetDenial::parse)
        .ok_or_else(|| StoreError::Corrupt("unexpected budget refusal".into()))?;
    Ok(BudgetRefusal { denial, cap, used })
}

fn head(seq: Option<i64>, hmac: Option<Vec<u8>>) -> Option<(i64, Vec<u8>)> {
    seq.zip(hmac)
}

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
    /// The head to seal against: the one last seen, else the stored one (read without a lock;
    /// the database checks it anyway).
    pub(crate) async fn expected_head(&self, tip: &Tip, chain: &str) -> Result<Head> {
        if let Some(h) = tip.head() {
            return Ok(h);
        }
        // language=PostgreSQL
        let stored: Option<Head> =
            sqlx::query_as("SELECT seq, head_hmac FROM chain_heads WHERE chain_id = $1")
                .bind(chain)
                .fetch_optional(&self.pool())
                .await?;
        let head = stored.unwrap_or_else(|| (0, ZERO_HMAC.to_vec()));
        tip.observed(head.clone());
        Ok(head)
    }

    /// [`BudgetStore::reserve_logged`] in a transaction that locks the head itself (after the
    /// counters): four round trips, never stale.
    async fn reserve_logged_locking(
        &self,
        r: &Reserve<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<Result<i64, BudgetRefusal>> {
        let chain = event.chain_id.as_str();
        let mut tx = self.pool().begin().await?;
        // The head is locked by the same statement, after the function has locked the counters.
        // language=PostgreSQL
        let (ok, reason, cap, used, seq, hmac): ReserveRow = sqlx::query_as(
            "SELECT r.ok, r.reason, r.cap, r.used, h.seq, h.head_hmac \
             FROM governance_reserve($1, $2, $3, $4, $5, $6, $7, $8, $10) AS r \
             LEFT JOIN LATERAL (SELECT seq, head_hmac FROM chain_heads \
                 WHERE chain_id = $9 AND r.ok FOR UPDATE) AS h ON true",
        )
        .bind(r.id)
        .bind(r.agent)
        .bind(r.session)
        .bind(r.model)
        .bind(r.micros)
        .bind(r.tokens)
        .bind(rules::reservation_ttl_micros(r.ttl))
        .bind(r.allow_unbudgeted)
        .bind(chain)
        .bind(self.clock.now())
        .fetch_one(&mut *tx)
        .await?;
        if !ok {
            tx.commit().await?;
            return Ok(Err(refusal(reason, cap, used)?));
        }
        self.append_and_commit(tx, event, key_id, seal, head(seq, hmac))
            .await
            .map(Ok)
    }

    /// [`BudgetStore::settle_logged`] in a transaction that locks the head itself (after the
    /// reservation and the counters): four round trips, never stale.
    #[allow(clippy::too_many_arguments)]
    async fn settle_logged_locking(
        &self,
        id: Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<(String, i64)> {
        let chain = event.chain_id.as_str();
        let mut tx = self.pool().begin().await?;
        // language=PostgreSQL
        let (outcome, seq, hmac): (String, Option<i64>, Option<Vec<u8>>) = sqlx::query_as(
            "SELECT s.outcome, h.seq, h.head_hmac \
             FROM governance_settle($1, $2, $3, $4, $5, $6, $8) AS s(outcome) \
             LEFT JOIN LATERAL (SELECT seq, head_hmac FROM chain_heads \
                 WHERE chain_id = $7 AND s.outcome IS NOT NULL FOR UPDATE) AS h ON true",
        )
        .bind(id)
        .bind(micros)
        .bind(to_i64(usage.input_tokens))
        .bind(to_i64(usage.output_tokens))
        .bind(to_i64(usage.cached_input_tokens))
        .bind(release)
        .bind(chain)
        .bind(self.clock.now())
        .fetch_one(&mut *tx)
        .await?;
        let seq = self
            .append_and_commit(tx, event, key_id, seal, head(seq, hmac))
            .await?;
        Ok((outcome, seq))
    }

    /// Appends `event` after the chain's head (`locked` when the caller's statement already
    /// locked it), commits `tx` and records the new head: the end both locking paths share.
    async fn append_and_commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
        locked: Option<(i64, Vec<u8>)>,
    ) -> Result<i64> {
        let chain = event.chain_id.as_str();
        let sealed = Recording::new(seal);
        let head = lock_head(&mut tx, chain, locked).await?;
        let seqs = append_locked(
            &mut tx,
            chain,
            key_id,
            std::slice::from_ref(event),
            &|row| sealed.seal(row),
            head,
        )
        .await?;
        tx.commit().await?;
        self.heads.committed(chain, sealed.last());
        seqs.first()
            .copied()
            .ok_or_else(|| StoreError::Corrupt("an append returned no seq".into()))
    }
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

impl BudgetStore for PgStore {
    async fn put_budget_policy(&self, p: &BudgetPolicy) -> Result<()> {
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
        .execute(&self.pool())
        .await?;
        Ok(())
    }

    async fn delete_budget_policy(&self, agent: &str) -> Result<bool> {
        // language=PostgreSQL
        let r = sqlx::query("DELETE FROM budget_policies WHERE agent_id = $1")
            .bind(agent)
            .execute(&self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn reserve(&self, r: &Reserve<'_>) -> Result<Result<(), BudgetRefusal>> {
        // language=PostgreSQL
        let (ok, reason, cap, used): (bool, Option<String>, Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT * FROM governance_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(r.id)
                .bind(r.agent)
                .bind(r.session)
                .bind(r.model)
                .bind(r.micros)
                .bind(r.tokens)
                .bind(rules::reservation_ttl_micros(r.ttl))
                .bind(r.allow_unbudgeted)
                .bind(self.clock.now())
                .fetch_one(&self.pool())
                .await?;
        if ok {
            return Ok(Ok(()));
        }
        Ok(Err(refusal(reason, cap, used)?))
    }

    /// Reserves and, when the reservation holds, appends `event`, all or nothing; returns the
    /// event's seq. A refusal commits what `governance_reserve` did (expiring old
    /// reservations), as a plain reservation does, and appends nothing. One round trip when the
    /// cached head is current.
    async fn reserve_logged(
        &self,
        r: &Reserve<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<Result<i64, BudgetRefusal>> {
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
                    "SELECT * FROM governance_reserve_logged($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)",
                )
                .bind(r.id)
                .bind(r.agent)
                .bind(r.session)
                .bind(r.model)
                .bind(r.micros)
                .bind(r.tokens)
                .bind(rules::reservation_ttl_micros(r.ttl))
                .bind(r.allow_unbudgeted);
                let (outcome, reason, cap, used, seq, hmac): ReserveLoggedRow =
                    bind_row(q, &head, &record)
                        .bind(self.clock.now())
                        .fetch_one(&self.pool())
                        .await?;
                match outcome.as_str() {
                    "ok" => {
                        tip.committed((head.0 + 1, record.row_hmac));
                        return Ok(Ok(head.0 + 1));
                    }
                    "refused" => return Ok(Err(refusal(reason, cap, used)?)),
                    _ => {
                        head = stale_head(seq, hmac)?;
                        tip.observed(head.clone());
                    }
                }
            }
        }
        self.reserve_logged_locking(r, event, key_id, seal).await
    }

    async fn settle(
        &self,
        id: Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
    ) -> Result<String> {
        // language=PostgreSQL
        let outcome: String =
            sqlx::query_scalar("SELECT governance_settle($1, $2, $3, $4, $5, $6, $7)")
                .bind(id)
                .bind(micros)
                .bind(to_i64(usage.input_tokens))
                .bind(to_i64(usage.output_tokens))
                .bind(to_i64(usage.cached_input_tokens))
                .bind(release)
                .bind(self.clock.now())
                .fetch_one(&self.pool())
                .await?;
        Ok(outcome)
    }

    /// Settles (or releases) a reservation and appends `event`, all or nothing, whatever the
    /// outcome (a reservation already closed changes nothing but the chain); returns the
    /// outcome and the event's seq. One round trip when the cached head is current.
    #[allow(clippy::too_many_arguments)]
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
                    "SELECT * FROM governance_settle_logged($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
                )
                .bind(id)
                .bind(micros)
                .bind(to_i64(usage.input_tokens))
                .bind(to_i64(usage.output_tokens))
                .bind(to_i64(usage.cached_input_tokens))
                .bind(release);
                let (outcome, seq, hmac): (Option<String>, Option<i64>, Option<Vec<u8>>) =
                    bind_row(q, &head, &record)
                        .bind(self.clock.now())
                        .fetch_one(&self.pool())
                        .await?;
                match outcome {
                    Some(outcome) => {
                        tip.committed((head.0 + 1, record.row_hmac));
                        return Ok((outcome, head.0 + 1));
                    }
                    None => {
                        head = stale_head(seq, hmac)?;
                        tip.observed(head.clone());
                    }
                }
            }
        }
        self.settle_logged_locking(id, micros, usage, release, event, key_id, seal)
            .await
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
        // language=PostgreSQL
        let applied: bool =
            sqlx::query_scalar("SELECT governance_track_once($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(id)
                .bind(agent)
                .bind(session)
                .bind(model)
                .bind(micros)
                .bind(to_i64(usage.input_tokens))
                .bind(to_i64(usage.output_tokens))
                .bind(to_i64(usage.cached_input_tokens))
                .bind(self.clock.now())
                .fetch_one(&self.pool())
                .await?;
        Ok(applied)
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
        // language=PostgreSQL
        let outcome: String =
            sqlx::query_scalar("SELECT governance_settle_once($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                .bind(id)
                .bind(agent)
                .bind(session)
                .bind(model)
                .bind(micros)
                .bind(to_i64(usage.input_tokens))
                .bind(to_i64(usage.output_tokens))
                .bind(to_i64(usage.cached_input_tokens))
                .bind(self.clock.now())
                .fetch_one(&self.pool())
                .await?;
        Ok(outcome)
    }

    async fn budget_status(&self, agent: &str, session: &str) -> Result<BudgetStatus> {
        // One round trip: policy, session counter and today's counter. Holds that expired
        // but were not closed yet (expiry runs inside the next reservation) are not counted: a
        // crashed holder's reservation stops blocking at its expiry, not at the next reserve.
        // language=PostgreSQL
        let now = self.clock.now();
        let query = || {
            sqlx::query_as::<_, StatusRow>(
            "SELECT p.agent_id IS NOT NULL AS has_policy, p.per_session_micros, p.per_day_micros, \
                    p.per_session_tokens, p.per_day_tokens, p.max_session_seconds, \
                    s.spent_micros AS s_spent, \
                    greatest(s.reserved_micros - x.s_micros, 0) AS s_reserved, \
                    s.spent_tokens AS s_spent_tokens, \
                    greatest(s.reserved_tokens - x.s_tokens, 0) AS s_reserved_tokens, \
                    (extract(epoch FROM $3 - s.started_at) * 1000000)::bigint AS s_age_us, \
                    d.spent_micros AS d_spent, \
                    greatest(d.reserved_micros - x.d_micros, 0) AS d_reserved, \
                    d.spent_tokens AS d_spent_tokens, \
                    greatest(d.reserved_tokens - x.d_tokens, 0) AS d_reserved_tokens \
             FROM (SELECT $1::text AS agent_id, (($3::timestamptz AT TIME ZONE 'UTC')::date) AS today) a \
             LEFT JOIN budget_policies p ON p.agent_id = a.agent_id \
             LEFT JOIN budget_counters s ON s.agent_id = a.agent_id AND s.period = 's:' || $2::text \
             LEFT JOIN budget_counters d ON d.agent_id = a.agent_id \
                 AND d.period = 'd:' || a.today::text \
             CROSS JOIN LATERAL (SELECT \
                     coalesce(sum(x.micros) FILTER (WHERE x.session_id = $2::text), 0)::bigint AS s_micros, \
                     coalesce(sum(x.tokens) FILTER (WHERE x.session_id = $2::text), 0)::bigint AS s_tokens, \
                     coalesce(sum(x.micros) FILTER (WHERE x.day = a.today), 0)::bigint AS d_micros, \
                     coalesce(sum(x.tokens) FILTER (WHERE x.day = a.today), 0)::bigint AS d_tokens \
                 FROM budget_reservations x \
                 WHERE x.agent_id = a.agent_id AND x.closed_at IS NULL AND x.expires_at < $3) x",
        )
        .bind(agent)
        .bind(session)
        .bind(now)
        };
        let r = super::hot!(self, |c| query().fetch_one(c))?;
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

    async fn day_budgets(&self) -> Result<Vec<(BudgetPolicy, BudgetCounter)>> {
        // language=PostgreSQL
        let rows: Vec<DayBudgetRow> = sqlx::query_as(
            "SELECT p.agent_id, p.per_session_micros, p.per_day_micros, p.per_session_tokens, \
                    p.per_day_tokens, p.max_session_seconds, \
                    coalesce(d.spent_micros, 0)::bigint AS spent_micros, \
                    coalesce(d.reserved_micros, 0)::bigint AS reserved_micros, \
                    coalesce(d.spent_tokens, 0)::bigint AS spent_tokens, \
                    coalesce(d.reserved_tokens, 0)::bigint AS reserved_tokens \
             FROM budget_policies p \
             LEFT JOIN budget_counters d ON d.agent_id = p.agent_id \
                 AND d.period = 'd:' || (($1::timestamptz AT TIME ZONE 'UTC')::date)::text \
             ORDER BY p.agent_id",
        )
        .bind(self.clock.now())
        .fetch_all(&self.pool())
        .await?;
        rows.into_iter().map(DayBudgetRow::into_parts).collect()
    }

    async fn usage_today(&self, agent: &str) -> Result<Vec<ModelUsage>> {
        // language=PostgreSQL
        let rows: Vec<UsageRow> = sqlx::query_as(
            "SELECT model, calls, input_tokens, output_tokens, cached_tokens, micros FROM budget_usage \
             WHERE agent_id = $1 AND day = ($2::timestamptz AT TIME ZONE 'UTC')::date \
             ORDER BY micros DESC, model",
        )
        .bind(agent)
        .bind(self.clock.now())
        .fetch_all(&self.pool())
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

    async fn usage_today_all(&self) -> Result<Vec<(String, ModelUsage)>> {
        // language=PostgreSQL
        let rows: Vec<(String, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT agent_id, model, calls, input_tokens, output_tokens, cached_tokens, micros \
             FROM budget_usage WHERE day = ($1::timestamptz AT TIME ZONE 'UTC')::date \
             ORDER BY agent_id, micros DESC, model",
        )
        .bind(self.clock.now())
        .fetch_all(&self.pool())
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

    async fn usage_between(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::Date, String, ModelUsage)>> {
        // language=PostgreSQL
        let rows: Vec<DayUsageRow> = sqlx::query_as(
            "SELECT day, agent_id, model, calls, input_tokens, output_tokens, cached_tokens, micros \
             FROM budget_usage WHERE day BETWEEN $1 AND $2 \
             ORDER BY day, agent_id, micros DESC, model",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(day, agent, model, calls, input_tokens, output_tokens, cached_tokens, micros)| {
                    (
                        day,
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

    async fn usage_by_hour(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::OffsetDateTime, String, ModelUsage)>> {
        let start = from.midnight().assume_utc();
        let end = to.next_day().unwrap_or(to).midnight().assume_utc();
        // language=PostgreSQL
        let rows: Vec<HourUsageRow> = sqlx::query_as(
            "SELECT hour, agent_id, model, calls, input_tokens, output_tokens, cached_tokens, \
                 micros FROM budget_usage_hourly WHERE hour >= $1 AND hour < $2 \
             ORDER BY hour, agent_id, micros DESC, model",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(hour, agent, model, calls, i, o, c, m)| {
                (
                    hour.to_offset(time::UtcOffset::UTC),
                    agent,
                    ModelUsage {
                        model,
                        calls,
                        input_tokens: i,
                        output_tokens: o,
                        cached_tokens: c,
                        cost: MicroUsd(m),
                    },
                )
            })
            .collect())
    }
}

/// A `budget_usage` row with its day: day, agent, model, calls, input, output and cached
/// tokens, micro-USD.
type DayUsageRow = (time::Date, String, String, i64, i64, i64, i64, i64);

/// A `budget_usage_hourly` row: hour, agent, model, calls, input, output and cached tokens,
/// micro-USD.
type HourUsageRow = (
    time::OffsetDateTime,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
);
