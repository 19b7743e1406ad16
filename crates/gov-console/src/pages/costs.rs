//! `GET /costs`: today's spend (UTC) per agent and model, with a bar chart per agent. Rust
//! computes the chart's numbers (`Chart`); `templates/costs.html` draws the SVG, escaping
//! every label.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;

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

#[derive(Template)]
#[template(path = "costs.html")]
struct Costs {
    nav: Option<Nav>,
    flash: Option<String>,
    rows: Vec<CostRow>,
    chart: Chart,
}

async fn costs(State(state): State<AppState>, user: CurrentUser) -> Result<Html<String>, AppError> {
    let usage = state.gov.cost().usage_today_all().await?;
    let mut by_agent: Vec<(String, i64)> = Vec::new();
    for (agent, u) in &usage {
        match by_agent.last_mut() {
            Some((a, total)) if a == agent => *total += u.cost.0,
            _ => by_agent.push((agent.clone(), u.cost.0)),
        }
    }
    render(&Costs {
        nav: Nav::of(&user),
        flash: None,
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
        }
        .render()
        .expect("render");
        assert!(page.contains("<svg"), "{page}");
        assert!(!page.contains("<script>&"), "{page}");
        assert!(page.contains("&#60;script&#62;&#38;"), "{page}");
        assert!(
            page.contains(r#"<rect x="180" y="5" width="420" height="18" class="bar"/>"#),
            "{page}"
        );
    }
}
