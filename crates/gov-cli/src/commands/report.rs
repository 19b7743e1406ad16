//! `governance report --format article12`: the evidence report for a period.

use std::io::Write as _;
use std::process::ExitCode;

use gov_report::{Format, ReportRequest, Step};
use time::OffsetDateTime;

use crate::cli::{Global, ReportArgs, ReportForm};
use crate::output::Out;
use crate::when::{DayEdge, parse_time};

fn config(message: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::Config(message))
}

/// The output form: `--as`, else the output file's extension, else JSON with `--json`, else
/// Markdown.
fn form(args: &ReportArgs, json: bool) -> anyhow::Result<Format> {
    let by_flag = |f: ReportForm| match f {
        ReportForm::Json => Format::Json,
        ReportForm::Md => Format::Markdown,
        ReportForm::Html => Format::Html,
    };
    if let Some(f) = args.form {
        return Ok(by_flag(f));
    }
    if let Some(path) = &args.output {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        return match ext.as_deref() {
            Some("json") => Ok(Format::Json),
            Some("md" | "markdown") => Ok(Format::Markdown),
            Some("html" | "htm") => Ok(Format::Html),
            _ => Err(config(format!(
                "cannot tell the form of {} from its extension: name it .json, .md or .html, or pass --as json|md|html",
                path.display()
            ))),
        };
    }
    Ok(if json { Format::Json } else { Format::Markdown })
}

/// Now, or the time `SOURCE_DATE_EPOCH` (seconds since 1970, the reproducible-builds
/// convention) gives, so that a report can be made again byte for byte.
pub(crate) fn now() -> anyhow::Result<OffsetDateTime> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(OffsetDateTime::now_utc()),
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .ok_or_else(|| {
                config(format!(
                    "SOURCE_DATE_EPOCH={text:?} is not a count of seconds since 1970-01-01; unset it or set a number such as 1764547200"
                ))
            }),
    }
}

pub(crate) async fn run(args: ReportArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let now = now()?;
    let from = args
        .from
        .as_deref()
        .map(|t| parse_time("--from", t, now, DayEdge::Start))
        .transpose()
        .map_err(config)?;
    let to = args
        .to
        .as_deref()
        .map(|t| parse_time("--to", t, now, DayEdge::End))
        .transpose()
        .map_err(config)?
        .unwrap_or(now);
    if let Some(f) = from
        && f >= to
    {
        return Err(config(format!(
            "--from must be before --to (the period runs from --from, included, to --to, excluded; got {} and {})",
            args.from.as_deref().unwrap_or_default(),
            args.to.as_deref().unwrap_or("now")
        )));
    }
    let format = form(&args, out.json())?;
    if out.json() && args.output.is_none() && format != Format::Json {
        return Err(config(
            "--json prints the report itself as one JSON object; drop --as, or write this form to a file with --output".into(),
        ));
    }
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&url, secret).await?;
    let req = ReportRequest {
        from,
        to,
        chain: args.chain.clone(),
        generated_at: now,
        generator: format!("governance {}", env!("CARGO_PKG_VERSION")),
    };
    let bar = crate::progress::spinner(out);
    let progress = |step: Step| {
        bar.set_message(match step {
            Step::Verifying => "verifying the chains".to_owned(),
            Step::Counting => "counting the period's events".to_owned(),
            Step::Listing(kind) => format!("reading {kind} events"),
        })
    };
    let collected = gov_report::collect(&gov, &req, &progress).await;
    bar.finish_and_clear();
    gov.close().await;
    let report = collected?;
    let text = gov_report::render(&report, format)?;
    let clean = report.verification.status == "clean";
    match &args.output {
        Some(path) => {
            super::write_atomically(path, &text, "the report")?;
            if out.json() {
                out.emit_json(&serde_json::json!({
                    "status": "written",
                    "output": path.display().to_string(),
                    "events": report.totals.events,
                    "verification": report.verification.status,
                }));
            } else {
                out.line(format!(
                    "wrote the Article 12 evidence report to {}: {}, {}; chain verification {}",
                    path.display(),
                    crate::output::plural(report.totals.events, "event", "events"),
                    crate::output::plural(report.totals.agents, "agent", "agents"),
                    report.verification.status
                ));
            }
        }
        None if out.json() => out.emit_json(&serde_json::to_value(&report)?),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| config(format!("cannot write the report to standard output: {e}")))?;
        }
    }
    if !clean {
        for c in &report.verification.chains {
            if let Some(u) = &c.unverifiable {
                out.warn(format!(
                    "not verifiable with the configured keys: chain {}: {}",
                    c.chain_id, u.advice
                ));
            }
        }
        out.warn(format!(
            "tampered: the report was written and records where: {}",
            report
                .verification
                .chains
                .iter()
                .filter_map(|c| c
                    .finding
                    .as_ref()
                    .map(|f| format!("chain {} seq {} ({})", c.chain_id, f.seq, f.reason)))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        return Ok(ExitCode::from(crate::exit_code_for(
            gov_sdk::ErrorKind::Tampered,
        )));
    }
    Ok(ExitCode::SUCCESS)
}
