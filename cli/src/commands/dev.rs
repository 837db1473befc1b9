//! `blixard dev`: a local cluster of real agents on 127.0.0.1 for trying
//! Blixard out. Node 1 bootstraps; the others join through it.
//!
//! Invariant: every agent started here is stopped before the command
//! returns, on success or error (see `local.rs`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use blixard_api::pb;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::cli::{DevArgs, OutputFormat};
use crate::client;
use crate::local::LocalCluster;
use crate::output;

const POLL_INTERVAL_MS: u64 = 100;

#[derive(Serialize, schemars::JsonSchema)]
pub struct DevNodeView {
    node_id: u64,
    address: String,
    data_dir: String,
    log: String,
}

const SAMPLE_VM: &str = "hello";
const SAMPLE_BOOT_DEADLINE_MS: u64 = 120_000;

/// Builds the guest image and runs one VM, so the first run shows one.
async fn boot_sample_vm(address: &str, spinner: &ProgressBar) -> anyhow::Result<()> {
    spinner.set_message("building the guest image");
    let image = super::image::build(&super::image::default_dir())?;
    let mut client = client::vm(address).await?;
    let spec = image.vm_spec(SAMPLE_VM, 128);
    client
        .create(pb::CreateVmRequest {
            spec: Some(spec),
            replicas: 0,
            stopped: false,
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

    let addresses: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i))
        .collect();
    let first = addresses[0].clone();
    // VMs stop with the dev cluster instead of outliving it.
    let config = "[agent]\nstop_vms_on_shutdown = true\n";
    let cluster = LocalCluster::start(
        &std::env::current_exe()?,
        &dir,
        &addresses,
        config,
        &spinner,
    )
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
    let ca_file = cluster.ca_file.display();
    let token = &cluster.token;
    eprintln!(
        "\nLocal cluster is up. Try:\n  export BLIXARD_ADDR={first} BLIXARD_CA_FILE={ca_file} BLIXARD_TOKEN={token}\n  blixard cluster status\n  blixard vm list\n{vm_hint}\nCtrl-C stops all nodes and their VMs."
    );
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if interactive && !args.no_tui {
        blixard_tui::terminal::run(addresses.clone(), false, blixard_tui::skin::DARK).await?;
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("stopping the local cluster");
    drop(cluster);
    Ok(())
}
