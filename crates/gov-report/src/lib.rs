//! The EU AI Act Article 12 evidence report: collected from the audit chain through the SDK,
//! rendered as JSON, Markdown or HTML.
//!
//! The report states what the SDK observed over a period — agents and chains, events by kind,
//! human-oversight decisions with who decided, halts, denials — with the result of verifying the
//! chains it covers and the share of calls it can vouch for (`coverage_pct`, or why that cannot
//! be computed). It is evidence, never a claim of compliance, and says so in every format.
//!
//! ```no_run
//! # async fn demo(gov: &gov_sdk::Governance) -> Result<(), gov_report::ReportError> {
//! use gov_report::{Format, ReportRequest, collect, render};
//! let now = time::OffsetDateTime::now_utc();
//! let req = ReportRequest {
//!     from: Some(now - time::Duration::days(30)),
//!     to: now,
//!     chain: None,
//!     generated_at: now,
//!     generator: "my-service 1.0".into(),
//! };
//! let report = collect(gov, &req, &|_| {}).await?;
//! let markdown = render(&report, Format::Markdown)?;
//! # Ok(()) }
//! ```

mod collect;
mod html;
mod markdown;
mod model;

pub use collect::{MAX_LISTED, ReportRequest, Step, collect, coverage_between};
pub use model::{
    AgentSummary, Article12Report, At, COVERAGE_DEFINITION, ChainVerification, Coverage, Decision,
    Denial, Denials, FORMAT, FindingSummary, HaltEvent, Halts, Oversight, Period, STATEMENT,
    System, Totals, UnbackedClaim, Verification,
};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The SDK failed (storage, configuration, unknown chain).
    #[error(transparent)]
    Sdk(#[from] gov_sdk::Error),
    /// The period is not a period.
    #[error("{0}")]
    Period(String),
    /// No chain is tampered, but some chain cannot be checked with the configured keys: it
    /// was written with another secret (or, before a rotation, with an earlier one that is
    /// not configured).
    #[error(
        "no report was made: not verifiable with the configured keys: {advice}. `governance verify` shows every chain's verdict; --audit-secret-file reads the secret from a file"
    )]
    WrongSecret {
        /// The chains the configured keys cannot check.
        chains: Vec<String>,
        /// For each, the key fingerprints its rows name, the configured ones and what to set.
        advice: String,
    },
    /// The report could not be rendered.
    #[error("cannot render the report: {0}")]
    Render(String),
}

impl ReportError {
    /// What kind of failure this is, in the SDK's one classification: an SDK error keeps its
    /// own kind, a bad period or keys that cannot check a chain are configuration, a failed
    /// rendering is internal.
    pub fn kind(&self) -> gov_sdk::ErrorKind {
        match self {
            Self::Sdk(e) => e.kind(),
            Self::Period(_) | Self::WrongSecret { .. } => gov_sdk::ErrorKind::Config,
            Self::Render(_) => gov_sdk::ErrorKind::Internal,
        }
    }

    /// True for errors the operator fixes by changing the command or configuration.
    pub fn is_config(&self) -> bool {
        matches!(
            self.kind(),
            gov_sdk::ErrorKind::Config | gov_sdk::ErrorKind::NotFound
        )
    }
}

/// The report's output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Pretty-printed JSON (the complete record, with each denial's payload).
    Json,
    /// Markdown.
    Markdown,
    /// A self-contained HTML page.
    Html,
}

/// Renders the report. Every format carries the statement that it is evidence, not a claim of
/// compliance. Output ends with a newline.
pub fn render(report: &Article12Report, format: Format) -> Result<String, ReportError> {
    match format {
        Format::Json => serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .map_err(|e| ReportError::Render(e.to_string())),
        Format::Markdown => Ok(markdown::render(report)),
        Format::Html => html::render(report),
    }
}

/// RFC 3339 text of a time (UTC as `Z`).
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `n` and a regular noun, plural unless `n` is 1: "1 event", "2 events".
pub(crate) fn counted(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The period's totals in a sentence fragment.
pub(crate) fn totals_text(t: &Totals) -> String {
    format!(
        "{} by {} in {}",
        counted(t.events, "event"),
        counted(t.agents, "agent"),
        counted(t.sessions, "session")
    )
}

/// The period as a sentence fragment.
pub(crate) fn period_text(p: &Period) -> String {
    match p.from {
        Some(from) => format!("from {} to {} (end excluded)", rfc3339(from), rfc3339(p.to)),
        None => format!(
            "from the start of the record to {} (end excluded)",
            rfc3339(p.to)
        ),
    }
}

/// The verification result in a sentence.
pub(crate) fn verification_text(v: &Verification) -> String {
    let chains = counted(v.chains.len() as u64, "chain");
    let events = counted(v.events_checked, "event");
    match v.chains.iter().find_map(|c| Some((c, c.finding.as_ref()?))) {
        None => format!("clean: {events} in {chains} verified"),
        Some((c, f)) => format!(
            "TAMPERED: chain {} fails at seq {} ({}); {events} checked in {chains}",
            c.chain_id, f.seq, f.reason
        ),
    }
}

/// The coverage in a sentence.
pub(crate) fn coverage_text(c: &Coverage) -> String {
    match c.coverage_pct {
        Some(p) => format!(
            "{p:.1}% of the LLM calls the SDK recorded passed its gates ({} governed, {} observed only); calls by clients never wrapped are invisible to it",
            c.governed_calls, c.observed_calls
        ),
        None => format!(
            "not computed ({}): {}",
            c.reason_code.unwrap_or("unknown"),
            c.reason.unwrap_or("no reason recorded")
        ),
    }
}

/// The account of oversight claims without evidence, in every form of the report.
pub(crate) fn unbacked_summary(n: usize) -> String {
    let (events, claim) = if n == 1 {
        ("1 event claims".to_owned(), "it is")
    } else {
        (format!("{n} events claim"), "they are")
    };
    format!(
        "{events} a human decision, halt or resume that no operator path recorded: {claim} \
         not counted above. Such an event was written with the audit secret outside the \
         operator paths (the console, the CLI and the SDK's operator calls); investigate."
    )
}
