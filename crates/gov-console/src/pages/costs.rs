//! `GET /costs?from=&to=&bucket=&agent=&session=`: spend over a range of UTC days (by day, or by
//! hour with `bucket=hour`; by agent, by model, as bar charts drawn as SVG on the server, and as
//! a table), today's spend per agent and
//! model, every day cap's use, and for one agent (and session) its caps exactly as
//! `governance budget AGENT --session S` shows them. Every number comes from the SDK calls the
//! CLI makes (`Cost::usage_between` reads the rows `usage_today_all` and `governance budget`
//! read; `Cost::snapshot` is the CLI's call), so the page and the CLI cannot disagree. Rust
//! computes the charts' geometry (`Chart`); the template draws them, escaping every label.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;

use serde::Deserialize;

use super::{Nav, render};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/costs", get(costs))
}

struct CostRow {
    agent: String,
    model: String,
    calls: i64,
    input: i64,
    output: i64,
    cached: i64,
    cost: String,
}

/// A horizontal bar chart's geometry: one bar per agent, the longest `BAR_WIDTH` wide.
struct Chart {
    width: usize,
    height: usize,
    /// Where the bars start (the labels are left of it).
    bar_x: usize,
    bars: Vec<Bar>,
}

/// One agent's bar.
struct Bar {
    label: String,
    /// The bar's top.
    y: usize,
    /// The baseline of its label and value.
    text_y: usize,
    width: i64,
    /// Where its value is written, right of the bar.
    value_x: i64,
    value: String,
}

const ROW_HEIGHT: usize = 26;
const LABEL_WIDTH: usize = 180;
const BAR_WIDTH: usize = 420;

impl Chart {
    fn of(totals: &[(String, i64)]) -> Self {
        let max = totals.iter().map(|b| b.1).max().unwrap_or(1).max(1);
        let width = LABEL_WIDTH + BAR_WIDTH + 120;
        let bars = totals
            .iter()
            .enumerate()
            .map(|(i, (name, micros))| {
                let y = i * ROW_HEIGHT + 5;
                let w = (*micros as f64 / max as f64 * BAR_WIDTH as f64).round() as i64;
                Bar {
                    label: name.clone(),
                    y,
                    text_y: y + 14,
                    width: w.max(1),
                    value_x: LABEL_WIDTH as i64 + w.max(1) + 6,
                    value: gov_sdk::MicroUsd(*micros).to_string(),
                }
            })
            .collect();
        Self {
            width,
            height: ROW_HEIGHT * totals.len() + 10,
            bar_x: LABEL_WIDTH,
            bars,
        }
    }
}

/// The range shown when none is asked for: the last 7 days, today included.
const DEFAULT_DAYS: i64 = 7;

/// The range shown by hour when none is asked for: today.
const DEFAULT_HOUR_DAYS: i64 = 1;

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD&bucket=day|hour&agent=&session=`.
#[derive(Debug, Default, Deserialize)]
struct CostsQuery {
    from: Option<String>,
    to: Option<String>,
    /// `day` (the default) or `hour`.
    bucket: Option<String>,
    agent: Option<String>,
    session: Option<String>,
}

/// One cap's use as `governance budget` shows it, with the share drawn as a bar.
struct CapRow {
    agent: String,
    period: String,
    /// `USD` or `tokens`.
    unit: &'static str,
    spent: String,
    reserved: String,
    cap: String,
    /// Percent of the cap used (spent and reserved), at most 100 for the bar.
    percent: u32,
    over: bool,
}

/// A day's (or an hour's), agent's or model's spend over the range.
struct SpendRow {
    /// The day, or the hour (`YYYY-MM-DDTHH:00Z`).
    day: String,
    agent: String,
    model: String,
    calls: i64,
    input: i64,
    output: i64,
    cost: String,
}

#[derive(Template)]
#[template(path = "costs.html")]
struct Costs {
    nav: Option<Nav>,
    flash: Option<String>,
    from: String,
    to: String,
    /// `day` or `hour`.
    bucket: &'static str,
    agent: String,
    session: String,
    total: String,
    /// With hour buckets, what the days of the range hold that no hour does (spend settled
    /// before hourly rows existed), else empty.
    hour_gap: String,
    by_day: Chart,
    by_agent: Chart,
    by_model: Chart,
    range_rows: Vec<SpendRow>,
    rows: Vec<CostRow>,
    chart: Chart,
    day_caps: Vec<CapRow>,
    /// The asked agent's caps (`governance budget`), when an agent is asked for.
    budget: Option<Vec<CapRow>>,
    /// Why the asked agent has no caps shown, when it has no policy.
    budget_note: String,
}

fn day(field: &str, text: Option<&str>) -> Result<Option<time::Date>, AppError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => time::Date::parse(t, &fmt).map(Some).map_err(|_| {
            AppError::BadRequest(format!("{field}: {t:?} is not a day; use YYYY-MM-DD (UTC)"))
        }),
    }
}

fn percent(used: i64, cap: i64) -> (u32, bool) {
    if cap <= 0 {
        return (100, used > 0);
    }
    let p = (i128::from(used) * 100 / i128::from(cap)).clamp(0, 100) as u32;
    (p, used > cap)
}

/// The caps of one policy against one counter: USD, then tokens (only those the policy sets).
fn cap_rows(
    agent: &str,
    period: &str,
    c: &gov_sdk::BudgetCounter,
    usd: Option<gov_sdk::MicroUsd>,
    tokens: Option<u64>,
) -> Vec<CapRow> {
    let mut out = Vec::new();
    if let Some(cap) = usd {
        let (percent, over) = percent(c.spent.0.saturating_add(c.reserved.0), cap.0);
        out.push(CapRow {
            agent: agent.to_owned(),
            period: period.to_owned(),
            unit: "USD",
            spent: c.spent.to_string(),
            reserved: c.reserved.to_string(),
            cap: cap.to_string(),
            percent,
            over,
        });
    }
    if let Some(cap) = tokens {
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let (percent, over) = percent(c.spent_tokens.saturating_add(c.reserved_tokens), cap);
        out.push(CapRow {
            agent: agent.to_owned(),
            period: period.to_owned(),
            unit: "tokens",
            spent: c.spent_tokens.to_string(),
            reserved: c.reserved_tokens.to_string(),
            cap: cap.to_string(),
            percent,
            over,
        });
    }
    out
}

/// An hour as shown: `YYYY-MM-DDTHH:00Z`.
fn hour_label(t: time::OffsetDateTime) -> String {
    format!("{}T{:02}:00Z", t.date(), t.hour())
}

fn spend_row(when: String, agent: &str, u: &gov_sdk::ModelUsage) -> SpendRow {
    SpendRow {
        day: when,
        agent: agent.to_owned(),
        model: u.model.clone(),
        calls: u.calls,
        input: u.input_tokens,
        output: u.output_tokens,
        cost: u.cost.to_string(),
    }
}

/// Sums `(key, micros)` pairs by key, the largest first.
fn totals(items: impl Iterator<Item = (String, i64)>) -> Vec<(String, i64)> {
    let mut map: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for (k, v) in items {
        *map.entry(k).or_default() += v;
    }
    let mut out: Vec<_> = map.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

async fn costs(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<CostsQuery>,
) -> Result<Html<String>, AppError> {
    let gov = &state.gov;
    let today = time::OffsetDateTime::now_utc().date();
    let bucket = match q.bucket.as_deref().map(str::trim) {
        None | Some("" | "day") => "day",
        Some("hour") => "hour",
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "bucket: {other:?} is not a bucket; use day or hour"
            )));
        }
    };
    let to = day("to", q.to.as_deref())?.unwrap_or(today);
    let default_days = if bucket == "hour" {
        DEFAULT_HOUR_DAYS
    } else {
        DEFAULT_DAYS
    };
    let from =
        day("from", q.from.as_deref())?.unwrap_or(to - time::Duration::days(default_days - 1));
    let range = gov.cost().usage_between(from, to).await?;
    let hours = if bucket == "hour" {
        Some(gov.cost().usage_by_hour(from, to).await?)
    } else {
        None
    };
    let usage = gov.cost().usage_today_all().await?;
    let mut by_agent: Vec<(String, i64)> = Vec::new();
    for (agent, u) in &usage {
        match by_agent.last_mut() {
            Some((a, total)) if a == agent => *total += u.cost.0,
            _ => by_agent.push((agent.clone(), u.cost.0)),
        }
    }
    // Every day (or hour) of the range, those without spend too.
    let mut days: Vec<(String, i64)> = Vec::new();
    let mut d = from;
    while d <= to {
        match &hours {
            None => {
                let spent = range.iter().filter(|r| r.0 == d).map(|r| r.2.cost.0).sum();
                days.push((d.to_string(), spent));
            }
            Some(hours) => {
                for h in 0..24u8 {
                    let at = d.with_hms(h, 0, 0).map_or(d.midnight(), |t| t).assume_utc();
                    let spent = hours.iter().filter(|r| r.0 == at).map(|r| r.2.cost.0).sum();
                    days.push((hour_label(at), spent));
                }
            }
        }
        match d.next_day() {
            Some(n) => d = n,
            None => break,
        }
    }
    let day_total: i64 = range.iter().map(|r| r.2.cost.0).sum();
    let hour_gap = match &hours {
        Some(hours) => {
            let gap = day_total - hours.iter().map(|r| r.2.cost.0).sum::<i64>();
            if gap == 0 {
                String::new()
            } else {
                gov_sdk::MicroUsd(gap).to_string()
            }
        }
        None => String::new(),
    };
    let mut day_caps = Vec::new();
    for (p, c) in gov.cost().day_budgets().await? {
        day_caps.extend(cap_rows(
            p.agent_id.as_str(),
            "today (UTC)",
            &c,
            p.per_day,
            p.per_day_tokens,
        ));
    }
    day_caps.sort_by(|a, b| b.percent.cmp(&a.percent).then(a.agent.cmp(&b.agent)));
    let agent = q
        .agent
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let session = q
        .session
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let (budget, budget_note) = if agent.is_empty() {
        (None, String::new())
    } else {
        gov_sdk::AgentId::new(&agent).map_err(|e| AppError::BadRequest(format!("agent: {e}")))?;
        let snap = gov
            .cost()
            .snapshot(&agent, if session.is_empty() { "-" } else { &session })
            .await?;
        match &snap.status.policy {
            None => (
                Some(Vec::new()),
                format!(
                    "{agent} has no budget policy: its calls are refused unless unbudgeted agents are allowed"
                ),
            ),
            Some(p) => {
                let mut rows = Vec::new();
                if !session.is_empty() {
                    rows.extend(cap_rows(
                        &agent,
                        &format!("session {session}"),
                        &snap.status.session,
                        p.per_session,
                        p.per_session_tokens,
                    ));
                }
                rows.extend(cap_rows(
                    &agent,
                    "today (UTC)",
                    &snap.status.day,
                    p.per_day,
                    p.per_day_tokens,
                ));
                let note = if rows.is_empty() {
                    format!("{agent}'s policy sets no cap on these periods")
                } else {
                    String::new()
                };
                (Some(rows), note)
            }
        }
    };
    render(&Costs {
        nav: Nav::of(&user),
        flash: None,
        from: from.to_string(),
        to: to.to_string(),
        total: gov_sdk::MicroUsd(day_total).to_string(),
        hour_gap,
        bucket,
        by_day: Chart::of(&days),
        by_agent: Chart::of(&totals(range.iter().map(|r| (r.1.clone(), r.2.cost.0)))),
        by_model: Chart::of(&totals(
            range.iter().map(|r| (r.2.model.clone(), r.2.cost.0)),
        )),
        range_rows: match &hours {
            None => range
                .iter()
                .map(|(d, a, u)| spend_row(d.to_string(), a, u))
                .collect(),
            Some(hours) => hours
                .iter()
                .map(|(h, a, u)| spend_row(hour_label(*h), a, u))
                .collect(),
        },
        chart: Chart::of(&by_agent),
        rows: usage
            .iter()
            .map(|(agent, u)| CostRow {
                agent: agent.clone(),
                model: u.model.clone(),
                calls: u.calls,
                input: u.input_tokens,
                output: u.output_tokens,
                cached: u.cached_tokens,
                cost: u.cost.to_string(),
            })
            .collect(),
        day_caps,
        budget,
        budget_note,
        agent,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_bar_is_full_width_and_a_zero_bar_still_shows() {
        let chart = Chart::of(&[
            ("a".into(), 2_000_000),
            ("b".into(), 0),
            ("c".into(), 1_000_000),
        ]);
        assert_eq!((chart.width, chart.height), (720, 88));
        let widths: Vec<i64> = chart.bars.iter().map(|b| b.width).collect();
        assert_eq!(widths, [420, 1, 210]);
        assert_eq!(chart.bars[2].y, 57);
        assert_eq!(chart.bars[2].text_y, 71);
        assert_eq!(chart.bars[0].value_x, 180 + 420 + 6);
        assert_eq!(
            chart.bars[0].value,
            gov_sdk::MicroUsd(2_000_000).to_string()
        );
    }

    #[test]
    fn a_cap_bar_is_the_share_used_and_marks_overspend() {
        assert_eq!(percent(50, 200), (25, false));
        assert_eq!(percent(300, 200), (100, true));
        assert_eq!(percent(0, 0), (100, false));
        let c = gov_sdk::BudgetCounter {
            spent: gov_sdk::MicroUsd(400_000),
            reserved: gov_sdk::MicroUsd(100_000),
            spent_tokens: 10,
            reserved_tokens: 0,
        };
        let rows = cap_rows(
            "a",
            "today (UTC)",
            &c,
            Some(gov_sdk::MicroUsd(1_000_000)),
            Some(40),
        );
        let got: Vec<(&str, u32)> = rows.iter().map(|r| (r.unit, r.percent)).collect();
        assert_eq!(got, [("USD", 50), ("tokens", 25)]);
        assert!(cap_rows("a", "today", &c, None, None).is_empty());
    }

    #[test]
    fn totals_add_up_by_key_the_largest_first() {
        let t = totals(
            [
                ("b".to_owned(), 1),
                ("a".to_owned(), 2),
                ("b".to_owned(), 3),
            ]
            .into_iter(),
        );
        assert_eq!(t, [("b".to_owned(), 4), ("a".to_owned(), 2)]);
    }

    #[test]
    fn labels_are_escaped_by_the_template() {
        let page = Costs {
            nav: None,
            flash: None,
            rows: vec![CostRow {
                agent: "<b>".into(),
                model: "m".into(),
                calls: 1,
                input: 1,
                output: 1,
                cached: 0,
                cost: "$1".into(),
            }],
            chart: Chart::of(&[("<script>&".into(), 5)]),
            from: "2026-12-01".into(),
            to: "2026-12-03".into(),
            bucket: "day",
            hour_gap: String::new(),
            agent: String::new(),
            session: String::new(),
            total: "$1".into(),
            by_day: Chart::of(&[]),
            by_agent: Chart::of(&[("<i>".into(), 5)]),
            by_model: Chart::of(&[]),
            range_rows: Vec::new(),
            day_caps: Vec::new(),
            budget: None,
            budget_note: String::new(),
        }
        .render()
        .expect("render");
        assert!(page.contains("<svg"), "{page}");
        assert!(!page.contains("<script>&"), "{page}");
        assert!(page.contains("&#60;script&#62;&#38;"), "{page}");
        assert!(!page.contains("<i>"), "{page}");
        assert!(
            page.contains(r#"<rect x="180" y="5" width="420" height="18" class="bar"><title>"#),
            "{page}"
        );
    }
}
