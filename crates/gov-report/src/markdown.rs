//! The Markdown form. Recorded text (agent ids, reasons, details) is escaped so that it can
//! neither break a table nor inject markup.

use std::fmt::Write as _;

use crate::model::Article12Report;
use crate::{counted, coverage_text, period_text, rfc3339, totals_text, verification_text};

/// Escapes recorded text for a Markdown table cell or paragraph.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(esc).unwrap_or_else(|| "—".into())
}

fn table(out: &mut String, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
}

fn truncated(out: &mut String, flag: bool) {
    if flag {
        let _ = writeln!(
            out,
            "\nOnly the first {} are listed; the counts above are complete. The JSON form of a narrower period lists the rest.",
            crate::MAX_LISTED
        );
    }
}

pub(crate) fn render(r: &Article12Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}\n", r.title);
    let _ = writeln!(o, "> {}\n", r.statement);
    table(
        &mut o,
        &["Summary", ""],
        [
            vec!["Period".into(), period_text(&r.period)],
            vec![
                "Chains".into(),
                r.chains
                    .iter()
                    .map(|c| esc(c))
                    .collect::<Vec<_>>()
                    .join(", "),
            ],
            vec!["Events".into(), totals_text(&r.totals)],
            vec![
                "Chain verification".into(),
                esc(&verification_text(&r.verification)),
            ],
            vec!["Coverage".into(), esc(&coverage_text(&r.coverage))],
            vec![
                "Generated".into(),
                format!("{} by {}", rfc3339(r.generated_at), esc(&r.generator)),
            ],
            vec!["Format".into(), format!("`{}`", r.format)],
        ],
    );

    let _ = writeln!(o, "\n## Systems and agents\n");
    if r.systems.is_empty() {
        let _ = writeln!(o, "No events were recorded in the period.");
    } else {
        table(
            &mut o,
            &[
                "Chain",
                "Agent",
                "Events",
                "Sessions",
                "First event",
                "Last event",
            ],
            r.systems.iter().flat_map(|s| {
                s.agents.iter().map(|a| {
                    vec![
                        esc(&s.chain_id),
                        esc(&a.agent_id),
                        a.events.to_string(),
                        a.sessions.to_string(),
                        rfc3339(a.first_event_at),
                        rfc3339(a.last_event_at),
                    ]
                })
            }),
        );
    }

    let _ = writeln!(o, "\n## Events by kind\n");
    if r.events_by_kind.is_empty() {
        let _ = writeln!(o, "None.");
    } else {
        table(
            &mut o,
            &["Kind", "Events"],
            r.events_by_kind
                .iter()
                .map(|(k, n)| vec![format!("`{}`", k.replace('`', "'")), n.to_string()]),
        );
    }

    let h = &r.human_oversight;
    let _ = writeln!(o, "\n## Human oversight\n");
    let _ = writeln!(
        o,
        "{} requested; {} approved, {} denied.\n",
        counted(h.requested, "approval"),
        h.approved,
        h.denied
    );
    if !h.decisions.is_empty() {
        table(
            &mut o,
            &[
                "Time",
                "Chain",
                "Seq",
                "Agent",
                "Tool",
                "Decision",
                "Decided by",
                "Reason",
            ],
            h.decisions.iter().map(|d| {
                vec![
                    rfc3339(d.at.occurred_at),
                    esc(&d.at.chain_id),
                    d.at.seq.to_string(),
                    esc(&d.agent_id),
                    opt(&d.tool),
                    d.decision.into(),
                    opt(&d.decided_by),
                    opt(&d.reason),
                ]
            }),
        );
        truncated(&mut o, h.truncated);
    }

    let _ = writeln!(o, "\n## Halts\n");
    let _ = writeln!(
        o,
        "{}, {}.\n",
        counted(r.halts.halted, "halt"),
        counted(r.halts.resumed, "resume")
    );
    if !r.halts.events.is_empty() {
        table(
            &mut o,
            &["Time", "Chain", "Seq", "Agent", "Action", "By", "Reason"],
            r.halts.events.iter().map(|e| {
                vec![
                    rfc3339(e.at.occurred_at),
                    esc(&e.at.chain_id),
                    e.at.seq.to_string(),
                    esc(&e.agent_id),
                    e.action.into(),
                    opt(&e.by),
                    opt(&e.reason),
                ]
            }),
        );
        truncated(&mut o, r.halts.truncated);
    }

    let claims: Vec<&crate::UnbackedClaim> = r
        .human_oversight
        .unbacked
        .iter()
        .chain(&r.halts.unbacked)
        .collect();
    if !claims.is_empty() {
        let _ = writeln!(o, "\n## Oversight claims without evidence\n");
        let _ = writeln!(o, "{}\n", crate::unbacked_summary(claims.len()));
        table(
            &mut o,
            &["Time", "Chain", "Seq", "Agent", "Kind", "Claimed by"],
            claims.iter().map(|c| {
                vec![
                    rfc3339(c.at.occurred_at),
                    esc(&c.at.chain_id),
                    c.at.seq.to_string(),
                    esc(&c.agent_id),
                    esc(&c.kind),
                    opt(&c.claimed_by),
                ]
            }),
        );
    }

    let d = &r.denials;
    let _ = writeln!(o, "\n## Denials\n");
    let _ = writeln!(
        o,
        "{} scope, {} budget, {} loop, {} contract.\n",
        d.scope, d.budget, d.loops, d.contracts
    );
    if !d.events.is_empty() {
        table(
            &mut o,
            &["Time", "Chain", "Seq", "Agent", "Session", "Kind", "Detail"],
            d.events.iter().map(|e| {
                vec![
                    rfc3339(e.at.occurred_at),
                    esc(&e.at.chain_id),
                    e.at.seq.to_string(),
                    esc(&e.agent_id),
                    opt(&e.session_id),
                    format!("`{}`", e.kind.replace('`', "'")),
                    esc(&e.detail),
                ]
            }),
        );
        truncated(&mut o, d.truncated);
    }

    let v = &r.verification;
    let _ = writeln!(o, "\n## Chain verification\n");
    let _ = writeln!(
        o,
        "Result: **{}**. Verified: {}. Rotation-aware: {}.\n",
        v.status,
        v.scope,
        if v.rotation_aware { "yes" } else { "no" }
    );
    table(
        &mut o,
        &["Chain", "Events checked", "Head seq", "Result"],
        v.chains.iter().map(|c| {
            vec![
                esc(&c.chain_id),
                c.events_checked.to_string(),
                c.head_seq.to_string(),
                match &c.finding {
                    None => esc(&c.unfound_result()),
                    Some(f) => format!(
                        "tampered at seq {}: {} ({})",
                        f.seq,
                        esc(&f.reason),
                        esc(&f.detail)
                    ),
                },
            ]
        }),
    );
    let _ = writeln!(
        o,
        "\nSignatures: {} signed, {} unsigned, {} unsigned after a signer failure.",
        v.signatures.signed, v.signatures.unsigned, v.signatures.unsigned_local_failure
    );
    let _ = writeln!(
        o,
        "\nKey fingerprints: {}.",
        if v.key_ids.is_empty() {
            "none".into()
        } else {
            v.key_ids
                .iter()
                .map(|k| format!("`{}`", k.replace('`', "'")))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );

    let _ = writeln!(o, "\n## Coverage\n");
    let _ = writeln!(o, "{}", esc(&coverage_text(&r.coverage)));
    let _ = writeln!(o, "\nDefinition: {}", esc(r.coverage.definition));
    let clients = &r.coverage.wrapped_clients;
    if clients.is_empty() {
        let _ = writeln!(o, "\nNo wrapped LLM client is registered.");
    } else {
        let _ = writeln!(
            o,
            "\nWrapped LLM clients (hostnames only as salted digests):\n"
        );
        table(
            &mut o,
            &[
                "Provider",
                "Wrapper",
                "Model family",
                "Host digest",
                "Registered",
            ],
            clients.iter().map(|c| {
                vec![
                    esc(&c.provider),
                    esc(&c.wrapper),
                    opt(&c.model_family),
                    opt(&c.host_digest),
                    rfc3339(c.registered_at),
                ]
            }),
        );
    }

    let _ = writeln!(o, "\n## About this report\n");
    let _ = writeln!(o, "{}", r.statement);
    o
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn recorded_text_cannot_break_a_table_or_inject_markup() {
        assert_eq!(
            esc("a|b\n<script>x</script> *y* [l](u)"),
            "a\\|b &lt;script&gt;x&lt;/script&gt; \\*y\\* \\[l\\](u)"
        );
    }
}
