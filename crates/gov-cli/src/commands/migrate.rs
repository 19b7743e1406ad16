//! `governance migrate`: apply migrations, optionally create the application role.

use std::process::ExitCode;

use gov_sdk::admin::Admin;

use crate::cli::{Global, MigrateArgs};
use crate::output::Out;

/// Environment variable with the application role's password.
const ENV_APP_ROLE_PASSWORD: &str = "GOVERNANCE_APP_ROLE_PASSWORD";

pub(crate) async fn run(args: MigrateArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let admin = Admin::connect_or_create(&url).await?;
    let mut report = admin.migrate().await?;
    // The local database is created and migrated as soon as it is opened: count those.
    if let Some(n) = target.migrated_here() {
        report.applied += usize::try_from(n).unwrap_or(0);
    }
    let password = std::env::var(ENV_APP_ROLE_PASSWORD)
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(role) = &args.app_role {
        admin.ensure_app_role(role, password.as_deref()).await?;
    }
    admin.close().await;
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": "ok",
            "applied": report.applied,
            "known": report.known,
            "app_role": args.app_role,
        }));
    } else {
        if report.applied == 0 {
            out.line(format!("schema is current ({} migrations)", report.known));
        } else {
            out.line(format!(
                "applied {} of {} migrations",
                report.applied, report.known
            ));
        }
        if let Some(role) = &args.app_role {
            out.line(format!(
                "application role {role} ready: INSERT and SELECT on audit rows, no UPDATE, DELETE or TRUNCATE{}",
                if password.is_some() { "; password set" } else { "" }
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
