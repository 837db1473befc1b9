//! `blixard watch COMMAND...` (and `watch` in the REPL): runs a reading
//! command again each time the cluster changes, until Ctrl-C, e.g.
//! `watch vm list`.
//!
//! Invariants: only commands that read are watched (running a change
//! again on every change would never settle); a run is triggered by a VM
//! change or a cluster event newer than the last run, or by `--interval`
//! at the latest (liveness and resources change without an event); all
//! changes waiting when a run starts count as one, and runs are at least
//! `RUN_SPACING_MS` apart, so a burst of changes gives one run, not many.

use std::io::IsTerminal;
use std::time::Duration;

use blixard_api::pb;
use futures::FutureExt;
use tonic::Streaming;

use crate::cli::{Cli, ClusterCommand, Command, NodeCommand, OutputFormat, VmCommand, WatchArgs};
use crate::client::{self, status_error};
use crate::exit::{self, Exit};

const RUN_SPACING_MS: u64 = 250;

/// The watched command, parsed by the shared grammar; refused unless it
/// only reads, and reads its input again each run.
fn parse(words: &[String]) -> anyhow::Result<Cli> {
    let cli = Cli::parse_words(words.iter().cloned())
        .map_err(|e| exit::error(Exit::Usage, e.render().to_string()))?;
    let reads = matches!(
        &cli.command,
        Some(
            Command::Vm(VmCommand::List { .. } | VmCommand::Status { .. })
                | Command::Node(NodeCommand::List | NodeCommand::Status { .. })
                | Command::Cluster(ClusterCommand::Status)
                | Command::Export(_)
                | Command::Diff(_)
        )
    );
    if !reads {
        return Err(exit::error(
            Exit::Usage,
            format!(
                "watch runs commands that only read (vm list, vm status, node list, node status, cluster status, export, diff), not {:?}",
                words.join(" ")
            ),
        ));
    }
    if matches!(&cli.command, Some(Command::Diff(args)) if args.file.as_os_str() == "-") {
        return Err(exit::error(
            Exit::Usage,
            "watch diff needs a file: standard input can be read only once",
        ));
    }
    Ok(cli)
}

/// The cluster's changes: the VM watch stream and the event stream.
struct Changes {
    vms: Streaming<pb::VmEvent>,
    events: Streaming<pb::ClusterEvent>,
    /// VM events at or below this revision were already seen.
    seen_revision: u64,
}

impl Changes {
    async fn open(addr: &str) -> anyhow::Result<Changes> {
        let (vms, _, seen_revision) = super::wait::watch_synced(addr).await?;
        let events = client::cluster(addr)
            .await?
            .events(pb::EventsRequest {
                follow: true,
                recent_max: 0,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(Changes {
            vms,
            events,
            seen_revision,
        })
    }

    /// Whether a VM event is news; a stream that fell behind or was reset
    /// is opened again (and counts as news).
    async fn take_vm(
        &mut self,
        addr: &str,
        item: Result<Option<pb::VmEvent>, tonic::Status>,
    ) -> anyhow::Result<bool> {
        match item {
            Ok(Some(event)) if event.revision > self.seen_revision => {
                self.seen_revision = event.revision;
                Ok(true)
            }
            Ok(Some(_)) => Ok(false),
            Ok(None) => Err(exit::error(
                Exit::Unavailable,
                "the node ended the VM watch",
            )),
            Err(status)
                if matches!(status.code(), tonic::Code::DataLoss | tonic::Code::Aborted) =>
            {
                *self = Changes::open(addr).await?;
                Ok(true)
            }
            Err(status) => Err(status_error(status)),
        }
    }

    fn take_event(item: Result<Option<pb::ClusterEvent>, tonic::Status>) -> anyhow::Result<()> {
        match item {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(exit::error(
                Exit::Unavailable,
                "the node ended the event stream",
            )),
            Err(status) => Err(status_error(status)),
        }
    }

    /// Returns at the first change or after `interval`, having taken
    /// every change already waiting.
    async fn next(&mut self, addr: &str, interval: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                item = self.vms.message() => {
                    if self.take_vm(addr, item).await? {
                        break;
                    }
                }
                item = self.events.message() => {
                    Self::take_event(item)?;
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
        while let Some(item) = self.vms.message().now_or_never() {
            self.take_vm(addr, item).await?;
        }
        while let Some(item) = self.events.message().now_or_never() {
            Self::take_event(item)?;
        }
        Ok(())
    }
}

pub async fn run(args: WatchArgs, addr: &str, output: OutputFormat) -> anyhow::Result<()> {
    parse(&args.command)?;
    let mut changes = Changes::open(addr).await?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let started = tokio::time::Instant::now();
        let cli = parse(&args.command)?;
        let output = if output == OutputFormat::Table {
            cli.output
        } else {
            output
        };
        let target = cli.addr.unwrap_or_else(|| addr.to_string());
        if terminal {
            // Redraw in place: clear the screen, cursor home.
            print!("\x1b[2J\x1b[H");
            println!("every change: {} (Ctrl-C stops)\n", args.command.join(" "));
        }
        let command = cli.command.expect("parse checked the command");
        if let Err(error) = Box::pin(super::on_cluster(command, &target, output)).await {
            exit::report(&error);
        }
        changes
            .next(addr, Duration::from_millis(args.interval))
            .await?;
        tokio::time::sleep_until(started + Duration::from_millis(RUN_SPACING_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn only_reading_commands_are_watched() {
        assert!(parse(&words("vm list -o json")).is_ok());
        assert!(parse(&words("node status 2")).is_ok());
        assert!(parse(&words("diff -f shop.yaml")).is_ok());
        let refused = parse(&words("vm start web")).unwrap_err();
        assert_eq!(exit::classify(&refused), Exit::Usage);
        assert!(format!("{refused}").contains("only read"), "{refused}");
        let stdin = parse(&words("diff -f -")).unwrap_err();
        assert!(format!("{stdin}").contains("read only once"), "{stdin}");
        let typo = parse(&words("vm lsit")).unwrap_err();
        assert_eq!(exit::classify(&typo), Exit::Usage);
    }
}
