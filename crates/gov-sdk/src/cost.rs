//! Cost: prices, budget policies, and reservations that make overspending impossible.
//!
//! Before a call, [`Cost::reserve`] projects its cost from the declared `max_tokens` and reserves
//! it against the session and day caps in one atomic database call; concurrent callers can never
//! reserve past a cap. After the call, [`Reservation::settle`] records what was really used and
//! returns the rest. A reservation never settled is released when dropped, or expires.
//! An agent with no budget policy is refused unless unbudgeted agents are allowed.

use std::time::Duration;

use gov_core::events::{self, SystemEvent};
use gov_core::{
    AuditEvent, BudgetDenial, BudgetPolicy, BudgetRefusal, BudgetStatus, EventId, MicroUsd,
    ModelPrice, ModelUsage, TokenUsage,
};
use serde::Serialize;

use crate::{Error, Governance, Result};

/// Cost settings.
#[derive(Debug, Clone)]
pub struct CostConfig {
    /// Prices by model (default: the built-in table).
    pub prices: gov_core::PriceTable,
    /// Let agents without a budget policy spend (tracked, uncapped). Default: refused.
    pub allow_unbudgeted: bool,
    /// `max_tokens` assumed for a call that declares none (default: none, such calls are refused).
    pub default_max_tokens: Option<u64>,
    /// How long a reservation holds budget if never settled (default 10 minutes).
    pub reservation_ttl: Duration,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            prices: gov_core::PriceTable::builtin(),
            allow_unbudgeted: false,
            default_max_tokens: None,
            reservation_ttl: Duration::from_secs(600),
        }
    }
}

/// Budget held for one call until it is settled or released.
#[derive(Debug)]
#[must_use = "settle the reservation with the real usage, or release it"]
pub struct Reservation {
    gov: Governance,
    id: uuid::Uuid,
    agent: String,
    session: String,
    model: String,
    reserved: MicroUsd,
    tokens: u64,
    open: bool,
    /// Made with budgets turned off: holds nothing; settling records the spend.
    detached: bool,
}

/// What settling did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settlement {
    /// The real cost of the call.
    pub cost: MicroUsd,
    /// What had been reserved.
    pub reserved: MicroUsd,
    /// Whether the reservation had expired before it was settled (the spend is still recorded).
    pub late: bool,
}

impl Reservation {
    /// The reservation id.
    pub fn id(&self) -> uuid::Uuid {
        self.id
    }

    /// The amount held.
    pub fn reserved(&self) -> MicroUsd {
        self.reserved
    }

    /// The tokens held.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Records the real usage and returns the unused part of the reservation to the budget.
    pub async fn settle(mut self, usage: TokenUsage) -> Result<Settlement> {
        if self.detached {
            let cost = self
                .gov
                .cost()
                .track(&self.agent, &self.session, &self.model, usage)
                .await?;
            return Ok(Settlement {
                cost,
                reserved: self.reserved,
                late: false,
            });
        }
        let cost = self.gov.cost().cost_of(&self.model, &usage)?;
        let outcome = self
            .gov
            .inner
            .store
            .settle(self.id, cost.0, &usage, false)
            .await?;
        self.open = false;
        self.settlement(&outcome, cost)
    }

    /// Returns the whole reservation to the budget (the call did not happen or was cancelled).
    pub async fn release(mut self) -> Result<()> {
        if self.detached {
            return Ok(());
        }
        self.gov
            .inner
            .store
            .settle(self.id, 0, &TokenUsage::default(), true)
            .await?;
        self.open = false;
        Ok(())
    }

    /// Whether [`Self::settle_logged`] and [`Self::release_logged`] may be used: the database
    /// holds the reservation and nothing is spooled (an event must otherwise queue behind the
    /// spool, so it is logged as observation beside a plain settlement).
    pub(crate) fn commits_with_event(&self) -> bool {
        !self.detached && self.gov.inner.spool.len() == 0
    }

    /// [`Self::settle`] with `event` appended to its chain in the same transaction. `Err`:
    /// nothing was committed (the event is not in the chain, the reservation still holds and
    /// is released when dropped, or expires). `Ok(Err(..))`: the event is in the chain but the
    /// reservation was already closed or unknown, so no spend was recorded.
    pub(crate) async fn settle_logged(
        mut self,
        usage: TokenUsage,
        event: &AuditEvent,
    ) -> Result<Result<Settlement>> {
        let cost = self.gov.cost().cost_of(&self.model, &usage)?;
        let outcome = self.close_logged(cost, &usage, false, event).await?;
        Ok(self.settlement(&outcome, cost))
    }

    /// [`Self::release`] with `event` appended to its chain in the same transaction; `Err`:
    /// nothing was committed.
    pub(crate) async fn release_logged(mut self, event: &AuditEvent) -> Result<()> {
        self.close_logged(MicroUsd(0), &TokenUsage::default(), true, event)
            .await
            .map(drop)
    }

    async fn close_logged(
        &mut self,
        cost: MicroUsd,
        usage: &TokenUsage,
        release: bool,
        event: &AuditEvent,
    ) -> Result<String> {
        let audit = &self.gov.inner.audit;
        audit.ensure_writable(event.chain_id.as_str()).await?;
        let sealer = audit.sealer();
        let seal = |r: &mut gov_core::AuditRecord| sealer.seal(r);
        let (outcome, seq) = self
            .gov
            .inner
            .store
            .settle_logged(
                self.id,
                cost.0,
                usage,
                release,
                event,
                sealer.key().key_id(),
                &seal,
            )
            .await?;
        self.open = false;
        audit
            .appended_elsewhere(event.chain_id.as_str(), seq, seq)
            .await;
        Ok(outcome)
    }

    fn settlement(&self, outcome: &str, cost: MicroUsd) -> Result<Settlement> {
        match outcome {
            "settled" | "expired_then_settled" => Ok(Settlement {
                cost,
                reserved: self.reserved,
                late: outcome == "expired_then_settled",
            }),
            other => Err(Error::Config(format!(
                "reservation {} could not be settled: {other}",
                self.id
            ))),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Dropped without settling: give the budget back now rather than at expiry.
        let (store, id) = (self.gov.inner.store.clone(), self.id);
        let (agent, session) = (self.agent.clone(), self.session.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.settle(id, 0, &TokenUsage::default(), true).await {
                    tracing::warn!(%agent, %session, error = %e, "could not release a dropped reservation; it will expire");
                }
            });
        }
    }
}

/// A reservation worked out but not made yet.
enum Plan {
    /// Budgets are turned off: nothing to hold.
    Detached(Reservation),
    /// Hold this much.
    Hold { micros: MicroUsd, tokens: u64 },
}

/// The most a single tracked spend may record: a million dollars. Anything more (or less
/// than nothing) is refused, live or replayed from the spool.
pub const MAX_TRACKED_MICROS: i64 = 1_000_000_000_000;
/// The most tokens of one kind a single tracked spend may record.
const MAX_TRACKED_TOKENS: u64 = 1_000_000_000_000;

/// The checks every tracked spend passes, live or replayed from the spool: valid agent and
/// session ids, a model name, and an amount between 0 and [`MAX_TRACKED_MICROS`].
pub(crate) fn check_track(
    agent: &str,
    session: &str,
    model: &str,
    micros: i64,
    usage: &TokenUsage,
) -> Result<()> {
    gov_core::AgentId::new(agent)?;
    gov_core::SessionId::new(session)?;
    if model.is_empty() || model.len() > 256 || model.chars().any(char::is_control) {
        return Err(Error::Config(
            "a tracked spend needs a model name of 1 to 256 printable characters".into(),
        ));
    }
    if !(0..=MAX_TRACKED_MICROS).contains(&micros) {
        return Err(Error::Config(format!(
            "a tracked spend of {micros} micro-USD is refused: it must be between 0 and {MAX_TRACKED_MICROS}"
        )));
    }
    let tokens = [
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
    ];
    if tokens.iter().any(|t| *t > MAX_TRACKED_TOKENS) {
        return Err(Error::Config(format!(
            "a tracked spend of more than {MAX_TRACKED_TOKENS} tokens of one kind is refused"
        )));
    }
    Ok(())
}

/// Logs an event as observation: a failure is a warning, never the caller's error.
async fn observe(gov: &Governance, event: AuditEvent) {
    let (agent, kind) = (event.agent_id.clone(), event.kind.clone());
    if let Err(e) = gov.audit().record(event).await {
        tracing::warn!(%agent, %kind, error = %e, "could not audit an event of a reservation");
    }
}

/// An agent's budget for display: caps, counters and today's spend by model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetSnapshot {
    /// Counters and policy.
    pub status: BudgetStatus,
    /// Today's spend by model (UTC).
    pub by_model: Vec<ModelUsage>,
    /// The date of the built-in prices.
    pub pricing_version: &'static str,
}

/// Cost and budgets of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Cost<'g> {
    gov: &'g Governance,
}

impl<'g> Cost<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    fn config(&self) -> &CostConfig {
        &self.gov.inner.config.cost
    }

    /// Stores an agent's budget policy.
    pub async fn register(&self, policy: BudgetPolicy) -> Result<()> {
        Ok(self.gov.inner.store.put_budget_policy(&policy).await?)
    }

    /// Removes an agent's budget policy.
    pub async fn unregister(&self, agent: &str) -> Result<bool> {
        Ok(self.gov.inner.store.delete_budget_policy(agent).await?)
    }

    /// The price of a model.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.config().prices.get(model)
    }

    fn cost_of(&self, model: &str, usage: &TokenUsage) -> Result<MicroUsd> {
        let price = self.price(model).ok_or_else(|| Error::BudgetExceeded {
            agent: String::new(),
            denial: BudgetDenial::UnknownModel,
            cap: None,
            used: None,
            requested: 0,
        })?;
        Ok(MicroUsd(
            i64::try_from(price.cost_micros(usage)).unwrap_or(i64::MAX),
        ))
    }

    /// Reserves the projected cost of a call: `input_tokens` in and at most `max_tokens` out
    /// (or the configured default). Refused with [`Error::BudgetExceeded`] when a cap would be
    /// passed, the model has no price, or no `max_tokens` is known; every refusal is audited.
    pub async fn reserve(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        input_tokens: u64,
        max_tokens: Option<u64>,
    ) -> Result<Reservation> {
        let (micros, tokens) = match self
            .plan(agent, session, model, input_tokens, max_tokens)
            .await?
        {
            Plan::Detached(r) => return Ok(r),
            Plan::Hold { micros, tokens } => (micros, tokens),
        };
        self.hold(agent, session, model, micros, tokens).await
    }

    /// [`Self::reserve`], and when the reservation holds, the event `event` builds from the
    /// amount held, committed in the same transaction: the reservation is never made without
    /// its event, nor the event logged for a refused reservation (a refusal is audited as
    /// `budget.denied`, as always). Returns the reservation and the event's id.
    ///
    /// While the spool holds records (storage was out of reach), or with budgets turned off,
    /// the event is logged as observation after the reservation instead, so it queues behind
    /// what is spooled; a failure to log it is then a warning, never an error.
    pub(crate) async fn reserve_logged(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        input_tokens: u64,
        max_tokens: Option<u64>,
        event: impl FnOnce(MicroUsd) -> Result<AuditEvent>,
    ) -> Result<(Reservation, EventId)> {
        let (micros, tokens) = match self
            .plan(agent, session, model, input_tokens, max_tokens)
            .await?
        {
            Plan::Detached(r) => {
                let ev = event(r.reserved())?;
                let id = ev.event_id;
                observe(self.gov, ev).await;
                return Ok((r, id));
            }
            Plan::Hold { micros, tokens } => (micros, tokens),
        };
        let ev = event(micros)?;
        let event_id = ev.event_id;
        if self.gov.inner.spool.len() > 0 {
            let r = self.hold(agent, session, model, micros, tokens).await?;
            observe(self.gov, ev).await;
            return Ok((r, event_id));
        }
        let cfg = self.config();
        let id = uuid::Uuid::now_v7();
        let audit = &self.gov.inner.audit;
        audit.ensure_writable(ev.chain_id.as_str()).await?;
        let sealer = audit.sealer();
        let seal = |r: &mut gov_core::AuditRecord| sealer.seal(r);
        let outcome = self
            .gov
            .inner
            .store
            .reserve_logged(
                &gov_store::Reserve {
                    id,
                    agent,
                    session,
                    model,
                    micros: micros.0,
                    tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
                    ttl: cfg.reservation_ttl,
                    allow_unbudgeted: cfg.allow_unbudgeted,
                },
                &ev,
                sealer.key().key_id(),
                &seal,
            )
            .await?;
        match outcome {
            Ok(seq) => {
                audit
                    .appended_elsewhere(ev.chain_id.as_str(), seq, seq)
                    .await;
                Ok((
                    self.held(id, agent, session, model, micros, tokens),
                    event_id,
                ))
            }
            Err(r) => Err(self.refused(agent, session, model, micros.0, r).await),
        }
    }

    /// Validates a reservation and projects its cost; refusals that need no counter (no
    /// price, no `max_tokens`) are audited and returned here.
    async fn plan(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        input_tokens: u64,
        max_tokens: Option<u64>,
    ) -> Result<Plan> {
        gov_core::AgentId::new(agent)?;
        gov_core::SessionId::new(session)?;
        // The halt check runs before every gate.
        self.gov.presence().assert_not_halted(agent).await?;
        let cfg = self.config();
        let refuse = |denial| BudgetRefusal {
            denial,
            cap: None,
            used: None,
        };
        let projected = match (cfg.prices.get(model), max_tokens.or(cfg.default_max_tokens)) {
            (None, _) => Err(refuse(BudgetDenial::UnknownModel)),
            (_, None) => Err(refuse(BudgetDenial::NoMaxTokens)),
            (Some(price), Some(max)) => {
                let usage = TokenUsage {
                    input_tokens,
                    output_tokens: max,
                    cached_input_tokens: 0,
                };
                Ok((
                    MicroUsd(i64::try_from(price.cost_micros(&usage)).unwrap_or(i64::MAX)),
                    usage.total(),
                ))
            }
        };
        if !self.gov.inner.config.modules.budgets {
            let (reserved, tokens) = projected.unwrap_or((MicroUsd(0), 0));
            return Ok(Plan::Detached(Reservation {
                gov: self.gov.clone(),
                id: uuid::Uuid::nil(),
                agent: agent.to_owned(),
                session: session.to_owned(),
                model: model.to_owned(),
                reserved,
                tokens,
                open: false,
                detached: true,
            }));
        }
        match projected {
            Ok((micros, tokens)) => Ok(Plan::Hold { micros, tokens }),
            Err(r) => Err(self.refused(agent, session, model, 0, r).await),
        }
    }

    /// Reserves `micros` and `tokens` (one round trip).
    async fn hold(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        micros: MicroUsd,
        tokens: u64,
    ) -> Result<Reservation> {
        let cfg = self.config();
        let id = uuid::Uuid::now_v7();
        let outcome = self
            .gov
            .inner
            .store
            .reserve(&gov_store::Reserve {
                id,
                agent,
                session,
                model,
                micros: micros.0,
                tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
                ttl: cfg.reservation_ttl,
                allow_unbudgeted: cfg.allow_unbudgeted,
            })
            .await?;
        match outcome {
            Ok(()) => Ok(self.held(id, agent, session, model, micros, tokens)),
            Err(r) => Err(self.refused(agent, session, model, micros.0, r).await),
        }
    }

    /// A reservation the database holds.
    fn held(
        &self,
        id: uuid::Uuid,
        agent: &str,
        session: &str,
        model: &str,
        reserved: MicroUsd,
        tokens: u64,
    ) -> Reservation {
        Reservation {
            gov: self.gov.clone(),
            id,
            agent: agent.to_owned(),
            session: session.to_owned(),
            model: model.to_owned(),
            reserved,
            tokens,
            open: true,
            detached: false,
        }
    }

    /// Refuses with [`Error::BudgetExceeded`] when the session or day has no headroom left
    /// (or the agent has no policy and unbudgeted agents are not allowed). Reads the policy and
    /// both counters in one round trip.
    pub async fn check_or_raise(&self, agent: &str, session: &str) -> Result<BudgetStatus> {
        self.gov.presence().assert_not_halted(agent).await?;
        let status = self.gov.inner.store.budget_status(agent, session).await?;
        if !self.gov.inner.config.modules.budgets {
            return Ok(status);
        }
        let refusal = match &status.policy {
            None if !self.config().allow_unbudgeted => Some(BudgetRefusal {
                denial: BudgetDenial::NoPolicy,
                cap: None,
                used: None,
            }),
            _ => status.exhausted(),
        };
        match refusal {
            Some(r) => Err(self.refused(agent, session, "", 0, r).await),
            None => Ok(status),
        }
    }

    /// Records spend that was not reserved (an observed call). Returns its cost. Never fails
    /// because storage is out of reach: the record is spooled and replayed later (it counts
    /// once however often it is replayed).
    pub async fn track(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        usage: TokenUsage,
    ) -> Result<MicroUsd> {
        gov_core::AgentId::new(agent)?;
        gov_core::SessionId::new(session)?;
        let cost = self.cost_of(model, &usage).map_err(|_| {
            Error::Config(format!(
                "model {model:?} has no price; add it to the price table"
            ))
        })?;
        check_track(agent, session, model, cost.0, &usage)?;
        let record = crate::spool::Record::Track {
            id: uuid::Uuid::now_v7(),
            agent: agent.to_owned(),
            session: session.to_owned(),
            model: model.to_owned(),
            micros: cost.0,
            usage,
        };
        self.gov.inner.spool.submit(self.gov, record).await?;
        Ok(cost)
    }

    /// Settles reservation `id` after its settlement failed with `cause`, which may have
    /// committed (a lost reply): the settlement is written again, or spooled when storage is
    /// out of reach, as a record the database applies once (`Store::settle_once`): an open or
    /// expired reservation is settled, a settled one is left alone, a released one has the
    /// spend tracked once. Never counts the spend twice.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn settle_again(
        &self,
        id: uuid::Uuid,
        agent: &str,
        session: &str,
        model: &str,
        usage: TokenUsage,
        cause: Option<Error>,
    ) -> Result<MicroUsd> {
        let cost = self.cost_of(model, &usage)?;
        check_track(agent, session, model, cost.0, &usage)?;
        let record = crate::spool::Record::Settle {
            id,
            agent: agent.to_owned(),
            session: session.to_owned(),
            model: model.to_owned(),
            micros: cost.0,
            usage,
        };
        let spool = &self.gov.inner.spool;
        match cause {
            Some(cause) => spool.submit_after(self.gov, record, cause).await?,
            None => spool.submit(self.gov, record).await?,
        };
        Ok(cost)
    }

    /// Today's (UTC) spend of one agent, by model, most expensive first.
    pub async fn usage_today(&self, agent: &str) -> Result<Vec<gov_core::ModelUsage>> {
        Ok(self.gov.inner.store.usage_today(agent).await?)
    }

    /// Today's (UTC) spend of every agent, by model, ordered by agent then cost.
    pub async fn usage_today_all(&self) -> Result<Vec<(String, gov_core::ModelUsage)>> {
        Ok(self.gov.inner.store.usage_today_all().await?)
    }

    /// Spend by UTC day, agent and model over the days `from..=to` (at most 366 days): the same
    /// rows [`Self::usage_today_all`] and `governance budget` read for today, ordered by day,
    /// agent, then cost (highest first).
    pub async fn usage_between(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::Date, String, gov_core::ModelUsage)>> {
        if from > to {
            return Err(Error::Config(format!(
                "the range of days is empty: {from} is after {to}; give the earlier day first"
            )));
        }
        if (to - from).whole_days() >= 366 {
            return Err(Error::Config(format!(
                "{from} to {to} is more than 366 days; ask for a shorter range"
            )));
        }
        Ok(self.gov.inner.store.usage_between(from, to).await?)
    }

    /// Spend by UTC hour, agent and model over the hours of the days `from..=to` (at most 31
    /// days), ordered by hour, agent, then cost (highest first). Written with the rows of
    /// [`Self::usage_between`] in the same statement, so an hour's rows add up to its day's;
    /// spend settled before hourly rows existed (migration 20261203000600) is only in the days.
    pub async fn usage_by_hour(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::OffsetDateTime, String, gov_core::ModelUsage)>> {
        if from > to {
            return Err(Error::Config(format!(
                "the range of days is empty: {from} is after {to}; give the earlier day first"
            )));
        }
        if (to - from).whole_days() >= 31 {
            return Err(Error::Config(format!(
                "{from} to {to} is more than 31 days of hours; ask for a shorter range or days"
            )));
        }
        Ok(self.gov.inner.store.usage_by_hour(from, to).await?)
    }

    /// Every agent's budget policy with today's (UTC) counter, by agent (a hold that expired but
    /// was not closed yet still counts as reserved here).
    pub async fn day_budgets(
        &self,
    ) -> Result<Vec<(gov_core::BudgetPolicy, gov_core::BudgetCounter)>> {
        Ok(self.gov.inner.store.day_budgets().await?)
    }

    /// The agent's caps, counters (for `session`, and today) and today's spend by model.
    pub async fn snapshot(&self, agent: &str, session: &str) -> Result<BudgetSnapshot> {
        let status = self.gov.inner.store.budget_status(agent, session).await?;
        let by_model = self.gov.inner.store.usage_today(agent).await?;
        Ok(BudgetSnapshot {
            status,
            by_model,
            pricing_version: gov_core::PRICING_VERSION,
        })
    }

    async fn refused(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        requested: i64,
        r: BudgetRefusal,
    ) -> Error {
        let mut b = events::BudgetDenied {
            reason: r.denial,
            cap: r.cap,
            used: r.used,
            requested_micros: requested,
            model: model.to_owned(),
        }
        .event(agent);
        if gov_core::SessionId::new(session).is_ok() {
            b = b.session(session);
        }
        match b.build() {
            Ok(ev) => {
                if let Err(e) = self.gov.audit().record(ev).await {
                    tracing::warn!(agent, error = %e, "could not audit a budget refusal (the refusal stands)");
                }
            }
            Err(e) => tracing::warn!(agent, error = %e, "could not audit a budget refusal"),
        }
        Error::BudgetExceeded {
            agent: agent.to_owned(),
            denial: r.denial,
            cap: r.cap,
            used: r.used,
            requested,
        }
    }
}
