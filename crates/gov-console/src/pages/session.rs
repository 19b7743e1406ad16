//! `GET /agents/{agent}/sessions/{session}`: one session of one agent as a trace. Its events
//! (the followed chain's, oldest first) become spans and marks: each LLM call from its
//! `llm.request` to the `llm.response`, `llm.error` or `llm.cancelled` that names it as parent
//! (model, tokens, cost, latency), each tool run from `tool.started` to the next `tool.finished`
//! of that tool, each approval from `gate.requested` to its decision (how long the agent waited,
//! and who decided), and the refusals, halts and other events as marks. `timeline` is pure;
//! the template draws the waterfall as SVG (no script) beside a table that says the same.

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use gov_sdk::events::{self, EventKind};
use gov_sdk::{AuditRecord, EventFilter, MicroUsd};

use super::{Nav, render, severity_class, when};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/agents/{agent}/sessions/{session}", get(session))
}

/// At most this many of the session's events are read (the oldest first).
const MAX_EVENTS: u32 = 10_000;
/// At most this many spans are drawn in the waterfall (the table lists every one).
const MAX_DRAWN: usize = 300;

/// One line of the trace: a span (with a duration) or a mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    /// `llm`, `tool`, `approval`, `denial`, `halt` or `event`.
    pub(crate) class: &'static str,
    /// What it was (`llm gpt-4o`, `tool wire`, `approval wire`, the kind).
    pub(crate) label: String,
    /// Microseconds from the session's first event.
    pub(crate) start_us: i64,
    /// Its length in microseconds (0 for a mark, or a span that has not ended).
    pub(crate) duration_us: i64,
    /// The details: tokens, cost, outcome, who decided, why refused.
    pub(crate) detail: String,
    /// The seq of the event that starts it.
    pub(crate) seq: i64,
    /// A span still open at the end of what was read (no answer, no decision yet).
    pub(crate) open: bool,
}

/// A session's trace and its totals.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Timeline {
    pub(crate) spans: Vec<Span>,
    pub(crate) llm_calls: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost_micros: i64,
    pub(crate) tool_calls: u64,
    pub(crate) denials: u64,
    /// Approvals asked for, and the total time waited for decisions (microseconds).
    pub(crate) approvals: u64,
    pub(crate) waited_us: i64,
    /// Who decided, in order of first decision.
    pub(crate) deciders: Vec<String>,
    /// From the first event to the last, in microseconds.
    pub(crate) length_us: i64,
}

fn us(d: time::Duration) -> i64 {
    i64::try_from(d.whole_microseconds()).unwrap_or(i64::MAX)
}

/// The trace of `rows` (one session's events, in seq order).
pub(crate) fn timeline(rows: &[AuditRecord]) -> Timeline {
    let mut t = Timeline::default();
    let Some(first) = rows.first() else {
        return t;
    };
    let t0 = first.occurred_at;
    let at = |r: &AuditRecord| us(r.occurred_at - t0);
    // Open spans: LLM calls by request event id, tools by name (oldest first), approvals by
    // request id; each an index into `t.spans`.
    let mut llm: HashMap<gov_sdk::EventId, usize> = HashMap::new();
    let mut tools: HashMap<String, Vec<usize>> = HashMap::new();
    let mut gates: HashMap<uuid::Uuid, usize> = HashMap::new();
    let close = |t: &mut Timeline, i: usize, end: i64, detail: String| {
        let s = &mut t.spans[i];
        s.duration_us = (end - s.start_us).max(0);
        s.open = false;
        s.detail = detail;
    };
    for r in rows {
        let start_us = at(r);
        t.length_us = t.length_us.max(start_us);
        let mark = |class: &'static str, label: String, detail: String| Span {
            class,
            label,
            start_us,
            duration_us: 0,
            detail,
            seq: r.seq,
            open: false,
        };
        match r.system_kind() {
            Some(EventKind::LlmRequest) => {
                if let Ok(p) = r.decode::<events::LlmRequest>() {
                    t.llm_calls += 1;
                    llm.insert(r.event_id, t.spans.len());
                    t.spans.push(Span {
                        open: true,
                        ..mark(
                            "llm",
                            format!("llm {}", p.model),
                            format!(
                                "no answer recorded; {} reserved",
                                MicroUsd(p.reserved_micros)
                            ),
                        )
                    });
                }
            }
            Some(EventKind::LlmResponse) => {
                if let Ok(p) = r.decode::<events::LlmResponse>() {
                    t.input_tokens += p.input_tokens;
                    t.output_tokens += p.output_tokens;
                    t.cost_micros += p.cost_micros;
                    let detail = format!(
                        "{} in, {} out{} tokens · {} · {} ms{}",
                        p.input_tokens,
                        p.output_tokens,
                        if p.cached_input_tokens > 0 {
                            format!(" ({} cached)", p.cached_input_tokens)
                        } else {
                            String::new()
                        },
                        MicroUsd(p.cost_micros),
                        p.latency_ms,
                        p.finish_reason
                            .map(|f| format!(" · {f}"))
                            .unwrap_or_default(),
                    );
                    match r.parent_event_id.and_then(|p| llm.remove(&p)) {
                        Some(i) => close(&mut t, i, start_us, detail),
                        None => t
                            .spans
                            .push(mark("llm", format!("llm {}", p.model), detail)),
                    }
                }
            }
            Some(EventKind::LlmError | EventKind::LlmCancelled) => {
                let (model, detail) = match r.system_kind() {
                    Some(EventKind::LlmError) => match r.decode::<events::LlmError>() {
                        Ok(p) => (
                            p.model,
                            format!(
                                "failed: {}{} · {} ms",
                                p.kind,
                                p.status.map(|s| format!(" ({s})")).unwrap_or_default(),
                                p.latency_ms
                            ),
                        ),
                        Err(_) => continue,
                    },
                    _ => match r.decode::<events::LlmCancelled>() {
                        Ok(p) => (
                            p.model,
                            format!("cancelled by its caller · {} ms", p.latency_ms),
                        ),
                        Err(_) => continue,
                    },
                };
                match r.parent_event_id.and_then(|p| llm.remove(&p)) {
                    Some(i) => {
                        close(&mut t, i, start_us, detail);
                        t.spans[i].class = "llm failed";
                    }
                    None => t
                        .spans
                        .push(mark("llm failed", format!("llm {model}"), detail)),
                }
            }
            Some(EventKind::LlmObserved) => {
                if let Ok(p) = r.decode::<events::LlmObserved>() {
                    t.llm_calls += 1;
                    t.input_tokens += p.input_tokens;
                    t.output_tokens += p.output_tokens;
                    t.cost_micros += p.cost_micros;
                    t.spans.push(mark(
                        "llm observed",
                        format!("llm {} (observed, not gated)", p.model),
                        format!(
                            "{} in, {} out tokens · {}",
                            p.input_tokens,
                            p.output_tokens,
                            MicroUsd(p.cost_micros)
                        ),
                    ));
                }
            }
            Some(EventKind::ToolStarted) => {
                if let Ok(p) = r.decode::<events::ToolStarted>() {
                    t.tool_calls += 1;
                    tools.entry(p.tool.clone()).or_default().push(t.spans.len());
                    t.spans.push(Span {
                        open: true,
                        ..mark("tool", format!("tool {}", p.tool), "not finished".into())
                    });
                }
            }
            Some(EventKind::ToolFinished) => {
                if let Ok(p) = r.decode::<events::ToolFinished>() {
                    let detail = match (&p.error, p.ok) {
                        (Some(e), _) => format!("failed after {} ms: {e}", p.duration_ms),
                        (None, true) => format!("ok · {} ms", p.duration_ms),
                        (None, false) => format!("failed after {} ms", p.duration_ms),
                    };
                    let open = tools
                        .get_mut(&p.tool)
                        .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
                    match open {
                        Some(i) => close(&mut t, i, start_us, detail),
                        None => {
                            t.tool_calls += 1;
                            t.spans
                                .push(mark("tool", format!("tool {}", p.tool), detail));
                        }
                    }
                }
            }
            Some(EventKind::GateRequested) => {
                if let Ok(p) = r.decode::<events::GateRequested>() {
                    t.approvals += 1;
                    gates.insert(p.request_id, t.spans.len());
                    t.spans.push(Span {
                        open: true,
                        ..mark(
                            "approval",
                            format!("approval {}", p.tool),
                            "waiting for a decision".into(),
                        )
                    });
                }
            }
            Some(k @ (EventKind::GateApproved | EventKind::GateDenied)) => {
                let decided = match k {
                    EventKind::GateApproved => r.decode::<events::GateApproved>().map(|d| d.0),
                    _ => r.decode::<events::GateDenied>().map(|d| d.0),
                };
                if let Ok(d) = decided {
                    let by = r.actor.clone().unwrap_or_else(|| "?".into());
                    if !t.deciders.contains(&by) {
                        t.deciders.push(by.clone());
                    }
                    let verb = if k == EventKind::GateApproved {
                        "approved"
                    } else {
                        "denied"
                    };
                    match gates.remove(&d.request_id) {
                        Some(i) => {
                            let waited = start_us - t.spans[i].start_us;
                            t.waited_us += waited.max(0);
                            close(
                                &mut t,
                                i,
                                start_us,
                                format!("{verb} by {by} after {}: {}", duration(waited), d.reason),
                            );
                            if k == EventKind::GateDenied {
                                t.spans[i].class = "approval denied";
                            }
                        }
                        None => t.spans.push(mark(
                            "approval",
                            format!("approval {}", d.tool),
                            format!("{verb} by {by}: {}", d.reason),
                        )),
                    }
                }
            }
            Some(EventKind::GateConsumed) => {}
            Some(k) if k.is_denial() || k == EventKind::PolicyApprovalRequired => {
                t.denials += u64::from(k.is_denial());
                t.spans
                    .push(mark("denial", k.as_str().to_owned(), payload(r)));
            }
            Some(k @ (EventKind::AgentHalted | EventKind::AgentResumed)) => {
                let by = r.actor.clone().unwrap_or_default();
                t.spans.push(mark(
                    "halt",
                    k.as_str().to_owned(),
                    format!("by {by}: {}", payload(r)),
                ));
            }
            _ => t.spans.push(mark("event", r.kind.clone(), payload(r))),
        }
    }
    // Spans still open reach the end of what was read.
    for s in t.spans.iter_mut().filter(|s| s.open) {
        s.duration_us = t.length_us - s.start_us;
    }
    t
}

fn payload(r: &AuditRecord) -> String {
    r.payload.chars().take(200).collect()
}

/// A duration for people: `850 ms`, `12.4 s`, `3 min 5 s`.
pub(crate) fn duration(us: i64) -> String {
    let ms = us / 1_000;
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1_000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1_000)
    }
}

/// A span as drawn and listed.
struct SpanView {
    class: &'static str,
    label: String,
    detail: String,
    seq: i64,
    severity: &'static str,
    start: String,
    length: String,
    /// Geometry of the waterfall (SVG user units).
    y: usize,
    text_y: usize,
    x: i64,
    width: i64,
}

const LABEL_W: i64 = 220;
const PLOT_W: i64 = 600;
const ROW_H: usize = 20;

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage {
    nav: Option<Nav>,
    flash: Option<String>,
    agent: String,
    session: String,
    started: String,
    length: String,
    t: Timeline,
    cost: String,
    waited: String,
    deciders: String,
    spans: Vec<SpanView>,
    drawn: usize,
    width: i64,
    height: usize,
    plot_x: i64,
    truncated: bool,
}

async fn session(
    State(state): State<AppState>,
    user: CurrentUser,
    Path((agent, session)): Path<(String, String)>,
) -> Result<Html<String>, AppError> {
    let agent_id: gov_sdk::AgentId = agent
        .parse()
        .map_err(|e: gov_sdk::IdError| AppError::BadRequest(format!("agent: {e}")))?;
    let session_id: gov_sdk::SessionId = session
        .parse()
        .map_err(|e: gov_sdk::IdError| AppError::BadRequest(format!("session: {e}")))?;
    let rows = state
        .gov
        .audit()
        .events(&EventFilter {
            chain_id: state.config.live_chain.parse().ok(),
            agent_id: Some(agent_id),
            session_id: Some(session_id),
            limit: Some(MAX_EVENTS),
            ..EventFilter::default()
        })
        .await?;
    if rows.is_empty() {
        return Err(AppError::BadRequest(format!(
            "agent {agent} has no events in session {session} on chain {}: check both ids (the events page lists sessions)",
            state.config.live_chain
        )));
    }
    let t = timeline(&rows);
    let scale = |us: i64| -> i64 {
        if t.length_us == 0 {
            0
        } else {
            (i128::from(us) * i128::from(PLOT_W) / i128::from(t.length_us)) as i64
        }
    };
    let spans: Vec<SpanView> = t
        .spans
        .iter()
        .enumerate()
        .map(|(i, s)| SpanView {
            class: s.class,
            label: s.label.clone(),
            detail: s.detail.clone(),
            seq: s.seq,
            severity: match s.class {
                "denial" | "llm failed" | "approval denied" => "sev-high",
                "halt" => "sev-critical",
                _ => severity_class(&s.label),
            },
            start: format!("+{}", duration(s.start_us)),
            length: if s.duration_us > 0 || s.open {
                format!(
                    "{}{}",
                    duration(s.duration_us),
                    if s.open { " (open)" } else { "" }
                )
            } else {
                String::new()
            },
            y: i * ROW_H + 4,
            text_y: i * ROW_H + 17,
            x: LABEL_W + scale(s.start_us),
            width: scale(s.duration_us).max(3),
        })
        .collect();
    let drawn = spans.len().min(MAX_DRAWN);
    render(&SessionPage {
        nav: Nav::of(&user),
        flash: None,
        started: when(rows[0].occurred_at),
        length: duration(t.length_us),
        cost: MicroUsd(t.cost_micros).to_string(),
        waited: duration(t.waited_us),
        deciders: t.deciders.join(", "),
        width: LABEL_W + PLOT_W + 10,
        height: drawn * ROW_H + 8,
        plot_x: LABEL_W,
        drawn,
        truncated: rows.len() >= MAX_EVENTS as usize,
        spans,
        t,
        agent,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gov_sdk::AuditEvent;
    use gov_sdk::events::SystemEvent;
    use time::OffsetDateTime;

    /// The stored row of `event`, `ms` milliseconds after a fixed start.
    fn row(seq: i64, ms: i64, event: gov_sdk::AuditEventBuilder) -> AuditRecord {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
            + time::Duration::milliseconds(ms);
        let e: AuditEvent = event.session("s-1").occurred_at(at).build().expect("event");
        AuditRecord::unsealed(&e, seq, &[0; 32], "k")
    }

    #[test]
    fn a_session_becomes_spans_with_totals() {
        let request = row(
            1,
            0,
            events::LlmRequest {
                provider: "openai".into(),
                wrapper: "guard".into(),
                operation: "chat".into(),
                model: "gpt-4o".into(),
                stream: false,
                max_tokens: 100,
                max_tokens_declared: true,
                input_tokens_estimate: 10,
                reserved_micros: 2_000,
            }
            .event("bot"),
        );
        let response = row(
            2,
            1_200,
            events::LlmResponse {
                provider: "openai".into(),
                model: "gpt-4o".into(),
                response_model: None,
                stream: false,
                input_tokens: 12,
                output_tokens: 30,
                cached_input_tokens: 0,
                estimated: false,
                cost_micros: 1_500,
                reserved_micros: 2_000,
                latency_ms: 1_200,
                finish_reason: Some("stop".into()),
            }
            .event("bot")
            .parent(request.event_id),
        );
        let id = uuid::Uuid::from_u128(7);
        let asked = row(
            3,
            2_000,
            events::GateRequested {
                request_id: id,
                tool: "wire".into(),
                args_sha256: None,
            }
            .event("bot"),
        );
        let approved = row(
            4,
            62_000,
            events::GateApproved(events::GateDecision::new(id, "wire", "checked"))
                .event("bot")
                .actor("olga"),
        );
        let started = row(
            5,
            62_100,
            events::ToolStarted {
                tool: "wire".into(),
                args_sha256: None,
            }
            .event("bot"),
        );
        let finished = row(
            6,
            62_600,
            events::ToolFinished {
                tool: "wire".into(),
                ok: true,
                duration_ms: 500,
                error: None,
            }
            .event("bot"),
        );
        let denied = row(
            7,
            63_000,
            events::ScopeDenied {
                tool: Some("shell".into()),
                api: None,
                reason: gov_sdk::ScopeDenial::ToolNotAllowed,
            }
            .event("bot"),
        );
        let other = row(8, 64_000, AuditEvent::builder("bot", "demo.step"));
        let t = timeline(&[
            request, response, asked, approved, started, finished, denied, other,
        ]);
        let shape: Vec<(&str, &str, i64, i64)> = t
            .spans
            .iter()
            .map(|s| (s.class, s.label.as_str(), s.start_us, s.duration_us))
            .collect();
        assert_eq!(
            shape,
            [
                ("llm", "llm gpt-4o", 0, 1_200_000),
                ("approval", "approval wire", 2_000_000, 60_000_000),
                ("tool", "tool wire", 62_100_000, 500_000),
                ("denial", "scope.denied", 63_000_000, 0),
                ("event", "demo.step", 64_000_000, 0),
            ]
        );
        assert_eq!(
            t.spans[0].detail,
            format!(
                "12 in, 30 out tokens · {} · 1200 ms · stop",
                MicroUsd(1_500)
            )
        );
        assert_eq!(
            t.spans[1].detail,
            "approved by olga after 1 min 0 s: checked"
        );
        assert_eq!(
            (t.llm_calls, t.input_tokens, t.output_tokens, t.cost_micros),
            (1, 12, 30, 1_500)
        );
        assert_eq!((t.tool_calls, t.denials, t.approvals), (1, 1, 1));
        assert_eq!(
            (t.waited_us, t.deciders.clone()),
            (60_000_000, vec!["olga".to_owned()])
        );
        assert_eq!(t.length_us, 64_000_000);
    }

    #[test]
    fn a_call_without_an_answer_stays_open_to_the_end() {
        let asked = row(
            1,
            0,
            events::GateRequested {
                request_id: uuid::Uuid::from_u128(1),
                tool: "wire".into(),
                args_sha256: None,
            }
            .event("bot"),
        );
        let later = row(2, 5_000, AuditEvent::builder("bot", "demo.step"));
        let t = timeline(&[asked, later]);
        assert!(t.spans[0].open);
        assert_eq!(t.spans[0].duration_us, 5_000_000);
        assert_eq!(t.spans[0].detail, "waiting for a decision");
        assert_eq!(timeline(&[]), Timeline::default());
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(850_000), "850 ms");
        assert_eq!(duration(12_400_000), "12.4 s");
        assert_eq!(duration(185_000_000), "3 min 5 s");
    }
}
