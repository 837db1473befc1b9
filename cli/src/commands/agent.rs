//! `blixard agent`: load the config, apply flags, run until a signal.

use anyhow::Context;
use blixard_daemon::{Config, Overrides};

use crate::cli::AgentArgs;

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.apply(Overrides {
        node_id: args.node_id,
        data_dir: args.data_dir,
        bind: args.bind,
        join: args.join,
        bootstrap: args.bootstrap,
        labels: args.labels,
        gossip_bind: args.gossip_bind,
        join_token: args.join_token,
    });
    config.validate()?;
    blixard_daemon::agent::run(config, shutdown_signal())
        .await
        .context("agent stopped")
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
