//! Deterministic simulation (madsim) of clusters running the real daemon
//! code: consensus, LMDB storage, gRPC transport and services, chitchat
//! gossip, placement, failover, autopilot and the node agent (its guests
//! are simulated: [`SimLauncher`]).
//! Run with `RUSTFLAGS="--cfg madsim" cargo test --target-dir target/sim
//! -p blixard-tests --test simulation`; `MADSIM_TEST_SEED` picks the seed.

#![cfg(madsim)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blixard_api::pb;
use blixard_api::pb::{
    cluster_client::ClusterClient, node_client::NodeClient, vm_client::VmClient,
};
use blixard_daemon::Config;
use blixard_nodeagent::{Accel, ExitStatus, Hypervisor, Launched, Launcher, VmDir, VmPlan};
use madsim::rand::Rng;
use madsim::runtime::{Handle, NodeHandle};

const PORT: u16 = 7000;

/// Logs to the test output when `BLIXARD_LOG` is set (e.g. `info`).
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("BLIXARD_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

fn ip(id: u64) -> IpAddr {
    // Simulated addresses: nothing leaves the process.
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

fn address(id: u64) -> String {
    SocketAddr::new(ip(id), PORT).to_string()
}

fn config(id: u64, data_dir: PathBuf, election_timeout_ms: u64) -> Config {
    let mut config = Config::default();
    config.cluster.node_id = id;
    config.cluster.data_dir = data_dir;
    if id != 1 {
        config.cluster.join = vec![address(1)];
    } else {
        config.cluster.bootstrap = true;
    }
    config.api.bind = address(id);
    // madsim has one port space for TCP and UDP, so gossip cannot share
    // the gRPC port number here as it does on a real host.
    config.membership.gossip_bind = Some(SocketAddr::new(ip(id), PORT + 1).to_string());
    // The node agent runs, its guests simulated (`SimLauncher`).
    config.agent.enabled = true;
    // The simulated network carries no TLS (madsim-tonic ignores it).
    config.security.insecure = true;
    config.consensus.heartbeat_interval_ms = 100;
    // One election timeout per node, drawn from the simulation's seed, so
    // raft-rs's own randomness cannot make runs differ.
    config.consensus.election_timeout_ms = election_timeout_ms;
    config.consensus.election_timeout_max_ms = Some(election_timeout_ms + 100);
    config.consensus.request_timeout_ms = 5_000;
    config.membership.gossip_interval_ms = 100;
    config.autopilot.voters = 3;
    config.autopilot.dead_voter_after_ms = 3_000;
    config.failover.lost_after_ms = 4_000;
    config.failover.fence_after_ms = 2_000;
    config
}

fn start_node(handle: &Handle, id: u64, root: &std::path::Path) -> NodeHandle {
    // Each node gets its own fixed timeout (its tick range is one tick
    // wide, see `config`). Two nodes with equal timeouts would split every
    // vote forever, so the seed only picks the spread within a node's slot.
    let slot = 300 * (id - 1);
    let election_timeout_ms = 1_000 + slot + 100 * madsim::rand::thread_rng().gen_range(0..3u64);
    let config = Arc::new(config(
        id,
        root.join(format!("node{id}")),
        election_timeout_ms,
    ));
    handle
        .create_node()
        .name(format!("node{id}"))
        .ip(ip(id))
        .init(move || {
            let config = (*config).clone();
            async move {
                let launcher: Arc<dyn Launcher> = Arc::new(SimLauncher);
                let run = blixard_daemon::agent::run_with_launcher(
                    config,
                    Some(launcher),
                    std::future::pending(),
                );
                if let Err(error) = run.await {
                    panic!("agent failed: {error}");
                }
            }
        })
        .build()
}

/// How long a simulated guest takes to boot.
const SIM_BOOT_MS: u64 = 200;

/// Hypervisors inside the simulation, where no process can start: a guest
/// runs from its launch until it is stopped or its node dies. Everything
/// around it (the node agent, supervisors, reports, fencing) is the real
/// code.
struct SimLauncher;

/// A simulated guest: it runs until stopped.
struct SimGuest;

#[async_trait]
impl Hypervisor for SimGuest {
    fn pid(&self) -> Option<u32> {
        None
    }

    async fn wait(&mut self) -> ExitStatus {
        std::future::pending().await
    }

    async fn stop(&mut self, _timeout_ms: u64) -> blixard_nodeagent::Result<Option<ExitStatus>> {
        Ok(Some(ExitStatus {
            success: true,
            text: "exit code 0".into(),
        }))
    }
}

#[async_trait]
impl Launcher for SimLauncher {
    fn accel(&self) -> Accel {
        Accel::Tcg
    }

    /// A simulated guest dies with its node.
    async fn adopt(&self, _vm: VmDir<'_>) -> Option<Box<dyn Hypervisor>> {
        None
    }

    async fn launch(&self, _vm: VmDir<'_>, _plan: &VmPlan) -> blixard_nodeagent::Result<Launched> {
        tokio::time::sleep(Duration::from_millis(SIM_BOOT_MS)).await;
        Ok(Launched {
            hypervisor: Box::new(SimGuest),
            boot_ms: Some(SIM_BOOT_MS),
        })
    }
}

async fn status(id: u64) -> Option<pb::StatusResponse> {
    let mut client = ClusterClient::connect(format!("http://{}", address(id)))
        .await
        .ok()?;
    Some(client.status(pb::StatusRequest {}).await.ok()?.into_inner())
}

async fn wait_for<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> Fut,
) -> T {
    // Simulated time: 600 polls of 100 ms are one simulated minute.
    for _ in 0..600 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("simulated minute passed waiting for {what}");
}

async fn leader_among(ids: Vec<u64>) -> u64 {
    wait_for("an agreed leader", || async {
        let mut leaders = Vec::new();
        for id in &ids {
            leaders.push(status(*id).await?.leader_id);
        }
        let leader = leaders[0];
        (leader != 0 && ids.contains(&leader) && leaders.iter().all(|l| *l == leader))
            .then_some(leader)
    })
    .await
}

async fn create(id: u64, name: String) -> Result<(), tonic::Status> {
    let mut client = VmClient::connect(format!("http://{}", address(id)))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let spec = blixard_tests::flake_spec(&name);
    client
        .create(pb::CreateVmRequest {
            spec: Some(spec),
            replicas: 0,
            stopped: false,
        })
        .await?;
    Ok(())
}

async fn names(id: u64) -> Option<Vec<String>> {
    let client = VmClient::connect(format!("http://{}", address(id)))
        .await
        .ok()?;
    let list = blixard_api::pages::all_vms("", |request| {
        let mut client = client.clone();
        async move { client.list(request).await }
    })
    .await
    .ok()?;
    Some(
        list.vms
            .into_iter()
            .map(|vm| vm.spec.unwrap().name)
            .collect(),
    )
}

/// Three simulated nodes and a client node to drive them from.
fn three_nodes_and_a_client(
    handle: &Handle,
    root: &std::path::Path,
) -> (Vec<NodeHandle>, NodeHandle) {
    let nodes = (1..=3).map(|id| start_node(handle, id, root)).collect();
    let client = handle.create_node().name("client").ip(ip(100)).build();
    (nodes, client)
}

/// Goal: the real consensus code keeps every acknowledged write through a
/// leader crash and a partition. Method: three simulated nodes; writes
/// through a client node; kill the leader, clog a follower's network,
/// restart the leader; every node ends with every acknowledged VM.
#[madsim::test]
async fn three_nodes_survive_leader_crash_and_partition() {
    init_logging();
    let handle = Handle::current();
    let root = tempfile::tempdir().unwrap();
    let (nodes, client) = three_nodes_and_a_client(&handle, root.path());

    client
        .spawn(async move {
            wait_for("three voters", || async {
                let status = status(1).await?;
                let voters = status
                    .members
                    .iter()
                    .filter(|m| m.role() == pb::MemberRole::Voter)
                    .count();
                (voters == 3).then_some(())
            })
            .await;
        })
        .await
        .unwrap();

    let leader = client.spawn(leader_among(vec![1, 2, 3])).await.unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        let name = format!("before-{i:02}");
        let through = 1 + (i % 3);
        if client
            .spawn(create(through, name.clone()))
            .await
            .unwrap()
            .is_ok()
        {
            acknowledged.push(name);
        }
    }
    assert_eq!(acknowledged.len(), 30, "writes failed with all nodes up");

    handle.kill(nodes[(leader - 1) as usize].id());
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = client.spawn(leader_among(survivors.clone())).await.unwrap();
    assert_ne!(new_leader, leader);
    for i in 0..30 {
        let name = format!("after-{i:02}");
        if client
            .spawn(create(new_leader, name.clone()))
            .await
            .unwrap()
            .is_ok()
        {
            acknowledged.push(name);
        }
    }
    assert!(acknowledged.len() >= 50, "too few writes after failover");

    handle.restart(nodes[(leader - 1) as usize].id());
    // Cut the new leader off; the restarted node and the other follower
    // must elect a leader and keep the log.
    let net = madsim::net::NetSim::current();
    net.clog_node(nodes[(new_leader - 1) as usize].id());
    let others: Vec<u64> = (1..=3).filter(|id| *id != new_leader).collect();
    let third_leader = client.spawn(leader_among(others.clone())).await.unwrap();
    assert!(others.contains(&third_leader));
    net.unclog_node(nodes[(new_leader - 1) as usize].id());

    acknowledged.sort();
    for id in 1..=3u64 {
        let expected = acknowledged.clone();
        client
            .spawn(async move {
                wait_for("every acknowledged write", || async {
                    let listed = names(id).await?;
                    expected.iter().all(|n| listed.contains(n)).then_some(())
                })
                .await
            })
            .await
            .unwrap();
    }
}

/// Every VM's node (0: none) and phase, as node `id` sees them.
async fn vm_nodes(id: u64) -> Option<Vec<(String, u64, pb::VmPhase)>> {
    let client = VmClient::connect(format!("http://{}", address(id)))
        .await
        .ok()?;
    let list = blixard_api::pages::all_vms("", |request| {
        let mut client = client.clone();
        async move { client.list(request).await }
    })
    .await
    .ok()?;
    Some(
        list.vms
            .into_iter()
            .map(|vm| {
                let phase = blixard_api::vm_phase(&vm);
                (vm.spec.unwrap().name, vm.assigned_node, phase)
            })
            .collect(),
    )
}

async fn voters(id: u64) -> Option<Vec<u64>> {
    let status = status(id).await?;
    Some(
        status
            .members
            .iter()
            .filter(|m| m.role() == pb::MemberRole::Voter)
            .map(|m| m.node_id)
            .collect(),
    )
}

/// Goal: gossip, failover and autopilot heal the cluster in the real code.
/// Method: four simulated nodes (three voters, one log-less worker fed by
/// a voter) with VMs running on all of them; kill the worker, restart it,
/// then kill a voter; every VM ends up running on a live node and the
/// worker is made a learner and promoted in the dead voter's place.
#[madsim::test]
async fn failover_and_autopilot_heal_the_cluster() {
    init_logging();
    let handle = Handle::current();
    let root = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeHandle> = (1..=4)
        .map(|id| start_node(&handle, id, root.path()))
        .collect();
    let client = handle.create_node().name("client").ip(ip(100)).build();
    let worker = client
        .spawn(async {
            wait_for("three voters and a worker, all reporting", || async {
                let voting = voters(1).await?.len();
                let client = NodeClient::connect(format!("http://{}", address(1)))
                    .await
                    .ok()?;
                let nodes = blixard_api::pages::all_nodes(|request| {
                    let mut client = client.clone();
                    async move { client.list(request).await }
                })
                .await
                .ok()?;
                let reported = nodes.nodes.iter().filter(|n| n.reported).count();
                (voting == 3 && reported == 4).then_some(())
            })
            .await;
            for i in 0..12 {
                let mut client = VmClient::connect(format!("http://{}", address(1)))
                    .await
                    .unwrap();
                let name = format!("vm-{i:02}");
                client
                    .create(pb::CreateVmRequest {
                        spec: Some(blixard_tests::flake_spec(&name)),
                        replicas: 0,
                        stopped: false,
                    })
                    .await
                    .unwrap();
                client.start(pb::VmNameRequest { name }).await.unwrap();
            }
            let voting = voters(1).await.unwrap();
            let worker = (1..=4).find(|id| !voting.contains(id)).unwrap();
            wait_for("every VM running, some on the worker", || async {
                let placed = vm_nodes(1).await?;
                (placed
                    .iter()
                    .all(|(_, node, phase)| *node != 0 && *phase == pb::VmPhase::Running)
                    && placed.iter().any(|(_, node, _)| *node == worker))
                .then_some(())
            })
            .await;
            worker
        })
        .await
        .unwrap();
    let voting: Vec<u64> = (1..=4).filter(|id| *id != worker).collect();

    handle.kill(nodes[(worker - 1) as usize].id());
    let via = voting[0];
    client
        .spawn(wait_for(
            "every VM running again off the dead worker",
            move || async move {
                let placed = vm_nodes(via).await?;
                placed
                    .iter()
                    .all(|(_, node, phase)| {
                        *node != 0 && *node != worker && *phase == pb::VmPhase::Running
                    })
                    .then_some(())
            },
        ))
        .await
        .unwrap();

    // The worker comes back; then a voter dies for good and autopilot
    // promotes the worker in its place.
    handle.restart(nodes[(worker - 1) as usize].id());
    let leader = client.spawn(leader_among(voting.clone())).await.unwrap();
    let victim = *voting.iter().find(|id| **id != leader).unwrap();
    client
        .spawn(wait_for(
            "the worker back in the cluster",
            move || async move {
                let status = status(worker).await?;
                (status.leader_id != 0).then_some(())
            },
        ))
        .await
        .unwrap();
    handle.kill(nodes[(victim - 1) as usize].id());
    let restored = client
        .spawn(wait_for(
            "three voters without the dead one",
            move || async move {
                let voting = voters(leader).await?;
                (voting.len() == 3 && !voting.contains(&victim)).then_some(voting)
            },
        ))
        .await
        .unwrap();
    assert!(
        restored.contains(&worker),
        "worker not promoted: {restored:?}"
    );
    client
        .spawn(wait_for(
            "every VM running again off the dead voter",
            move || async move {
                let placed = vm_nodes(leader).await?;
                placed
                    .iter()
                    .all(|(_, node, phase)| {
                        *node != 0 && *node != victim && *phase == pb::VmPhase::Running
                    })
                    .then_some(())
            },
        ))
        .await
        .unwrap();
}

/// Goal: a linearizable read asked of a follower just as its leader dies
/// is answered once another leader is elected, not left to time out (the
/// dead leader took the follower's read index request with it, and a new
/// leader drops those until it has committed in its term). Method: three
/// nodes; cut the leader off and at once ask a follower for the settings
/// (a read barrier, with a 5 s request timeout); it answers them.
#[madsim::test]
async fn a_read_outlives_the_leader_it_was_sent_to() {
    init_logging();
    let handle = Handle::current();
    let root = tempfile::tempdir().unwrap();
    let (nodes, client) = three_nodes_and_a_client(&handle, root.path());
    client
        .spawn(async move {
            wait_for("three voters", || async {
                let voters = voters(1).await?;
                (voters.len() == 3).then_some(())
            })
            .await;
        })
        .await
        .unwrap();
    let leader = client.spawn(leader_among(vec![1, 2, 3])).await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut settings = client
        .spawn(ClusterClient::connect(format!(
            "http://{}",
            address(follower)
        )))
        .await
        .unwrap()
        .unwrap();
    // Answered while the leader is up (the connection is made).
    let read = |mut settings: ClusterClient<tonic::transport::Channel>| async move {
        settings.get_settings(pb::GetSettingsRequest {}).await
    };
    client.spawn(read(settings.clone())).await.unwrap().unwrap();

    madsim::net::NetSim::current().clog_node(nodes[(leader - 1) as usize].id());
    let answered = client.spawn(read(settings.clone())).await.unwrap();
    answered.unwrap_or_else(|e| panic!("node {follower} after leader {leader} was cut off: {e:?}"));
    let new_leader = client
        .spawn(leader_among((1..=3).filter(|id| *id != leader).collect()))
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    settings = client
        .spawn(ClusterClient::connect(format!(
            "http://{}",
            address(new_leader)
        )))
        .await
        .unwrap()
        .unwrap();
    client.spawn(read(settings)).await.unwrap().unwrap();
}
