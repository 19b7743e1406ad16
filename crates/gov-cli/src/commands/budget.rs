//! `governance budget <agent>`: spend against caps for a session and today, by model.

use std::process::ExitCode;

use comfy_table::Table;
use gov_sdk::{BudgetCounter, MicroUsd};

use crate::cli::{BudgetArgs, Global};
use crate::output::Out;

fn cap(c: Option<MicroUsd>) -> String {
    c.map(|m| m.to_string()).unwrap_or_else(|| "no cap".into())
}

fn tokens(c: Option<u64>) -> String {
    c.map(|t| t.to_string()).unwrap_or_else(|| "no cap".into())
}

pub(crate) async fn run(args: BudgetArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    gov_sdk::AgentId::new(&args.agent).map_err(gov_sdk::Error::from)?;
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&url, secret).await?;
    let session = args.session.as_deref().unwrap_or("-");
    let snap = gov.cost().snapshot(&args.agent, session).await?;
    let unknown = if snap.status.policy.is_none() && snap.by_model.is_empty() {
        let known: Vec<String> = gov
            .presence()
            .list()
            .await?
            .into_iter()
            .filter_map(|a| a.presence.map(|p| p.agent_id))
            .collect();
        (!known.contains(&args.agent)).then_some(known)
    } else {
        None
    };
    gov.close().await;
    if let Some(known) = unknown {
        return Err(super::config_error(format!(
            "agent {} was never seen in this database (no budget policy, no spend today, no heartbeat); {}",
            args.agent,
            if known.is_empty() {
                "no agent has reported here yet: is --database-url the service's database?"
                    .to_owned()
            } else {
                format!("agents known here: {}", known.join(", "))
            }
        )));
    }
    if out.json() {
        let mut v = serde_json::to_value(&snap)?;
        v["agent"] = serde_json::json!(args.agent);
        out.emit_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    out.line(format!("budget of {}", args.agent));
    match &snap.status.policy {
        None => {
            out.line("no budget policy: its calls are refused unless unbudgeted agents are allowed")
        }
        Some(policy) => {
            let mut t = Table::new();
            t.set_header([
                "period",
                "spent",
                "reserved",
                "cap",
                "tokens used",
                "token cap",
            ]);
            let row = |name: &str, c: &BudgetCounter, usd: Option<MicroUsd>, tok: Option<u64>| {
                vec![
                    name.to_owned(),
                    c.spent.to_string(),
                    c.reserved.to_string(),
                    cap(usd),
                    (c.spent_tokens + c.reserved_tokens).to_string(),
                    tokens(tok),
                ]
            };
            if let Some(session) = &args.session {
                t.add_row(row(
                    &format!("session {session}"),
                    &snap.status.session,
                    policy.per_session,
                    policy.per_session_tokens,
                ));
            }
            t.add_row(row(
                "today (UTC)",
                &snap.status.day,
                policy.per_day,
                policy.per_day_tokens,
            ));
            out.line(t);
        }
    }
    if snap.by_model.is_empty() {
        out.line("no spend today");
    } else {
        let mut m = Table::new();
        m.set_header(["model", "calls", "input", "output", "cached", "cost"]);
        for u in &snap.by_model {
            m.add_row([
                u.model.clone(),
                u.calls.to_string(),
                u.input_tokens.to_string(),
                u.output_tokens.to_string(),
                u.cached_tokens.to_string(),
                u.cost.to_string(),
            ]);
        }
        out.line("today by model:");
        out.line(m);
    }
    out.line(format!("prices as of {}", snap.pricing_version));
    Ok(ExitCode::SUCCESS)
}
