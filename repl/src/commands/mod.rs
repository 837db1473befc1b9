//! One module per command family; this file only dispatches.

mod agent;
mod bench;
mod cluster;
mod dev;
mod events;
mod image;
mod node;
mod vm;

use crate::cli::{Cli, Command, ImageCommand};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run(args).await,
        Command::Dev(args) => dev::run(args, cli.output).await,
        Command::Bench(args) => bench::run(args, cli.output).await,
        Command::Tui(args) => {
            blixard_tui::terminal::run(vec![cli.addr.clone()], args.readonly, args.skin).await?;
            Ok(())
        }
        Command::Cluster(command) => cluster::run(command, &cli.addr, cli.output).await,
        Command::Vm(command) => vm::run(command, &cli.addr, cli.output).await,
        Command::Node(command) => node::run(command, &cli.addr, cli.output).await,
        Command::Events { follow, recent } => {
            events::run(&cli.addr, cli.output, follow, recent).await
        }
        Command::Image(ImageCommand::Build { out }) => image::run(out, cli.output),
    }
}
