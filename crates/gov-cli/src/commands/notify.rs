//! `governance notify run | list`: the approval notifier (gov-notify) as a process beside the
//! console, and its delivery record. Run with the schema owner's URL: an agent's credentials can
//! neither deliver, hold back nor read notifications.

use std::process::ExitCode;

use comfy_table::Table;
use gov_notify::{Notifier, NotifyConfig};

use crate::cli::{Global, NotifyCommand};
use crate::output::Out;

fn notify_error(e: gov_notify::NotifyError) -> anyhow::Error {
    match e {
        gov_notify::NotifyError::Governance(e) => anyhow::Error::new(e),
        other => super::config_error(other.to_string()),
    }
}

/// A notifier from a configuration file, its secrets from the environment.
pub(crate) fn notifier(
    gov: gov_sdk::Governance,
    path: &std::path::Path,
) -> anyhow::Result<Notifier> {
    let config = NotifyConfig::load(path).map_err(notify_error)?;
    let secrets = config.secrets_from_env().map_err(notify_error)?;
    Notifier::new(gov, config, secrets).map_err(notify_error)
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn stopped() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(crate) async fn run(
    cmd: NotifyCommand,
    global: &Global,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let target = super::Target::resolve(global).await?;
    match cmd {
        NotifyCommand::Run(args) => {
            let secret = target.audit_secret(&args.secret)?;
            // The configuration before connecting: a typo fails at once.
            NotifyConfig::load(&args.config).map_err(notify_error)?;
            let gov = super::connect(&target.url, secret).await?;
            let n = notifier(gov.clone(), &args.config)?;
            let result = if args.once {
                n.run_once().await.map_err(notify_error).map(|r| {
                    if out.json() {
                        out.emit_json(&serde_json::json!({
                            "status": "ok", "escalated": r.escalated, "expired": r.expired,
                            "queued": r.queued, "delivered": r.delivered, "retried": r.retried,
                            "dead": r.dead,
                        }));
                    } else {
                        out.line(format!(
                            "escalated {}, expired {}, queued {}, delivered {}, to retry {}, dead {}",
                            r.escalated, r.expired, r.queued, r.delivered, r.retried, r.dead
                        ));
                    }
                })
            } else {
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "running", "poll_secs": n.config().poll_secs }));
                } else {
                    out.line(format!(
                        "notifying every {} s (Ctrl-C to stop)",
                        n.config().poll_secs
                    ));
                }
                n.run(stopped()).await;
                Ok(())
            };
            gov.close().await;
            result?;
        }
        NotifyCommand::List(args) => {
            let secret = target.audit_secret(&crate::cli::SecretArgs {
                audit_secret_file: None,
            })?;
            let gov = super::connect(&target.url, secret).await?;
            let rows = gov
                .workflows()
                .notifications(args.status.as_deref(), args.limit)
                .await;
            gov.close().await;
            let rows = rows?;
            let when = |t: time::OffsetDateTime| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            if out.json() {
                let list: Vec<_> = rows
                    .iter()
                    .map(|n| serde_json::json!({
                        "id": n.id, "request_id": n.request_id, "event": n.event,
                        "channel": n.channel, "status": n.status, "attempts": n.attempts,
                        "next_attempt_at": when(n.next_attempt_at), "last_error": n.last_error,
                        "created_at": when(n.created_at), "delivered_at": n.delivered_at.map(when),
                    }))
                    .collect();
                out.emit_json(&serde_json::json!({ "notifications": list }));
            } else if rows.is_empty() {
                out.line("no deliveries");
            } else {
                let mut t = Table::new();
                t.set_header([
                    "id",
                    "request",
                    "event",
                    "channel",
                    "status",
                    "attempts",
                    "last error",
                ]);
                for n in rows {
                    t.add_row([
                        n.id.to_string(),
                        n.request_id.to_string(),
                        n.event,
                        n.channel,
                        n.status,
                        n.attempts.to_string(),
                        n.last_error.unwrap_or_default(),
                    ]);
                }
                out.line(t);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
