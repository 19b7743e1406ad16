//! The chain status `/health/governance` reports, cached: verifying every chain reads every row,
//! far too much for each health probe.
//!
//! A signed-in health request answers the last verification's result and when it was computed.
//! With no result yet it verifies and waits (one verification however many requests ask at
//! once); with a result older than `ConsoleConfig::chain_check_interval` it answers that result
//! and starts one verification in the background, so chains are verified at most once per
//! interval on behalf of health requests (an interval of zero verifies on every request). An
//! operator's explicit verification (`POST /chain`, `/api/chain/verify`, the background job)
//! refreshes the cache too.
//!
//! Each verification takes a ticket when it starts; its result is kept only if no verification
//! that started later has already been kept, so a slow, older verification finishing late never
//! overwrites a newer result.
//!
//! Each kept result is also recorded in the database (`Audit::record_verification`, the
//! `chain_verifications` table, which the application role cannot write), and a console that
//! starts reads the newest record before it answers, so a restart keeps the verdict, its time
//! and the per-chain rows. The newest by start time wins there too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gov_sdk::{Governance, Verdict, VerificationRow, VerifyReport};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The verdict of the last verification, as `/health/governance` reports it in
/// `chain_integrity`.
// Fields in alphabetical order, the order of the keys before the body was typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct ChainIntegrity {
    /// The unverifiable chains (rows the console's keys cannot check), when `unverifiable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    chains: Option<Vec<String>>,
    /// Rows checked (absent when `empty` or `unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    events_checked: Option<u64>,
    /// The first finding, when `tampered` (null if none could be named).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[schema(value_type = Option<Finding>)]
    first: Option<Option<Finding>>,
    /// The worst verdict over the chains.
    pub(crate) status: IntegrityStatus,
}

/// A field that is present, null or not: `Some(None)` for null (absent is `None`, by default).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The verdict in `chain_integrity.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IntegrityStatus {
    /// Every row verified.
    Clean,
    /// A chain has rows the console's keys cannot check (written with another secret).
    Unverifiable,
    /// A chain fails verification.
    Tampered,
    /// No audit events at all: nothing to verify.
    Empty,
    /// The verification could not complete (the cause is in the console's log).
    Unknown,
}

/// Where a tampered chain first fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Finding {
    /// The chain.
    chain: String,
    /// Why (`gov_sdk::Reason`, e.g. `hmac_mismatch`).
    reason: String,
    /// The row.
    seq: i64,
}

impl IntegrityStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Unverifiable => "unverifiable",
            Self::Tampered => "tampered",
            Self::Empty => "empty",
            Self::Unknown => "unknown",
        }
    }
}

/// One chain's line of a verification, as the chain page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChainLine {
    pub(crate) chain: String,
    pub(crate) events_checked: u64,
    pub(crate) head_seq: i64,
    pub(crate) signed: u64,
    pub(crate) unsigned: u64,
    /// `clean`, `tampered` or `unverifiable`.
    pub(crate) verdict: String,
    /// The finding, or why the chain cannot be checked; `clean` otherwise.
    pub(crate) finding: String,
}

impl ChainLine {
    fn of(c: &gov_sdk::ChainReport) -> Self {
        Self {
            chain: c.chain_id.clone(),
            events_checked: c.events_checked,
            head_seq: c.head_seq,
            signed: c.signatures.signed,
            unsigned: c.signatures.unsigned + c.signatures.unsigned_local_failure,
            verdict: c.verdict().as_str().to_owned(),
            finding: match (&c.finding, &c.unverifiable) {
                (Some(f), _) => format!("seq {}: {}: {}", f.seq, f.reason.as_str(), f.detail),
                (None, Some(u)) => format!("not verifiable with the configured keys: {}", u.advice),
                (None, None) => "clean".into(),
            },
        }
    }
}

/// What is recorded of a verification (`chain_verifications.summary`).
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    integrity: ChainIntegrity,
    /// Absent when the verification could not complete.
    chains: Option<Vec<ChainLine>>,
}

impl ChainIntegrity {
    /// One line for a page: the verdict and, when tampered, where.
    pub(crate) fn summary(&self) -> String {
        let n = self.events_checked.unwrap_or(0);
        match self.status {
            IntegrityStatus::Clean => format!("intact: {n} events verified"),
            IntegrityStatus::Unverifiable => format!(
                "unverifiable: {} written with keys this console does not hold",
                self.chains.as_deref().unwrap_or_default().join(", ")
            ),
            IntegrityStatus::Tampered => match self.first.as_ref().and_then(Option::as_ref) {
                Some(f) => format!(
                    "TAMPERED: chain {} fails at seq {} ({})",
                    f.chain, f.seq, f.reason
                ),
                None => "TAMPERED: a chain fails verification".into(),
            },
            IntegrityStatus::Empty => "no events yet: nothing to verify".into(),
            IntegrityStatus::Unknown => {
                "unknown: the last verification could not complete (see the console's log)".into()
            }
        }
    }

    /// The verdict's name (`clean`, `tampered`, ...).
    pub(crate) fn status_str(&self) -> &'static str {
        self.status.as_str()
    }

    /// The CSS class of the verdict.
    pub(crate) fn class(&self) -> &'static str {
        match self.status {
            IntegrityStatus::Clean | IntegrityStatus::Empty => "clean",
            IntegrityStatus::Tampered => "tampered",
            IntegrityStatus::Unverifiable | IntegrityStatus::Unknown => "unverifiable",
        }
    }

    /// The integrity a verification's outcome shows.
    pub(crate) fn of(result: &Result<VerifyReport, gov_sdk::Error>) -> Self {
        let bare = |status| Self {
            chains: None,
            events_checked: None,
            first: None,
            status,
        };
        match result {
            Ok(r) if r.is_clean() => Self {
                events_checked: Some(r.events_checked),
                ..bare(IntegrityStatus::Clean)
            },
            Ok(r) if r.verdict() == Verdict::Unverifiable => Self {
                chains: Some(r.unverifiable().map(|(c, _)| c.to_owned()).collect()),
                events_checked: Some(r.events_checked),
                ..bare(IntegrityStatus::Unverifiable)
            },
            Ok(r) => Self {
                events_checked: Some(r.events_checked),
                first: Some(r.first_finding().map(|(c, f)| Finding {
                    chain: c.to_owned(),
                    reason: f.reason.as_str().to_owned(),
                    seq: f.seq,
                })),
                ..bare(IntegrityStatus::Tampered)
            },
            // No audit events at all: nothing to verify.
            Err(e) if e.kind() == gov_sdk::ErrorKind::NotFound => bare(IntegrityStatus::Empty),
            Err(e) => {
                tracing::warn!(error = %e, "console: the chain status could not be computed");
                bare(IntegrityStatus::Unknown)
            }
        }
    }
}

/// A verification's result, and when it was computed.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) integrity: ChainIntegrity,
    /// When the verification started (its result holds for the rows as of then).
    pub(crate) at: OffsetDateTime,
    /// Each chain's line, when the verification completed (the chain page shows them).
    pub(crate) chains: Option<Arc<Vec<ChainLine>>>,
    /// When it started on this console's clock; `None` for a result read from the database
    /// (its age is then `at`'s).
    started: Option<Instant>,
    ticket: u64,
}

impl Checked {
    /// How long ago the verification started.
    fn age(&self) -> Duration {
        match self.started {
            Some(s) => s.elapsed(),
            None => (OffsetDateTime::now_utc() - self.at)
                .try_into()
                .unwrap_or(Duration::ZERO),
        }
    }
}

/// A verification under way: take one before reading, [`ChainStatus::record`] the result.
#[derive(Debug)]
pub(crate) struct Ticket {
    n: u64,
    at: OffsetDateTime,
    started: Instant,
}

/// The cache, shared by every request.
#[derive(Debug)]
pub(crate) struct ChainStatus {
    interval: Duration,
    tickets: AtomicU64,
    latest: Mutex<Option<Checked>>,
    /// Held by the one health-driven verification under way.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    /// Set once the newest recorded verification was read from the database.
    loaded: tokio::sync::OnceCell<()>,
}

impl ChainStatus {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            tickets: AtomicU64::new(0),
            latest: Mutex::new(None),
            refreshing: Arc::default(),
            loaded: tokio::sync::OnceCell::new(),
        }
    }

    /// Reads the newest recorded verification once (the first time anything asks), keeping it
    /// unless this console verified since. A record that cannot be read is logged and ignored:
    /// the next verification replaces it.
    async fn load(&self, gov: &Governance) {
        self.loaded
            .get_or_init(|| async {
                match gov.audit().last_verification().await {
                    Ok(Some(row)) => match serde_json::from_str::<Recorded>(&row.summary) {
                        Ok(r) => {
                            let mut latest =
                                self.latest.lock().unwrap_or_else(PoisonError::into_inner);
                            if latest.is_none() {
                                *latest = Some(Checked {
                                    integrity: r.integrity,
                                    at: row.started_at,
                                    chains: r.chains.map(Arc::new),
                                    started: None,
                                    ticket: 0,
                                });
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "console: the recorded verification is unreadable; ignored")
                        }
                    },
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "console: the recorded verification could not be read")
                    }
                }
            })
            .await;
    }

    /// Starts a verification.
    pub(crate) fn begin(&self) -> Ticket {
        // Whole microseconds, as the database keeps it: a restarted console shows the same time.
        let now = OffsetDateTime::now_utc();
        Ticket {
            n: self.tickets.fetch_add(1, Ordering::AcqRel) + 1,
            at: now
                .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
                .unwrap_or(now),
            started: Instant::now(),
        }
    }

    /// Keeps a verification's outcome like [`Self::record_result`] and, if kept, records it in
    /// the database (a failure to record is logged: the console still shows it).
    pub(crate) async fn record_outcome(
        &self,
        gov: &Governance,
        ticket: Ticket,
        result: &Result<VerifyReport, gov_sdk::Error>,
    ) -> bool {
        let at = ticket.at;
        if !self.record_result(ticket, result) {
            return false;
        }
        let recorded = Recorded {
            integrity: ChainIntegrity::of(result),
            chains: result
                .as_ref()
                .ok()
                .map(|r| r.chains.iter().map(ChainLine::of).collect()),
        };
        let row = serde_json::to_string(&recorded).map(|summary| VerificationRow {
            started_at: at,
            status: recorded.integrity.status.as_str().to_owned(),
            summary,
        });
        let saved = match row {
            Ok(row) => gov.audit().record_verification(&row).await,
            Err(e) => Err(gov_sdk::Error::Config(e.to_string())),
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, "console: the verification could not be recorded");
        }
        true
    }

    /// Keeps a verification's result unless one that started later is already kept; true if
    /// kept.
    #[cfg(test)]
    pub(crate) fn record(&self, ticket: Ticket, integrity: ChainIntegrity) -> bool {
        self.keep(ticket, integrity, None)
    }

    /// [`Self::record`] with the verification's outcome, keeping its report too.
    fn record_result(&self, ticket: Ticket, result: &Result<VerifyReport, gov_sdk::Error>) -> bool {
        let chains = result
            .as_ref()
            .ok()
            .map(|r| Arc::new(r.chains.iter().map(ChainLine::of).collect()));
        self.keep(ticket, ChainIntegrity::of(result), chains)
    }

    fn keep(
        &self,
        ticket: Ticket,
        integrity: ChainIntegrity,
        chains: Option<Arc<Vec<ChainLine>>>,
    ) -> bool {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if latest.as_ref().is_some_and(|l| l.ticket > ticket.n) {
            return false;
        }
        *latest = Some(Checked {
            integrity,
            chains,
            at: ticket.at,
            started: Some(ticket.started),
            ticket: ticket.n,
        });
        true
    }

    /// The last result kept in memory, if any.
    fn cached(&self) -> Option<Checked> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last result: this console's, or the newest recorded in the database.
    pub(crate) async fn latest(&self, gov: &Governance) -> Option<Checked> {
        self.load(gov).await;
        self.cached()
    }

    /// Verifies every chain now (an operator asked) and keeps the result.
    pub(crate) async fn verify_now(&self, gov: &Governance) -> gov_sdk::Result<VerifyReport> {
        let ticket = self.begin();
        let result = gov.audit().verify_all().await;
        self.record_outcome(gov, ticket, &result).await;
        result
    }

    async fn verify_for_health(&self, gov: &Governance) -> Checked {
        let ticket = self.begin();
        let (n, at, started) = (ticket.n, ticket.at, ticket.started);
        let result = gov.audit().verify_all().await;
        let integrity = ChainIntegrity::of(&result);
        self.record_outcome(gov, ticket, &result).await;
        // What a concurrent, later verification kept is newer still.
        self.cached().unwrap_or(Checked {
            integrity,
            chains: None,
            at,
            started: Some(started),
            ticket: n,
        })
    }

    /// The last result without waiting (the dashboard): when there is none yet, it is older
    /// than the interval, or `outdated` (the caller knows the chains changed in a way that
    /// makes it wrong), one verification starts in the background and a later look shows it.
    pub(crate) async fn peek(
        self: &Arc<Self>,
        gov: &Governance,
        outdated: bool,
    ) -> Option<Checked> {
        let latest = self.latest(gov).await;
        let fresh = !outdated && latest.as_ref().is_some_and(|c| c.age() < self.interval);
        if !fresh && let Ok(guard) = Arc::clone(&self.refreshing).try_lock_owned() {
            let (this, gov) = (Arc::clone(self), gov.clone());
            tokio::spawn(async move {
                this.verify_for_health(&gov).await;
                drop(guard);
            });
        }
        latest
    }

    /// The status for a health request: cached, verified now, or cached while a background
    /// verification refreshes it (see the module's documentation).
    pub(crate) async fn current(self: &Arc<Self>, gov: &Governance) -> Checked {
        if self.interval.is_zero() {
            return self.verify_for_health(gov).await;
        }
        match self.latest(gov).await {
            Some(c) if c.age() < self.interval => c,
            Some(stale) => {
                if let Ok(guard) = Arc::clone(&self.refreshing).try_lock_owned() {
                    let (this, gov) = (Arc::clone(self), gov.clone());
                    tokio::spawn(async move {
                        this.verify_for_health(&gov).await;
                        drop(guard);
                    });
                }
                stale
            }
            None => {
                let _guard = self.refreshing.lock().await;
                // Another request may have verified while this one waited.
                if let Some(c) = self.cached() {
                    return c;
                }
                self.verify_for_health(gov).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: IntegrityStatus) -> ChainIntegrity {
        ChainIntegrity {
            chains: None,
            events_checked: None,
            first: None,
            status: s,
        }
    }

    #[test]
    fn an_older_verification_finishing_late_never_overwrites_a_newer_result() {
        let cache = ChainStatus::new(Duration::from_secs(300));
        let older = cache.begin();
        let newer = cache.begin();
        assert!(cache.record(newer, status(IntegrityStatus::Tampered)));
        assert!(!cache.record(older, status(IntegrityStatus::Clean)));
        let kept = cache.cached().expect("a result");
        assert_eq!(kept.integrity.status, IntegrityStatus::Tampered);
        // A verification started after it replaces it.
        let later = cache.begin();
        assert!(cache.record(later, status(IntegrityStatus::Clean)));
        assert_eq!(
            cache.cached().expect("a result").integrity.status,
            IntegrityStatus::Clean
        );
    }

    #[test]
    fn the_wire_format_of_each_status() {
        let json = |c: &ChainIntegrity| serde_json::to_string(c).expect("json");
        let clean = ChainIntegrity {
            events_checked: Some(3),
            ..status(IntegrityStatus::Clean)
        };
        assert_eq!(json(&clean), r#"{"events_checked":3,"status":"clean"}"#);
        let tampered = ChainIntegrity {
            events_checked: Some(3),
            first: Some(None),
            ..status(IntegrityStatus::Tampered)
        };
        assert_eq!(
            json(&tampered),
            r#"{"events_checked":3,"first":null,"status":"tampered"}"#
        );
        assert_eq!(
            json(&status(IntegrityStatus::Empty)),
            r#"{"status":"empty"}"#
        );
        // What is recorded reads back as it was: a null finding stays null, none stays absent.
        for c in [clean, tampered, status(IntegrityStatus::Unknown)] {
            let back: ChainIntegrity = serde_json::from_str(&json(&c)).expect("reads back");
            assert_eq!(back, c);
        }
    }
}
