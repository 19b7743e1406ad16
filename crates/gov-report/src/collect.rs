//! Collecting the report from the audit chain: verification, counts, then the listed events.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gov_sdk::events::{self, EventKind};
use gov_sdk::{AuditRecord, ChainId, EventFilter, Governance, Verdict, VerifyReport};
use time::OffsetDateTime;

use crate::ReportError;
use crate::model::{
    Article12Report, At, ChainVerification, Coverage, Decision, Denial, Denials, FORMAT,
    FindingSummary, HaltEvent, Halts, Oversight, Period, STATEMENT, System, Totals, UnbackedClaim,
    Verification,
};

/// At most this many events are listed per section; the counts stay complete.
pub const MAX_LISTED: usize = 10_000;

/// Kinds whose events are listed one by one.
const DECISIONS: [EventKind; 2] = [EventKind::GateApproved, EventKind::GateDenied];
const HALTS: [EventKind; 2] = [EventKind::AgentHalted, EventKind::AgentResumed];
const DENIALS: [EventKind; 4] = [
    EventKind::ScopeDenied,
    EventKind::BudgetDenied,
    EventKind::LoopDetected,
    EventKind::ContractViolated,
];

/// What to report on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    /// Start of the period (inclusive); `None` is the start of the record.
    pub from: Option<OffsetDateTime>,
    /// End of the period (exclusive).
    pub to: OffsetDateTime,
    /// One chain, or every chain when `None`.
    pub chain: Option<String>,
    /// The time the report states it was made.
    pub generated_at: OffsetDateTime,
    /// The tool and version that makes it, e.g. `governance 0.1.0`.
    pub generator: String,
}

/// Where collection is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Verifying the chains.
    Verifying,
    /// Counting events in the period.
    Counting,
    /// Reading the events of one kind.
    Listing(&'static str),
}

/// Collects the report: verifies the chains covered (whole), counts the period's events by
/// chain, agent and kind, and lists oversight decisions, halts and denials.
///
/// Each chain is judged on its own, by the verifier's rule (`gov_audit::owner`): when no chain
/// is tampered but some chain cannot be checked with the configured keys (nothing in it is
/// sealed by, or names, a configured key), the report is refused with
/// [`ReportError::WrongSecret`], a configuration error, naming the keys its rows need. When a
/// chain is tampered, the report is made and records every chain's verdict, those that cannot
/// be checked included.
pub async fn collect(
    gov: &Governance,
    req: &ReportRequest,
    progress: &(dyn Fn(Step) + Sync),
) -> Result<Article12Report, ReportError> {
    if let Some(from) = req.from
        && from >= req.to
    {
        return Err(ReportError::Period(format!(
            "the period is empty: --from ({}) must be before --to ({})",
            crate::rfc3339(from),
            crate::rfc3339(req.to)
        )));
    }
    if let Some(c) = &req.chain {
        c.parse::<ChainId>().map_err(gov_sdk::Error::from)?;
    }

    progress(Step::Verifying);
    let verified = match &req.chain {
        Some(c) => {
            let chain = gov.audit().verify_named(c).await?;
            VerifyReport {
                events_checked: chain.events_checked,
                chains: vec![chain],
            }
        }
        None => gov.audit().verify_all().await?,
    };
    if verified.verdict() == Verdict::Unverifiable {
        let (chains, advice): (Vec<_>, Vec<_>) = verified
            .unverifiable()
            .map(|(c, u)| (c.to_owned(), format!("chain {c}: {}", u.advice)))
            .unzip();
        return Err(ReportError::WrongSecret {
            chains,
            advice: advice.join("; "),
        });
    }
    let chains: Vec<String> = verified.chains.iter().map(|c| c.chain_id.clone()).collect();

    progress(Step::Counting);
    let counts = gov
        .audit()
        .event_counts(req.chain.as_deref(), req.from, Some(req.to))
        .await?;
    let mut totals = Totals::default();
    let mut systems: Vec<System> = Vec::new();
    let mut events_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut agents = BTreeSet::new();
    for c in &counts {
        match &c.kind {
            None => {
                totals.events += c.events;
                totals.sessions += c.sessions;
                agents.insert(c.agent_id.clone());
                let agent = crate::model::AgentSummary {
                    agent_id: c.agent_id.clone(),
                    events: c.events,
                    sessions: c.sessions,
                    first_event_at: c.first_at,
                    last_event_at: c.last_at,
                };
                match systems.last_mut() {
                    Some(s) if s.chain_id == c.chain_id => {
                        s.events += c.events;
                        s.agents.push(agent);
                    }
                    _ => systems.push(System {
                        chain_id: c.chain_id.clone(),
                        events: c.events,
                        agents: vec![agent],
                    }),
                }
            }
            Some(kind) => *events_by_kind.entry(kind.clone()).or_default() += c.events,
        }
    }
    totals.agents = agents.len() as u64;
    let count = |kind: EventKind| events_by_kind.get(kind.as_str()).copied().unwrap_or(0);

    // Decisions, halts and resumes are human-rate: every one in the period is read and checked
    // against the oversight record its operator path wrote; only backed ones count.
    let (rows, _) = list(gov, req, &chains, &DECISIONS, usize::MAX, progress).await?;
    let (backed, unbacked) = cross_check(gov, rows).await?;
    let approved = backed
        .iter()
        .filter(|r| r.system_kind() == Some(EventKind::GateApproved))
        .count() as u64;
    let human_oversight = Oversight {
        requested: count(EventKind::GateRequested),
        approved,
        denied: backed.len() as u64 - approved,
        truncated: backed.len() > MAX_LISTED,
        decisions: backed.iter().take(MAX_LISTED).map(decision).collect(),
        unbacked,
    };

    let (rows, _) = list(gov, req, &chains, &HALTS, usize::MAX, progress).await?;
    let (backed, unbacked) = cross_check(gov, rows).await?;
    let halted = backed
        .iter()
        .filter(|r| r.system_kind() == Some(EventKind::AgentHalted))
        .count() as u64;
    let halts = Halts {
        halted,
        resumed: backed.len() as u64 - halted,
        truncated: backed.len() > MAX_LISTED,
        events: backed.iter().take(MAX_LISTED).map(halt).collect(),
        unbacked,
    };

    let mut denials = Denials {
        scope: count(EventKind::ScopeDenied),
        budget: count(EventKind::BudgetDenied),
        loops: count(EventKind::LoopDetected),
        contracts: count(EventKind::ContractViolated),
        ..Denials::default()
    };
    let (rows, truncated) = list(gov, req, &chains, &DENIALS, MAX_LISTED, progress).await?;
    denials.truncated = truncated;
    denials.events = rows.iter().map(denial).collect();

    let coverage = coverage(
        gov,
        req.to,
        count(EventKind::LlmRequest),
        count(EventKind::LlmObserved),
    )
    .await?;
    Ok(Article12Report {
        format: FORMAT,
        title: "EU AI Act Article 12 evidence report",
        statement: STATEMENT,
        generated_at: req.generated_at,
        generator: req.generator.clone(),
        period: Period {
            from: req.from,
            to: req.to,
        },
        chains,
        totals,
        systems,
        events_by_kind,
        human_oversight,
        halts,
        denials,
        verification: verification(&verified),
        coverage,
    })
}

/// The report's coverage section on its own, for `[from, to)` over every chain (the whole
/// record before `to` without `from`): the same counts and rule as [`collect`], so a console or
/// a health probe shows exactly what the report would.
pub async fn coverage_between(
    gov: &Governance,
    from: Option<OffsetDateTime>,
    to: OffsetDateTime,
) -> Result<Coverage, ReportError> {
    let counts = gov.audit().event_counts(None, from, Some(to)).await?;
    let count = |kind: EventKind| -> u64 {
        counts
            .iter()
            .filter(|c| c.kind.as_deref() == Some(kind.as_str()))
            .map(|c| c.events)
            .sum()
    };
    coverage(
        gov,
        to,
        count(EventKind::LlmRequest),
        count(EventKind::LlmObserved),
    )
    .await
}

/// The coverage section: the share of recorded LLM calls that passed the gates, or why there is
/// none, and the registry's clients as of the end of the period.
async fn coverage(
    gov: &Governance,
    to: OffsetDateTime,
    governed: u64,
    observed: u64,
) -> Result<Coverage, ReportError> {
    let wrapped_clients: Vec<_> = gov
        .llm()
        .clients()
        .await?
        .into_iter()
        .filter(|c| c.registered_at < to)
        .collect();
    let total = governed + observed;
    // Tenths of a percent, rounded half up, in integers.
    let tenths = (governed * 1_000 + total / 2).checked_div(total);
    let (coverage_pct, reason_code, reason) = if let Some(tenths) = tenths {
        (Some(tenths as f64 / 10.0), None, None)
    } else if wrapped_clients.is_empty() {
        (
            None,
            Some("no_wrapped_clients"),
            Some(
                "no LLM client wrapped by the SDK is registered and no LLM call was recorded in the period: either the deployment made no LLM calls or its clients bypass the SDK, which cannot see them",
            ),
        )
    } else {
        (
            None,
            Some("no_llm_calls_in_period"),
            Some(
                "LLM clients are wrapped (listed in wrapped_clients) but no LLM call was recorded in the period, so there is no share to compute",
            ),
        )
    };
    Ok(Coverage {
        coverage_pct,
        reason_code,
        reason,
        definition: crate::model::COVERAGE_DEFINITION,
        governed_calls: governed,
        observed_calls: observed,
        wrapped_clients,
    })
}

/// Reads every event of `kinds` in the period from `chains`, oldest first, up to
/// [`MAX_LISTED`]; the flag says whether more exist.
async fn list(
    gov: &Governance,
    req: &ReportRequest,
    chains: &[String],
    kinds: &[EventKind],
    max: usize,
    progress: &(dyn Fn(Step) + Sync),
) -> Result<(Vec<AuditRecord>, bool), ReportError> {
    let mut rows = Vec::new();
    let mut truncated = false;
    'kinds: for kind in kinds {
        progress(Step::Listing(kind.as_str()));
        for chain in chains {
            let mut filter = EventFilter {
                chain_id: Some(chain.parse().map_err(gov_sdk::Error::from)?),
                kind: Some(kind.as_str().to_owned()),
                since: req.from,
                until: Some(req.to),
                limit: Some(1_000),
                ..EventFilter::default()
            };
            loop {
                let page = gov.audit().events(&filter).await?;
                let Some(last) = page.last() else { break };
                filter.after_seq = Some(last.seq);
                for r in page {
                    if rows.len() == max {
                        truncated = true;
                        break 'kinds;
                    }
                    rows.push(r);
                }
            }
        }
    }
    rows.sort_by(|a, b| {
        (a.occurred_at, &a.chain_id, a.seq).cmp(&(b.occurred_at, &b.chain_id, b.seq))
    });
    Ok((rows, truncated))
}

fn at(r: &AuditRecord) -> At {
    At {
        occurred_at: r.occurred_at,
        chain_id: r.chain_id.clone(),
        seq: r.seq,
    }
}

fn decision(r: &AuditRecord) -> Decision {
    let (decision, payload) = match r.system_kind() {
        Some(EventKind::GateApproved) => {
            ("approved", r.decode::<events::GateApproved>().map(|d| d.0))
        }
        _ => ("denied", r.decode::<events::GateDenied>().map(|d| d.0)),
    };
    let payload = payload.ok();
    Decision {
        at: at(r),
        agent_id: r.agent_id.clone(),
        session_id: r.session_id.clone(),
        decision,
        decided_by: r.actor.clone(),
        tool: payload.as_ref().map(|p| p.tool.clone()),
        request_id: payload.as_ref().map(|p| p.request_id.to_string()),
        reason: payload.map(|p| p.reason),
    }
}

/// The actor namespace of the system's own halts (the loop detector, a service's kill switch):
/// those are not human oversight and need no oversight record.
const SYSTEM_ACTOR: &str = "governance:";

/// Splits oversight events into those an oversight record backs (same event, kind, agent and
/// operator) and claims without one. A halt by the system itself (`governance:` actor) stands
/// on its own: it claims no human.
async fn cross_check(
    gov: &Governance,
    rows: Vec<AuditRecord>,
) -> Result<(Vec<AuditRecord>, Vec<UnbackedClaim>), ReportError> {
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.event_id.as_uuid()).collect();
    let mut records: HashMap<uuid::Uuid, gov_sdk::OversightRecord> = HashMap::new();
    for chunk in ids.chunks(5_000) {
        for o in gov.audit().oversight_records(chunk).await? {
            records.insert(o.event_id, o);
        }
    }
    let mut backed = Vec::with_capacity(rows.len());
    let mut unbacked = Vec::new();
    for r in rows {
        let system = r.system_kind() == Some(EventKind::AgentHalted)
            && r.actor
                .as_deref()
                .is_some_and(|a| a.starts_with(SYSTEM_ACTOR));
        let matches = records.get(&r.event_id.as_uuid()).is_some_and(|o| {
            o.kind == r.kind
                && o.agent_id == r.agent_id
                && r.actor.as_deref() == Some(o.operator.as_str())
        });
        if system || matches {
            backed.push(r);
        } else {
            unbacked.push(UnbackedClaim {
                at: at(&r),
                agent_id: r.agent_id.clone(),
                kind: r.kind.clone(),
                claimed_by: r.actor.clone(),
            });
        }
    }
    Ok((backed, unbacked))
}

fn halt(r: &AuditRecord) -> HaltEvent {
    let (action, change) = match r.system_kind() {
        Some(EventKind::AgentHalted) => ("halted", r.decode::<events::AgentHalted>().map(|h| h.0)),
        _ => ("resumed", r.decode::<events::AgentResumed>().map(|h| h.0)),
    };
    HaltEvent {
        at: at(r),
        agent_id: r.agent_id.clone(),
        action,
        by: r.actor.clone(),
        reason: change.ok().map(|c| c.reason),
    }
}

/// A one-line account of a denial, read through its kind's payload type (the stored payload
/// itself when it does not have that shape).
fn denial_detail(r: &AuditRecord) -> String {
    let detail = match r.system_kind() {
        Some(EventKind::ScopeDenied) => r.decode::<events::ScopeDenied>().map(|d| {
            let reason = serde_json::to_value(d.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match (d.tool, d.api) {
                (Some(t), _) => format!("tool {t}: {reason}"),
                (None, Some(a)) => format!("api {a}: {reason}"),
                (None, None) => reason,
            }
        }),
        Some(EventKind::BudgetDenied) => r.decode::<events::BudgetDenied>().map(|d| {
            let opt = |v: Option<i64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
            format!(
                "{} (model {}, requested {} µUSD, used {} of cap {})",
                serde_json::to_value(d.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                d.model,
                d.requested_micros,
                opt(d.used),
                opt(d.cap)
            )
        }),
        Some(EventKind::LoopDetected) => r.decode::<events::LoopDetected>().map(|d| {
            format!(
                "tool {} repeated {} times in a window of {} (action: {})",
                d.tool,
                d.repeats,
                d.window_size,
                match d.action {
                    events::LoopResponse::Warn => "warn",
                    events::LoopResponse::Halt => "halt",
                }
            )
        }),
        Some(EventKind::ContractViolated) => r.decode::<events::ContractViolated>().map(|d| {
            format!(
                "tool {}: {} {} failed: {}",
                d.tool, d.phase, d.condition, d.detail
            )
        }),
        _ => return r.payload.clone(),
    };
    detail.unwrap_or_else(|_| r.payload.clone())
}

fn denial(r: &AuditRecord) -> Denial {
    Denial {
        at: at(r),
        agent_id: r.agent_id.clone(),
        session_id: r.session_id.clone(),
        kind: r.kind.clone(),
        detail: denial_detail(r),
        payload: r.payload_json().unwrap_or_default(),
    }
}

fn verification(v: &VerifyReport) -> Verification {
    Verification {
        status: v.verdict().as_str(),
        rotation_aware: gov_sdk::ROTATION_AWARE,
        scope: "every row of each chain covered, from seq 1 to its head, whatever the period",
        events_checked: v.events_checked,
        signatures: v
            .chains
            .iter()
            .fold(gov_sdk::SignatureCounts::default(), |mut t, c| {
                t.signed += c.signatures.signed;
                t.unsigned += c.signatures.unsigned;
                t.unsigned_local_failure += c.signatures.unsigned_local_failure;
                t
            }),
        key_ids: v
            .chains
            .iter()
            .flat_map(|c| c.key_ids.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        chains: v
            .chains
            .iter()
            .map(|c| ChainVerification {
                chain_id: c.chain_id.clone(),
                status: c.verdict().as_str(),
                events_checked: c.events_checked,
                head_seq: c.head_seq,
                finding: c.finding.as_ref().map(|f| FindingSummary {
                    seq: f.seq,
                    reason: f.reason.as_str().to_owned(),
                    detail: f.detail.clone(),
                }),
                unverifiable: c.unverifiable.clone().filter(|_| c.finding.is_none()),
            })
            .collect(),
    }
}
