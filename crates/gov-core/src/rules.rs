//! The enforcement rules, written once: budget reservation, settlement and expiry, the budget
//! check, gate decisions and consumption, halts and resumes, as pure functions with typed
//! outcomes. Times are integer microseconds since the Unix epoch and are always passed in: the
//! rules never read a clock.
//!
//! The SQLite backend calls these functions between its reads and writes (inside a
//! `BEGIN IMMEDIATE` transaction). The Postgres backend runs the same rules as PL/pgSQL
//! functions (`governance_reserve`, `governance_settle`, `governance_decide`,
//! `governance_consume`, …), where they buy an atomic one-round-trip path or a privilege
//! boundary; the property-based differential tests (`gov-sdk` `tests/it/rules.rs`) apply random
//! operation sequences to [`Model`], Postgres and SQLite and compare every outcome, and
//! `migrations/postgres/schema.sql` holds the functions' current bodies.
//!
//! One clock decides: the caller's, passed as `now` (on Postgres as `p_now`), so both backends
//! and this model agree to the microsecond. Across the privilege boundary, where the
//! application role calls a function that runs as the owner (`governance_consume`), Postgres
//! refuses once the database's clock has also passed the expiry, so a caller cannot stretch an
//! approval by passing an old time.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::budget::{BudgetCounter, BudgetDenial, BudgetPolicy, BudgetRefusal};
use crate::gate::{GateStatus, OperatorRole};
use crate::pricing::MicroUsd;

/// Microseconds in a second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// The shortest a reservation holds budget: one second, whatever the configuration says.
pub const MIN_RESERVATION_TTL: Duration = Duration::from_secs(1);

/// A duration as whole microseconds (saturating).
pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A reservation's time to live in microseconds: `ttl`, at least [`MIN_RESERVATION_TTL`], to
/// the microsecond (no rounding to seconds).
pub fn reservation_ttl_micros(ttl: Duration) -> i64 {
    micros(ttl.max(MIN_RESERVATION_TTL))
}

/// When a reservation made at `now` with `ttl` expires.
pub fn reservation_expires_at(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(reservation_ttl_micros(ttl))
}

/// Whether something that expires at `expires_at` has expired at `now` (strictly after: at
/// its expiry instant it still holds).
pub fn is_expired(expires_at: i64, now: i64) -> bool {
    expires_at < now
}

/// A session's age in whole seconds, truncated (a session 1.9 s old is 1 s old).
pub fn session_age_seconds(started_at: i64, now: i64) -> i64 {
    now.saturating_sub(started_at) / MICROS_PER_SECOND
}

/// The UTC day (days since the epoch) a time falls on.
pub fn utc_day(t: i64) -> i64 {
    t.div_euclid(86_400 * MICROS_PER_SECOND)
}

/// The caps of a budget policy as integers (micro-USD, tokens, seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// Spend cap per session.
    pub per_session_micros: Option<i64>,
    /// Spend cap per UTC day.
    pub per_day_micros: Option<i64>,
    /// Token cap per session.
    pub per_session_tokens: Option<i64>,
    /// Token cap per UTC day.
    pub per_day_tokens: Option<i64>,
    /// Longest a session may run, in seconds.
    pub max_session_seconds: Option<i64>,
}

impl Caps {
    /// The caps `policy` sets (durations in whole seconds, at least one, as stored).
    pub fn of(policy: &BudgetPolicy) -> Self {
        let tok = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
        Self {
            per_session_micros: policy.per_session.map(|m| m.0),
            per_day_micros: policy.per_day.map(|m| m.0),
            per_session_tokens: policy.per_session_tokens.map(tok),
            per_day_tokens: policy.per_day_tokens.map(tok),
            max_session_seconds: policy
                .max_session_duration
                .map(|d| i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX)),
        }
    }
}

/// Whether an agent may reserve at all: refused with [`BudgetDenial::NoPolicy`] when it has no
/// policy and unbudgeted agents are not allowed.
pub fn admit(has_policy: bool, allow_unbudgeted: bool) -> Result<(), BudgetRefusal> {
    if has_policy || allow_unbudgeted {
        Ok(())
    } else {
        Err(BudgetRefusal {
            denial: BudgetDenial::NoPolicy,
            cap: None,
            used: None,
        })
    }
}

/// The budget check, in the one order every path uses: the session's time, then the session's
/// spend, the day's spend, the session's tokens and the day's tokens. `session_started_at` is
/// `None` for a session that has not started. A reservation of `micros` and `tokens` is refused
/// when it would take a counter past its cap; the budget check asks for one of each (refused
/// when nothing is left).
pub fn check_caps(
    caps: &Caps,
    session: &BudgetCounter,
    session_started_at: Option<i64>,
    day: &BudgetCounter,
    now: i64,
    micros: i64,
    tokens: i64,
) -> Result<(), BudgetRefusal> {
    let refuse = |denial, cap: i64, used: i64| {
        Err(BudgetRefusal {
            denial,
            cap: Some(cap),
            used: Some(used),
        })
    };
    if let (Some(max), Some(started)) = (caps.max_session_seconds, session_started_at)
        && now.saturating_sub(started) > max.saturating_mul(MICROS_PER_SECOND)
    {
        return refuse(
            BudgetDenial::SessionExpired,
            max,
            session_age_seconds(started, now),
        );
    }
    let used = |c: &BudgetCounter| c.spent.0.saturating_add(c.reserved.0);
    let used_tokens = |c: &BudgetCounter| c.spent_tokens.saturating_add(c.reserved_tokens);
    let order = [
        (
            BudgetDenial::SessionUsd,
            caps.per_session_micros,
            used(session),
            micros,
        ),
        (BudgetDenial::DayUsd, caps.per_day_micros, used(day), micros),
        (
            BudgetDenial::SessionTokens,
            caps.per_session_tokens,
            used_tokens(session),
            tokens,
        ),
        (
            BudgetDenial::DayTokens,
            caps.per_day_tokens,
            used_tokens(day),
            tokens,
        ),
    ];
    for (denial, cap, used, more) in order {
        if let Some(cap) = cap.filter(|cap| used.saturating_add(more) > *cap) {
            return refuse(denial, cap, used);
        }
    }
    Ok(())
}

/// Where a reservation stands (`budget_reservations.outcome`, `None` while open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Holding budget.
    Open,
    /// Settled: its hold returned, its spend recorded.
    Settled,
    /// Released: its hold returned, nothing recorded.
    Released,
    /// Expired before it was settled: its hold returned.
    Expired,
    /// Expired, then settled: its spend recorded.
    ExpiredThenSettled,
}

impl ReservationState {
    /// From the stored `outcome` column (`None`: open).
    pub fn from_stored(outcome: Option<&str>) -> Option<Self> {
        Some(match outcome {
            None => Self::Open,
            Some("settled") => Self::Settled,
            Some("released") => Self::Released,
            Some("expired") => Self::Expired,
            Some("expired_then_settled") => Self::ExpiredThenSettled,
            Some(_) => return None,
        })
    }

    /// The stored `outcome` column (`None`: open).
    pub fn as_stored(self) -> Option<&'static str> {
        match self {
            Self::Open => None,
            Self::Settled => Some("settled"),
            Self::Released => Some("released"),
            Self::Expired => Some("expired"),
            Self::ExpiredThenSettled => Some("expired_then_settled"),
        }
    }
}

/// What a settlement (or release) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Settled: hold returned, spend recorded.
    Settled,
    /// Released: hold returned, nothing recorded.
    Released,
    /// It had expired (its hold already returned); the spend is recorded.
    ExpiredThenSettled,
    /// Closed before (settled, released, or expired and released): nothing changed.
    AlreadyClosed,
    /// No such reservation.
    Unknown,
}

impl SettleOutcome {
    /// The spelling the store returns.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Settled => "settled",
            Self::Released => "released",
            Self::ExpiredThenSettled => "expired_then_settled",
            Self::AlreadyClosed => "already_closed",
            Self::Unknown => "unknown",
        }
    }
}

/// A settlement's effects on storage, decided from the reservation's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleStep {
    /// The outcome reported.
    pub outcome: SettleOutcome,
    /// Take the reservation's hold off both counters.
    pub return_hold: bool,
    /// Mark the reservation closed now.
    pub close: bool,
    /// The reservation's new state, if it changes.
    pub state: Option<ReservationState>,
    /// Record the spend on both counters and in the usage by model.
    pub record_spend: bool,
}

/// The settlement rule: `state` is the reservation's (`None`: unknown), `release` asks to
/// release (no spend) rather than settle.
pub fn settle(state: Option<ReservationState>, release: bool) -> SettleStep {
    let nothing = |outcome| SettleStep {
        outcome,
        return_hold: false,
        close: false,
        state: None,
        record_spend: false,
    };
    match state {
        None => nothing(SettleOutcome::Unknown),
        Some(ReservationState::Open) => {
            let (outcome, state) = if release {
                (SettleOutcome::Released, ReservationState::Released)
            } else {
                (SettleOutcome::Settled, ReservationState::Settled)
            };
            SettleStep {
                outcome,
                return_hold: true,
                close: true,
                state: Some(state),
                record_spend: !release,
            }
        }
        // It expired first; the spend still happened and is recorded.
        Some(ReservationState::Expired) if !release => SettleStep {
            outcome: SettleOutcome::ExpiredThenSettled,
            return_hold: false,
            close: false,
            state: Some(ReservationState::ExpiredThenSettled),
            record_spend: true,
        },
        Some(_) => nothing(SettleOutcome::AlreadyClosed),
    }
}

/// What an idempotent settlement (`settle_once`, replayed from a spool) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOnceRoute {
    /// Settled before: nothing changes (`already_settled`).
    AlreadySettled,
    /// Open or expired unsettled: settle it now ([`settle`]).
    Settle,
    /// Released or unknown: record the spend as tracked, once per reservation id.
    Track,
}

/// The idempotent settlement rule.
pub fn settle_once(state: Option<ReservationState>) -> SettleOnceRoute {
    match state {
        Some(ReservationState::Settled | ReservationState::ExpiredThenSettled) => {
            SettleOnceRoute::AlreadySettled
        }
        Some(ReservationState::Open | ReservationState::Expired) => SettleOnceRoute::Settle,
        Some(ReservationState::Released) | None => SettleOnceRoute::Track,
    }
}

/// Why a gate decision was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecideRefusal {
    /// No such operator.
    UnknownOperator,
    /// The operator is disabled.
    OperatorDisabled,
    /// The operator is a viewer.
    NotAllowed,
    /// No such request.
    UnknownRequest,
    /// Decided before.
    NotPending,
    /// The request lapsed undecided.
    Expired,
    /// The operator is the agent that asked.
    SelfApproval,
    /// The request is for a group the operator is not in (nor, once escalated, in its
    /// escalation group).
    NotInGroup,
    /// The operator voted on this request before.
    AlreadyVoted,
    /// Another vote came first: this one would not decide as its caller expected.
    VoteMoved,
}

impl DecideRefusal {
    /// The spelling the store returns.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownOperator => "unknown_operator",
            Self::OperatorDisabled => "operator_disabled",
            Self::NotAllowed => "not_allowed",
            Self::UnknownRequest => "unknown_request",
            Self::NotPending => "not_pending",
            Self::Expired => "expired",
            Self::SelfApproval => "self_approval",
            Self::NotInGroup => "not_in_group",
            Self::AlreadyVoted => "already_voted",
            Self::VoteMoved => "vote_moved",
        }
    }
}

/// The operator as the decision rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecidingOperator {
    /// Its role.
    pub role: OperatorRole,
    /// Whether it is disabled.
    pub disabled: bool,
}

/// A gate request as the decision rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingView<'a> {
    /// The agent that asked.
    pub agent_id: &'a str,
    /// Where it stands.
    pub status: GateStatus,
    /// When it lapses undecided.
    pub expires_at: i64,
}

/// Whether the operator may decide the request now: the operator first (it exists, is
/// enabled, is not a viewer), then the request (it exists, is pending, has not lapsed, was not
/// asked by the operator). A request is only read once the operator passed (`request` is
/// called then).
pub fn may_decide<'a>(
    operator_name: &str,
    operator: Option<DecidingOperator>,
    request: impl FnOnce() -> Option<PendingView<'a>>,
    now: i64,
) -> Result<(), DecideRefusal> {
    let op = operator.ok_or(DecideRefusal::UnknownOperator)?;
    if op.disabled {
        return Err(DecideRefusal::OperatorDisabled);
    }
    if op.role < OperatorRole::Operator {
        return Err(DecideRefusal::NotAllowed);
    }
    let r = request().ok_or(DecideRefusal::UnknownRequest)?;
    if r.status != GateStatus::Pending {
        return Err(DecideRefusal::NotPending);
    }
    if is_expired(r.expires_at, now) {
        return Err(DecideRefusal::Expired);
    }
    if r.agent_id == operator_name {
        return Err(DecideRefusal::SelfApproval);
    }
    Ok(())
}

/// A request's workflow and votes, as the vote rule sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteView<'a> {
    /// Approvals needed.
    pub quorum: u32,
    /// Approvals given.
    pub approvals: u32,
    /// The group whose members may vote (`None`: any operator).
    pub approver_group: Option<&'a str>,
    /// The group that may vote too once escalated.
    pub escalate_to: Option<&'a str>,
    /// Whether it was escalated.
    pub escalated: bool,
}

/// The voter as the vote rule sees it, beyond [`DecidingOperator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voter<'a> {
    /// The groups the operator is in.
    pub groups: &'a [String],
    /// Whether the operator voted on this request before.
    pub voted: bool,
}

/// Whether a vote decides: a denial always does, an approval when it completes the quorum.
pub fn vote_is_final(approve: bool, approvals: u32, quorum: u32) -> bool {
    !approve || approvals.saturating_add(1) >= quorum
}

/// Whether the operator may vote now, after [`may_decide`] passed: in the request's group (or,
/// once escalated, its escalation group) when it has one, not voted before, and deciding as the
/// caller expects (`final_expected`). `Ok(true)` when the vote decides the request.
pub fn may_vote(
    w: &VoteView<'_>,
    voter: &Voter<'_>,
    approve: bool,
    final_expected: bool,
) -> Result<bool, DecideRefusal> {
    if let Some(group) = w.approver_group {
        let member = voter
            .groups
            .iter()
            .any(|g| g == group || (w.escalated && w.escalate_to.is_some_and(|e| e == g.as_str())));
        if !member {
            return Err(DecideRefusal::NotInGroup);
        }
    }
    if voter.voted {
        return Err(DecideRefusal::AlreadyVoted);
    }
    let fin = vote_is_final(approve, w.approvals, w.quorum);
    if fin != final_expected {
        return Err(DecideRefusal::VoteMoved);
    }
    Ok(fin)
}

/// How specific a route is for an agent and a tool (higher wins), `None` when it does not
/// match: agent and tool, then agent, then tool, then `*` and `*`.
pub fn route_rank(route_agent: &str, route_tool: &str, agent: &str, tool: &str) -> Option<u8> {
    let a = match route_agent {
        "*" => 0,
        x if x == agent => 2,
        _ => return None,
    };
    let t = match route_tool {
        "*" => 0,
        x if x == tool => 1,
        _ => return None,
    };
    Some(a + t)
}

/// Why escalating or expiring a request was refused.
pub mod transitions {
    use super::is_expired;
    use crate::GateStatus;

    /// Whether a pending request escalates now: `Err` is the store's spelling of why not.
    pub fn may_escalate(
        status: Option<GateStatus>,
        expires_at: i64,
        escalate_to: Option<&str>,
        escalates_at: Option<i64>,
        escalated: bool,
        now: i64,
    ) -> Result<(), &'static str> {
        let Some(status) = status else {
            return Err("unknown_request");
        };
        if status != GateStatus::Pending {
            return Err("not_pending");
        }
        if is_expired(expires_at, now) {
            return Err("expired");
        }
        let (Some(_), Some(at)) = (escalate_to, escalates_at) else {
            return Err("no_escalation");
        };
        if escalated {
            return Err("already_escalated");
        }
        if at > now {
            return Err("not_due");
        }
        Ok(())
    }

    /// Whether a pending request is denied for expiring now.
    pub fn may_expire(
        status: Option<GateStatus>,
        expires_at: i64,
        now: i64,
    ) -> Result<(), &'static str> {
        let Some(status) = status else {
            return Err("unknown_request");
        };
        if status != GateStatus::Pending {
            return Err("not_pending");
        }
        if !is_expired(expires_at, now) {
            return Err("not_due");
        }
        Ok(())
    }
}

/// Why spending an approval was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeRefusal {
    /// No such request.
    UnknownRequest,
    /// Spent before.
    AlreadyConsumed,
    /// Pending or denied.
    NotApproved,
    /// Another agent or session than the one that asked.
    WrongAgent,
    /// Another action than the one approved.
    WrongAction,
    /// The token is not the approval's.
    BadToken,
    /// The approval's time ran out.
    Expired,
}

impl ConsumeRefusal {
    /// The spelling the store returns.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownRequest => "unknown_request",
            Self::AlreadyConsumed => "already_consumed",
            Self::NotApproved => "not_approved",
            Self::WrongAgent => "wrong_agent",
            Self::WrongAction => "wrong_action",
            Self::BadToken => "bad_token",
            Self::Expired => "expired",
        }
    }
}

/// A gate request as the consumption rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalView<'a> {
    /// Where it stands.
    pub status: GateStatus,
    /// The agent that asked.
    pub agent_id: &'a str,
    /// Its session.
    pub session_id: Option<&'a str>,
    /// The approved action.
    pub action_hash: &'a [u8],
    /// SHA-256 of the approval's token.
    pub token_hash: Option<&'a [u8]>,
    /// Until when the approval may be used.
    pub token_expires_at: Option<i64>,
    /// Whether a session grant approved it when it was asked (it has no token then).
    pub granted: bool,
}

/// What spending an approval presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    /// SHA-256 of the token presented.
    pub token_hash: &'a [u8],
    /// The action about to run.
    pub action_hash: &'a [u8],
    /// The agent spending it.
    pub agent_id: &'a str,
    /// Its session.
    pub session_id: Option<&'a str>,
}

/// Whether two token hashes are equal, compared as SHA-256 digests of each side: how long the
/// comparison takes depends on the digests only, which tell an attacker nothing about the
/// stored hash (Postgres compares `sha256()` of both sides the same way).
pub fn token_matches(stored: &[u8], presented: &[u8]) -> bool {
    Sha256::digest(stored) == Sha256::digest(presented)
}

/// Whether the approval may be spent now, in this order: it exists, is not spent, is
/// approved, is the asker's (agent and session), for this action, with this token, in time.
pub fn may_consume(
    request: Option<ApprovalView<'_>>,
    p: &Presented<'_>,
    now: i64,
) -> Result<(), ConsumeRefusal> {
    let r = request.ok_or(ConsumeRefusal::UnknownRequest)?;
    match r.status {
        GateStatus::Consumed => return Err(ConsumeRefusal::AlreadyConsumed),
        GateStatus::Approved => {}
        GateStatus::Pending | GateStatus::Denied => return Err(ConsumeRefusal::NotApproved),
    }
    if r.agent_id != p.agent_id || r.session_id != p.session_id {
        return Err(ConsumeRefusal::WrongAgent);
    }
    if r.action_hash != p.action_hash {
        return Err(ConsumeRefusal::WrongAction);
    }
    if !r.granted
        && !r
            .token_hash
            .is_some_and(|stored| token_matches(stored, p.token_hash))
    {
        return Err(ConsumeRefusal::BadToken);
    }
    if r.token_expires_at.is_some_and(|t| is_expired(t, now)) {
        return Err(ConsumeRefusal::Expired);
    }
    Ok(())
}

/// The halt rule: halting always halts; returns whether the agent was running before
/// (`halted` is its state before, `None` when it has no presence yet).
pub fn halt(halted: Option<bool>) -> bool {
    !halted.unwrap_or(false)
}

/// The resume rule: resuming always clears a halt; returns whether the agent was halted before.
pub fn resume(halted: Option<bool>) -> bool {
    halted.unwrap_or(false)
}

/// A reservation in the [`Model`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReservation {
    /// The agent.
    pub agent: String,
    /// Its session.
    pub session: String,
    /// The UTC day it counts against.
    pub day: i64,
    /// Held micro-USD.
    pub micros: i64,
    /// Held tokens.
    pub tokens: i64,
    /// When it expires.
    pub expires_at: i64,
    /// Where it stands.
    pub state: ReservationState,
}

/// Budget counters in the [`Model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelCounter {
    /// Spend and holds.
    pub counter: BudgetCounter,
    /// When the counter's period started (a session's first reservation or tracked spend).
    pub started_at: i64,
}

/// The budget rules over in-memory state: the reference the backends are compared with. Every
/// operation takes the time it runs at.
#[derive(Debug, Clone, Default)]
pub struct Model {
    policies: BTreeMap<String, Caps>,
    /// (agent, period) → counter; period `s:<session>` or `d:<day>`.
    counters: BTreeMap<(String, String), ModelCounter>,
    reservations: BTreeMap<u128, ModelReservation>,
    applied: std::collections::BTreeSet<u128>,
    halted: BTreeMap<String, bool>,
}

fn session_period(session: &str) -> String {
    format!("s:{session}")
}

fn day_period(day: i64) -> String {
    format!("d:{day}")
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) an agent's policy.
    pub fn put_policy(&mut self, policy: &BudgetPolicy) {
        self.policies
            .insert(policy.agent_id.as_str().to_owned(), Caps::of(policy));
    }

    fn counter(&self, agent: &str, period: &str) -> Option<&ModelCounter> {
        self.counters.get(&(agent.to_owned(), period.to_owned()))
    }

    fn ensure(&mut self, agent: &str, day: i64, session: &str, now: i64) {
        for period in [day_period(day), session_period(session)] {
            self.counters
                .entry((agent.to_owned(), period))
                .or_insert(ModelCounter {
                    counter: BudgetCounter::default(),
                    started_at: now,
                });
        }
    }

    fn add(&mut self, agent: &str, day: i64, session: &str, f: impl Fn(&mut BudgetCounter)) {
        for period in [day_period(day), session_period(session)] {
            if let Some(c) = self.counters.get_mut(&(agent.to_owned(), period)) {
                f(&mut c.counter);
            }
        }
    }

    fn expire(&mut self, agent: &str, now: i64) {
        let due: Vec<u128> = self
            .reservations
            .iter()
            .filter(|(_, r)| {
                r.agent == agent
                    && r.state == ReservationState::Open
                    && is_expired(r.expires_at, now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(r) = self.reservations.get_mut(&id) else {
                continue;
            };
            r.state = ReservationState::Expired;
            let r = r.clone();
            self.add(&r.agent, r.day, &r.session, |c| {
                c.reserved.0 -= r.micros;
                c.reserved_tokens -= r.tokens;
            });
        }
    }

    /// Reserves `micros` and `tokens` for `ttl` (`governance_reserve`).
    #[allow(clippy::too_many_arguments)]
    pub fn reserve(
        &mut self,
        id: u128,
        agent: &str,
        session: &str,
        micros: i64,
        tokens: i64,
        ttl: Duration,
        allow_unbudgeted: bool,
        now: i64,
    ) -> Result<(), BudgetRefusal> {
        self.expire(agent, now);
        let caps = self.policies.get(agent).copied();
        admit(caps.is_some(), allow_unbudgeted)?;
        let day = utc_day(now);
        self.ensure(agent, day, session, now);
        if let Some(caps) = caps {
            let s = self
                .counter(agent, &session_period(session))
                .copied()
                .unwrap_or_default();
            let d = self
                .counter(agent, &day_period(day))
                .copied()
                .unwrap_or_default();
            check_caps(
                &caps,
                &s.counter,
                Some(s.started_at),
                &d.counter,
                now,
                micros,
                tokens,
            )?;
        }
        self.add(agent, day, session, |c| {
            c.reserved.0 += micros;
            c.reserved_tokens += tokens;
        });
        self.reservations.insert(
            id,
            ModelReservation {
                agent: agent.to_owned(),
                session: session.to_owned(),
                day,
                micros,
                tokens,
                expires_at: reservation_expires_at(now, ttl),
                state: ReservationState::Open,
            },
        );
        Ok(())
    }

    fn record_spend(&mut self, agent: &str, day: i64, session: &str, micros: i64, tokens: i64) {
        self.add(agent, day, session, |c| {
            c.spent.0 += micros;
            c.spent_tokens += tokens;
        });
    }

    /// Settles or releases a reservation (`governance_settle`); `tokens` is input plus output.
    pub fn settle(&mut self, id: u128, micros: i64, tokens: i64, release: bool) -> SettleOutcome {
        let state = self.reservations.get(&id).map(|r| r.state);
        let step = settle(state, release);
        if let Some(r) = self.reservations.get_mut(&id) {
            if let Some(s) = step.state {
                r.state = s;
            }
            let r = r.clone();
            if step.return_hold {
                self.add(&r.agent, r.day, &r.session, |c| {
                    c.reserved.0 -= r.micros;
                    c.reserved_tokens -= r.tokens;
                });
            }
            if step.record_spend {
                self.record_spend(&r.agent, r.day, &r.session, micros, tokens);
            }
        }
        step.outcome
    }

    /// Records spend without a reservation, once per `id` (`governance_track_once`); whether
    /// it was new.
    pub fn track(
        &mut self,
        id: u128,
        agent: &str,
        session: &str,
        micros: i64,
        tokens: i64,
        now: i64,
    ) -> bool {
        if !self.applied.insert(id) {
            return false;
        }
        let day = utc_day(now);
        self.ensure(agent, day, session, now);
        self.record_spend(agent, day, session, micros, tokens);
        true
    }

    /// The idempotent settlement (`governance_settle_once`): its outcome's spelling.
    pub fn settle_once(
        &mut self,
        id: u128,
        agent: &str,
        session: &str,
        micros: i64,
        tokens: i64,
        now: i64,
    ) -> &'static str {
        let state = self.reservations.get(&id).map(|r| r.state);
        match settle_once(state) {
            SettleOnceRoute::AlreadySettled => "already_settled",
            SettleOnceRoute::Settle => self.settle(id, micros, tokens, false).as_str(),
            SettleOnceRoute::Track => {
                if self.track(id, agent, session, micros, tokens, now) {
                    "tracked"
                } else {
                    "already_tracked"
                }
            }
        }
    }

    /// The budget as the check reads it: the session's and today's counters less the holds
    /// that expired but were not closed yet, the policy's caps, and the session's start.
    pub fn status(
        &self,
        agent: &str,
        session: &str,
        now: i64,
    ) -> (Option<Caps>, BudgetCounter, BudgetCounter, Option<i64>) {
        let day = utc_day(now);
        let lapsed = |pick: &dyn Fn(&ModelReservation) -> bool| {
            self.reservations
                .values()
                .filter(|r| {
                    r.agent == agent
                        && r.state == ReservationState::Open
                        && is_expired(r.expires_at, now)
                        && pick(r)
                })
                .fold((0i64, 0i64), |(m, t), r| (m + r.micros, t + r.tokens))
        };
        let less = |c: Option<&ModelCounter>, (m, t): (i64, i64)| {
            c.map(|c| BudgetCounter {
                spent: c.counter.spent,
                reserved: MicroUsd((c.counter.reserved.0 - m).max(0)),
                spent_tokens: c.counter.spent_tokens,
                reserved_tokens: (c.counter.reserved_tokens - t).max(0),
            })
            .unwrap_or_default()
        };
        let s = self.counter(agent, &session_period(session));
        let d = self.counter(agent, &day_period(day));
        (
            self.policies.get(agent).copied(),
            less(s, lapsed(&|r| r.session == session)),
            less(d, lapsed(&|r| r.day == day)),
            s.map(|c| c.started_at),
        )
    }

    /// Halts an agent; whether it was running.
    pub fn halt(&mut self, agent: &str) -> bool {
        let was = halt(self.halted.get(agent).copied());
        self.halted.insert(agent.to_owned(), true);
        was
    }

    /// Resumes an agent; whether it was halted.
    pub fn resume(&mut self, agent: &str) -> bool {
        let was = resume(self.halted.get(agent).copied());
        self.halted.insert(agent.to_owned(), false);
        was
    }

    /// Whether an agent is halted.
    pub fn is_halted(&self, agent: &str) -> bool {
        self.halted.get(agent).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AgentId;

    fn policy() -> BudgetPolicy {
        BudgetPolicy::new(AgentId::new("a").expect("agent"))
            .per_session(MicroUsd(100))
            .per_day_tokens(50)
            .max_session_duration(Duration::from_secs(10))
    }

    #[test]
    fn the_ttl_keeps_its_microseconds_and_is_at_least_a_second() {
        assert_eq!(
            reservation_ttl_micros(Duration::from_millis(1_500)),
            1_500_000
        );
        assert_eq!(reservation_ttl_micros(Duration::from_millis(10)), 1_000_000);
        assert_eq!(
            reservation_expires_at(5, Duration::from_micros(2_000_001)),
            2_000_006
        );
    }

    #[test]
    fn a_session_age_is_truncated_to_whole_seconds() {
        assert_eq!(session_age_seconds(0, 1_999_999), 1);
        assert_eq!(session_age_seconds(0, 10_600_000), 10);
    }

    #[test]
    fn caps_are_checked_in_one_order() {
        let caps = Caps::of(&policy());
        let full = BudgetCounter {
            spent: MicroUsd(100),
            reserved: MicroUsd(0),
            spent_tokens: 60,
            reserved_tokens: 0,
        };
        let r = check_caps(&caps, &full, Some(0), &full, 11_000_001, 1, 1).expect_err("expired");
        assert_eq!(
            (r.denial, r.cap, r.used),
            (BudgetDenial::SessionExpired, Some(10), Some(11))
        );
        let r = check_caps(&caps, &full, Some(0), &full, 10_000_000, 1, 1).expect_err("usd");
        assert_eq!(r.denial, BudgetDenial::SessionUsd);
        let r = check_caps(&caps, &BudgetCounter::default(), Some(0), &full, 0, 1, 1)
            .expect_err("tokens");
        assert_eq!((r.denial, r.used), (BudgetDenial::DayTokens, Some(60)));
        assert!(
            check_caps(
                &caps,
                &BudgetCounter::default(),
                None,
                &BudgetCounter::default(),
                0,
                100,
                50
            )
            .is_ok()
        );
    }

    #[test]
    fn settlement_outcomes_follow_the_state() {
        assert_eq!(settle(None, false).outcome, SettleOutcome::Unknown);
        let s = settle(Some(ReservationState::Open), false);
        assert!(s.return_hold && s.close && s.record_spend);
        let s = settle(Some(ReservationState::Open), true);
        assert_eq!(
            (s.outcome, s.record_spend),
            (SettleOutcome::Released, false)
        );
        let s = settle(Some(ReservationState::Expired), false);
        assert_eq!(s.outcome, SettleOutcome::ExpiredThenSettled);
        assert!(!s.return_hold && s.record_spend);
        for st in [
            ReservationState::Settled,
            ReservationState::Released,
            ReservationState::ExpiredThenSettled,
        ] {
            assert_eq!(
                settle(Some(st), false).outcome,
                SettleOutcome::AlreadyClosed
            );
        }
        assert_eq!(
            settle(Some(ReservationState::Expired), true).outcome,
            SettleOutcome::AlreadyClosed
        );
        assert_eq!(
            settle_once(Some(ReservationState::Released)),
            SettleOnceRoute::Track
        );
        assert_eq!(
            settle_once(Some(ReservationState::Expired)),
            SettleOnceRoute::Settle
        );
    }

    #[test]
    fn the_model_expires_lazily_and_settles_late() {
        let mut m = Model::new();
        m.put_policy(&policy());
        let ttl = Duration::from_millis(1_500);
        m.reserve(1, "a", "s", 100, 0, ttl, false, 0)
            .expect("reserve");
        let r = m
            .reserve(2, "a", "s", 1, 0, ttl, false, 1_500_000)
            .expect_err("held");
        assert_eq!(r.denial, BudgetDenial::SessionUsd);
        // Past the expiry (to the microsecond), the hold stops counting.
        assert_eq!(m.status("a", "s", 1_500_001).1.reserved, MicroUsd(0));
        m.reserve(3, "a", "s", 100, 0, ttl, false, 1_500_001)
            .expect("expired hold");
        assert_eq!(m.settle(1, 30, 3, false), SettleOutcome::ExpiredThenSettled);
        assert_eq!(m.settle(1, 30, 3, false), SettleOutcome::AlreadyClosed);
        assert_eq!(m.settle_once(1, "a", "s", 30, 3, 2), "already_settled");
        assert_eq!(m.settle(3, 0, 0, true), SettleOutcome::Released);
        assert_eq!(m.settle_once(3, "a", "s", 5, 1, 2), "tracked");
        assert_eq!(m.settle_once(3, "a", "s", 5, 1, 2), "already_tracked");
        assert!(m.halt("a") && !m.halt("a") && m.resume("a") && !m.resume("a"));
    }

    #[test]
    fn approvals_are_spent_by_their_asker_with_their_token_in_time() {
        let token = [7u8; 32];
        let view = ApprovalView {
            status: GateStatus::Approved,
            agent_id: "a",
            session_id: Some("s"),
            action_hash: b"act",
            token_hash: Some(&token),
            token_expires_at: Some(10),
            granted: false,
        };
        let p = Presented {
            token_hash: &token,
            action_hash: b"act",
            agent_id: "a",
            session_id: Some("s"),
        };
        assert_eq!(may_consume(Some(view), &p, 10), Ok(()));
        assert_eq!(
            may_consume(Some(view), &p, 11),
            Err(ConsumeRefusal::Expired)
        );
        let wrong = [8u8; 32];
        let bad = Presented {
            token_hash: &wrong,
            ..p
        };
        assert_eq!(
            may_consume(Some(view), &bad, 0),
            Err(ConsumeRefusal::BadToken)
        );
        let other = Presented {
            session_id: None,
            ..p
        };
        assert_eq!(
            may_consume(Some(view), &other, 0),
            Err(ConsumeRefusal::WrongAgent)
        );
        assert_eq!(
            may_consume(None, &p, 0),
            Err(ConsumeRefusal::UnknownRequest)
        );
        let op = DecidingOperator {
            role: OperatorRole::Viewer,
            disabled: false,
        };
        assert_eq!(
            may_decide("o", Some(op), || None, 0),
            Err(DecideRefusal::NotAllowed)
        );
        let op = DecidingOperator {
            role: OperatorRole::Operator,
            disabled: false,
        };
        let pending = PendingView {
            agent_id: "o",
            status: GateStatus::Pending,
            expires_at: 5,
        };
        assert_eq!(
            may_decide("o", Some(op), || Some(pending), 5),
            Err(DecideRefusal::SelfApproval)
        );
        assert_eq!(
            may_decide("o", Some(op), || Some(pending), 6),
            Err(DecideRefusal::Expired)
        );
    }

    #[test]
    fn a_vote_needs_the_group_once_per_operator_and_decides_at_the_quorum() {
        let w = VoteView {
            quorum: 2,
            approvals: 0,
            approver_group: Some("finance"),
            escalate_to: Some("cfo"),
            escalated: false,
        };
        let finance = ["finance".to_owned()];
        let cfo = ["cfo".to_owned()];
        fn v(groups: &[String], voted: bool) -> Voter<'_> {
            Voter { groups, voted }
        }
        let (fin, c) = (&finance[..], &cfo[..]);
        assert_eq!(may_vote(&w, &v(fin, false), true, false), Ok(false));
        assert_eq!(may_vote(&w, &v(fin, false), false, true), Ok(true));
        assert_eq!(
            may_vote(&w, &v(fin, false), true, true),
            Err(DecideRefusal::VoteMoved)
        );
        assert_eq!(
            may_vote(&w, &v(fin, true), true, false),
            Err(DecideRefusal::AlreadyVoted)
        );
        assert_eq!(
            may_vote(&w, &v(c, false), true, false),
            Err(DecideRefusal::NotInGroup)
        );
        let escalated = VoteView {
            escalated: true,
            approvals: 1,
            ..w
        };
        assert_eq!(may_vote(&escalated, &v(c, false), true, true), Ok(true));
        assert_eq!(route_rank("a", "t", "a", "t"), Some(3));
        assert_eq!(route_rank("a", "*", "a", "t"), Some(2));
        assert_eq!(route_rank("*", "t", "a", "t"), Some(1));
        assert_eq!(route_rank("*", "*", "a", "t"), Some(0));
        assert_eq!(route_rank("b", "*", "a", "t"), None);
    }
}
