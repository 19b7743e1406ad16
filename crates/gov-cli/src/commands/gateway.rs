//! `governance gateway serve | add-key | list-keys | revoke-key`. `serve` builds the gateway's
//! configuration and governance handle and calls `gov_gateway::serve` (no HTTP code here); the
//! key commands run with the schema owner's URL and print a key only once, when it is made.

use std::process::ExitCode;

use comfy_table::Table;
use gov_sdk::Governance;
use gov_sdk::admin::Admin;
use secrecy::ExposeSecret as _;

use crate::cli::{GatewayCommand, GatewayServeArgs, Global};
use crate::output::Out;

pub(crate) async fn run(
    cmd: GatewayCommand,
    global: &Global,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let target = super::Target::resolve(global).await?;
    if let GatewayCommand::Serve(args) = cmd {
        return serve(args, &target, out).await;
    }
    let admin = Admin::connect(&target.url).await?;
    let result = match cmd {
        GatewayCommand::Serve(_) => Ok(()),
        GatewayCommand::AddKey(a) => admin.add_gateway_key(&a.agent, &a.label).await.map(|k| {
            if out.json() {
                out.emit_json(&serde_json::json!({
                    "status": "ok", "id": k.id, "agent": k.agent, "key": k.key.expose_secret(),
                }));
            } else {
                out.line(format!(
                    "key {} for agent {} (shown once; store it where the agent reads it):\n{}",
                    k.id,
                    k.agent,
                    k.key.expose_secret()
                ));
            }
        }),
        GatewayCommand::ListKeys(a) => admin.gateway_keys(a.agent.as_deref()).await.map(|keys| {
            let when = |t: time::OffsetDateTime| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            if out.json() {
                let keys: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "agent": k.agent, "label": k.label,
                            "created_at": when(k.created_at),
                            "revoked_at": k.revoked_at.map(when),
                        })
                    })
                    .collect();
                out.emit_json(&serde_json::json!({ "keys": keys }));
            } else if keys.is_empty() {
                out.line(
                    "no gateway keys yet; make one with `governance gateway add-key --agent NAME`",
                );
            } else {
                let mut t = Table::new();
                t.set_header(["id", "agent", "label", "created", "revoked"]);
                for k in keys {
                    t.add_row([
                        k.id,
                        k.agent,
                        k.label,
                        when(k.created_at),
                        k.revoked_at.map(when).unwrap_or_default(),
                    ]);
                }
                out.line(t);
            }
        }),
        GatewayCommand::RevokeKey(a) => match admin.revoke_gateway_key(&a.id).await {
            Ok(true) => {
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "revoked", "id": a.id }));
                } else {
                    out.line(format!("revoked key {}", a.id));
                }
                Ok(())
            }
            Ok(false) => Err(gov_sdk::Error::Config(format!(
                "no unrevoked gateway key has the id {}; see `governance gateway list-keys`",
                a.id
            ))),
            Err(e) => Err(e),
        },
    };
    admin.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// A gateway error as the CLI classifies it (configuration: exit 2).
fn classify(e: gov_gateway::GatewayError) -> anyhow::Error {
    match e {
        gov_gateway::GatewayError::Config(m) => anyhow::Error::new(gov_sdk::Error::Config(m)),
        gov_gateway::GatewayError::Governance(e) => anyhow::Error::new(e),
        e => anyhow::Error::new(e),
    }
}

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM on Unix).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(
    args: GatewayServeArgs,
    target: &super::Target,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let mut config =
        gov_gateway::Config::load(&args.config, &|n| std::env::var(n).ok()).map_err(classify)?;
    if let Some(bind) = args.bind {
        config.listen = bind;
    }
    let secret = target.audit_secret(&args.secret)?;
    let gov = Governance::builder()
        .database_url(&target.url)
        .audit_secret_parsed(secret)
        .previous_audit_secrets_from_env()
        .listen_url_from_env()
        // The gateway's clients are its upstreams, registered when it starts.
        .warn_on_no_wrappers(false)
        // Fail closed: while storage is out of reach, calls are refused rather than spooled.
        .spool(false)
        .connect()
        .await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::Error::new(gov_sdk::Error::Config(format!(
                "cannot listen on {}: {e}; choose another address with --bind or `listen`",
                config.listen
            )))
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    if out.json() {
        out.emit_json(
            &serde_json::json!({ "status": "serving", "url": format!("http://{addr}/") }),
        );
    } else {
        out.line(format!(
            "gateway listening on http://{addr}/ (OpenAI base URL http://{addr}/v1; Ctrl-C to stop)"
        ));
    }
    let r = gov_gateway::serve(gov.clone(), config, listener, stop_signal()).await;
    gov.close().await;
    r.map_err(classify)?;
    Ok(ExitCode::SUCCESS)
}
