//! `governance console add-user | list-users | disable-user | reset-password | set-role`.
//! Run with the schema owner's database URL; passwords never come from the command line.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use comfy_table::Table;
use gov_sdk::OperatorRole;
use gov_sdk::admin::Admin;

use crate::cli::{ConsoleCommand, Global, RoleArg};
use crate::output::Out;

/// Reads a new password: a prompt with confirmation on a terminal, else the first line of stdin.
fn read_password() -> anyhow::Result<String> {
    let config = |m: String| anyhow::Error::new(gov_sdk::Error::Config(m));
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New password: ")
            .map_err(|e| config(format!("cannot read the password: {e}")))?;
        let again = rpassword::prompt_password("Repeat it: ")
            .map_err(|e| config(format!("cannot read the password: {e}")))?;
        if first != again {
            return Err(config(
                "the two passwords differ; nothing was changed".into(),
            ));
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| config(format!("cannot read the password from standard input: {e}")))?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        return Err(config(
            "no password on standard input; pipe one line, or run on a terminal to be prompted"
                .into(),
        ));
    }
    Ok(pw)
}

fn role(arg: RoleArg) -> OperatorRole {
    match arg {
        RoleArg::Admin => OperatorRole::Admin,
        RoleArg::Operator => OperatorRole::Operator,
        RoleArg::Viewer => OperatorRole::Viewer,
    }
}

pub(crate) async fn run(
    cmd: ConsoleCommand,
    global: &Global,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    if let ConsoleCommand::Serve(args) = cmd {
        return serve(args, &target, out).await;
    }
    // Read the password before connecting, so a typo does not leave a connection waiting.
    let password = match &cmd {
        ConsoleCommand::AddUser(_) | ConsoleCommand::ResetPassword(_) => Some(read_password()?),
        _ => None,
    };
    let admin = Admin::connect(&url).await?;
    let result = match cmd {
        // Handled above, before any password is read.
        ConsoleCommand::Serve(_) => Ok(()),
        ConsoleCommand::AddUser(a) => {
            let role = role(a.role);
            admin.add_operator(&a.username, role, password.as_deref().unwrap_or_default()).await.map(|()| {
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok", "username": a.username, "role": role }));
                } else {
                    out.line(format!("added {} ({})", a.username, role.as_str()));
                }
            })
        }
        ConsoleCommand::ListUsers => admin.operators().await.map(|users| {
            if out.json() {
                out.emit_json(&serde_json::json!({ "users": users }));
            } else if users.is_empty() {
                out.line("no users yet; add one with `governance console add-user --username NAME --role admin`");
            } else {
                let mut t = Table::new();
                t.set_header(["user", "role", "state", "created"]);
                for u in users {
                    let created = u
                        .created_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    t.add_row([
                        u.username,
                        u.role.as_str().to_owned(),
                        if u.disabled { "disabled".into() } else { "active".into() },
                        created,
                    ]);
                }
                out.line(t);
            }
        }),
        ConsoleCommand::DisableUser(a) => admin.set_operator_disabled(&a.username, !a.enable).await.map(|()| {
            let state = if a.enable { "enabled" } else { "disabled" };
            if out.json() {
                out.emit_json(&serde_json::json!({ "status": "ok", "username": a.username, "state": state }));
            } else {
                out.line(format!("{state} {}", a.username));
            }
        }),
        ConsoleCommand::ResetPassword(a) => admin
            .reset_operator_password(&a.username, password.as_deref().unwrap_or_default())
            .await
            .map(|()| {
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok", "username": a.username }));
                } else {
                    out.line(format!("password of {} replaced", a.username));
                }
            }),
        ConsoleCommand::SetRole(a) => {
            let role = role(a.role);
            admin.set_operator_role(&a.username, role).await.map(|()| {
                if out.json() {
                    out.emit_json(&serde_json::json!({ "status": "ok", "username": a.username, "role": role }));
                } else {
                    out.line(format!("{} is now {}", a.username, role.as_str()));
                }
            })
        }
    };
    admin.close().await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    args: crate::cli::ServeArgs,
    target: &super::Target,
    out: &Out,
) -> anyhow::Result<ExitCode> {
    let url = target.url.as_str();
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(url, secret).await?;
    let config = gov_console::ConsoleConfig {
        secure_cookies: args.secure_cookies,
        chain_check_interval: std::time::Duration::from_secs(args.chain_check_secs),
        verify_every: (args.verify_every_secs > 0)
            .then(|| std::time::Duration::from_secs(args.verify_every_secs)),
        ..gov_console::ConsoleConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| {
            anyhow::Error::new(gov_sdk::Error::Config(format!(
                "cannot listen on {}: {e}; choose another address with --bind",
                args.bind
            )))
        })?;
    let notifier = args
        .notify
        .as_deref()
        .map(|path| super::notify::notifier(gov.clone(), path))
        .transpose()?;
    let addr = listener.local_addr().unwrap_or(args.bind);
    if out.json() {
        out.emit_json(
            &serde_json::json!({ "status": "serving", "url": format!("http://{addr}/") }),
        );
    } else {
        out.line(format!(
            "console listening on http://{addr}/ (Ctrl-C to stop)"
        ));
    }
    let notifying = async {
        match &notifier {
            Some(n) => n.run(std::future::pending()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = gov_console::serve_on(gov.clone(), config, listener) => {
            r.map_err(|e| anyhow::anyhow!("the console stopped: {e}"))?;
        }
        () = notifying => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    gov.close().await;
    Ok(ExitCode::SUCCESS)
}
