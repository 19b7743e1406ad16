//! `governance approvals workflow | remove-workflow | route | unroute | groups | list`: approval
//! workflows, their routes and operators' groups. Run with the schema owner's URL: the
//! application role can neither read nor change them.

use std::process::ExitCode;

use comfy_table::Table;
use gov_sdk::WorkflowSpec;

use crate::cli::{ApprovalsCommand, Global};
use crate::output::Out;

/// Seconds in `text`: `90s`, `15m`, `2h`, `1d`.
fn seconds(flag: &str, text: &str) -> anyhow::Result<u64> {
    let bad = || {
        super::config_error(format!(
            "{flag} {text:?} is not a duration: use 90s, 15m, 2h or 1d"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if secs == 0 {
        return Err(bad());
    }
    Ok(secs)
}

fn when(secs: Option<u64>) -> String {
    secs.map_or_else(|| "-".into(), |s| format!("{s} s"))
}

pub(crate) async fn run(
    cmd: ApprovalsCommand,
    global: &Global,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let target = super::Target::resolve(global).await?;
    // Nothing here is sealed, but a handle opens with the audit secret (as every operator
    // command that connects through the SDK).
    let secret = target.audit_secret(&crate::cli::SecretArgs {
        audit_secret_file: None,
    })?;
    let gov = super::connect(&target.url, secret).await?;
    let w = gov.workflows();
    let result: anyhow::Result<()> = async {
        match cmd {
            ApprovalsCommand::Workflow(a) => {
                let spec = WorkflowSpec {
                    name: a.name.clone(),
                    quorum: a.quorum,
                    approver_group: a.group,
                    escalate_to: a.escalate_to,
                    escalate_after_secs: a
                        .escalate_after
                        .as_deref()
                        .map(|t| seconds("--escalate-after", t))
                        .transpose()?,
                    timeout_secs: a.timeout.as_deref().map(|t| seconds("--timeout", t)).transpose()?,
                };
                w.put(&spec, &a.operator).await?;
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok", "workflow": spec }));
                } else {
                    out.line(format!("workflow {} saved", a.name));
                }
            }
            ApprovalsCommand::RemoveWorkflow(a) => {
                let existed = w.delete(&a.name).await?;
                if !existed {
                    return Err(super::config_error(format!("no workflow named {}", a.name)));
                }
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok", "removed": a.name }));
                } else {
                    out.line(format!("workflow {} removed", a.name));
                }
            }
            ApprovalsCommand::Route(a) => {
                w.route(&a.agent, &a.tool, &a.workflow).await?;
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok", "agent": a.agent, "tool": a.tool, "workflow": a.workflow }));
                } else {
                    out.line(format!("requests of {} for {} follow {}", a.agent, a.tool, a.workflow));
                }
            }
            ApprovalsCommand::Unroute(a) => {
                if !w.unroute(&a.agent, &a.tool).await? {
                    return Err(super::config_error(format!("no route for {} and {}", a.agent, a.tool)));
                }
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok" }));
                } else {
                    out.line(format!("route for {} and {} removed", a.agent, a.tool));
                }
            }
            ApprovalsCommand::Groups(a) => {
                w.set_groups(&a.username, &a.groups).await?;
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok", "username": a.username, "groups": a.groups }));
                } else if a.groups.is_empty() {
                    out.line(format!("{} is in no group", a.username));
                } else {
                    out.line(format!("{} is in {}", a.username, a.groups.join(", ")));
                }
            }
            ApprovalsCommand::List => {
                let workflows = w.list().await?;
                let routes = w.routes().await?;
                let groups = w.groups().await?;
                if out.json() {
                    let groups: Vec<_> = groups
                        .iter()
                        .map(|(g, u)| serde_json::json!({ "group": g, "username": u }))
                        .collect();
                    out.emit_json(&serde_json::json!({ "workflows": workflows, "routes": routes, "groups": groups }));
                } else {
                    let mut t = Table::new();
                    t.set_header(["workflow", "quorum", "group", "escalate to", "after", "timeout"]);
                    for x in &workflows {
                        t.add_row([
                            x.name.clone(),
                            x.quorum.to_string(),
                            x.approver_group.clone().unwrap_or_else(|| "any operator".into()),
                            x.escalate_to.clone().unwrap_or_else(|| "-".into()),
                            when(x.escalate_after_secs),
                            when(x.timeout_secs),
                        ]);
                    }
                    out.line(t);
                    let mut t = Table::new();
                    t.set_header(["agent", "tool", "workflow"]);
                    for r in &routes {
                        t.add_row([r.agent_id.clone(), r.tool.clone(), r.workflow.clone()]);
                    }
                    out.line(t);
                    let mut t = Table::new();
                    t.set_header(["group", "operator"]);
                    for (g, u) in &groups {
                        t.add_row([g.clone(), u.clone()]);
                    }
                    out.line(t);
                }
            }
        }
        Ok(())
    }
    .await;
    gov.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}
