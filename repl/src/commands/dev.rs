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
use indicatif::ProgressBar;
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
    // VMs stop with the dev cluster instead of outliving it.
    let config = dir.join(format!("node{node_id}.toml"));
    std::fs::write(&config, "[agent]\nstop_vms_on_shutdown = true\n")?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("agent")
        .arg("--config")
        .arg(&config)
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

const SAMPLE_VM: &str = "hello";
const SAMPLE_BOOT_DEADLINE_MS: u64 = 120_000;

/// Builds the guest image and runs one VM, so the first run shows one.
async fn boot_sample_vm(address: &str, spinner: &ProgressBar) -> anyhow::Result<()> {
    spinner.set_message("building the guest image");
    let image = super::image::build(&super::image::default_dir())?;
    let mut client = client::vm(address).await?;
    let spec = pb::VmSpec {
        name: SAMPLE_VM.into(),
        vcpus: 1,
        memory_mib: 128,
        pinned_node: 0,
        runner: Some(pb::RunnerSource {
            source: Some(pb::runner_source::Source::Kernel(pb::KernelRunner {
                kernel_path: image.kernel.display().to_string(),
                initrd_path: image.initrd.display().to_string(),
                cmdline: String::new(),
                ports: Vec::new(),
            })),
        }),
        ..pb::VmSpec::default()
    };
    client
        .create(pb::CreateVmRequest {
            spec: Some(spec),
            replicas: 0,
        })
        .await
        .map_err(client::status_error)?;
    client
        .start(pb::VmNameRequest {
            name: SAMPLE_VM.into(),
        })
        .await
        .map_err(client::status_error)?;
    spinner.set_message(format!("booting VM {SAMPLE_VM}"));
    let deadline = Instant::now() + Duration::from_millis(SAMPLE_BOOT_DEADLINE_MS);
    loop {
        let vm = client
            .get(pb::VmNameRequest {
                name: SAMPLE_VM.into(),
            })
            .await
            .map_err(client::status_error)?
            .into_inner()
            .vm
            .and_then(|vm| vm.observed)
            .unwrap_or_default();
        match vm.phase() {
            pb::VmPhase::Running => return Ok(()),
            pb::VmPhase::Failed => anyhow::bail!("sample VM failed: {}", vm.reason),
            _ if Instant::now() >= deadline => {
                anyhow::bail!("sample VM not running after {SAMPLE_BOOT_DEADLINE_MS} ms")
            }
            _ => tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await,
        }
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
    let spinner = crate::output::spinner("starting the cluster");

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
    if !args.no_vm {
        boot_sample_vm(&first, &spinner).await?;
    }
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
    let vm_hint = if args.no_vm {
        String::new()
    } else {
        format!("  blixard vm status {SAMPLE_VM}\n  blixard vm logs {SAMPLE_VM}\n")
    };
    eprintln!(
        "\nLocal cluster is up. Try:\n  export BLIXARD_ADDR={first}\n  blixard cluster status\n  blixard vm list\n{vm_hint}\nCtrl-C stops all nodes and their VMs."
    );
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping the local cluster");
    drop(cluster);
    Ok(())
}
