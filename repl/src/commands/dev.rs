//! `blixard dev`: a local cluster of real agents on 127.0.0.1 for trying
//! Blixard out. Node 1 bootstraps; the others join through it.
//!
//! Invariant: every child started here is stopped (SIGTERM, then SIGKILL
//! after a grace period) before the command returns, on success or error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use blixard_api::pb;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cli::{DevArgs, OutputFormat};
use crate::client;
use crate::output;

const STARTUP_DEADLINE_MS: u64 = 30_000;
const POLL_INTERVAL_MS: u64 = 100;
const STOP_GRACE_MS: u64 = 10_000;

struct DevNode {
    node_id: u64,
    address: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Child,
}

/// Stops the children however `run` ends.
struct Cluster {
    nodes: Vec<DevNode>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            // SAFETY: kill(2) on a pid we spawned and have not reaped.
            unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        for node in &mut self.nodes {
            loop {
                match node.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = node.child.kill();
                        let _ = node.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
                }
            }
        }
    }
}

#[derive(Serialize)]
struct DevNodeView {
    node_id: u64,
    address: String,
    data_dir: String,
    log: String,
}

fn spawn_agent(
    dir: &Path,
    node_id: u64,
    address: &str,
    join: Option<&str>,
) -> anyhow::Result<DevNode> {
    let data_dir = dir.join(format!("node{node_id}"));
    let log_path = dir.join(format!("node{node_id}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("agent")
        .args(["--node-id", &node_id.to_string()])
        .args(["--bind", address])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(join) = join {
        command.args(["--join", join]);
    }
    let child = command.spawn().context("cannot start a blixard agent")?;
    Ok(DevNode {
        node_id,
        address: address.to_string(),
        data_dir,
        log_path,
        child,
    })
}

/// Polls node `address` until `ready` holds for its status.
async fn wait_for(
    address: &str,
    what: &str,
    spinner: &ProgressBar,
    ready: impl Fn(&pb::StatusResponse) -> bool,
) -> anyhow::Result<()> {
    spinner.set_message(format!("waiting for {what}"));
    let deadline = Instant::now() + Duration::from_millis(STARTUP_DEADLINE_MS);
    loop {
        if let Ok(mut client) = client::cluster(address).await {
            if let Ok(status) = client.status(pb::StatusRequest {}).await {
                if ready(status.get_ref()) {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {STARTUP_DEADLINE_MS} ms waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

pub async fn run(args: DevArgs, format: OutputFormat) -> anyhow::Result<()> {
    let temporary = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("blixard-dev-").tempdir()?),
    };
    let dir = match (&args.dir, &temporary) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temporary)) => temporary.path().to_path_buf(),
        (None, None) => unreachable!(),
    };
    std::fs::create_dir_all(&dir)?;
    let spinner = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")?);
    spinner.enable_steady_tick(Duration::from_millis(100));

    let mut cluster = Cluster { nodes: Vec::new() };
    let address_of =
        |node_id: u64| format!("127.0.0.1:{}", u64::from(args.base_port) + node_id - 1);
    let first = address_of(1);
    cluster.nodes.push(spawn_agent(&dir, 1, &first, None)?);
    wait_for(&first, "node 1 to elect itself", &spinner, |s| {
        s.leader_id == 1
    })
    .await?;
    for node_id in 2..=args.nodes {
        cluster.nodes.push(spawn_agent(
            &dir,
            node_id,
            &address_of(node_id),
            Some(&first),
        )?);
    }
    let voters_wanted = args.nodes as usize;
    wait_for(&first, "every node to become a voter", &spinner, |s| {
        s.members
            .iter()
            .filter(|m| m.role() == pb::MemberRole::Voter)
            .count()
            == voters_wanted
    })
    .await?;
    spinner.finish_and_clear();

    let views: Vec<DevNodeView> = cluster
        .nodes
        .iter()
        .map(|n| DevNodeView {
            node_id: n.node_id,
            address: n.address.clone(),
            data_dir: n.data_dir.display().to_string(),
            log: n.log_path.display().to_string(),
        })
        .collect();
    output::print(format, &views, |views| {
        let mut table = output::table(&["NODE", "ADDRESS", "DATA DIR", "LOG"]);
        for v in views {
            table.add_row(vec![
                v.node_id.to_string(),
                v.address.clone(),
                v.data_dir.clone(),
                v.log.clone(),
            ]);
        }
        table
    })?;
    eprintln!(
        "\nLocal cluster is up. Try:\n  export BLIXARD_ADDR={first}\n  blixard cluster status\n  blixard vm create webapp --vcpus 1 --memory 256 --flake /etc/vms#webapp\n\nCtrl-C stops all nodes."
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping the local cluster");
    drop(cluster);
    Ok(())
}
