//! `governance demo`: a small simulated agent a newcomer can watch. It migrates, logs events
//! from concurrent sessions through the SDK, verifies the chain, and prints what happened.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use gov_sdk::admin::Admin;
use gov_sdk::{AuditEvent, AuditSecret, Governance};
use owo_colors::OwoColorize;

use crate::cli::{DemoArgs, Global};
use crate::output::Out;

/// Used when no database URL is configured: a `governance_demo` database on the local server.
const DEMO_URL: &str = "postgres://postgres@127.0.0.1:5432/governance_demo";

/// The URL without credentials or parameters, for display.
pub(crate) fn display_url(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('?').next().unwrap_or(rest).to_owned()
}

/// One step of the simulated agent: kind and payload.
fn step(session: u32, i: u32) -> (&'static str, serde_json::Value) {
    let tools = ["read_invoice", "send_email", "search_docs", "update_crm"];
    let tool = tools[(i as usize / 4) % tools.len()];
    match i % 4 {
        0 => (
            "llm.request",
            serde_json::json!({ "model": "gpt-4o-mini", "input_tokens": 420 + i % 97, "max_tokens": 512 }),
        ),
        1 => (
            "llm.response",
            serde_json::json!({ "model": "gpt-4o-mini", "output_tokens": 90 + i % 31, "finish_reason": "tool_calls", "cost_micro_usd": 180 + i % 13 }),
        ),
        2 if session % 3 == 2 && i % 16 == 10 => (
            "scope.denied",
            serde_json::json!({ "tool": "delete_customer", "reason": "not in allowed_tools" }),
        ),
        2 => (
            "tool.call",
            serde_json::json!({ "tool": tool, "args": { "id": format!("INV-{}", 1000 + i) } }),
        ),
        _ => (
            "tool.result",
            serde_json::json!({ "tool": tool, "ok": true, "latency_ms": 12 + i % 40 }),
        ),
    }
}

pub(crate) async fn run(args: DemoArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let url = match &global.database_url {
        Some(u) => u.clone(),
        None => {
            Admin::ensure_database(DEMO_URL).await?;
            DEMO_URL.to_owned()
        }
    };
    let (secret, ephemeral) = match (
        &args.secret.audit_secret_file,
        std::env::var(gov_sdk::ENV_AUDIT_SECRET),
    ) {
        (None, Err(_)) => (
            AuditSecret::generate().map_err(gov_sdk::Error::from)?.0,
            true,
        ),
        _ => (super::audit_secret(&args.secret)?, false),
    };
    let chain = match &args.chain {
        Some(c) => c.clone(),
        None => format!("demo-{}", time::OffsetDateTime::now_utc().unix_timestamp()),
    };
    gov_sdk::ChainId::new(&chain).map_err(gov_sdk::Error::from)?;

    let human = !out.json();
    if human {
        out.line(format!("{}", "governance demo".bold()));
        out.line(format!("  database  {}", display_url(&url)));
        out.line(format!("  chain     {chain}"));
        if ephemeral {
            out.line("  secret    ephemeral for this run (set GOVERNANCE_AUDIT_SECRET to verify later runs too)");
        }
    }
    let admin = Admin::connect(&url).await?;
    if admin.schema_is_current().await? {
        if human {
            out.line("migrate   schema is current");
        }
    } else {
        let migrated = admin.migrate().await?;
        if human {
            out.line(format!(
                "migrate   {} applied, {} known",
                migrated.applied, migrated.known
            ));
        }
    }
    admin.close().await;

    let gov = super::connect(&url, secret).await?;
    let started = Instant::now();
    let per_session = args.events.div_ceil(args.sessions);
    let bar = crate::progress::bar(out, u64::from(args.events), "logging");
    let mut tasks = Vec::new();
    for s in 0..args.sessions {
        let n = per_session.min(args.events.saturating_sub(s * per_session));
        let (gov, chain, agent) = (gov.clone(), chain.clone(), args.agent.clone());
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            simulate(&gov, &chain, &agent, s, n, &bar).await
        }));
    }
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in tasks {
        let kinds = t
            .await
            .map_err(|e| anyhow::anyhow!("a demo session stopped: {e}"))??;
        for k in kinds {
            *by_kind.entry(k).or_default() += 1;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let logged: u64 = by_kind.values().sum();
    if human {
        let rate = logged as f64 / elapsed.as_secs_f64().max(1e-9);
        out.line(format!(
            "logged    {logged} events from {} sessions in {:.2} s ({rate:.0} events/s)",
            args.sessions,
            elapsed.as_secs_f64()
        ));
        let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.line(format!("          {}", kinds.join(", ")));
    }
    let report = gov.audit().verify_named(&chain).await?;
    gov.close().await;
    let clean = report.is_clean();
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": if clean { "clean" } else { "tampered" },
            "chain": chain,
            "events": logged,
            "sessions": args.sessions,
            "elapsed_ms": elapsed.as_millis() as u64,
            "verify": report,
        }));
    } else {
        match &report.finding {
            None => out.line(format!(
                "verify    {} {} events, seq 1..{}, key {}",
                "clean".green().bold(),
                report.events_checked,
                report.head_seq,
                report
                    .key_ids
                    .iter()
                    .next()
                    .map(String::as_str)
                    .unwrap_or("-")
            )),
            Some(f) => out.line(format!("verify    {} {f}", "TAMPERED".red().bold())),
        }
        if !ephemeral {
            out.line(format!("next      governance verify --chain {chain}"));
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_TAMPERED)
    })
}

async fn simulate(
    gov: &Governance,
    chain: &str,
    agent: &str,
    session: u32,
    n: u32,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<&'static str>, gov_sdk::Error> {
    let session_id = format!("session-{session}");
    let mut kinds = Vec::with_capacity(n as usize);
    let mut parent = None;
    for i in 0..n {
        let (kind, payload) = step(session, i);
        let mut b = AuditEvent::builder(agent, kind)
            .chain(chain)
            .session(&session_id)
            .payload(payload);
        if let Some(p) = parent {
            b = b.parent(p);
        }
        let ev = b.build()?;
        let id = ev.event_id;
        gov.audit().log(ev).await?;
        parent = Some(id);
        kinds.push(kind);
        bar.inc(1);
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::display_url;

    #[test]
    fn display_url_drops_credentials_and_parameters() {
        assert_eq!(
            display_url("postgres://u:secret@h:5432/db?sslmode=require"),
            "h:5432/db"
        );
        assert_eq!(display_url("postgres://h/db"), "h/db");
    }
}
