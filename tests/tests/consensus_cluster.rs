//! Real `blixard agent` processes on 127.0.0.1: election, replication,
//! failover under load, snapshot catch-up and membership changes.

#![cfg(not(madsim))]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blixard_api::pb;
use blixard_tests::{create_vm, eventually, NodeOptions, TestCluster, Timings};

/// Goal: three daemons agree on one leader. Method: start three, then ask
/// every node (over gRPC and through the CLI) who leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_and_agree() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let mut terms = BTreeSet::new();
    for id in 1..=3 {
        let output = cluster.cli(id, &["cluster", "status", "--output", "json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(status["leader_id"], leader, "node {id} disagrees: {status}");
        assert_eq!(status["members"].as_array().unwrap().len(), 3);
        terms.insert(status["term"].as_u64().unwrap());
        let roles: Vec<&str> = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["voter", "voter", "voter"]);
    }
    assert_eq!(terms.len(), 1, "nodes report different terms: {terms:?}");
}

/// Goal: the CLI drives a VM definition through its lifecycle from any
/// node. Method: create, start, stop and delete through three different
/// nodes, reading the desired state back (JSON and YAML) after each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle_through_the_cli_on_different_nodes() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let run = |id: u64, args: &[&str]| cluster.cli_ok(id, args);
    let desired = |id: u64| {
        let json = run(id, &["vm", "status", "webapp", "-o", "json"]);
        let vm: serde_json::Value = serde_json::from_str(&json).unwrap();
        vm["desired_state"].as_str().unwrap().to_string()
    };
    run(
        1,
        &[
            "vm",
            "create",
            "webapp",
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--kernel",
            "/boot/vmlinuz",
            "--initrd",
            "/boot/initrd",
        ],
    );
    assert_eq!(desired(3), "stopped");
    run(2, &["vm", "start", "webapp"]);
    assert_eq!(desired(1), "running");
    let yaml = run(3, &["vm", "list", "--output", "yaml"]);
    assert!(
        yaml.contains("name: webapp") && yaml.contains("desired_state: running"),
        "{yaml}"
    );
    run(3, &["vm", "stop", "webapp"]);
    assert_eq!(desired(2), "stopped");
    run(1, &["vm", "delete", "webapp"]);
    let gone = cluster.cli(2, &["vm", "status", "webapp"]);
    // Exit 3: not found.
    assert_eq!(gone.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no VM named"));
}

/// Goal: writes through any node land in one order everywhere. Method:
/// create 500 VMs round-robin through all three nodes (followers forward),
/// then list on every node and compare names, order and revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_vms_created_through_every_node_list_identically() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let mut writers = Vec::new();
    for id in 1..=3u64 {
        let mut client = cluster.vm_client(id).await;
        writers.push(tokio::spawn(async move {
            let mut count = 0;
            for i in (0..500u64).filter(|i| i % 3 == id - 1) {
                create_vm(&mut client, &format!("vm-{i:03}")).await.unwrap();
                count += 1;
            }
            count
        }));
    }
    let mut created = 0;
    for writer in writers {
        created += writer.await.unwrap();
    }
    assert_eq!(created, 500);
    let expected: Vec<String> = (0..500).map(|i| format!("vm-{i:03}")).collect();
    let (names, revision) = cluster.vm_names(1).await.unwrap();
    assert_eq!(names, expected);
    for id in 2..=3 {
        assert_eq!(
            cluster.vm_names(id).await.unwrap(),
            (names.clone(), revision)
        );
    }
    // Five hundred creates on top of the three membership changes (and the
    // agents' host reports, which may land at any point).
    assert!(revision >= 503, "revision {revision}");
}

/// Goal: killing the leader under load loses no acknowledged write.
/// Method: two writers create VMs through the followers; SIGKILL the
/// leader; wait for a new leader; keep writing; restart the old leader from
/// its data directory and check every node holds every acknowledged VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_load_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (n, id) in followers.iter().enumerate() {
        let mut client = cluster.vm_client(*id).await;
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            // Bounded: each writer makes at most 2000 attempts.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                let name = format!("w{n}-{i:04}");
                if create_vm(&mut client, &name).await.is_ok() {
                    acknowledged.lock().unwrap().push(name);
                }
                i += 1;
            }
        }));
    }
    eventually(
        "writes before the kill",
        Duration::from_secs(20),
        || async { (acknowledged.lock().unwrap().len() >= 50).then_some(()) },
    )
    .await;
    cluster.kill(leader);
    let new_leader = cluster.wait_leader_among(&followers).await;
    assert_ne!(new_leader, leader);
    let before = acknowledged.lock().unwrap().len();
    eventually("writes after failover", Duration::from_secs(20), || async {
        (acknowledged.lock().unwrap().len() >= before + 50).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    cluster.restart(leader);
    let acknowledged: BTreeSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    for id in 1..=3 {
        let names = eventually(
            "the node to hold every write",
            Duration::from_secs(30),
            || async {
                let (names, _) = cluster.vm_names(id).await?;
                let names: BTreeSet<String> = names.into_iter().collect();
                acknowledged.is_subset(&names).then_some(names)
            },
        )
        .await;
        assert!(names.len() >= acknowledged.len());
    }
}

/// Goal: a node that missed more than `snapshot_threshold` entries catches
/// up by snapshot. Method: threshold 50; stop node 3; commit 300 writes so
/// the leader compacts past everything node 3 has; restart node 3 and wait
/// until it lists all VMs and logs the snapshot install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot() {
    let timings = Timings {
        snapshot_threshold: 50,
        ..Timings::default()
    };
    let mut cluster = TestCluster::start(3, timings).await;
    let lagging = 3;
    let applied_before = cluster.status(lagging).await.unwrap().applied_index;
    cluster.kill(lagging);
    let leader = cluster.wait_leader_among(&[1, 2]).await;
    let mut client = cluster.vm_client(leader).await;
    for i in 0..300 {
        create_vm(&mut client, &format!("snap-{i:03}"))
            .await
            .unwrap();
    }
    let leader_status = cluster.status(leader).await.unwrap();
    assert!(
        leader_status.first_log_index > applied_before + 1,
        "leader kept the entries node 3 needs (first index {}, node 3 applied {applied_before})",
        leader_status.first_log_index
    );
    cluster.restart(lagging);
    let expected: Vec<String> = (0..300).map(|i| format!("snap-{i:03}")).collect();
    eventually("node 3 to catch up", Duration::from_secs(30), || async {
        let (names, _) = cluster.vm_names(lagging).await?;
        (names == expected).then_some(())
    })
    .await;
    assert!(
        cluster
            .log(lagging)
            .contains("installed snapshot from leader"),
        "node 3 caught up without a snapshot"
    );
}

/// Goal: every node holds the same events, also one that caught up by
/// snapshot (they are part of the replicated state, not each node's
/// memory). Method: three nodes, snapshot threshold 20; stop node 3 and
/// create 60 VMs (their `vm_created` events and entries past the
/// threshold); restart node 3 (a raft snapshot) and add a worker (a feed
/// snapshot); every node lists the same events, all 60 creations among
/// them, with the same revisions and times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_caught_up_by_snapshot_hold_the_same_events() {
    let timings = Timings {
        snapshot_threshold: 20,
        voters: 3,
        ..Timings::default()
    };
    let mut cluster = TestCluster::start_without_agents(3, timings).await;
    cluster.kill(3);
    let leader = cluster.wait_leader_among(&[1, 2]).await;
    let mut client = cluster.vm_client(leader).await;
    for i in 0..60 {
        client
            .create(pb::CreateVmRequest {
                spec: Some(blixard_tests::flake_spec(&format!("ev-{i:02}"))),
                replicas: 0,
                stopped: true,
            })
            .await
            .unwrap();
    }
    cluster.restart(3);
    cluster.add_node_with(
        4,
        NodeOptions {
            join_via: Some(1),
            agent: false,
            ..NodeOptions::default()
        },
    );
    let events = |id: u64| -> Vec<serde_json::Value> {
        let output = cluster.cli(id, &["events", "--recent", "1000", "-o", "json"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let agreed = eventually(
        "every node to hold the same events",
        Duration::from_secs(30),
        || async {
            let on_leader = events(leader);
            let created = on_leader
                .iter()
                .filter(|e| e["kind"] == "vm_created")
                .count();
            let alike = [3, 4].iter().all(|id| events(*id) == on_leader);
            (created == 60 && alike).then_some(on_leader)
        },
    )
    .await;
    assert!(
        agreed.iter().any(|e| e["kind"] == "node_joined"),
        "{agreed:?}"
    );
    assert!(
        cluster.log(3).contains("installed snapshot from leader"),
        "node 3 caught up without a snapshot"
    );
}

/// Goal: membership changes keep quorum. Method: a fourth node joins (as a
/// learner, promoted to voter once caught up) while writes continue; then a
/// follower is removed; every write made throughout succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_as_learner_becomes_voter_and_a_node_is_removed() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let mut client = cluster.vm_client(leader).await;
    for i in 0..20 {
        create_vm(&mut client, &format!("pre-{i}")).await.unwrap();
    }
    cluster.add_node(4, Some(leader));
    let mut i = 0;
    eventually("node 4 to become a voter", Duration::from_secs(30), || {
        i += 1;
        let name = format!("during-join-{i}");
        let cluster = &cluster;
        let mut client = client.clone();
        async move {
            create_vm(&mut client, &name)
                .await
                .expect("write during join failed");
            let status = cluster.status(leader).await?;
            let four = status.members.iter().find(|m| m.node_id == 4)?;
            (four.role() == pb::MemberRole::Voter).then_some(())
        }
    })
    .await;
    assert!(
        cluster
            .log(leader)
            .contains("promoting caught-up learner to voter"),
        "node 4 was never a learner promoted by the leader"
    );
    // Node 4 serves the full state.
    let (names_4, _) = eventually(
        "node 4 to list the VMs",
        Duration::from_secs(10),
        || async {
            let (names, revision) = cluster.vm_names(4).await?;
            names
                .iter()
                .any(|n| n == "pre-19")
                .then_some((names, revision))
        },
    )
    .await;
    assert!(names_4.len() >= 20);

    let removed = (1..=3).find(|id| *id != leader).unwrap();
    let output = cluster.cli(
        leader,
        &["cluster", "remove-node", &removed.to_string(), "-o", "json"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let members: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<u64> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert!(
        !ids.contains(&removed) && ids.len() == 3,
        "members after removal: {ids:?}"
    );
    cluster.kill(removed);
    for i in 0..20 {
        create_vm(&mut client, &format!("post-{i}")).await.unwrap();
    }
    let survivors: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|id| *id != removed)
        .collect();
    let leader_after = cluster.wait_leader_among(&survivors).await;
    let (names, _) = cluster.vm_names(leader_after).await.unwrap();
    assert!(names.iter().any(|n| n == "post-19"));
}

/// Goal: the leader itself can be removed. Method: ask the leader to remove
/// itself (it hands leadership to its most caught-up voter first), then ask
/// the last follower to remove the new leader (it takes leadership itself);
/// writes succeed after each removal and the state survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_moves_leadership_first() {
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    let first_leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let mut client = cluster.vm_client(first_leader).await;
    create_vm(&mut client, "before").await.unwrap();

    let output = cluster.cli(
        first_leader,
        &["cluster", "remove-node", &first_leader.to_string()],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.kill(first_leader);
    let rest: Vec<u64> = (1..=3).filter(|id| *id != first_leader).collect();
    let second_leader = cluster.wait_leader_among(&rest).await;
    let mut client = cluster.vm_client(second_leader).await;
    create_vm(&mut client, "after-first").await.unwrap();

    let last = *rest.iter().find(|id| **id != second_leader).unwrap();
    let output = cluster.cli(
        last,
        &[
            "cluster",
            "remove-node",
            &second_leader.to_string(),
            "-o",
            "json",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let members: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
    assert_eq!(members[0]["node_id"], last);
    cluster.kill(second_leader);
    assert_eq!(cluster.wait_leader_among(&[last]).await, last);
    let mut client = cluster.vm_client(last).await;
    create_vm(&mut client, "after-second").await.unwrap();
    let (names, _) = cluster.vm_names(last).await.unwrap();
    assert_eq!(names, ["after-first", "after-second", "before"]);
}

/// Goal: linearizable reads served by several followers at once all
/// complete. Method: many concurrent `vm get` calls through both
/// followers; every one must succeed. (The leader keys pending reads by
/// their context; two followers once used colliding contexts, and the
/// leader silently dropped one of each pair, which then timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_every_follower_all_complete() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let mut client = cluster.vm_client(leader).await;
    create_vm(&mut client, "read-me").await.unwrap();
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let mut reads = Vec::new();
    for follower in followers {
        let channel = cluster.vm_client(follower).await;
        // Enough reads in flight on each follower that their request ids
        // overlap, whatever each node did before.
        for _ in 0..200 {
            let client = channel.clone();
            reads.push(tokio::spawn(async move {
                let mut client = client;
                for _ in 0..5 {
                    let request = pb::VmNameRequest {
                        name: "read-me".into(),
                    };
                    client
                        .get(request)
                        .await
                        .map_err(|s| s.message().to_string())?;
                }
                Ok::<(), String>(())
            }));
        }
    }
    for read in reads {
        read.await.unwrap().expect("a follower read failed");
    }
}
