//! `blixard`: the one binary. `blixard agent` runs a node; every other
//! subcommand is a client of a node's gRPC API; `blixard repl` (or
//! `blixard` alone on a terminal) takes the same commands interactively.
//! Exit codes are in `exit.rs`; the commands live in the library
//! (`lib.rs`), which `blixard-bench` shares.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use blixard_cli::cli::{Cli, Command, ReplArgs};
use blixard_cli::{commands, exit};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.command.is_none() {
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            cli.command = Some(Command::Repl(ReplArgs { edit_mode: None }));
        } else {
            let _ = Cli::command().write_help(&mut std::io::stderr());
            return exit::Exit::Usage.into();
        }
    }
    let is_agent = matches!(cli.command, Some(Command::Agent(_)));
    blixard_cli::end_quietly_on_closed_stdout();
    // raft-rs logs every election step at info (through slog); keep warnings.
    blixard_cli::init_logging(
        cli.log_format,
        if is_agent { "info,slog=warn" } else { "warn" },
    );
    blixard_cli::run_to_exit(commands::run(cli))
}
