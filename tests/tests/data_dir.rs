//! A data directory knows whose it is: real `blixard agent` processes
//! whose stores are emptied, deleted, truncated, overwritten, started as
//! another node, wiped on the founding node, moved to a new address, or
//! filled to the last byte. Each is refused with what to do, or heals,
//! and the recovery procedures the README gives are run as written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use blixard_tests::{create_vm, eventually, NodeOptions, TestCluster, Timings};

const STORE: &str = "data.mdb";

fn store_of(cluster: &TestCluster, id: u64) -> PathBuf {
    cluster.nodes[&id].data_dir.join(STORE)
}

async fn wait_vm(cluster: &TestCluster, id: u64, name: &str) {
    eventually(
        &format!("node {id} to list {name}"),
        Duration::from_secs(20),
        || async {
            let (names, _) = cluster.vm_names(id).await?;
            names.iter().any(|n| n == name).then_some(())
        },
    )
    .await;
}

/// Goal: a store that was emptied, deleted, truncated or overwritten, or a
/// directory started as another node, is refused with a message saying
/// what happened and what to do, never with a signal and never by founding
/// or joining as an empty node; the damaged files are left as they were;
/// putting back a copy of the store taken while the node was stopped
/// brings the node back with everything it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_damaged_store_is_refused_and_a_copy_brings_the_node_back() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    cluster.wait_voters(3).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    create_vm(&mut cluster.vm_client(leader).await, "web")
        .await
        .unwrap();
    wait_vm(&cluster, victim, "web").await;
    let cluster_id = cluster.cluster_id(leader).await;
    cluster.kill(victim);
    let store = store_of(&cluster, victim);
    let copy = cluster.dir.path().join("copy.mdb");
    std::fs::copy(&store, &copy).unwrap();
    let store_bytes = std::fs::read(&store).unwrap();
    let page_bytes = 4096;
    assert!(store_bytes.len() > 4 * page_bytes, "{}", store_bytes.len());

    // Emptied (the 300 VMs once silently gone), then deleted.
    std::fs::write(&store, b"").unwrap();
    cluster.restart(victim);
    let log = cluster.wait_exit_saying(victim, "is empty").await;
    for named in [
        cluster_id.as_str(),
        &format!("remove-node {victim}"),
        "Recovering a node",
    ] {
        assert!(log.contains(named), "lacks {named:?}: {log}");
    }
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 0, "store touched");
    std::fs::remove_file(&store).unwrap();
    cluster.restart(victim);
    cluster.wait_exit_saying(victim, "is missing").await;
    assert!(!store.exists(), "a store was made");

    // Truncated by a page (SIGBUS before), then not LMDB at all.
    std::fs::write(&store, &store_bytes[..store_bytes.len() - page_bytes]).unwrap();
    cluster.restart(victim);
    cluster.wait_exit_saying(victim, "truncated").await;
    std::fs::write(&store, vec![0xab; store_bytes.len()]).unwrap();
    cluster.restart(victim);
    cluster.wait_exit_saying(victim, "cannot be read").await;

    // The whole directory, started as another node.
    std::fs::copy(&copy, &store).unwrap();
    cluster.set_config(victim, "node_id", "9");
    cluster.restart(victim);
    cluster
        .wait_exit_saying(victim, &format!("belongs to node {victim}, not node 9"))
        .await;

    // The copy, as itself: back in the cluster with what it had.
    cluster.set_config(victim, "node_id", &victim.to_string());
    cluster.restart(victim);
    eventually(
        "the restored node to follow a leader",
        Duration::from_secs(20),
        || async { (cluster.status(victim).await?.leader_id != 0).then_some(()) },
    )
    .await;
    wait_vm(&cluster, victim, "web").await;
    create_vm(&mut cluster.vm_client(victim).await, "after")
        .await
        .unwrap();
    wait_vm(&cluster, leader, "after").await;
}

/// Goal: the founding node, its data directory wiped, never comes back as
/// the member it was: asked to found and to join it refuses both; asked
/// to join it refuses (the cluster still counts it as a voter); asked to
/// found it founds a cluster of its own
/// whose id the old one refuses, and it keeps running (it crash-looped on
/// the old cluster's first heartbeat before). The README's procedure
/// (remove the node, start the host as a new one) brings the host back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_founding_node_never_rejoins_as_itself() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    cluster.wait_voters(3).await;
    create_vm(&mut cluster.vm_client(1).await, "web")
        .await
        .unwrap();
    let cluster_id = cluster.cluster_id(1).await;
    cluster.kill(1);
    // The host lost /var but kept its certificate (and the operator the
    // cluster's management token the harness reads from node 1).
    let data_dir = cluster.nodes[&1].data_dir.clone();
    let token_file = data_dir.join(blixard_api::MANAGEMENT_TOKEN_FILE);
    let token = std::fs::read(&token_file).unwrap();
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "tls" {
            remove(&path);
        }
    }

    let written = || data_dir.join("identity.toml").exists() || data_dir.join(STORE).exists();
    // Its config still says to found; given the others too, it refuses
    // both (founding "unless they answer" founds a second cluster whenever
    // they are down).
    let others = format!("[\"{}\"]", cluster.address(2));
    cluster.set_config(1, "join", &others);
    cluster.restart(1);
    cluster
        .wait_exit_saying(1, "both --bootstrap and --join were given")
        .await;
    assert!(!written(), "the refused start wrote to its data directory");
    cluster.set_config(1, "bootstrap", "false");
    cluster.restart(1);
    cluster
        .wait_exit_saying(1, "node 1 is already a raft member")
        .await;
    assert!(!written(), "the refused start wrote to its data directory");

    cluster.set_config(1, "join", "[]");
    cluster.set_config(1, "bootstrap", "true");
    cluster.restart(1);
    let founded = eventually("node 1 to found anew", Duration::from_secs(20), || async {
        let status = cluster.status(1).await?;
        (status.leader_id == 1).then_some(status.cluster_id)
    })
    .await;
    assert_ne!(founded, cluster_id);
    eventually(
        "node 1 to refuse the old cluster's raft messages",
        Duration::from_secs(20),
        || async {
            cluster
                .log(1)
                .contains("refused a node of another cluster")
                .then_some(())
        },
    )
    .await;
    // Nor do the old cluster's voters take its barriers or proposals,
    // though its certificate is still one they hold it to.
    let mut as_one = blixard_api::pb::state_feed_client::StateFeedClient::new(
        cluster.peer_channel(2, 1).await.unwrap(),
    );
    let barrier = as_one
        .barrier(blixard_api::pb::BarrierRequest {
            cluster_id: founded.clone(),
        })
        .await;
    let proposal = as_one
        .propose(blixard_api::pb::ProposeRequest {
            command: Vec::new(),
            audit: Vec::new(),
            cluster_id: founded.clone(),
        })
        .await;
    for refused in [barrier.map(|_| ()), proposal.map(|_| ())] {
        let refused = refused.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("belongs to cluster"),
            "{refused:?}"
        );
    }
    let (on_one, _) = cluster.vm_names(1).await.unwrap();
    assert!(on_one.is_empty(), "{on_one:?}");
    // Node 1 wrote its new cluster's token; the old one is the operator's.
    std::fs::write(&token_file, &token).unwrap();
    let leader = cluster.wait_leader_among(&[2, 3]).await;
    assert_eq!(cluster.exit_status(1), None, "node 1 stopped");
    assert_eq!(cluster.cluster_id(leader).await, cluster_id);
    wait_vm(&cluster, leader, "web").await;

    // Recovering a node: remove it, start the host as a new node.
    cluster.kill(1);
    cluster.cli_ok(leader, &["cluster", "remove-node", "1"]);
    cluster.add_node(4, Some(leader));
    eventually("node 4 to join", Duration::from_secs(30), || async {
        let status = cluster.status(4).await?;
        (status.cluster_id == cluster_id && status.leader_id != 0).then_some(())
    })
    .await;
    wait_vm(&cluster, 4, "web").await;
}

fn remove(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}

/// Goal: a voter restarted on a new address is heard again and the
/// cluster records the address (it stayed a pre-candidate before: the
/// others answered its old address, and the fix ran only with a leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_on_a_new_address_is_heard_again() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    cluster.wait_voters(3).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let moved = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(moved);
    let address = cluster.move_node(moved);
    cluster.restart(moved);
    eventually(
        "the cluster to record the new address",
        Duration::from_secs(20),
        || async {
            let members = cluster.status(leader).await?.members;
            members
                .iter()
                .any(|m| m.node_id == moved && m.address == address)
                .then_some(())
        },
    )
    .await;
    eventually(
        "the moved voter to follow the leader",
        Duration::from_secs(20),
        || async { (cluster.status(moved).await?.leader_id != 0).then_some(()) },
    )
    .await;
    create_vm(&mut cluster.vm_client(moved).await, "web")
        .await
        .unwrap();
    assert_eq!(cluster.voter_count(leader).await, Some(3));
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Goal: a full disk is named as one ("no space left on device", not
/// "Input/output error"), the node stops rather than run on a store it
/// cannot write, and once there is room it starts with every write it
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_named_and_nothing_acknowledged_is_lost() {
    let mut cluster = TestCluster::empty(Timings::default(), blixard_tests::Network::Loopback);
    let data_dir = cluster.dir.path().join("node1");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&data_dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (the tests run as root)");
    let _mount = Mount(data_dir.clone());
    cluster.add_node_with(
        1,
        NodeOptions {
            agent: false,
            ..NodeOptions::default()
        },
    );
    cluster.wait_leader_among(&[1]).await;
    // Writes acknowledged before the disk filled, and any after it.
    let mut client = cluster.vm_client(1).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("before-{i}");
        create_vm(&mut client, &name).await.unwrap();
        acknowledged.push(name);
    }
    let filler = data_dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    use std::io::Write as _;
    while file.write_all(&chunk).is_ok() {}
    drop(file);

    for i in 0..10_000 {
        let name = format!("vm-{i}");
        match create_vm(&mut client, &name).await {
            Ok(_) => acknowledged.push(name),
            Err(_) => break,
        }
    }
    cluster.wait_exit_saying(1, "no space left on device").await;
    std::fs::remove_file(&filler).unwrap();
    cluster.restart(1);
    cluster.wait_leader_among(&[1]).await;
    let (names, _) = cluster.vm_names(1).await.unwrap();
    for name in &acknowledged {
        assert!(names.contains(name), "{name} was acknowledged, then lost");
    }
}
