//! `governance tail`: follow audit events live.

use std::process::ExitCode;

use gov_sdk::{EventFilter, Governance};
use owo_colors::OwoColorize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{Global, TailArgs};
use crate::output::Out;

/// Parses `--since`: RFC 3339, or an age such as `30s`, `10m`, `2h`, `1d`.
pub(crate) fn parse_since(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let bad = || {
        format!(
            "--since {text:?} is neither an RFC 3339 time (2026-11-25T09:00:00Z) nor an age such as 30s, 10m, 2h or 1d"
        )
    };
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(now - time::Duration::seconds(secs))
}

pub(crate) async fn run(args: TailArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let config = |m: String| anyhow::Error::new(gov_sdk::Error::Config(m));
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, OffsetDateTime::now_utc()))
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
    let url = super::database_url(global)?;
    let secret = super::audit_secret(&args.secret)?;
    let gov: Governance = super::connect(&url, secret).await?;
    let mut tail = gov.audit().tail(filter).await?;
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

#[cfg(test)]
mod tests {
    use super::parse_since;
    use time::macros::datetime;

    #[test]
    fn since_takes_times_and_ages() {
        let now = datetime!(2026-11-25 12:00 UTC);
        assert_eq!(
            parse_since("2026-11-25T09:00:00Z", now),
            Ok(datetime!(2026-11-25 09:00 UTC))
        );
        assert_eq!(parse_since("90m", now), Ok(datetime!(2026-11-25 10:30 UTC)));
        assert_eq!(parse_since("1d", now), Ok(datetime!(2026-11-24 12:00 UTC)));
        for bad in ["", "yesterday", "10", "5w", "2026-13-01", "m"] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }
}
