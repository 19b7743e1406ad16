//! `governance completions <shell>`.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub(crate) fn run(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "governance",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}
