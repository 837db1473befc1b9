//! `blixard-bench`: starts what it measures (local Blixard clusters of the
//! `blixard` binary beside it, an etcd cluster, gossip nodes, guests), runs
//! it, prints one table. It is its own binary so that the etcd client (and
//! the `protoc` its build needs) stays out of the production `blixard`.
//!
//! Invariant: every figure comes from this run on this machine; nothing is
//! asserted about it (tests never assert timings). Whatever could not run
//! is listed as skipped, with the reason.

mod dashboard;
mod etcd;
mod gossip;
mod load;
mod placement;
mod report;
mod vm_start;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use blixard_api::pb;
use blixard_api::pb::vm_client::VmClient;
use etcd_client::KvClient;
use indicatif::ProgressBar;
use prost::Message;

use blixard_cli::cli::{parse_duration_ms, LogFormat, OutputFormat};
use blixard_cli::commands::image;
use blixard_cli::local::LocalCluster;
use blixard_cli::{client, output};
use clap::Parser;
use load::{closed_loop, connections_per_endpoint, Figures};
use report::{Report, Row, Unit};

/// Measure: starts a local cluster, runs the benchmarks, prints one table.
#[derive(Debug, Parser)]
#[command(name = "blixard-bench", version)]
pub struct BenchArgs {
    /// Seconds, not minutes: small sizes and short runs (what CI runs).
    #[arg(long)]
    pub quick: bool,
    /// How long each closed-loop run lasts.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    pub duration: u64,
    /// The etcd binary run beside Blixard for comparison (Debian's
    /// etcd-server); if it cannot run, the table says why.
    #[arg(long, default_value = "etcd")]
    pub etcd: String,
    /// The `blixard` binary the local clusters run (default: the one
    /// beside this binary, else `blixard` on PATH).
    #[arg(long)]
    pub blixard: Option<PathBuf>,
    /// Boots of the test guest for the VM start path (0 skips it).
    #[arg(long)]
    pub boots: Option<usize>,
    /// Run only these parts (repeatable or comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<BenchPart>,
    /// How to print the table.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// The parts of `blixard-bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPart {
    /// The pure scheduler over simulated nodes.
    Scheduler,
    /// Idle RSS, end-to-end placement, RSS holding the placed VMs.
    Placement,
    /// Chitchat convergence, join and failure detection.
    Gossip,
    /// Writes and linearizable reads, beside etcd.
    Consensus,
    /// Booting the test guest.
    VmStart,
    /// Dashboard frame and filter times at 10,000 VMs.
    Dashboard,
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    blixard_cli::init_logging(LogFormat::Human, "warn");
    blixard_cli::run_to_exit(run(args))
}

/// The `blixard` the clusters run: `--blixard`, else the one beside this
/// binary (`target/release/blixard` beside `target/release/blixard-bench`),
/// else whatever `blixard` is on PATH.
fn blixard_binary(chosen: Option<PathBuf>) -> PathBuf {
    chosen
        .or_else(|| {
            let beside = std::env::current_exe().ok()?.with_file_name("blixard");
            beside.is_file().then_some(beside)
        })
        .unwrap_or_else(|| PathBuf::from("blixard"))
}

/// How big each part runs: `--quick` is for CI (seconds, not minutes).
struct Sizes {
    duration: Duration,
    write_clients: &'static [usize],
    read_clients: usize,
    scheduler_nodes: u64,
    scheduler_vms: u64,
    placement_nodes: u64,
    placement_groups: u32,
    placement_per_group: u32,
    gossip_nodes: usize,
    gossip_interval_ms: u64,
    boots: usize,
}

impl Sizes {
    fn new(args: &BenchArgs) -> Self {
        if args.quick {
            Sizes {
                duration: Duration::from_millis(500),
                write_clients: &[1, 16],
                read_clients: 16,
                scheduler_nodes: 100,
                scheduler_vms: 1_000,
                placement_nodes: 5,
                placement_groups: 2,
                placement_per_group: 250,
                gossip_nodes: 10,
                gossip_interval_ms: 100,
                boots: args.boots.unwrap_or(2),
            }
        } else {
            Sizes {
                duration: Duration::from_millis(args.duration),
                write_clients: &[1, 16, 256],
                read_clients: 16,
                scheduler_nodes: 1_000,
                scheduler_vms: 10_000,
                placement_nodes: 50,
                placement_groups: 10,
                placement_per_group: 1_000,
                gossip_nodes: 50,
                // The daemon's default gossip interval.
                gossip_interval_ms: 500,
                boots: args.boots.unwrap_or(20),
            }
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_addresses(count: usize) -> anyhow::Result<Vec<String>> {
    (0..count)
        .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
        .collect()
}

/// Resident set size of a process, from /proc.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

/// The largest RSS among the cluster's nodes.
fn voters_rss_mib(cluster: &LocalCluster) -> anyhow::Result<f64> {
    let mut largest: f64 = 0.0;
    for node in &cluster.nodes {
        largest = largest.max(rss_mib(node.pid())?);
    }
    Ok(largest)
}

async fn start_cluster(
    program: &Path,
    dir: &Path,
    agent: bool,
    spinner: &ProgressBar,
) -> anyhow::Result<LocalCluster> {
    std::fs::create_dir_all(dir)?;
    let addresses = free_addresses(3)?;
    spinner.set_message("starting three voters");
    LocalCluster::start(
        program,
        dir,
        &addresses,
        // Guests must not outlive the benchmark, even when it fails.
        &format!("[agent]\nenabled = {agent}\nstop_vms_on_shutdown = true\n"),
        spinner,
    )
    .await
}

fn vm_spec(name: String) -> pb::VmSpec {
    pb::VmSpec {
        name,
        vcpus: 1,
        memory_mib: 64,
        runner: Some(pb::RunnerSource {
            source: Some(pb::runner_source::Source::Flake(pb::FlakeRunner {
                flake_ref: "/etc/vms#bench".into(),
            })),
        }),
        ..pb::VmSpec::default()
    }
}

/// The write every system under test gets: one small VM record.
fn create_request(clients: usize, task: usize, i: u64) -> pb::CreateVmRequest {
    pb::CreateVmRequest {
        spec: Some(vm_spec(format!("w{clients}-{task}-{i}"))),
        replicas: 0,
        stopped: false,
    }
}

async fn vm_clients(
    addresses: &[String],
    clients: usize,
) -> anyhow::Result<Vec<VmClient<client::Conn>>> {
    let mut connections = Vec::new();
    for _ in 0..connections_per_endpoint(clients, addresses.len()) {
        for address in addresses {
            connections.push(client::vm(address).await?);
        }
    }
    Ok(connections)
}

async fn blixard_writes(
    addresses: &[String],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let connections = vm_clients(addresses, clients).await?;
    let run = closed_loop(
        &connections,
        clients,
        duration,
        move |mut vm, task, i| async move {
            vm.create(create_request(clients, task, i))
                .await
                .map(|_| ())
        },
    )
    .await?;
    Ok(run.figures())
}

async fn etcd_writes(
    endpoints: &[String],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let connections = etcd::kv_clients(endpoints, clients).await?;
    let run = closed_loop(
        &connections,
        clients,
        duration,
        move |mut kv: KvClient, task, i| async move {
            let request = create_request(clients, task, i);
            let key = request
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            kv.put(key, request.encode_to_vec(), None).await.map(|_| ())
        },
    )
    .await?;
    Ok(run.figures())
}

async fn blixard_reads(
    addresses: &[String],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let connections = vm_clients(addresses, clients).await?;
    let run = closed_loop(&connections, clients, duration, |mut vm, _, _| async move {
        vm.get(pb::VmNameRequest {
            name: "w1-0-0".into(),
        })
        .await
        .map(|_| ())
    })
    .await?;
    Ok(run.figures())
}

async fn etcd_reads(
    endpoints: &[String],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let connections = etcd::kv_clients(endpoints, clients).await?;
    // etcd's default range read is linearizable (ReadIndex, like Blixard's).
    let run = closed_loop(
        &connections,
        clients,
        duration,
        |mut kv: KvClient, _, _| async move { kv.get("w1-0-0", None).await.map(|_| ()) },
    )
    .await?;
    Ok(run.figures())
}

/// The cluster member that leads, and the others.
async fn leader_and_followers(cluster: &LocalCluster) -> anyhow::Result<(String, Vec<String>)> {
    let first = &cluster.nodes[0].address;
    let leader = client::cluster(first)
        .await?
        .status(pb::StatusRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner()
        .leader_id;
    let leader = cluster
        .nodes
        .iter()
        .find(|n| n.node_id == leader)
        .map(|n| n.address.clone())
        .ok_or_else(|| anyhow::anyhow!("no leader among the bench nodes"))?;
    let followers = cluster
        .nodes
        .iter()
        .map(|n| n.address.clone())
        .filter(|a| *a != leader)
        .collect();
    Ok((leader, followers))
}

/// Idle footprint, then end-to-end placement onto gossiping nodes, then
/// the footprint holding the placed VMs; on a cluster of its own.
async fn placement_and_footprint(
    program: &Path,
    dir: &Path,
    sizes: &Sizes,
    spinner: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    let cluster = start_cluster(program, &dir.join("placement"), false, spinner).await?;
    let mut rows = vec![Row::figure(
        "footprint: idle voter RSS",
        voters_rss_mib(&cluster)?,
        Unit::Mib,
        "largest of 3 voters, agent off, empty cluster".into(),
    )];
    let address = cluster.nodes[0].address.clone();
    let simulated = placement::SimulatedNodes::join(
        &address,
        &cluster.ca,
        &cluster.gossip_keys,
        sizes.placement_nodes,
        spinner,
    )
    .await?;
    let placed = placement::end_to_end_row(
        &address,
        sizes.placement_nodes,
        sizes.placement_groups,
        sizes.placement_per_group,
        spinner,
    )
    .await;
    let vms = u64::from(sizes.placement_groups) * u64::from(sizes.placement_per_group);
    let rss = voters_rss_mib(&cluster);
    drop(cluster);
    simulated.stop();
    rows.push(placed?);
    rows.push(Row::figure(
        format!("footprint: voter RSS holding {vms} VMs"),
        rss?,
        Unit::Mib,
        format!("largest of 3 voters, {} nodes", sizes.placement_nodes + 3),
    ));
    Ok(rows)
}

/// Consensus writes and linearizable reads, beside etcd under the same
/// load when `etcd` runs.
async fn consensus(
    cluster: &LocalCluster,
    etcd: Option<&etcd::EtcdCluster>,
    sizes: &Sizes,
    spinner: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    let addresses: Vec<String> = cluster.nodes.iter().map(|n| n.address.clone()).collect();
    let mut rows = Vec::new();
    for &clients in sizes.write_clients {
        spinner.set_message(format!("consensus writes, {clients} clients"));
        let blixard = blixard_writes(&addresses, clients, sizes.duration).await?;
        let theirs = match etcd {
            Some(etcd) => {
                spinner.set_message(format!("etcd writes, {clients} clients"));
                Some(etcd_writes(&etcd.endpoints, clients, sizes.duration).await?)
            }
            None => None,
        };
        rows.push(Row::load(
            "consensus writes (vm create / etcd put), fsync on",
            clients,
            blixard,
            theirs,
            "3 members on 127.0.0.1, clients spread over all".into(),
        ));
    }
    let (leader, followers) = leader_and_followers(cluster).await?;
    let etcd_targets = match etcd {
        Some(etcd) => {
            let etcd_leader = etcd.leader().await?;
            let etcd_followers: Vec<String> = etcd
                .endpoints
                .iter()
                .filter(|e| **e != etcd_leader)
                .cloned()
                .collect();
            Some((vec![etcd_leader], etcd_followers))
        }
        None => None,
    };
    let clients = sizes.read_clients;
    for (i, (label, targets)) in [("leader", vec![leader]), ("followers", followers)]
        .into_iter()
        .enumerate()
    {
        spinner.set_message(format!("linearizable reads on the {label}"));
        let blixard = blixard_reads(&targets, clients, sizes.duration).await?;
        let theirs = match &etcd_targets {
            Some((etcd_leader, etcd_followers)) => {
                spinner.set_message(format!("etcd linearizable reads on the {label}"));
                let endpoints = if i == 0 { etcd_leader } else { etcd_followers };
                Some(etcd_reads(endpoints, clients, sizes.duration).await?)
            }
            None => None,
        };
        rows.push(Row::load(
            format!("linearizable reads (ReadIndex) on the {label}"),
            clients,
            blixard,
            theirs,
            "one key / one VM".into(),
        ));
    }
    Ok(rows)
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let format = args.output;
    let program = blixard_binary(args.blixard.clone());
    eprintln!("measuring {}", program.display());
    let sizes = Sizes::new(&args);
    let runs = |part: BenchPart| args.only.is_empty() || args.only.contains(&part);
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let spinner = output::spinner("scheduler");
    let mut skipped = Vec::new();
    let mut rows = Vec::new();
    let dir = tempfile::Builder::new()
        .prefix("blixard-bench-")
        .tempdir()?;

    if runs(BenchPart::Scheduler) {
        rows.push(placement::pure_row(
            sizes.scheduler_nodes,
            sizes.scheduler_vms,
        ));
    }
    if runs(BenchPart::Placement) {
        rows.extend(placement_and_footprint(&program, dir.path(), &sizes, &spinner).await?);
    }
    if runs(BenchPart::Dashboard) {
        spinner.set_message("dashboard frames");
        rows.extend(dashboard::rows(if args.quick { 1_000 } else { 10_000 })?);
    }
    if runs(BenchPart::Gossip) {
        rows.extend(gossip::rows(sizes.gossip_nodes, sizes.gossip_interval_ms, &spinner).await?);
    }
    let mut etcd_version = None;
    if runs(BenchPart::Consensus) || runs(BenchPart::VmStart) {
        let cluster =
            start_cluster(&program, &dir.path().join("consensus"), true, &spinner).await?;
        if runs(BenchPart::Consensus) {
            let (consensus_rows, version) = consensus_beside_etcd(
                &cluster,
                dir.path(),
                &args.etcd,
                &sizes,
                &spinner,
                &mut skipped,
            )
            .await?;
            rows.extend(consensus_rows);
            etcd_version = version;
        }
        if runs(BenchPart::VmStart) && sizes.boots > 0 {
            spinner.set_message("building the test guest");
            match image::build(&image::default_dir()) {
                Ok(image) => {
                    let address = cluster.nodes[0].address.clone();
                    rows.extend(vm_start::rows(&address, &image, sizes.boots, &spinner).await?);
                }
                Err(error) => skipped.push(format!("VM start path: {error:#}")),
            }
        }
    }
    spinner.finish_and_clear();

    let report = Report {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        quick: args.quick,
        started_at,
        etcd: etcd_version.unwrap_or_else(|| "not run".into()),
        skipped,
        rows,
    };
    report::print(format, &report)
}

/// Starts etcd beside `cluster` and runs the consensus rows; without
/// etcd, the rows have Blixard's figures only and `skipped` says why.
async fn consensus_beside_etcd(
    cluster: &LocalCluster,
    dir: &Path,
    etcd_binary: &str,
    sizes: &Sizes,
    spinner: &ProgressBar,
    skipped: &mut Vec<String>,
) -> anyhow::Result<(Vec<Row>, Option<String>)> {
    let etcd_dir = dir.join("etcd");
    std::fs::create_dir_all(&etcd_dir)?;
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let etcd = match etcd::EtcdCluster::start(etcd_binary, &etcd_dir, &ports, spinner).await {
        Ok(etcd) => Some(etcd),
        Err(error) => {
            skipped.push(format!("etcd comparison: {error:#}"));
            None
        }
    };
    let rows = consensus(cluster, etcd.as_ref(), sizes, spinner).await?;
    Ok((rows, etcd.map(|e| e.version.clone())))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn arguments_parse_as_documented() {
        BenchArgs::command().debug_assert();
        let args = BenchArgs::try_parse_from([
            "blixard-bench",
            "--quick",
            "--only",
            "consensus,vm-start",
            "-o",
            "json",
        ])
        .unwrap();
        assert!(args.quick);
        assert_eq!(args.only, [BenchPart::Consensus, BenchPart::VmStart]);
        assert_eq!(args.output, OutputFormat::Json);
        assert!(BenchArgs::try_parse_from(["blixard-bench", "--only", "disk"]).is_err());
    }
}
