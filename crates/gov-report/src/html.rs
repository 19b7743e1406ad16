//! The HTML form: one self-contained page (inline CSS, no scripts), escaped by askama.

use askama::Template;

use crate::model::Article12Report;
use crate::{
    ReportError, counted, coverage_text, period_text, rfc3339, totals_text, verification_text,
};

/// One table: a header and rows of cells, all plain text (askama escapes them).
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

/// A section: a heading, a summary sentence and an optional table.
struct Section {
    title: &'static str,
    summary: String,
    table: Option<Table>,
    note: Option<String>,
}

#[derive(Template)]
#[template(path = "article12.html")]
struct Page<'a> {
    r: &'a Article12Report,
    facts: Vec<(&'static str, String)>,
    sections: Vec<Section>,
}

fn or_dash(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "—".into())
}

fn truncated(flag: bool) -> Option<String> {
    flag.then(|| {
        format!(
            "Only the first {} are listed; the counts are complete.",
            crate::MAX_LISTED
        )
    })
}

fn table(header: Vec<&'static str>, rows: Vec<Vec<String>>) -> Option<Table> {
    (!rows.is_empty()).then_some(Table { header, rows })
}

pub(crate) fn render(r: &Article12Report) -> Result<String, ReportError> {
    let facts = vec![
        ("Period", period_text(&r.period)),
        ("Chains", r.chains.join(", ")),
        ("Events", totals_text(&r.totals)),
        ("Chain verification", verification_text(&r.verification)),
        ("Coverage", coverage_text(&r.coverage)),
        (
            "Generated",
            format!("{} by {}", rfc3339(r.generated_at), r.generator),
        ),
        ("Format", r.format.to_owned()),
    ];
    let mut sections = Vec::new();
    sections.push(Section {
        title: "Systems and agents",
        summary: if r.systems.is_empty() {
            "No events were recorded in the period.".into()
        } else {
            format!(
                "{}, {}.",
                counted(r.systems.len() as u64, "chain"),
                counted(r.totals.agents, "agent")
            )
        },
        table: table(
            vec![
                "Chain",
                "Agent",
                "Events",
                "Sessions",
                "First event",
                "Last event",
            ],
            r.systems
                .iter()
                .flat_map(|s| {
                    s.agents.iter().map(|a| {
                        vec![
                            s.chain_id.clone(),
                            a.agent_id.clone(),
                            a.events.to_string(),
                            a.sessions.to_string(),
                            rfc3339(a.first_event_at),
                            rfc3339(a.last_event_at),
                        ]
                    })
                })
                .collect(),
        ),
        note: None,
    });
    sections.push(Section {
        title: "Events by kind",
        summary: format!("{}.", counted(r.events_by_kind.len() as u64, "kind")),
        table: table(
            vec!["Kind", "Events"],
            r.events_by_kind
                .iter()
                .map(|(k, n)| vec![k.clone(), n.to_string()])
                .collect(),
        ),
        note: None,
    });
    let h = &r.human_oversight;
    sections.push(Section {
        title: "Human oversight",
        summary: format!(
            "{} requested; {} approved, {} denied.",
            counted(h.requested, "approval"),
            h.approved,
            h.denied
        ),
        table: table(
            vec![
                "Time",
                "Chain",
                "Seq",
                "Agent",
                "Tool",
                "Decision",
                "Decided by",
                "Reason",
            ],
            h.decisions
                .iter()
                .map(|d| {
                    vec![
                        rfc3339(d.at.occurred_at),
                        d.at.chain_id.clone(),
                        d.at.seq.to_string(),
                        d.agent_id.clone(),
                        or_dash(&d.tool),
                        d.decision.into(),
                        or_dash(&d.decided_by),
                        or_dash(&d.reason),
                    ]
                })
                .collect(),
        ),
        note: truncated(h.truncated),
    });
    sections.push(Section {
        title: "Halts",
        summary: format!(
            "{}, {}.",
            counted(r.halts.halted, "halt"),
            counted(r.halts.resumed, "resume")
        ),
        table: table(
            vec!["Time", "Chain", "Seq", "Agent", "Action", "By", "Reason"],
            r.halts
                .events
                .iter()
                .map(|e| {
                    vec![
                        rfc3339(e.at.occurred_at),
                        e.at.chain_id.clone(),
                        e.at.seq.to_string(),
                        e.agent_id.clone(),
                        e.action.into(),
                        or_dash(&e.by),
                        or_dash(&e.reason),
                    ]
                })
                .collect(),
        ),
        note: truncated(r.halts.truncated),
    });
    let claims: Vec<&crate::UnbackedClaim> = r
        .human_oversight
        .unbacked
        .iter()
        .chain(&r.halts.unbacked)
        .collect();
    if !claims.is_empty() {
        sections.push(Section {
            title: "Oversight claims without evidence",
            summary: crate::unbacked_summary(claims.len()),
            table: table(
                vec!["Time", "Chain", "Seq", "Agent", "Kind", "Claimed by"],
                claims
                    .iter()
                    .map(|c| {
                        vec![
                            rfc3339(c.at.occurred_at),
                            c.at.chain_id.clone(),
                            c.at.seq.to_string(),
                            c.agent_id.clone(),
                            c.kind.clone(),
                            or_dash(&c.claimed_by),
                        ]
                    })
                    .collect(),
            ),
            note: None,
        });
    }
    let d = &r.denials;
    sections.push(Section {
        title: "Denials",
        summary: format!(
            "{} scope, {} budget, {} loop, {} contract.",
            d.scope, d.budget, d.loops, d.contracts
        ),
        table: table(
            vec!["Time", "Chain", "Seq", "Agent", "Session", "Kind", "Detail"],
            d.events
                .iter()
                .map(|e| {
                    vec![
                        rfc3339(e.at.occurred_at),
                        e.at.chain_id.clone(),
                        e.at.seq.to_string(),
                        e.agent_id.clone(),
                        or_dash(&e.session_id),
                        e.kind.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect(),
        ),
        note: truncated(d.truncated),
    });
    let v = &r.verification;
    sections.push(Section {
        title: "Chain verification",
        summary: format!(
            "Result: {}. Verified: {}. Rotation-aware: {}.",
            v.status,
            v.scope,
            if v.rotation_aware { "yes" } else { "no" }
        ),
        table: table(
            vec!["Chain", "Events checked", "Head seq", "Result"],
            v.chains
                .iter()
                .map(|c| {
                    vec![
                        c.chain_id.clone(),
                        c.events_checked.to_string(),
                        c.head_seq.to_string(),
                        match &c.finding {
                            None => c.unfound_result(),
                            Some(f) => {
                                format!("tampered at seq {}: {} ({})", f.seq, f.reason, f.detail)
                            }
                        },
                    ]
                })
                .collect(),
        ),
        note: Some(format!(
            "Signatures: {} signed, {} unsigned, {} unsigned after a signer failure. Key fingerprints: {}.",
            v.signatures.signed,
            v.signatures.unsigned,
            v.signatures.unsigned_local_failure,
            if v.key_ids.is_empty() {
                "none".into()
            } else {
                v.key_ids.join(", ")
            }
        )),
    });
    sections.push(Section {
        title: "Coverage",
        summary: coverage_text(&r.coverage),
        table: table(
            vec![
                "Provider",
                "Wrapper",
                "Model family",
                "Host digest",
                "Registered",
            ],
            r.coverage
                .wrapped_clients
                .iter()
                .map(|c| {
                    vec![
                        c.provider.clone(),
                        c.wrapper.clone(),
                        or_dash(&c.model_family),
                        or_dash(&c.host_digest),
                        rfc3339(c.registered_at),
                    ]
                })
                .collect(),
        ),
        note: Some(format!(
            "Definition: {} Wrapped LLM clients registered: {}.",
            r.coverage.definition,
            r.coverage.wrapped_clients.len()
        )),
    });

    Page { r, facts, sections }
        .render()
        .map(|s| s + "\n")
        .map_err(|e| ReportError::Render(e.to_string()))
}
