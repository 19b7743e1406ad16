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
mod when;

use std::process::ExitCode;

use clap::Parser;
use gov_sdk::ErrorKind;

use crate::cli::{Cli, Command};
use crate::output::Out;

/// Exit code: a chain failed verification.
pub(crate) const EXIT_TAMPERED: u8 = 1;
/// Exit code: bad usage or configuration.
const EXIT_CONFIG: u8 = 2;
/// Exit code: storage unreachable or failing.
const EXIT_STORAGE: u8 = 3;

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
            let kind = ErrorKind::Internal;
            out.error(
                &anyhow::anyhow!("cannot start the async runtime: {e}"),
                kind,
                exit_code_for(kind),
            );
            return ExitCode::from(exit_code_for(kind));
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
            Command::Archive(args) => commands::archive::run(args, &cli.global, &out).await,
            Command::Erase(args) => commands::erase::run(args, &cli.global, &out).await,
            Command::Policy(cmd) => commands::policy::run(cmd, &cli.global, &out).await,
            Command::Checkpoint(args) => commands::checkpoint::run(args, &cli.global, &out).await,
            Command::Prove(args) => commands::prove::run(args, &cli.global, &out).await,
            Command::Export(args) => commands::export::run(args, &cli.global, &out).await,
            Command::Import(args) => commands::import::run(args, &cli.global, &out).await,
            Command::Budget(args) => commands::budget::run(args, &cli.global, &out).await,
            Command::Console(cmd) => commands::console::run(cmd, &cli.global, &out).await,
            Command::Gateway(cmd) => commands::gateway::run(cmd, &cli.global, &out).await,
            Command::Approvals(cmd) => commands::approvals::run(cmd, &cli.global, &out).await,
            Command::Notify(cmd) => commands::notify::run(cmd, &cli.global, &out).await,
            Command::Witness(cmd) => commands::witness::run(cmd, &out).await,
            Command::Evidence(cmd) => commands::evidence::run(cmd, &cli.global, &out).await,
            Command::Siem(cmd) => commands::siem::run(cmd, &cli.global, &out).await,
            Command::Completions(args) => commands::completions::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            let kind = kind_of(&err);
            let code = exit_code_for(kind);
            out.error(&err, kind, code);
            ExitCode::from(code)
        }
    }
}

/// The kind of an error the CLI returns, in the SDK's one classification ([`ErrorKind`]): an
/// SDK, transfer or report error (wrapped in context or not) keeps its own; an error of the CLI's own
/// (such as a file it cannot write) is a usage or configuration error.
fn kind_of(err: &anyhow::Error) -> ErrorKind {
    if let Some(e) = err.downcast_ref::<gov_report::ReportError>() {
        return e.kind();
    }
    if let Some(e) = err.downcast_ref::<gov_sdk::admin::transfer::TransferError>() {
        return e.kind();
    }
    if let Some(e) = err.downcast_ref::<commands::siem::DeliveryError>() {
        return e.kind();
    }
    err.downcast_ref::<gov_sdk::Error>()
        .map_or(ErrorKind::Config, gov_sdk::Error::kind)
}

/// The exit code of each kind of error (docs/cli.md, "Exit codes").
pub(crate) fn exit_code_for(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Tampered => EXIT_TAMPERED,
        ErrorKind::Unavailable | ErrorKind::Internal => EXIT_STORAGE,
        ErrorKind::Config
        | ErrorKind::NotFound
        | ErrorKind::Unauthenticated
        | ErrorKind::Refused
        | ErrorKind::Upstream => EXIT_CONFIG,
        // A kind added to the SDK after this table: "any other error exits 2".
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of error and its exit code (docs/cli.md): the table covers them all.
    #[test]
    fn every_error_kind_has_its_documented_exit_code() {
        let table = [
            (ErrorKind::Config, 2),
            (ErrorKind::NotFound, 2),
            (ErrorKind::Unauthenticated, 2),
            (ErrorKind::Refused, 2),
            (ErrorKind::Upstream, 2),
            (ErrorKind::Tampered, 1),
            (ErrorKind::Unavailable, 3),
            (ErrorKind::Internal, 3),
        ];
        for kind in ErrorKind::ALL {
            let (_, code) = table
                .iter()
                .find(|(k, _)| k == kind)
                .unwrap_or_else(|| panic!("no exit code in the table for {kind}"));
            assert_eq!(exit_code_for(*kind), *code, "{kind}");
        }
        assert_eq!(table.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn errors_map_through_their_kind_even_under_context() {
        let exit_code = |e: &anyhow::Error| exit_code_for(kind_of(e));
        let unavailable = anyhow::Error::new(gov_sdk::Error::from(
            gov_sdk::StoreError::Unavailable("refused".into()),
        ))
        .context("reading the chain");
        assert_eq!(exit_code(&unavailable), EXIT_STORAGE);
        let report = anyhow::Error::new(gov_report::ReportError::Period("empty".into()));
        assert_eq!(exit_code(&report), EXIT_CONFIG);
        let report_sdk = anyhow::Error::new(gov_report::ReportError::Sdk(
            gov_sdk::Error::ChainBroken(gov_sdk::Finding {
                seq: 3,
                reason: gov_sdk::Reason::ModifiedRow,
                detail: "row 3".into(),
            }),
        ));
        assert_eq!(exit_code(&report_sdk), EXIT_TAMPERED);
        assert_eq!(exit_code(&anyhow::anyhow!("a file")), EXIT_CONFIG);
    }
}
