//! `GET /`: what an operator needs at a glance. The chain's integrity from the last verification
//! (a tampered chain turns the page red and says where), agents by state, today's spend against
//! the day caps, the pending approvals with approve and deny one click away, and the agents
//! that need attention: denials, loops, budget refusals and halts in the last hour, the most
//! severe first. The page redraws itself from the live event feed (`console.js`).

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use gov_sdk::EventFilter;
use gov_sdk::events::EventKind;
use time::OffsetDateTime;

use super::{FlashQuery, GateView, Nav, agent_rows, gate_view, render, when};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/", get(dashboard))
}

/// How far back the attention list looks.
const ATTENTION_WINDOW: time::Duration = time::Duration::hours(1);
/// At most this many of the newest events of the followed chain are searched for it.
const ATTENTION_ROWS: i64 = 20_000;
/// The kinds the attention list counts, most severe first, with the label of their count.
const ATTENTION_KINDS: [(EventKind, &str); 6] = [
    (EventKind::AgentHalted, "halted"),
    (EventKind::LoopDetected, "loop"),
    (EventKind::BudgetDenied, "budget refused"),
    (EventKind::ContractViolated, "contract violated"),
    (EventKind::ScopeDenied, "scope denied"),
    (EventKind::GateDenied, "request denied"),
];

/// An agent that needs attention.
struct Attention {
    agent: String,
    /// 0 is the most severe (the index in [`ATTENTION_KINDS`] of its worst kind).
    worst: usize,
    /// `(count, label)` per kind, most severe first.
    counts: Vec<(usize, &'static str)>,
    last: String,
    last_session: String,
    total: usize,
}

impl Attention {
    fn severity(&self) -> &'static str {
        match self.worst {
            0 | 1 => "critical",
            2 | 3 => "high",
            _ => "medium",
        }
    }
}

/// A day cap's use.
struct CapUse {
    agent: String,
    what: &'static str,
    used: String,
    cap: String,
    /// Percent of the cap, at most 100 (for the bar).
    percent: u32,
    over: bool,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    nav: Option<Nav>,
    flash: Option<String>,
    integrity: String,
    integrity_class: &'static str,
    checked_at: String,
    tampered: bool,
    states: Vec<(&'static str, usize)>,
    agents: usize,
    spend_today: String,
    caps: Vec<CapUse>,
    pending: Vec<GateView>,
    attention: Vec<Attention>,
    can_decide: bool,
    csrf: String,
    now: String,
    coverage: Pill,
}

/// The coverage pill: governed LLM calls as a share of those recorded, last 24 hours.
struct Pill {
    text: String,
    /// `clean` (every call governed), `unverifiable` (some observed only), `tampered` (under
    /// 90 %), or empty (nothing to compute it from).
    class: &'static str,
    title: String,
}

impl Pill {
    fn of(c: &gov_report::Coverage) -> Self {
        let calls = format!(
            "{} governed, {} observed LLM calls in the last 24 hours",
            c.governed_calls, c.observed_calls
        );
        match c.coverage_pct {
            Some(pct) => Self {
                text: format!("coverage {pct:.1}%"),
                class: if c.observed_calls == 0 {
                    "clean"
                } else if pct >= 90.0 {
                    "unverifiable"
                } else {
                    "tampered"
                },
                title: calls,
            },
            None => Self {
                text: match c.reason_code {
                    Some("no_wrapped_clients") => "coverage: no wrapped LLM client".into(),
                    _ => "coverage: no LLM calls".into(),
                },
                class: "",
                title: c.reason.unwrap_or_default().to_owned(),
            },
        }
    }
}

async fn dashboard(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    let gov = &state.gov;
    let (rows, pending) = agent_rows(gov).await?;
    let states = ["halted", "waiting", "unresponsive", "live", "idle"]
        .into_iter()
        .map(|s| (s, rows.iter().filter(|a| a.state == s).count()))
        .collect();
    let spend: i64 = gov
        .cost()
        .usage_today_all()
        .await?
        .iter()
        .map(|(_, u)| u.cost.0)
        .sum();
    let caps = cap_uses(&gov.cost().day_budgets().await?);
    let attention = attention(&state).await?;
    // "No events" is wrong as soon as there are some: verify again then.
    let has_events = !gov.audit().heads().await?.is_empty();
    let was_empty = state
        .chain_status
        .latest(gov)
        .await
        .is_some_and(|c| c.integrity.status == crate::chain_status::IntegrityStatus::Empty);
    let mut checked = state.chain_status.peek(gov, has_events && was_empty).await;
    if has_events && was_empty {
        checked = None;
    }
    let (integrity, integrity_class, checked_at, tampered) = match &checked {
        Some(c) => (
            c.integrity.summary(),
            c.integrity.class(),
            when(c.at),
            c.integrity.status == crate::chain_status::IntegrityStatus::Tampered,
        ),
        None => (
            "not verified yet: a verification has started; this page shows it when done".into(),
            "unverifiable",
            String::new(),
            false,
        ),
    };
    render(&Dashboard {
        nav: Nav::of(&user),
        flash: q.notice(),
        integrity,
        integrity_class,
        checked_at,
        tampered,
        states,
        agents: rows.len(),
        spend_today: gov_sdk::MicroUsd(spend).to_string(),
        caps,
        pending: pending.iter().take(10).map(gate_view).collect(),
        attention,
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
        now: when(OffsetDateTime::now_utc()),
        coverage: Pill::of(&*state.coverage.last_day(gov).await?),
    })
}

/// Each day cap (USD and tokens) with its use, the fullest first; spend counts what is
/// reserved too, as the budget check does.
fn cap_uses(budgets: &[(gov_sdk::BudgetPolicy, gov_sdk::BudgetCounter)]) -> Vec<CapUse> {
    let mut out = Vec::new();
    for (p, day) in budgets {
        if let Some(cap) = p.per_day {
            let used = day.spent.0.saturating_add(day.reserved.0);
            out.push(cap_use(
                p.agent_id.as_str(),
                "USD/day",
                used,
                cap.0,
                gov_sdk::MicroUsd(used).to_string(),
                cap.to_string(),
            ));
        }
        if let Some(cap) = p.per_day_tokens {
            let used = day.spent_tokens.saturating_add(day.reserved_tokens);
            let cap = i64::try_from(cap).unwrap_or(i64::MAX);
            out.push(cap_use(
                p.agent_id.as_str(),
                "tokens/day",
                used,
                cap,
                used.to_string(),
                cap.to_string(),
            ));
        }
    }
    out.sort_by(|a, b| b.percent.cmp(&a.percent).then(a.agent.cmp(&b.agent)));
    out.truncate(10);
    out
}

fn cap_use(agent: &str, what: &'static str, used: i64, cap: i64, u: String, c: String) -> CapUse {
    let ratio = if cap <= 0 {
        1.0
    } else {
        used as f64 / cap as f64
    };
    CapUse {
        agent: agent.to_owned(),
        what,
        used: u,
        cap: c,
        percent: (ratio * 100.0).clamp(0.0, 100.0).round() as u32,
        over: used >= cap,
    }
}

/// The agents with denials, loops, budget refusals or halts in the last hour of the followed
/// chain (searching at most its newest [`ATTENTION_ROWS`] events), the most severe first, then
/// the most events.
async fn attention(state: &AppState) -> Result<Vec<Attention>, AppError> {
    let chain = &state.config.live_chain;
    let audit = state.gov.audit();
    let head = audit.head(chain).await?.map_or(0, |h| h.seq);
    let since = OffsetDateTime::now_utc() - ATTENTION_WINDOW;
    // agent -> (counts per kind, newest event's time and session)
    let mut by_agent: BTreeMap<String, ([usize; 6], OffsetDateTime, String)> = BTreeMap::new();
    for (i, (kind, _)) in ATTENTION_KINDS.iter().enumerate() {
        let rows = audit
            .events(&EventFilter {
                chain_id: chain.parse().ok(),
                kind: Some(kind.as_str().to_owned()),
                since: Some(since),
                after_seq: Some((head - ATTENTION_ROWS).max(0)),
                limit: Some(10_000),
                ..EventFilter::default()
            })
            .await?;
        for r in rows {
            let e = by_agent.entry(r.agent_id.clone()).or_insert((
                [0; 6],
                OffsetDateTime::UNIX_EPOCH,
                String::new(),
            ));
            e.0[i] += 1;
            if r.occurred_at >= e.1 {
                e.1 = r.occurred_at;
                e.2 = r.session_id.clone().unwrap_or_default();
            }
        }
    }
    let mut list: Vec<Attention> = by_agent
        .into_iter()
        .map(|(agent, (counts, last, session))| Attention {
            worst: counts.iter().position(|&n| n > 0).unwrap_or(counts.len()),
            total: counts.iter().sum(),
            counts: counts
                .iter()
                .zip(ATTENTION_KINDS)
                .filter(|(n, _)| **n > 0)
                .map(|(n, (_, label))| (*n, label))
                .collect(),
            last: when(last),
            last_session: session,
            agent,
        })
        .collect();
    list.sort_by(|a, b| {
        a.worst
            .cmp(&b.worst)
            .then(b.total.cmp(&a.total))
            .then(a.agent.cmp(&b.agent))
    });
    list.truncate(25);
    Ok(list)
}
