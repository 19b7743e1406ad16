//! Values passed to and returned by the backends.

use std::time::Duration;

use gov_core::OperatorRole;
use time::OffsetDateTime;
use uuid::Uuid;

/// A reservation to make: the projected spend of one call.
#[derive(Debug, Clone, Copy)]
pub struct Reserve<'a> {
    /// The reservation's id.
    pub id: Uuid,
    /// The agent.
    pub agent: &'a str,
    /// Its session.
    pub session: &'a str,
    /// The model (recorded with the spend).
    pub model: &'a str,
    /// Projected cost, micro-USD.
    pub micros: i64,
    /// Projected tokens, input and output.
    pub tokens: i64,
    /// How long it holds budget if never settled.
    pub ttl: Duration,
    /// Whether an agent without a budget policy may reserve (uncapped).
    pub allow_unbudgeted: bool,
}

/// An operator account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    /// User name.
    pub username: String,
    /// Role.
    pub role: OperatorRole,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Whether the account is disabled.
    pub disabled: bool,
}

/// A change to an operator account (`None` leaves a field as it is). Every change ends all of
/// the account's console sessions in the same transaction: a password reset, a disable or a
/// role change must not leave a session signed in under the old terms, and an enable after a
/// disable must not revive one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorChange<'a> {
    /// Disable (`true`) or enable (`false`).
    pub disabled: Option<bool>,
    /// A new argon2id PHC string.
    pub password_hash: Option<&'a str>,
    /// A new role.
    pub role: Option<OperatorRole>,
}

/// A console session to start for an account as it was when its password was checked.
/// The store writes it only if the account is still enabled with that password hash and role,
/// so a sign-in that raced a reset, a disable or a role change starts nothing.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    /// SHA-256 of the session token.
    pub token_hash: &'a [u8],
    /// The user.
    pub username: &'a str,
    /// The role the user had when authenticated.
    pub role: OperatorRole,
    /// The password hash the password was verified against.
    pub password_hash: &'a str,
    /// The session's CSRF token.
    pub csrf_token: &'a str,
    /// When it expires.
    pub expires_at: time::OffsetDateTime,
}

/// A decision to record.
#[derive(Debug)]
pub struct Decision<'a> {
    /// The request.
    pub id: Uuid,
    /// The deciding operator.
    pub operator: &'a str,
    /// Approve or deny.
    pub approve: bool,
    /// Why.
    pub reason: &'a str,
    /// SHA-256 of the approval token (approvals only).
    pub token_hash: Option<&'a [u8]>,
    /// Until when the approval may be used.
    pub token_expires_at: Option<OffsetDateTime>,
    /// Whether the caller expects this vote to decide the request (a denial always does; an
    /// approval when it completes the quorum). The event was sealed for that expectation: when
    /// another vote came first the store answers `vote_moved` and changes nothing.
    pub final_vote: bool,
    /// An approval for the rest of the session: the grant's id and until when it holds.
    pub grant: Option<(Uuid, OffsetDateTime)>,
}

/// A vote on a request, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteRecord {
    /// The operator.
    pub operator: String,
    /// Approve or deny.
    pub approve: bool,
    /// Why.
    pub reason: String,
    /// When.
    pub voted_at: OffsetDateTime,
}

/// A change of a pending request that no person makes, on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateTransition {
    /// Its escalation time came.
    Escalate,
    /// It expired undecided: denied.
    Expire,
}

/// A notification to deliver: one request, event and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    /// The request.
    pub request_id: Uuid,
    /// `requested`, `escalated` or `expired`.
    pub event: String,
    /// The configured channel's name.
    pub channel: String,
}

/// A notification delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// Its id.
    pub id: i64,
    /// The request.
    pub request_id: Uuid,
    /// `requested`, `escalated` or `expired`.
    pub event: String,
    /// The channel's name.
    pub channel: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending) or was last due.
    pub next_attempt_at: OffsetDateTime,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: OffsetDateTime,
    /// When it was delivered.
    pub delivered_at: Option<OffsetDateTime>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// Delivered.
    Delivered,
    /// Failed; try again at this time.
    Retry {
        /// Why.
        error: String,
        /// When.
        at: OffsetDateTime,
    },
    /// Failed for the last time: dead-lettered.
    Dead {
        /// Why.
        error: String,
    },
}

/// A halt or resume by an authenticated operator, recorded with the event it backs.
#[derive(Debug)]
pub struct HaltSwitch<'a> {
    /// The agent.
    pub agent: &'a str,
    /// Halt (`true`) or resume (`false`).
    pub halt: bool,
    /// The operator's user name.
    pub operator: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// Evidence of one human-oversight decision: the row an operator path wrote in the transaction
/// of the audit event it backs (`oversight_decisions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversightRecord {
    /// The audit event it backs.
    pub event_id: Uuid,
    /// `gate.approved`, `gate.denied`, `agent.halted` or `agent.resumed`.
    pub kind: String,
    /// The agent decided on.
    pub agent_id: String,
    /// The operator who decided.
    pub operator: String,
    /// The gate request, for gate decisions.
    pub request_id: Option<Uuid>,
    /// Why.
    pub reason: String,
    /// When the database recorded it.
    pub decided_at: OffsetDateTime,
}

/// What the connected role may do to the audit tables (for health and for `migrate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// The role the connection acts as.
    pub role: String,
    /// Whether it is a superuser (it can bypass every trigger).
    pub superuser: bool,
    /// Whether it owns `audit_events` (it could disable the append-only triggers).
    pub owns_audit_table: bool,
    /// Whether it holds UPDATE on `audit_events`.
    pub can_update: bool,
    /// Whether it holds DELETE on `audit_events`.
    pub can_delete: bool,
    /// Whether it holds TRUNCATE on `audit_events`.
    pub can_truncate: bool,
    /// Whether the backend has roles at all (SQLite has none: whoever can write the file can
    /// change anything in it).
    pub has_roles: bool,
}

impl Privileges {
    /// True when the role can do no more than append and read the audit rows.
    pub fn is_least_privilege(&self) -> bool {
        !(self.superuser
            || self.owns_audit_table
            || self.can_update
            || self.can_delete
            || self.can_truncate)
    }
}

/// The clock the enforcement rules run on (reservation expiry, session age, the UTC day, gate
/// and approval expiry): read once per operation and passed to the rule, on SQLite to
/// `gov_core::rules` and on Postgres as the functions' `p_now`, so both backends decide on the
/// same clock. The system clock unless a test sets a manual one ([`Clock::manual`]), which
/// every clone shares.
#[derive(Clone, Default)]
pub struct Clock(Option<std::sync::Arc<std::sync::atomic::AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands still at `start` until moved ([`Clock::advance`], [`Clock::set`]).
    pub fn manual(start: OffsetDateTime) -> Self {
        Self(Some(std::sync::Arc::new(
            std::sync::atomic::AtomicI64::new(to_micros(start)),
        )))
    }

    /// Now, as microseconds since the Unix epoch.
    pub fn now_us(&self) -> i64 {
        match &self.0 {
            Some(t) => t.load(std::sync::atomic::Ordering::SeqCst),
            None => to_micros(OffsetDateTime::now_utc()),
        }
    }

    /// Now.
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.now_us()) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Moves a manual clock forward; the system clock cannot be moved (returns false).
    pub fn advance(&self, d: Duration) -> bool {
        match &self.0 {
            Some(t) => {
                t.fetch_add(
                    gov_core::rules::micros(d),
                    std::sync::atomic::Ordering::SeqCst,
                );
                true
            }
            None => false,
        }
    }

    /// Sets a manual clock; the system clock cannot be set (returns false).
    pub fn set(&self, to: OffsetDateTime) -> bool {
        match &self.0 {
            Some(t) => {
                t.store(to_micros(to), std::sync::atomic::Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(_) => write!(f, "Clock::manual({})", self.now_us()),
            None => f.write_str("Clock::system"),
        }
    }
}

/// A time as microseconds since the Unix epoch (saturating).
fn to_micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}
