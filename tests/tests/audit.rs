//! Goal: every change a client makes shows in `blixard audit` with who
//! made it, through which node and from where, in order and identically
//! on every node, workers included; refused requests leave no record but
//! a log line on the node that refused them. Method: a scripted session
//! by an admin and an operator token through four real daemons (three
//! voters and a worker), then `blixard audit -o json` through each.

#![cfg(not(madsim))]

use std::time::Duration;

use blixard_tests::{eventually, Network, NodeOptions, TestCluster, Timings};

/// Three voters and a worker on 127.0.0.1; returns them and the worker's id.
async fn three_voters_and_a_worker() -> (TestCluster, u64) {
    let timings = Timings {
        voters: 3,
        ..Timings::default()
    };
    let cluster =
        TestCluster::start_with(4, timings, Network::Loopback, |_| NodeOptions::default()).await;
    cluster.wait_voters(3).await;
    let worker = cluster.the_worker(4).await;
    (cluster, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_by_two_tokens_shows_in_the_audit_trail_of_every_node() {
    let (cluster, worker) = three_voters_and_a_worker().await;
    let voters: Vec<u64> = (1..=4).filter(|id| *id != worker).collect();

    let created: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
        voters[0],
        &[
            "acl", "token", "create", "--name", "ops", "--role", "operator", "-o", "json",
        ],
    ))
    .unwrap();
    let ops = created["secret"].as_str().unwrap().to_string();
    let ops_accessor = created["accessor"].as_str().unwrap().to_string();
    let as_ops = |id: u64, args: &[&str]| {
        let output = std::process::Command::new(blixard_tests::blixard_bin())
            .args(["--addr", cluster.address(id), "--token", &ops, "--ca-file"])
            .arg(blixard_tests::ca_file())
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
    };
    // The worker learns of the new token from its feed.
    eventually(
        "the worker to know the token",
        Duration::from_secs(15),
        || async {
            let output = std::process::Command::new(blixard_tests::blixard_bin())
                .args([
                    "--addr",
                    cluster.address(worker),
                    "--token",
                    &ops,
                    "--ca-file",
                ])
                .arg(blixard_tests::ca_file())
                .args(["vm", "list"])
                .output()
                .unwrap();
            output.status.success().then_some(())
        },
    )
    .await;
    let web = [
        "vm",
        "create",
        "web",
        "--vcpus",
        "1",
        "--memory",
        "64",
        "--flake",
        "/etc/vms#web",
    ];
    as_ops(voters[1], &web);
    let eyes: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
        voters[2],
        &[
            "acl", "token", "create", "--name", "eyes", "--role", "viewer", "-o", "json",
        ],
    ))
    .unwrap();
    let eyes_accessor = eyes["accessor"].as_str().unwrap().to_string();
    as_ops(worker, &["vm", "delete", "web"]);
    // Refused (an operator makes no tokens): no record, a log line.
    let refused = std::process::Command::new(blixard_tests::blixard_bin())
        .args([
            "--addr",
            cluster.address(worker),
            "--token",
            &ops,
            "--ca-file",
        ])
        .arg(blixard_tests::ca_file())
        .args([
            "acl", "token", "create", "--name", "sneaky", "--role", "admin",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(6), "{refused:?}");

    let expected = [
        (
            "management",
            "create_token",
            ops_accessor.as_str(),
            voters[0],
        ),
        ("ops", "create_vm", "web", voters[1]),
        (
            "management",
            "create_token",
            eyes_accessor.as_str(),
            voters[2],
        ),
        ("ops", "delete_vm", "web", worker),
    ];
    let mut trails = Vec::new();
    for id in 1..=4 {
        let trail = eventually(
            &format!("node {id}'s trail to hold the session"),
            Duration::from_secs(15),
            || async {
                let output = cluster.cli(id, &["audit", "-o", "json"]);
                if !output.status.success() {
                    return None;
                }
                let trail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                (trail.as_array()?.len() > expected.len()).then_some(trail)
            },
        )
        .await;
        let records = trail.as_array().unwrap();
        // The worker's own join is in the trail too, by its certificate.
        let worker_name = format!("node-{worker}");
        assert!(
            records.iter().any(|r| r["who"] == worker_name.as_str()
                && r["action"] == "register_worker"
                && r["target"] == worker_name.as_str()),
            "node {id}: {trail}"
        );
        let seen: Vec<(&str, &str, &str, u64)> = records
            .iter()
            .filter(|r| r["actor_kind"] == "token")
            .map(|r| {
                (
                    r["who"].as_str().unwrap(),
                    r["action"].as_str().unwrap(),
                    r["target"].as_str().unwrap(),
                    r["via_node"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(seen, expected, "node {id}");
        for pair in records.windows(2) {
            assert!(pair[0]["seq"].as_u64() < pair[1]["seq"].as_u64());
            assert!(pair[0]["revision"].as_u64() < pair[1]["revision"].as_u64());
        }
        assert!(records
            .iter()
            .all(|r| r["from"].as_str().unwrap().starts_with("127.0.0.1:")));
        trails.push(trail);
    }
    assert!(
        trails.windows(2).all(|pair| pair[0] == pair[1]),
        "{trails:?}"
    );

    // Filters: by token, and the newest only.
    let by_ops: serde_json::Value =
        serde_json::from_str(&cluster.cli_ok(worker, &["audit", "--who", "ops", "-o", "json"]))
            .unwrap();
    assert_eq!(by_ops.as_array().unwrap().len(), 2, "{by_ops}");
    let newest: serde_json::Value =
        serde_json::from_str(&cluster.cli_ok(voters[0], &["audit", "--limit", "1", "-o", "json"]))
            .unwrap();
    assert_eq!(newest[0]["action"], "delete_vm", "{newest}");

    // Only an admin reads the trail.
    let output = std::process::Command::new(blixard_tests::blixard_bin())
        .args(["--addr", cluster.address(1), "--token", &ops, "--ca-file"])
        .arg(blixard_tests::ca_file())
        .arg("audit")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(6), "{output:?}");
    // Refusals are logged at most once a second (with a count): ask
    // again until this one is the line logged.
    eventually(
        "the worker to log the refusal",
        Duration::from_secs(20),
        || async {
            let output = std::process::Command::new(blixard_tests::blixard_bin())
                .args([
                    "--addr",
                    cluster.address(worker),
                    "--token",
                    &ops,
                    "--ca-file",
                ])
                .arg(blixard_tests::ca_file())
                .args([
                    "acl", "token", "create", "--name", "sneaky", "--role", "admin",
                ])
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(6), "{output:?}");
            cluster
                .log(worker)
                .lines()
                .any(|line| {
                    line.contains("refused") && line.contains("/blixard.v1.Acl/CreateToken")
                })
                .then_some(())
        },
    )
    .await;
}

/// Goal: a worker cut off from the voters stops judging tokens by its
/// copy of the state (a token revoked meanwhile would still pass), and
/// judges them again once a voter confirms its copy. Method: three voters
/// and a worker; the worker answers a client; SIGKILL every voter; the
/// worker must refuse the same client with Unavailable saying why (and a
/// write forwarded meanwhile fails as unavailable, exit 4); restart
/// the voters; the worker answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_voters_stops_judging_tokens() {
    let (mut cluster, worker) = three_voters_and_a_worker().await;
    let status = |cluster: &TestCluster| {
        let output = cluster.cli(worker, &["cluster", "status", "-o", "json"]);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    eventually("the worker to answer", Duration::from_secs(15), || async {
        (status(&cluster).0 == Some(0)).then_some(())
    })
    .await;
    let voters: Vec<u64> = (1..=4).filter(|id| *id != worker).collect();
    for id in &voters {
        cluster.kill(*id);
    }
    // Within the tokens' grace the worker still judges the token, then
    // finds no voter to forward the write to: unavailable (exit 4), not
    // an internal error.
    let write = cluster.cli(
        worker,
        &[
            "vm",
            "create",
            "late",
            "--vcpus",
            "1",
            "--memory",
            "64",
            "--flake",
            "/etc/vms#late",
        ],
    );
    assert_eq!(write.status.code(), Some(4), "{write:?}");
    let refusal = eventually(
        "the worker to stop judging tokens",
        Duration::from_secs(30),
        || async {
            let (code, stderr) = status(&cluster);
            (code != Some(0)).then_some((code, stderr))
        },
    )
    .await;
    assert_eq!(refusal.0, Some(4), "{}", refusal.1);
    let refusal = refusal.1;
    assert!(
        refusal.contains("cannot check tokens"),
        "the refusal does not say why: {refusal}"
    );
    for id in &voters {
        cluster.restart(*id);
    }
    eventually(
        "the worker to answer again",
        Duration::from_secs(60),
        || async { (status(&cluster).0 == Some(0)).then_some(()) },
    )
    .await;
}

/// Goal: a node removed from the cluster is refused everywhere by its
/// certificate, loses its feed of the state, and cannot come back under
/// its old id. Method: three voters and a worker; `cluster remove-node`
/// of the worker; its certificate is then refused by every voter (even for
/// reads), no voter lists it though it still gossips, and the worker,
/// restarted, is told it was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_by_its_certificate_and_cannot_return() {
    use blixard_api::pb;
    use blixard_api::pb::cluster_client::ClusterClient;
    use blixard_api::pb::state_feed_client::StateFeedClient;
    let (mut cluster, worker) = three_voters_and_a_worker().await;
    let voters: Vec<u64> = (1..=4).filter(|id| *id != worker).collect();
    // Before: the worker's certificate reads and subscribes.
    let as_worker = cluster.peer_channel(voters[0], worker).await.unwrap();
    ClusterClient::new(as_worker.clone())
        .status(pb::StatusRequest {})
        .await
        .unwrap();
    let mut feed = StateFeedClient::new(as_worker.clone())
        .subscribe(pb::FeedRequest {
            from_revision: 0,
            cluster_id: cluster.cluster_id(voters[0]).await,
        })
        .await
        .unwrap()
        .into_inner();
    feed.message().await.unwrap().unwrap();

    cluster.cli_ok(voters[1], &["cluster", "remove-node", &worker.to_string()]);

    // The open feed ends, saying why.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match feed.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the feed ended without saying why"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the removed node's feed is still open");
    assert!(ended.message().contains("was removed"), "{ended:?}");
    for id in &voters {
        let refused = eventually(
            &format!("node {id} to refuse the removed node"),
            Duration::from_secs(10),
            || async {
                let channel = cluster.peer_channel(*id, worker).await?;
                ClusterClient::new(channel)
                    .status(pb::StatusRequest {})
                    .await
                    .err()
            },
        )
        .await;
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("was removed"), "{refused:?}");
        // Still running and gossiping, it is listed nowhere.
        assert_eq!(
            cluster.exit_status(worker),
            None,
            "the removed node stopped"
        );
        let nodes = cluster.cli_ok(*id, &["node", "list", "-o", "json"]);
        let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
        let listed = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == worker);
        assert!(!listed, "node {id} lists the removed node: {nodes}");
    }
    cluster.kill(worker);
    cluster.restart(worker);
    eventually(
        "the restarted node to hear it was removed",
        Duration::from_secs(30),
        || async {
            cluster
                .log(worker)
                .contains("was removed from the cluster")
                .then_some(())
        },
    )
    .await;
    let listed = cluster.cli_ok(voters[0], &["node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        !nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == worker && n["role"] == "worker"),
        "{listed}"
    );
}
