//! `GET /topology?from=&to=`: which agents use which tools and models over a period (the last
//! 24 hours unless asked), with call counts and refusals, drawn as SVG on the server (agents in
//! the left column, tools then models in the right one, one line per pair, thicker with more
//! calls, red when something was refused) beside a table that says the same. Counts come from
//! `Audit::target_counts` over the followed chain; `layout` is pure.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use gov_sdk::TargetCount;
use gov_sdk::events::EventKind;
use serde::Deserialize;
use time::OffsetDateTime;

use super::events::parse_time;
use super::{Nav, render, when};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/topology", get(topology))
}

/// The kinds that count as a use of a tool or a model.
const CALLS: [EventKind; 3] = [
    EventKind::ToolStarted,
    EventKind::LlmRequest,
    EventKind::LlmObserved,
];
/// The kinds that count as a refusal of a tool or a model.
const DENIALS: [EventKind; 5] = [
    EventKind::ScopeDenied,
    EventKind::BudgetDenied,
    EventKind::LoopDetected,
    EventKind::ContractViolated,
    EventKind::GateDenied,
];
/// The kinds whose target is a model (the others name a tool).
const MODEL_KINDS: [EventKind; 3] = [
    EventKind::LlmRequest,
    EventKind::LlmObserved,
    EventKind::BudgetDenied,
];

/// One agent's use of one tool or model over the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) agent: String,
    pub(crate) target: String,
    pub(crate) model: bool,
    pub(crate) calls: u64,
    pub(crate) denials: u64,
}

/// Folds the counts into one edge per (agent, tool or model). A target some event names as a
/// model is a model (scope refusals of an LLM call name it too).
pub(crate) fn edges(counts: &[TargetCount]) -> Vec<Edge> {
    let is = |k: &str, set: &[EventKind]| set.iter().any(|s| s.as_str() == k);
    let models: std::collections::BTreeSet<&str> = counts
        .iter()
        .filter(|c| is(&c.kind, &MODEL_KINDS))
        .map(|c| c.target.as_str())
        .collect();
    let mut map: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for c in counts {
        let e = map
            .entry((c.agent_id.clone(), c.target.clone()))
            .or_insert_with(|| Edge {
                agent: c.agent_id.clone(),
                target: c.target.clone(),
                model: models.contains(c.target.as_str()),
                calls: 0,
                denials: 0,
            });
        if is(&c.kind, &CALLS) {
            e.calls += c.events;
        } else if is(&c.kind, &DENIALS) {
            e.denials += c.events;
        }
    }
    map.into_values().collect()
}

/// A node of the drawing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) y: i64,
    pub(crate) calls: u64,
    pub(crate) denials: u64,
    /// `agent`, `tool` or `model`.
    pub(crate) class: &'static str,
}

/// A line of the drawing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) y1: i64,
    pub(crate) y2: i64,
    pub(crate) width: i64,
    pub(crate) denied: bool,
    pub(crate) title: String,
}

/// The drawing's geometry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) width: i64,
    pub(crate) height: i64,
    pub(crate) agents: Vec<Node>,
    pub(crate) targets: Vec<Node>,
    pub(crate) lines: Vec<Line>,
    /// Where the column headings sit.
    pub(crate) heading_y: i64,
}

/// The agents' column's x (the nodes), the targets' column's x, a row's height.
pub(crate) const AGENT_X: i64 = 230;
pub(crate) const TARGET_X: i64 = 560;
const ROW: i64 = 22;
const TOP: i64 = 40;

/// Lays the edges out: agents by calls (most first) on the left; tools, then models, by calls
/// on the right; each line from its agent to its target.
pub(crate) fn layout(edges: &[Edge]) -> Layout {
    let mut agents: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut targets: BTreeMap<(bool, &str), (u64, u64)> = BTreeMap::new();
    for e in edges {
        let a = agents.entry(&e.agent).or_default();
        a.0 += e.calls;
        a.1 += e.denials;
        let t = targets.entry((e.model, &e.target)).or_default();
        t.0 += e.calls;
        t.1 += e.denials;
    }
    let mut agents: Vec<_> = agents.into_iter().collect();
    agents.sort_by(|a, b| (b.1.0 + b.1.1).cmp(&(a.1.0 + a.1.1)).then(a.0.cmp(b.0)));
    let mut targets: Vec<_> = targets.into_iter().collect();
    targets.sort_by(|a, b| {
        a.0.0
            .cmp(&b.0.0)
            .then((b.1.0 + b.1.1).cmp(&(a.1.0 + a.1.1)))
            .then(a.0.1.cmp(b.0.1))
    });
    let agents: Vec<Node> = agents
        .into_iter()
        .enumerate()
        .map(|(i, (name, (calls, denials)))| Node {
            name: name.to_owned(),
            y: TOP + i as i64 * ROW,
            calls,
            denials,
            class: "agent",
        })
        .collect();
    let targets: Vec<Node> = targets
        .into_iter()
        .enumerate()
        .map(|(i, ((model, name), (calls, denials)))| Node {
            name: name.to_owned(),
            y: TOP + i as i64 * ROW,
            calls,
            denials,
            class: if model { "model" } else { "tool" },
        })
        .collect();
    let max = edges.iter().map(|e| e.calls).max().unwrap_or(1).max(1);
    let y_of = |nodes: &[Node], name: &str| nodes.iter().find(|n| n.name == name).map(|n| n.y);
    let lines = edges
        .iter()
        .filter_map(|e| {
            Some(Line {
                y1: y_of(&agents, &e.agent)?,
                y2: y_of(&targets, &e.target)?,
                width: 1 + (e.calls * 5 / max) as i64,
                denied: e.denials > 0,
                title: format!(
                    "{} → {}: {} calls, {} refused",
                    e.agent, e.target, e.calls, e.denials
                ),
            })
        })
        .collect();
    let rows = agents.len().max(targets.len()) as i64;
    Layout {
        width: TARGET_X + 260,
        height: TOP + rows * ROW + 10,
        heading_y: 18,
        agents,
        targets,
        lines,
    }
}

#[derive(Debug, Deserialize)]
struct TopologyQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Template)]
#[template(path = "topology.html")]
struct TopologyPage {
    nav: Option<Nav>,
    flash: Option<String>,
    from: String,
    to: String,
    from_input: String,
    to_input: String,
    edges: Vec<Edge>,
    l: Layout,
    agent_x: i64,
    target_x: i64,
}

/// `YYYY-MM-DDTHH:MM`, what a datetime-local field shows.
fn input_value(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    t.format(&fmt).unwrap_or_default()
}

async fn topology(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<TopologyQuery>,
) -> Result<Html<String>, AppError> {
    let to =
        parse_time("to", q.to.as_deref().unwrap_or(""))?.unwrap_or_else(OffsetDateTime::now_utc);
    let from = parse_time("from", q.from.as_deref().unwrap_or(""))?
        .unwrap_or(to - time::Duration::hours(24));
    if from >= to {
        return Err(AppError::BadRequest(format!(
            "the period is empty: from ({}) must be before to ({})",
            when(from),
            when(to)
        )));
    }
    let kinds: Vec<EventKind> = CALLS.into_iter().chain(DENIALS).collect();
    let counts = state
        .gov
        .audit()
        .target_counts(&state.config.live_chain, &kinds, from, to)
        .await?;
    let mut edges = edges(&counts);
    let l = layout(&edges);
    edges.sort_by(|a, b| {
        (b.calls + b.denials)
            .cmp(&(a.calls + a.denials))
            .then(a.agent.cmp(&b.agent))
            .then(a.target.cmp(&b.target))
    });
    render(&TopologyPage {
        nav: Nav::of(&user),
        flash: None,
        from: format!("{} UTC", input_value(from).replace('T', " ")),
        to: format!("{} UTC", input_value(to).replace('T', " ")),
        from_input: input_value(from),
        to_input: input_value(to),
        edges,
        l,
        agent_x: AGENT_X,
        target_x: TARGET_X,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(agent: &str, kind: EventKind, target: &str, events: u64) -> TargetCount {
        TargetCount {
            agent_id: agent.into(),
            kind: kind.as_str().into(),
            target: target.into(),
            events,
        }
    }

    #[test]
    fn counts_fold_into_one_edge_per_agent_and_target() {
        let e = edges(&[
            count("a", EventKind::ToolStarted, "wire", 3),
            count("a", EventKind::ScopeDenied, "wire", 2),
            count("a", EventKind::LlmRequest, "gpt-4o", 5),
            count("a", EventKind::ScopeDenied, "gpt-4o", 1),
            count("b", EventKind::BudgetDenied, "gpt-4o", 4),
        ]);
        let got: Vec<(&str, &str, bool, u64, u64)> = e
            .iter()
            .map(|e| {
                (
                    e.agent.as_str(),
                    e.target.as_str(),
                    e.model,
                    e.calls,
                    e.denials,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", "gpt-4o", true, 5, 1),
                ("a", "wire", false, 3, 2),
                ("b", "gpt-4o", true, 0, 4),
            ]
        );
    }

    #[test]
    fn fifty_agents_get_a_row_each_and_tools_come_before_models() {
        let mut counts = Vec::new();
        for i in 0..50 {
            counts.push(count(
                &format!("agent-{i:02}"),
                EventKind::ToolStarted,
                "search",
                1 + i,
            ));
            counts.push(count(
                &format!("agent-{i:02}"),
                EventKind::LlmRequest,
                "gpt-4o",
                2,
            ));
        }
        let l = layout(&edges(&counts));
        assert_eq!(l.agents.len(), 50);
        assert_eq!(l.lines.len(), 100);
        // The busiest agent first; rows never overlap.
        assert_eq!(l.agents[0].name, "agent-49");
        let ys: std::collections::BTreeSet<i64> = l.agents.iter().map(|a| a.y).collect();
        assert_eq!(ys.len(), 50);
        assert_eq!(
            l.targets
                .iter()
                .map(|t| (t.name.as_str(), t.class))
                .collect::<Vec<_>>(),
            [("search", "tool"), ("gpt-4o", "model")]
        );
        assert_eq!(l.height, TOP + 50 * ROW + 10);
        // The thickest line is the busiest pair's.
        assert_eq!(l.lines.iter().map(|x| x.width).max(), Some(6));
    }

    #[test]
    fn the_page_escapes_names_and_titles_the_svg() {
        let e = edges(&[count("<a>", EventKind::ToolStarted, "x&y", 1)]);
        let page = TopologyPage {
            nav: None,
            flash: None,
            from: "f".into(),
            to: "t".into(),
            from_input: String::new(),
            to_input: String::new(),
            l: layout(&e),
            edges: e,
            agent_x: AGENT_X,
            target_x: TARGET_X,
        }
        .render()
        .expect("render");
        assert!(page.contains("<title id=\"topology-title\">"), "{page}");
        assert!(!page.contains("<a>"), "{page}");
        assert!(page.contains("x&#38;y"), "{page}");
    }
}
