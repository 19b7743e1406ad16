//! `governance tail`: follow audit events live.

use std::process::ExitCode;

use gov_sdk::{EventFilter, Governance};
use owo_colors::OwoColorize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::when::DayEdge;

use crate::cli::{Global, TailArgs};
use crate::output::Out;

pub(crate) async fn run(args: TailArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let config = |m: String| anyhow::Error::new(gov_sdk::Error::Config(m));
    let since = args
        .since
        .as_deref()
        .map(|s| crate::when::parse_time("--since", s, OffsetDateTime::now_utc(), DayEdge::Start))
        .transpose()
        .map_err(config)?;
    let filter = EventFilter {
        chain_id: Some(args.chain.parse().map_err(gov_sdk::Error::from)?),
        agent_id: args
            .agent
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(gov_sdk::Error::from)?,
        session_id: args
            .session
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(gov_sdk::Error::from)?,
        kind: args.kind.clone(),
        since,
        ..EventFilter::default()
    };
    if let Some(k) = &args.kind {
        gov_sdk::AuditEvent::builder("x", k)
            .build()
            .map_err(gov_sdk::Error::from)?;
    }
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let secret = target.audit_secret(&args.secret)?;
    let gov: Governance = super::connect(&url, secret).await?;
    let mut tail = gov.audit().tail(filter).await?;
    // Say so at once: otherwise a quiet chain looks like a hung command. On stderr, so stdout
    // holds only events.
    out.warn(format!(
        "following chain {} on {}{}, Ctrl-C to stop",
        args.chain,
        super::demo::display_url(&url),
        if since.is_some() {
            " (events since --since first)"
        } else {
            " (new events only; --since 10m shows recent ones first)"
        }
    ));
    let mut seen = 0u64;
    while args.limit.is_none_or(|l| seen < l) {
        let r = tail.next().await?;
        seen += 1;
        if out.json() {
            out.emit_json(&serde_json::to_value(&r)?);
        } else {
            let at = r.occurred_at.format(&Rfc3339).unwrap_or_default();
            let mut payload = r.payload.clone();
            if payload.len() > 120 {
                let mut end = 117;
                while !payload.is_char_boundary(end) {
                    end -= 1;
                }
                payload.truncate(end);
                payload.push('…');
            }
            out.line(format!(
                "{} {:>6} {} {} {}{}{}",
                at.dimmed(),
                r.seq,
                r.agent_id.cyan(),
                r.kind.bold(),
                r.session_id
                    .as_deref()
                    .map(|s| format!("session={s} "))
                    .unwrap_or_default(),
                r.actor
                    .as_deref()
                    .map(|a| format!("actor={a} "))
                    .unwrap_or_default(),
                payload
            ));
        }
    }
    // The tail holds a pooled listening connection: drop it before closing the pool.
    drop(tail);
    gov.close().await;
    Ok(ExitCode::SUCCESS)
}
