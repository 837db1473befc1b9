//! `blixard bench`: starts what it measures, runs it, prints one table.
//!
//! Invariant: every figure comes from this run on this machine; nothing is
//! asserted about it (tests never assert timings).

use std::sync::Arc;
use std::time::{Duration, Instant};

use blixard_api::pb;
use blixard_api::pb::vm_client::VmClient;
use blixard_daemon::controllers::scheduler::{self, NodeView, Params};
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::cli::{BenchArgs, OutputFormat};
use crate::local::LocalCluster;
use crate::{client, output};

/// Clients sharing one HTTP/2 connection.
const CLIENTS_PER_CHANNEL: usize = 32;

#[derive(Serialize)]
struct Row {
    benchmark: String,
    clients: Option<usize>,
    ops_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    note: String,
}

#[derive(Serialize)]
struct Report {
    cores: usize,
    quick: bool,
    rows: Vec<Row>,
}

/// Latencies of one closed-loop run.
struct Run {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Run {
    fn percentile_ms(&self, percent: usize) -> Option<f64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let index = (self.latencies_us.len() * percent / 100).min(self.latencies_us.len() - 1);
        Some(self.latencies_us[index] as f64 / 1000.0)
    }

    fn row(&self, benchmark: &str, clients: usize, note: String) -> Row {
        Row {
            benchmark: benchmark.into(),
            clients: Some(clients),
            ops_per_s: self.ops as f64 / self.elapsed.as_secs_f64(),
            p50_ms: self.percentile_ms(50),
            p99_ms: self.percentile_ms(99),
            errors: self.errors,
            note,
        }
    }
}

/// `clients` tasks each calling `operation` back to back for `duration`,
/// spread over `addresses`.
async fn closed_loop<F, Fut>(
    addresses: &[String],
    clients: usize,
    duration: Duration,
    operation: F,
) -> anyhow::Result<Run>
where
    F: Fn(VmClient<Channel>, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let mut channels = Vec::new();
    for address in addresses {
        for _ in 0..clients.div_ceil(CLIENTS_PER_CHANNEL).max(1) {
            channels.push(client::channel(address).await?);
        }
    }
    let operation = Arc::new(operation);
    let results = Arc::new(Mutex::new((0u64, 0u64, Vec::new())));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for task in 0..clients {
        let vm = VmClient::new(channels[task % channels.len()].clone());
        let operation = operation.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ops, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                match operation(vm.clone(), task, i).await {
                    Ok(()) => {
                        ops += 1;
                        latencies.push(began.elapsed().as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            let mut all = results.lock().await;
            all.0 += ops;
            all.1 += errors;
            all.2.extend(latencies);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let (ops, errors, mut latencies_us) = std::mem::take(&mut *results.lock().await);
    latencies_us.sort_unstable();
    Ok(Run {
        ops,
        errors,
        elapsed,
        latencies_us,
    })
}

fn spec(name: String) -> pb::VmSpec {
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

/// Places `vms` pending VMs over `nodes` nodes with the real scheduler.
fn scheduler_row(nodes: u64, vms: u64) -> Row {
    use blixard_consensus::{ClusterState, Command, DesiredState, HostFacts, RunnerSource, VmSpec};
    let mut state = ClusterState::default();
    for node_id in 1..=nodes {
        state.add_member(node_id, format!("10.0.0.{node_id}:7000"));
        state.apply(Command::SetHostFacts {
            node_id,
            facts: HostFacts {
                memory_mib_total: 256 * 1024,
                vcpus_total: 64,
                accel: "kvm".into(),
                labels: Default::default(),
                gossip_address: String::new(),
                fence_after_ms: 0,
            },
        });
    }
    for i in 0..vms {
        let name = format!("vm-{i}");
        state.apply(Command::CreateVm {
            spec: VmSpec {
                name: name.clone(),
                vcpus: 1,
                memory_mib: 512,
                runner: RunnerSource::Flake {
                    flake_ref: "x".into(),
                },
                pinned_node: None,
                placement: Default::default(),
                failover: Default::default(),
                group: None,
            },
            created_at_unix_ms: 0,
        });
        state.apply(Command::SetVmDesiredState {
            name,
            desired_state: DesiredState::Running,
        });
    }
    let views: Vec<NodeView> = scheduler::node_views(&state, &|_| true);
    let started = Instant::now();
    let decisions = scheduler::schedule(&state, &views, Params { vcpu_overcommit: 4 });
    let elapsed = started.elapsed();
    let placed = decisions
        .iter()
        .filter(|d| matches!(d, scheduler::Decision::Place { .. }))
        .count();
    Row {
        benchmark: "scheduler (pure)".into(),
        clients: None,
        ops_per_s: placed as f64 / elapsed.as_secs_f64(),
        p50_ms: None,
        p99_ms: None,
        errors: (decisions.len() - placed) as u64,
        note: format!(
            "{placed} of {vms} VMs over {nodes} nodes in {:.1} ms",
            elapsed.as_secs_f64() * 1000.0
        ),
    }
}

pub async fn run(args: BenchArgs, format: OutputFormat) -> anyhow::Result<()> {
    let duration = Duration::from_millis(if args.quick { 500 } else { args.duration });
    let levels: &[usize] = if args.quick { &[1, 16] } else { &[1, 16, 256] };
    let mut rows = Vec::new();
    let spinner = output::spinner("scheduler");
    let (nodes, vms) = if args.quick {
        (100, 1_000)
    } else {
        (1_000, 10_000)
    };
    rows.push(scheduler_row(nodes, vms));

    let dir = tempfile::Builder::new()
        .prefix("blixard-bench-")
        .tempdir()?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    spinner.set_message("starting three voters");
    let cluster = LocalCluster::start(
        dir.path(),
        &addresses,
        "[agent]\nenabled = false\n",
        &spinner,
    )
    .await?;

    for &clients in levels {
        spinner.set_message(format!("consensus writes, {clients} clients"));
        let run = closed_loop(
            &addresses,
            clients,
            duration,
            move |mut vm, task, i| async move {
                let request = pb::CreateVmRequest {
                    spec: Some(spec(format!("w{clients}-{task}-{i}"))),
                    replicas: 0,
                };
                vm.create(request).await.map(|_| ())
            },
        )
        .await?;
        rows.push(run.row(
            "consensus writes (vm create, fsync on)",
            clients,
            "3 voters on 127.0.0.1, requests spread over all nodes".into(),
        ));
    }

    let leader = client::cluster(&addresses[0])
        .await?
        .status(pb::StatusRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner()
        .leader_id;
    let leader_address = cluster
        .nodes
        .iter()
        .find(|n| n.node_id == leader)
        .map(|n| n.address.clone())
        .ok_or_else(|| anyhow::anyhow!("no leader among the bench nodes"))?;
    let followers: Vec<String> = addresses
        .iter()
        .filter(|a| **a != leader_address)
        .cloned()
        .collect();
    let read_clients = 16;
    for (label, targets) in [("leader", vec![leader_address]), ("followers", followers)] {
        spinner.set_message(format!("linearizable reads on the {label}"));
        let run = closed_loop(
            &targets,
            read_clients,
            duration,
            |mut vm, _, _| async move {
                vm.get(pb::VmNameRequest {
                    name: "w1-0-0".into(),
                })
                .await
                .map(|_| ())
            },
        )
        .await?;
        rows.push(run.row(
            &format!("linearizable reads (ReadIndex) on {label}"),
            read_clients,
            "vm get of one VM".into(),
        ));
    }
    spinner.finish_and_clear();
    drop(cluster);

    let report = Report {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        quick: args.quick,
        rows,
    };
    output::print(format, &report, |report| {
        let mut table = output::table(&[
            "BENCHMARK",
            "CLIENTS",
            "OPS/S",
            "P50 ms",
            "P99 ms",
            "ERRORS",
            "NOTE",
        ]);
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        for row in &report.rows {
            table.add_row(vec![
                row.benchmark.clone(),
                row.clients.map_or("-".into(), |c| c.to_string()),
                format!("{:.0}", row.ops_per_s),
                ms(row.p50_ms),
                ms(row.p99_ms),
                row.errors.to_string(),
                row.note.clone(),
            ]);
        }
        table.add_row(vec![format!("machine: {} cores", report.cores)]);
        table
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
