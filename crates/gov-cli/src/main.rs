//! `governance`: the operator's command-line tool.
//!
//! Parses with clap, validates, then runs one SDK call per command and renders the result
//! (human text on a terminal, JSON with `--json`). Exit codes: 0 success, 1 tampered chain,
//! 2 usage or configuration error, 3 storage unreachable or failing.

mod cli;
mod commands;
mod local;
mod output;
mod progress;
mod transfer;
mod when;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::output::Out;

/// Exit code: a chain failed verification.
pub(crate) const EXIT_TAMPERED: u8 = 1;
/// Exit code: bad usage or configuration.
pub(crate) const EXIT_CONFIG: u8 = 2;
/// Exit code: storage unreachable or failing.
pub(crate) const EXIT_STORAGE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let out = Out::new(cli.global.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error(
                &anyhow::anyhow!("cannot start the async runtime: {e}"),
                EXIT_STORAGE,
            );
            return ExitCode::from(EXIT_STORAGE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate(args) => commands::migrate::run(args, &cli.global, &out).await,
            Command::Verify(args) => commands::verify::run(args, &cli.global, &out).await,
            Command::Demo(args) => commands::demo::run(args, &cli.global, &out).await,
            Command::Tail(args) => commands::tail::run(args, &cli.global, &out).await,
            Command::Report(args) => commands::report::run(args, &cli.global, &out).await,
            Command::RotateChainKey(args) => commands::rotate::run(args, &cli.global, &out).await,
            Command::Checkpoint(args) => commands::checkpoint::run(args, &cli.global, &out).await,
            Command::Export(args) => commands::export::run(args, &cli.global, &out).await,
            Command::Import(args) => commands::import::run(args, &cli.global, &out).await,
            Command::Budget(args) => commands::budget::run(args, &cli.global, &out).await,
            Command::Console(cmd) => commands::console::run(cmd, &cli.global, &out).await,
            Command::Completions(args) => commands::completions::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            let code = exit_code(&err);
            out.error(&err, code);
            ExitCode::from(code)
        }
    }
}

/// Maps an error to the documented exit code.
fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(e) = err.downcast_ref::<gov_report::ReportError>() {
        return match e {
            gov_report::ReportError::Sdk(e) => sdk_exit_code(e),
            e if e.is_config() => EXIT_CONFIG,
            _ => EXIT_STORAGE,
        };
    }
    match err.downcast_ref::<gov_sdk::Error>() {
        Some(e) => sdk_exit_code(e),
        None => EXIT_CONFIG,
    }
}

fn sdk_exit_code(e: &gov_sdk::Error) -> u8 {
    match e {
        e if e.is_config() => EXIT_CONFIG,
        gov_sdk::Error::ChainBroken(_) => EXIT_TAMPERED,
        gov_sdk::Error::Store(_) => EXIT_STORAGE,
        _ => EXIT_CONFIG,
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("GOVERNANCE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // Colour only on a terminal, and never with NO_COLOR: a log read from a file or a pipe
    // must not carry escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
