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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gov_sdk::{Governance, Verdict, VerifyReport};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The verdict of the last verification, as `/health/governance` reports it in
/// `chain_integrity`.
// Fields in alphabetical order, the order of the keys before the body was typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct ChainIntegrity {
    /// The unverifiable chains (rows the console's keys cannot check), when `unverifiable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    chains: Option<Vec<String>>,
    /// Rows checked (absent when `empty` or `unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    events_checked: Option<u64>,
    /// The first finding, when `tampered` (null if none could be named).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Finding>)]
    first: Option<Option<Finding>>,
    /// The worst verdict over the chains.
    pub(crate) status: IntegrityStatus,
}

/// The verdict in `chain_integrity.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct Finding {
    /// The chain.
    chain: String,
    /// Why (`gov_sdk::Reason`, e.g. `hmac_mismatch`).
    reason: String,
    /// The row.
    seq: i64,
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
    /// The full report, when the verification completed (the chain page shows it).
    pub(crate) report: Option<Arc<VerifyReport>>,
    started: Instant,
    ticket: u64,
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
}

impl ChainStatus {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            tickets: AtomicU64::new(0),
            latest: Mutex::new(None),
            refreshing: Arc::default(),
        }
    }

    /// Starts a verification.
    pub(crate) fn begin(&self) -> Ticket {
        Ticket {
            n: self.tickets.fetch_add(1, Ordering::AcqRel) + 1,
            at: OffsetDateTime::now_utc(),
            started: Instant::now(),
        }
    }

    /// Keeps a verification's result unless one that started later is already kept; true if
    /// kept.
    #[cfg(test)]
    pub(crate) fn record(&self, ticket: Ticket, integrity: ChainIntegrity) -> bool {
        self.keep(ticket, integrity, None)
    }

    /// [`Self::record`] with the verification's outcome, keeping its report too.
    pub(crate) fn record_result(
        &self,
        ticket: Ticket,
        result: &Result<VerifyReport, gov_sdk::Error>,
    ) -> bool {
        let report = result.as_ref().ok().cloned().map(Arc::new);
        self.keep(ticket, ChainIntegrity::of(result), report)
    }

    fn keep(
        &self,
        ticket: Ticket,
        integrity: ChainIntegrity,
        report: Option<Arc<VerifyReport>>,
    ) -> bool {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if latest.as_ref().is_some_and(|l| l.ticket > ticket.n) {
            return false;
        }
        *latest = Some(Checked {
            integrity,
            report,
            at: ticket.at,
            started: ticket.started,
            ticket: ticket.n,
        });
        true
    }

    /// The last result kept, if any.
    pub(crate) fn latest(&self) -> Option<Checked> {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Verifies every chain now (an operator asked) and keeps the result.
    pub(crate) async fn verify_now(&self, gov: &Governance) -> gov_sdk::Result<VerifyReport> {
        let ticket = self.begin();
        let result = gov.audit().verify_all().await;
        self.record_result(ticket, &result);
        result
    }

    async fn verify_for_health(&self, gov: &Governance) -> Checked {
        let ticket = self.begin();
        let (n, at, started) = (ticket.n, ticket.at, ticket.started);
        let result = gov.audit().verify_all().await;
        let integrity = ChainIntegrity::of(&result);
        self.record_result(ticket, &result);
        // What a concurrent, later verification kept is newer still.
        self.latest().unwrap_or(Checked {
            integrity,
            report: None,
            at,
            started,
            ticket: n,
        })
    }

    /// The last result without waiting (the dashboard): when there is none yet, it is older
    /// than the interval, or `outdated` (the caller knows the chains changed in a way that
    /// makes it wrong), one verification starts in the background and a later look shows it.
    pub(crate) fn peek(self: &Arc<Self>, gov: &Governance, outdated: bool) -> Option<Checked> {
        let latest = self.latest();
        let fresh = !outdated
            && latest
                .as_ref()
                .is_some_and(|c| c.started.elapsed() < self.interval);
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
        match self.latest() {
            Some(c) if c.started.elapsed() < self.interval => c,
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
                if let Some(c) = self.latest() {
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
        let kept = cache.latest().expect("a result");
        assert_eq!(kept.integrity.status, IntegrityStatus::Tampered);
        // A verification started after it replaces it.
        let later = cache.begin();
        assert!(cache.record(later, status(IntegrityStatus::Clean)));
        assert_eq!(
            cache.latest().expect("a result").integrity.status,
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
    }
}
