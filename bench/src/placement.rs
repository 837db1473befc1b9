//! Placement speed: the pure scheduler over simulated nodes, and placement
//! end to end through a real cluster (scheduler pass, raft batching, fsync,
//! apply) onto nodes that gossip and report like workers.
//!
//! Invariant: the end-to-end figure counts only placements the cluster
//! committed, as its watch stream reports them.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use blixard_api::connect::Security;
use blixard_api::identity::GossipKey;
use blixard_api::pb::cluster_client::ClusterClient;
use blixard_api::pb::state_feed_client::StateFeedClient;
use blixard_api::{pb, tls};
use blixard_consensus::{ClusterState, Command, DesiredState, HostFacts, RunnerSource, VmSpec};
use blixard_daemon::controllers::scheduler::{self, NodeView, Params};
use blixard_daemon::security;
use blixard_membership::{Membership, MembershipConfig, NodeInfo, NodeRole};
use indicatif::ProgressBar;
use tokio_stream::StreamExt;

use super::report::{Row, Unit};
use blixard_cli::client;

const NODE_VCPUS: u32 = 64;
const NODE_MEMORY_MIB: u64 = 256 * 1024;
/// Simulated node ids start here, clear of the real nodes'.
const FIRST_SIMULATED_ID: u64 = 1_000;
const DEADLINE_MS: u64 = 300_000;
const POLL_INTERVAL_MS: u64 = 100;

fn host(accel: &str) -> HostFacts {
    HostFacts {
        memory_mib_total: NODE_MEMORY_MIB,
        vcpus_total: NODE_VCPUS,
        accel: accel.into(),
        labels: Default::default(),
        gossip_address: String::new(),
        fence_after_ms: 0,
    }
}

/// Places `vms` pending VMs over `nodes` nodes with the real scheduler.
pub fn pure_row(nodes: u64, vms: u64) -> Row {
    let mut state = ClusterState::default();
    for node_id in 1..=nodes {
        state.add_member(node_id, format!("10.0.0.{node_id}:7000"));
        state.apply(Command::SetHostFacts {
            node_id,
            facts: host("kvm"),
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
                platform: None,
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
        errors: (decisions.len() - placed) as u64,
        ..Row::figure(
            "scheduler (pure, one pass)",
            placed as f64 / elapsed.as_secs_f64(),
            Unit::PlacementsPerS,
            format!(
                "{placed} of {vms} VMs over {nodes} simulated nodes in {:.1} ms",
                elapsed.as_secs_f64() * 1000.0
            ),
        )
    }
}

/// Nodes that gossip in the cluster and report host facts, but run no
/// agent: the scheduler sees live capacity, and nothing boots.
pub struct SimulatedNodes {
    gossip: Vec<Membership>,
}

impl SimulatedNodes {
    /// Joins `count` nodes to the cluster at `address` (whose gossip
    /// listens on the same host and port over UDP) and reports their hosts.
    /// Each node proves itself with a certificate of the cluster's `ca`,
    /// and gossips with the cluster's `gossip_keys`.
    pub async fn join(
        address: &str,
        ca: &tls::CertifiedKey,
        gossip_keys: &[GossipKey],
        count: u64,
        spinner: &ProgressBar,
    ) -> anyhow::Result<Self> {
        spinner.set_message(format!("joining {count} simulated nodes"));
        let mut gossip = Vec::new();
        for node_id in FIRST_SIMULATED_ID..FIRST_SIMULATED_ID + count {
            let certificate = tls::issue_node_cert(ca, node_id)?;
            let channel = Security::node(&ca.cert_pem, &certificate)
                .endpoint(address)?
                .connect()
                .await?;
            let mut cluster = ClusterClient::new(channel.clone());
            let mut feed = StateFeedClient::new(channel);
            // A port nothing listens on: nothing in this benchmark calls
            // a node's API.
            let gossip_address = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
            let api_address = gossip_address.to_string();
            let cluster_id = cluster
                .status(pb::StatusRequest {})
                .await
                .map_err(client::status_error)?
                .into_inner()
                .cluster_id;
            cluster
                .join(pb::JoinRequest {
                    node_id,
                    address: api_address.clone(),
                    cluster_id: cluster_id.clone(),
                })
                .await
                .map_err(client::status_error)?;
            let info = NodeInfo {
                node_id,
                api_address,
                role: NodeRole::Worker,
                vcpus_total: NODE_VCPUS,
                memory_mib_total: NODE_MEMORY_MIB,
                memory_mib_free: NODE_MEMORY_MIB,
                disk_mib_free: 0,
                hypervisors: vec!["qemu".into()],
                accel: "kvm".into(),
                labels: Default::default(),
                vms_running: 0,
                version: env!("CARGO_PKG_VERSION").into(),
            };
            let config = MembershipConfig {
                node_id,
                cluster_name: "blixard".into(),
                cluster_id: cluster_id.clone(),
                gossip_bind: gossip_address,
                gossip_advertise: gossip_address,
                seeds: vec![address.to_string()],
                gossip_interval_ms: 500,
                phi_threshold: 8.0,
                dead_node_forget_after_ms: 3_600_000,
                security: Some(security::gossip_security(
                    &ca.cert_pem,
                    &certificate,
                    gossip_keys.to_vec(),
                )?),
            };
            gossip.push(Membership::start(config, &info).await?);
            let facts = Command::SetHostFacts {
                node_id,
                facts: HostFacts {
                    gossip_address: gossip_address.to_string(),
                    ..host("kvm")
                },
            };
            feed.propose(pb::ProposeRequest {
                command: facts.encode(),
                audit: Vec::new(),
                cluster_id: cluster_id.clone(),
            })
            .await
            .map_err(client::status_error)?;
        }
        spinner.set_message("waiting for the cluster to see the simulated nodes alive");
        let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
        let nodes = client::node(address).await?;
        loop {
            let listed = client::list_nodes(&nodes).await?.nodes;
            let alive = listed
                .iter()
                .filter(|n| n.node_id >= FIRST_SIMULATED_ID && n.liveness == "alive" && n.reported)
                .count() as u64;
            if alive == count {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {alive} of {count} simulated nodes alive after {DEADLINE_MS} ms"
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        Ok(SimulatedNodes { gossip })
    }

    pub fn stop(self) {
        for member in self.gossip {
            member.stop();
        }
    }
}

async fn watch_vms(address: &str) -> anyhow::Result<tonic::Streaming<pb::VmEvent>> {
    Ok(client::vm(address)
        .await?
        .watch(pb::WatchVmsRequest::default())
        .await
        .map_err(client::status_error)?
        .into_inner())
}

/// Creates `groups` replica groups of `per_group` VMs through `address`
/// and times until the cluster has committed a node for every one.
pub async fn end_to_end_row(
    address: &str,
    nodes: u64,
    groups: u32,
    per_group: u32,
    spinner: &ProgressBar,
) -> anyhow::Result<Row> {
    let total = u64::from(groups) * u64::from(per_group);
    let mut vm = client::vm(address).await?;
    let mut watch = watch_vms(address).await?;
    spinner.set_message(format!("placing {total} VMs through the cluster"));
    let started = Instant::now();
    for group in 0..groups {
        vm.create(pb::CreateVmRequest {
            spec: Some(super::vm_spec(format!("place-{group}"))),
            replicas: per_group,
            stopped: false,
        })
        .await
        .map_err(client::status_error)?;
    }
    let created = started.elapsed();
    let mut placed: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DEADLINE_MS);
    while (placed.len() as u64) < total {
        let next = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} of {total} VMs placed after {DEADLINE_MS} ms",
                    placed.len()
                )
            })?
            .ok_or_else(|| anyhow::anyhow!("the watch stream ended"))?;
        let event = match next {
            Ok(event) => event,
            // Fell behind: watch again, which starts with the whole list.
            Err(status) if status.code() == tonic::Code::DataLoss => {
                watch = watch_vms(address).await?;
                continue;
            }
            Err(status) => return Err(client::status_error(status)),
        };
        if let Some(info) = event.vm {
            let name = info.spec.map(|s| s.name).unwrap_or_default();
            if info.assigned_node != 0 && name.starts_with("place-") {
                placed.insert(name);
            }
        }
    }
    let elapsed = started.elapsed();
    Ok(Row::figure(
        "placement end to end (scheduler + raft, committed)",
        total as f64 / elapsed.as_secs_f64(),
        Unit::PlacementsPerS,
        format!(
            "{total} VMs ({groups} groups created in {:.0} ms) on {nodes} gossiping nodes in {:.0} ms; 3 voters, fsync on",
            created.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1000.0
        ),
    ))
}
