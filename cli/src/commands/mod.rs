//! One module per command family; this file only dispatches.

pub(crate) mod acl;
mod agent;
mod apply;
mod cluster;
mod completions;
mod dev;
mod events;
pub mod image;
mod node;
mod schema;
pub(crate) mod tls;
mod trust;
mod vm;
pub mod wait;
mod watch;

use crate::cli::{Cli, Command, ImageCommand, OutputFormat, TlsCommand};
use crate::{client, settings};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli
        .command
        .expect("main turns a missing command into the REPL or a usage error");
    match command {
        Command::Agent(args) => agent::run(args).await,
        Command::Dev(args) => dev::run(args, cli.output).await,
        Command::Image(ImageCommand::Build { out }) => image::run(out, cli.output),
        Command::Completions { shell } => completions::script(shell),
        Command::Man { out } => completions::man(&out, cli.output),
        Command::Schema { command } => schema::run(&command, cli.output),
        Command::Tls(TlsCommand::Trust { fingerprint, out }) => {
            let settings = settings::resolve(cli.addr, cli.token, cli.ca_file, cli.client_config)?;
            trust::run(&settings.addr, fingerprint, out, cli.output).await
        }
        Command::Tls(command) => tls::run(command, cli.output),
        command => {
            let settings = settings::resolve(cli.addr, cli.token, cli.ca_file, cli.client_config)?;
            client::set_token(settings.token.as_deref())?;
            client::set_ca_file(settings.ca_file.as_deref())?;
            match command {
                Command::Repl(args) => crate::repl::run(settings, args).await,
                command => on_cluster(command, &settings.addr, cli.output).await,
            }
        }
    }
}

/// Runs a command that talks to the cluster through `addr` (the REPL runs
/// its lines through here too).
pub async fn on_cluster(command: Command, addr: &str, output: OutputFormat) -> anyhow::Result<()> {
    match command {
        Command::Tui(args) => {
            blixard_tui::terminal::run(vec![addr.to_string()], args.readonly, args.skin).await?;
            Ok(())
        }
        Command::Cluster(command) => cluster::run(command, addr, output).await,
        Command::Acl(command) => acl::run(command, addr, output).await,
        Command::Audit { since, who, limit } => {
            acl::audit(addr, output, since, who.unwrap_or_default(), limit).await
        }
        Command::Vm(command) => vm::run(command, addr, output).await,
        Command::Node(command) => node::run(command, addr, output).await,
        Command::Events { follow, recent } => events::run(addr, output, follow, recent).await,
        Command::Apply(args) => apply::apply(args, addr, output).await,
        Command::Diff(args) => apply::diff(args, addr, output).await,
        Command::Export(args) => apply::export(args, addr, output).await,
        Command::Watch(args) => watch::run(args, addr, output).await,
        Command::Image(ImageCommand::Build { out }) => image::run(out, output),
        Command::Completions { shell } => completions::script(shell),
        Command::Schema { command } => schema::run(&command, output),
        Command::Tls(TlsCommand::Trust { fingerprint, out }) => {
            trust::run(addr, fingerprint, out, output).await
        }
        Command::Tls(command) => tls::run(command, output),
        Command::Agent(_) | Command::Dev(_) | Command::Repl(_) | Command::Man { .. } => {
            Err(crate::exit::error(
                crate::exit::Exit::Usage,
                "this command runs from the shell, not inside the REPL",
            ))
        }
    }
}
