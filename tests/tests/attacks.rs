//! Goal: the attacks of the security review (issue 13) fail against real
//! daemons without changing state or stopping a node. Method: three
//! `blixard agent` processes on 127.0.0.1 with mTLS; an attacker speaks
//! to them over the project's own gRPC API and raft-rs's wire messages,
//! as the review's Python client did: first as a client with no
//! certificate, then (defence in depth) holding a real node certificate
//! of the cluster CA. After every attack the test checks the cluster
//! still has one leader, takes writes, and holds only what it should.
//! Gossip is attacked with real chitchat nodes started in this process.

#![cfg(not(madsim))]

use std::time::Duration;

use blixard_api::connect::Connection;
use blixard_api::pb;
use blixard_api::pb::raft_transport_client::RaftTransportClient;
use blixard_api::pb::state_feed_client::StateFeedClient;
use blixard_api::pb::vm_client::VmClient;
use blixard_consensus::command::ProposalTag;
use blixard_consensus::{Command, HostFacts, RaftMessage, RunnerSource, VmSpec};
use blixard_tests::{create_vm, eventually, TestCluster, Timings};
use protobuf::Message as _;
use raft_proto::eraftpb::{Entry, MessageType, Snapshot};

fn spec(name: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        runner: RunnerSource::Flake {
            flake_ref: "/etc/vms#x".into(),
        },
        pinned_node: None,
        placement: Default::default(),
        failover: Default::default(),
        group: None,
        platform: None,
    }
}

/// Proposes `command` through the state feed of the node at `channel`,
/// naming that node's own cluster (so the command itself is judged).
async fn propose(channel: Connection, command: &Command) -> Result<(), tonic::Status> {
    let cluster_id = blixard_api::pb::cluster_client::ClusterClient::new(channel.clone())
        .status(pb::StatusRequest {})
        .await
        .map_or_else(|_| String::new(), |status| status.into_inner().cluster_id);
    let response = StateFeedClient::new(channel)
        .propose(pb::ProposeRequest {
            command: command.encode(),
            audit: Vec::new(),
            cluster_id,
        })
        .await?
        .into_inner();
    match response.outcome {
        Some(pb::propose_response::Outcome::Rejection(bytes)) => Err(tonic::Status::aborted(
            String::from_utf8_lossy(&bytes).into_owned(),
        )),
        _ => Ok(()),
    }
}

/// Sends raw raft messages over a peer transport stream; the node's
/// answer when the stream ends.
async fn send_raft(
    channel: Connection,
    cluster_id: &str,
    messages: Vec<RaftMessage>,
) -> Result<(), tonic::Status> {
    let items: Vec<pb::RaftMessage> = messages
        .into_iter()
        .map(|message| pb::RaftMessage {
            message: message.write_to_bytes().unwrap(),
            from_address: "127.0.0.1:9".into(),
            cluster_id: cluster_id.into(),
        })
        .collect();
    RaftTransportClient::new(channel)
        .stream(tokio_stream::iter(items))
        .await
        .map(|_| ())
}

fn raft_message(kind: MessageType, from: u64, to: u64, term: u64) -> RaftMessage {
    let mut message = RaftMessage::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = to;
    message.term = term;
    message
}

/// The cluster is whole: every node answers with one leader, a write
/// through each node commits, and no VM but `expected` exists.
async fn assert_healthy(cluster: &TestCluster, round: &str, expected: &[&str]) {
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    for id in 1..=3 {
        let name = format!("{round}-{id}");
        let mut client = cluster.vm_client(id).await;
        create_vm(&mut client, &name)
            .await
            .unwrap_or_else(|e| panic!("write through node {id} after {round}: {e}"));
        let mut client = cluster.vm_client(id).await;
        client
            .delete(pb::VmNameRequest { name })
            .await
            .unwrap_or_else(|e| panic!("delete through node {id} after {round}: {e}"));
    }
    for id in 1..=3 {
        let (names, _) = cluster.vm_names(id).await.expect("a node stopped");
        assert_eq!(names, expected, "node {id} after {round}");
    }
    assert!(leader != 0);
}

/// Goal: commands a worker could forward cannot carry names that reach a
/// shell or a path, nor rewrite the cluster's membership, even from a
/// node holding a valid certificate. Method: the review's exact proposals
/// over `StateFeed.Propose`, as node 3, through node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_proposals_are_refused_and_change_nothing() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    // Even a real node (3) may not propose these through node 2.
    let channel = cluster.peer_channel(2, 3).await.unwrap();
    let long = "x".repeat(65_536);
    let bad_names = ["a\nid>$HOME/owned;#", "/srv/data", "..", long.as_str()];
    for name in bad_names {
        let create = Command::CreateVm {
            spec: spec(name),
            created_at_unix_ms: 1,
        };
        let refused = propose(channel.clone(), &create).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().len() < 300,
            "the refusal repeats the whole input: {} bytes",
            refused.message().len()
        );
    }

    // A well-formed client write needs the client's token with it: a
    // node's certificate alone writes nothing, and a viewer's token does
    // not let a node write for it.
    let create = Command::CreateVm {
        spec: spec("via-cert"),
        created_at_unix_ms: 1,
    };
    let refused = propose(channel.clone(), &create).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // Nor does it retire its own certificates (an admin's renewal does).
    let retire = Command::RetireNodeCertificates {
        node_id: 3,
        keep_sha256: "b".repeat(64),
    };
    let refused = propose(channel.clone(), &retire).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let viewer: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
        1,
        &[
            "acl", "token", "create", "--name", "eyes", "--role", "viewer", "-o", "json",
        ],
    ))
    .unwrap();
    let as_viewer = cluster
        .peer_channel_with(2, 3, viewer["secret"].as_str())
        .await
        .unwrap();
    let refused = eventually(
        "node 2 to know the viewer token",
        Duration::from_secs(10),
        || {
            let (as_viewer, create) = (as_viewer.clone(), create.clone());
            async move {
                let refused = propose(as_viewer, &create).await.unwrap_err();
                (refused.code() != tonic::Code::Unauthenticated).then_some(refused)
            }
        },
    )
    .await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Two address changes once left the cluster without a leader for good.
    for node_id in [1, 3] {
        let moved = Command::SetNodeAddress {
            node_id,
            address: "127.0.0.1:1".into(),
        };
        let refused = propose(channel.clone(), &moved).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    // Nor may a peer erase a voter or speak for it.
    for command in [
        Command::UnregisterWorker { node_id: 1 },
        Command::RegisterWorker {
            node_id: 3,
            address: "127.0.0.1:1".into(),
        },
        Command::SetHostFacts {
            node_id: 1,
            facts: HostFacts {
                memory_mib_total: 1 << 20,
                vcpus_total: 1024,
                accel: "kvm".into(),
                labels: Default::default(),
                gossip_address: String::new(),
                fence_after_ms: 0,
            },
        },
        Command::AssignVm {
            name: "web".into(),
            node_id: Some(1),
            reason: String::new(),
            vcpu_overcommit: None,
            needs_agent: false,
        },
        // Nor pin a certificate of its choosing for itself (only the
        // voter that signed one records it), nor retire another node's.
        Command::AcceptNodeCertificate {
            node_id: 3,
            presented_sha256: "a".repeat(64),
            issued_sha256: "b".repeat(64),
        },
        Command::RetireNodeCertificates {
            node_id: 1,
            keep_sha256: "b".repeat(64),
        },
        // Nor pin a certificate it does not present, for itself or
        // another node.
        Command::PinNodeCertificate {
            node_id: 3,
            certificate_sha256: "c".repeat(64),
        },
        Command::PinNodeCertificate {
            node_id: 1,
            certificate_sha256: "c".repeat(64),
        },
    ] {
        let refused = propose(channel.clone(), &command).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{command:?}");
    }
    let addresses: Vec<String> = cluster
        .status(1)
        .await
        .unwrap()
        .members
        .iter()
        .map(|m| m.address.clone())
        .collect();
    assert!(
        !addresses.iter().any(|a| a == "127.0.0.1:1"),
        "{addresses:?}"
    );
    assert_healthy(&cluster, "after-proposals", &[]).await;
}

/// Goal: no raft message from outside the membership, and none that
/// raft-rs would panic on, is stepped. Method: the review's raw raft
/// messages over `RaftTransport.Stream`; every node must survive, no
/// foreign proposal may commit, and the cluster must keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_raft_messages_cannot_panic_nodes_or_commit_foreign_entries() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let term = cluster.status(leader).await.unwrap().term;

    // An empty proposal panicked the leader ("stepped empty MsgProp").
    let empty = raft_message(MessageType::MsgPropose, follower, leader, 0);
    // A heartbeat committing far past the log panicked a follower.
    let mut far_commit = raft_message(MessageType::MsgHeartbeat, leader, follower, term);
    far_commit.commit = 1_000_000_000;
    // A proposal from a node that does not exist committed everywhere.
    let mut stranger = raft_message(MessageType::MsgPropose, 77, leader, 0);
    let entry = Entry {
        data: Command::CreateVm {
            spec: spec("planted"),
            created_at_unix_ms: 1,
        }
        .encode()
        .into(),
        context: ProposalTag {
            proposer: 77,
            request_id: 1,
        }
        .encode()
        .into(),
        ..Entry::default()
    };
    stranger.set_entries(vec![entry.clone()].into());
    // A member's proposal claiming another proposer (to change that
    // node's address) is refused too.
    let mut impostor = raft_message(MessageType::MsgPropose, follower, leader, 0);
    let mut moved = entry.clone();
    moved.data = Command::SetNodeAddress {
        node_id: leader,
        address: "127.0.0.1:1".into(),
    }
    .encode()
    .into();
    moved.context = ProposalTag {
        proposer: leader,
        request_id: 1,
    }
    .encode()
    .into();
    impostor.set_entries(vec![moved].into());
    // A snapshot whose state does not decode stopped the node applying it.
    let mut garbage = raft_message(MessageType::MsgSnapshot, leader, follower, term + 1);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 1_000_000;
    snapshot.mut_metadata().term = term + 1;
    snapshot
        .mut_metadata()
        .mut_conf_state()
        .set_voters(vec![1, 2, 3]);
    snapshot.data = b"not a cluster state".to_vec().into();
    garbage.set_snapshot(snapshot);
    // Raft-rs's own messages to itself.
    let local = raft_message(MessageType::MsgHup, follower, leader, 0);

    // Each stream speaks as the node it claims to be: node 77 holds a
    // certificate of the cluster CA but is no member.
    let cluster_id = cluster.cluster_id(leader).await;
    for _ in 0..3 {
        let as_follower = cluster.peer_channel(leader, follower).await.unwrap();
        let sent = vec![empty.clone(), impostor.clone(), local.clone()];
        send_raft(as_follower, &cluster_id, sent).await.unwrap();
        let as_stranger = cluster.peer_channel(leader, 77).await.unwrap();
        send_raft(as_stranger, &cluster_id, vec![stranger.clone()])
            .await
            .unwrap();
        let as_leader = cluster.peer_channel(follower, leader).await.unwrap();
        let sent = vec![far_commit.clone(), garbage.clone()];
        send_raft(as_leader, &cluster_id, sent).await.unwrap();
    }
    eventually(
        "every node to log the refusals",
        Duration::from_secs(10),
        || async {
            let leader_log = cluster.log(leader);
            let follower_log = cluster.log(follower);
            (leader_log.contains("refused a raft message")
                && follower_log.contains("refused a raft message"))
            .then_some(())
        },
    )
    .await;
    for id in 1..=3 {
        assert!(
            !cluster.log(id).contains("panicked"),
            "node {id} panicked:\n{}",
            cluster.log(id)
        );
    }
    assert_healthy(&cluster, "after-raft", &[]).await;
    let addresses: Vec<String> = cluster
        .status(follower)
        .await
        .unwrap()
        .members
        .iter()
        .map(|m| m.address.clone())
        .collect();
    assert!(
        !addresses.iter().any(|a| a == "127.0.0.1:1"),
        "{addresses:?}"
    );
}

/// Goal: without a node certificate nobody reaches the peer services
/// (a client token is not enough), and a node certificate speaks only
/// for its own node. Method: every peer-only RPC as a client holding the
/// management token; raft messages under the leader's id from a
/// follower's certificate (the review's forged appends and term-raising
/// heartbeats); a join as another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_services_need_the_callers_own_node_certificate() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let leader = cluster.wait_leader_among(&[1, 2, 3]).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let cluster_id = cluster.cluster_id(leader).await;
    let term = cluster.status(leader).await.unwrap().term;
    let client = cluster.channel(followers[0]).await.unwrap();
    let denied = |result: Result<(), tonic::Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{what}: {status:?}"
        );
    };
    let proposal = Command::DeleteVm { name: "web".into() };
    denied(propose(client.clone(), &proposal).await, "Propose");
    let mut feed = StateFeedClient::new(client.clone());
    let subscribed = feed
        .subscribe(pb::FeedRequest {
            from_revision: 0,
            cluster_id: cluster_id.clone(),
        })
        .await
        .map(|_| ());
    denied(subscribed, "Subscribe (the whole state, secrets included)");
    let barrier = feed
        .barrier(pb::BarrierRequest {
            cluster_id: cluster_id.clone(),
        })
        .await
        .map(|_| ());
    denied(barrier, "Barrier");
    let heartbeat = raft_message(MessageType::MsgHeartbeat, leader, followers[0], term + 5);
    denied(
        send_raft(client.clone(), &cluster_id, vec![heartbeat.clone()]).await,
        "RaftTransport.Stream",
    );
    let join_as_nine = pb::JoinRequest {
        node_id: 9,
        address: "127.0.0.1:9".into(),
        cluster_id: cluster_id.clone(),
    };
    let join = pb::cluster_client::ClusterClient::new(client)
        .join(join_as_nine.clone())
        .await
        .map(|_| ());
    denied(join, "Join without a certificate");

    // Node 8's certificate is real, but it is not node 9.
    let stranger = cluster.peer_channel(followers[0], 8).await.unwrap();
    let join = pb::cluster_client::ClusterClient::new(stranger)
        .join(join_as_nine)
        .await
        .map(|_| ());
    denied(join, "Join as another node");

    // A follower's certificate cannot speak for the leader: no forged
    // appends, no heartbeats that raise the term.
    let as_follower = cluster
        .peer_channel(followers[0], followers[1])
        .await
        .unwrap();
    denied(
        send_raft(as_follower, &cluster_id, vec![heartbeat]).await,
        "a heartbeat under the leader's id",
    );
    assert_eq!(
        cluster.status(followers[0]).await.unwrap().term,
        term,
        "the term moved"
    );
    assert_healthy(&cluster, "after-impersonation", &[]).await;
}

/// Goal: a node whose certificates come from another CA, or name
/// another node, never joins. Method: node 4 with certificates of a
/// foreign CA; node 5 with node 6's certificate; both must exit with the
/// reason, and the cluster must not list them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_clusters_certificate_cannot_join() {
    use blixard_api::tls;
    let mut cluster = TestCluster::start(3, Timings::default()).await;
    let foreign = tls::create_ca("elsewhere").unwrap();
    let node4 = cluster.dir.path().join("node4").join("tls");
    tls::write_node(
        &node4,
        &foreign,
        &blixard_api::identity::create_gossip_key().unwrap(),
        &tls::issue_node_cert(&foreign, 4).unwrap(),
    )
    .unwrap();
    let ca = &blixard_tests::test_ca().1;
    let node5 = cluster.dir.path().join("node5").join("tls");
    let node6 = tls::issue_node_cert(ca, 6).unwrap();
    tls::write_node(&node5, ca, &blixard_tests::test_gossip_keys(), &node6).unwrap();
    cluster.add_node(4, Some(1));
    cluster.add_node(5, Some(1));
    for (id, reason) in [(4, "could not join"), (5, "is the certificate of node 6")] {
        cluster.wait_exit_saying(id, reason).await;
    }
    let members = cluster.status(1).await.unwrap().members;
    assert_eq!(members.len(), 3, "{members:?}");
}

/// Goal: every client request needs a token the cluster holds, whose
/// role allows the request; tokens are made, listed and revoked through
/// the CLI, and a revoked token stops working on every node. Method: requests with no token and a
/// made-up token are refused with Unauthenticated (CLI exit 5); a token
/// made with `acl token create` works through every node, shows in `acl
/// token list` without its secret, and after `acl token revoke` is
/// refused everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_need_a_token_the_cluster_holds() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let list = |channel: Connection| async move {
        VmClient::new(channel)
            .list(pb::ListVmsRequest::default())
            .await
            .map(|_| ())
    };
    for token in [None, Some("blx_made-up")] {
        let channel = cluster.channel_with(2, token).await.unwrap();
        let refused = list(channel)
            .await
            .expect_err("listed without a valid token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    let no_token = std::process::Command::new(blixard_tests::blixard_bin())
        .args(["--addr", cluster.address(2), "--ca-file"])
        .arg(blixard_tests::ca_file())
        .args(["vm", "list"])
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(5), "{no_token:?}");
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("token"));

    let created: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
        1,
        &[
            "acl", "token", "create", "--name", "ci", "--role", "operator", "-o", "json",
        ],
    ))
    .unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    let accessor = created["accessor"].as_str().unwrap().to_string();
    for id in 1..=3 {
        let channel = eventually(
            "the new token to reach the node",
            Duration::from_secs(10),
            || async {
                let channel = cluster.channel_with(id, Some(&secret)).await?;
                list(channel.clone()).await.ok().map(|_| channel)
            },
        )
        .await;
        drop(channel);
    }
    let listed = cluster.cli_ok(3, &["acl", "token", "list", "-o", "json"]);
    assert!(
        listed.contains("\"ci\"") && listed.contains(&accessor),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "the list shows a secret");

    // An operator token runs VMs but makes no tokens; a viewer only reads.
    let as_token = |secret: &str, args: &[&str]| {
        std::process::Command::new(blixard_tests::blixard_bin())
            .args(["--addr", cluster.address(3), "--token", secret, "--ca-file"])
            .arg(blixard_tests::ca_file())
            .args(args)
            .output()
            .unwrap()
    };
    let create_token = [
        "acl", "token", "create", "--name", "more", "--role", "admin",
    ];
    assert_eq!(as_token(&secret, &create_token).status.code(), Some(6));
    let viewer: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
        1,
        &[
            "acl", "token", "create", "--name", "eyes", "--role", "viewer", "-o", "json",
        ],
    ))
    .unwrap();
    let viewer = viewer["secret"].as_str().unwrap();
    let create_vm = [
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
    let refused = as_token(viewer, &create_vm);
    assert_eq!(refused.status.code(), Some(6), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("vm:write"));
    assert!(as_token(viewer, &["vm", "list"]).status.success());

    // A token with a time to live stops working once it is over.
    let brief: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
        1,
        &[
            "acl", "token", "create", "--name", "brief", "--role", "viewer", "--ttl", "1s", "-o",
            "json",
        ],
    ))
    .unwrap();
    assert!(brief["expires_at_unix_ms"].is_u64(), "{brief}");
    let brief = brief["secret"].as_str().unwrap().to_string();
    eventually("the token to expire", Duration::from_secs(15), || async {
        let channel = cluster.channel_with(2, Some(&brief)).await?;
        let refused = list(channel).await.err()?;
        (refused.code() == tonic::Code::Unauthenticated && refused.message().contains("expired"))
            .then_some(())
    })
    .await;

    cluster.cli_ok(2, &["acl", "token", "revoke", &accessor]);
    for id in 1..=3 {
        eventually(
            "the revoked token to be refused",
            Duration::from_secs(10),
            || async {
                let channel = cluster.channel_with(id, Some(&secret)).await?;
                let refused = list(channel).await.err()?;
                (refused.code() == tonic::Code::Unauthenticated).then_some(())
            },
        )
        .await;
    }
}

/// Reads `stream` until it ends with an error; returns that error.
async fn stream_end<T: std::fmt::Debug>(
    what: &str,
    stream: &mut tonic::Streaming<T>,
) -> tonic::Status {
    let deadline = Duration::from_secs(20);
    let ended = tokio::time::timeout(deadline, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{what} ended without saying why"),
                Err(status) => return status,
            }
        }
    })
    .await;
    let status = ended.unwrap_or_else(|_| panic!("{what} still open after {deadline:?}"));
    assert!(
        matches!(stream.message().await, Ok(None) | Err(_)),
        "{what} went on after its error"
    );
    status
}

/// Goal: a stream opened with a token lasts no longer than the token.
/// Method: VM watches and a followed event stream opened with an operator
/// token on each node, and a watch opened with a viewer token that
/// expires; the streams deliver, then the operator token is revoked: every
/// stream ends with Unauthenticated saying revoked or expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_token_is_revoked_or_expires() {
    use blixard_api::pb::cluster_client::ClusterClient;
    let cluster = TestCluster::start(3, Timings::default()).await;
    let create = |args: &[&str]| -> serde_json::Value {
        let mut full = vec!["acl", "token", "create", "-o", "json"];
        full.extend_from_slice(args);
        serde_json::from_str(&cluster.cli_ok(1, &full)).unwrap()
    };
    let operator = create(&["--name", "watcher", "--role", "operator"]);
    let brief = create(&["--name", "brief", "--role", "viewer", "--ttl", "6s"]);
    let operator_secret = operator["secret"].as_str().unwrap().to_string();
    let brief_secret = brief["secret"].as_str().unwrap().to_string();
    let watch = |id: u64, secret: String| {
        let cluster = &cluster;
        async move {
            eventually(
                "a watch with the token",
                Duration::from_secs(10),
                || async {
                    let channel = cluster.channel_with(id, Some(&secret)).await?;
                    let stream = VmClient::new(channel)
                        .watch(pb::WatchVmsRequest::default())
                        .await
                        .ok()?;
                    Some(stream.into_inner())
                },
            )
            .await
        }
    };
    let mut brief_watch = watch(1, brief_secret).await;
    let mut watches = Vec::new();
    for id in 1..=3 {
        watches.push((id, watch(id, operator_secret.clone()).await));
    }
    let mut events = ClusterClient::new(
        cluster
            .channel_with(3, Some(&operator_secret))
            .await
            .unwrap(),
    )
    .events(pb::EventsRequest {
        follow: true,
        recent_max: 0,
    })
    .await
    .unwrap()
    .into_inner();

    // The streams are live: each sees a VM created after it opened.
    create_vm(&mut cluster.vm_client(1).await, "seen")
        .await
        .unwrap();
    for (id, stream) in &mut watches {
        // After the (empty) list's SYNCED.
        let event = loop {
            let event = stream.message().await.unwrap().unwrap();
            if event.kind != pb::VmEventKind::Synced as i32 {
                break event;
            }
        };
        assert_eq!(event.vm.unwrap().spec.unwrap().name, "seen", "node {id}");
    }
    events.message().await.unwrap().unwrap();

    let expired = stream_end("the viewer's watch", &mut brief_watch).await;
    assert_eq!(expired.code(), tonic::Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{expired:?}");

    cluster.cli_ok(
        2,
        &[
            "acl",
            "token",
            "revoke",
            operator["accessor"].as_str().unwrap(),
        ],
    );
    for (id, stream) in &mut watches {
        let status = stream_end(&format!("node {id}'s watch"), stream).await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "node {id}");
        assert!(status.message().contains("revoked"), "{status:?}");
    }
    let status = stream_end("the event stream", &mut events).await;
    assert!(status.message().contains("revoked"), "{status:?}");
}

/// Goal: a viewer token reads VMs without the secrets in their command
/// lines; a token that may write VMs (and so export and apply them back)
/// reads them whole. Method: a kernel VM whose command line holds
/// `db_password=...`, read through Get, List and Watch on a node with a
/// viewer token and an operator token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_command_line_secrets_redacted() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let token = |role: &str| -> String {
        let created: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
            1,
            &[
                "acl", "token", "create", "--name", role, "--role", role, "-o", "json",
            ],
        ))
        .unwrap();
        created["secret"].as_str().unwrap().to_string()
    };
    let (viewer, operator) = (token("viewer"), token("operator"));
    let cmdline = "console=ttyS0 db_password=hunter2 systemd.setenv=API_TOKEN=t0k";
    let spec = pb::VmSpec {
        name: "db".into(),
        vcpus: 1,
        memory_mib: 64,
        runner: Some(pb::RunnerSource {
            source: Some(pb::runner_source::Source::Kernel(pb::KernelRunner {
                kernel_path: "/boot/vmlinuz".into(),
                initrd_path: "/boot/initrd.img".into(),
                cmdline: cmdline.into(),
                ports: Vec::new(),
            })),
        }),
        ..pb::VmSpec::default()
    };
    cluster
        .vm_client(1)
        .await
        .create(pb::CreateVmRequest {
            spec: Some(spec),
            replicas: 0,
            stopped: true,
        })
        .await
        .unwrap();
    let cmdline_of = |vm: Option<pb::VmInfo>| match vm
        .and_then(|vm| vm.spec)
        .and_then(|spec| spec.runner)
        .and_then(|runner| runner.source)
    {
        Some(pb::runner_source::Source::Kernel(kernel)) => kernel.cmdline,
        other => panic!("not a kernel VM: {other:?}"),
    };
    for (secret, expected) in [
        (
            &viewer,
            "console=ttyS0 db_password=<redacted> systemd.setenv=API_TOKEN=<redacted>",
        ),
        (&operator, cmdline),
    ] {
        let client = eventually("the token on node 2", Duration::from_secs(10), || async {
            let mut client = VmClient::new(cluster.channel_with(2, Some(secret)).await?);
            client.list(pb::ListVmsRequest::default()).await.ok()?;
            Some(client)
        })
        .await;
        let got = client
            .clone()
            .get(pb::VmNameRequest { name: "db".into() })
            .await
            .unwrap()
            .into_inner()
            .vm;
        assert_eq!(cmdline_of(got), expected);
        let listed = client
            .clone()
            .list(pb::ListVmsRequest::default())
            .await
            .unwrap();
        let listed = listed.into_inner().vms.into_iter().next();
        assert_eq!(cmdline_of(listed), expected);
        let mut watch = client
            .clone()
            .watch(pb::WatchVmsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let added = watch.message().await.unwrap().unwrap();
        assert_eq!(cmdline_of(added.vm), expected);
    }
}

/// One call of `path` with an empty message (every proto3 request decodes
/// from nothing), as a raw gRPC client would make it; the status code the
/// node answers with (`Ok` when it accepted the call).
async fn raw_call(
    channel: Connection,
    path: &str,
    client_streaming: bool,
    server_streaming: bool,
) -> tonic::Code {
    use tonic::codegen::http::uri::PathAndQuery;
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(error) = grpc.ready().await {
        return tonic::Status::from_error(error.into()).code();
    }
    let path = PathAndQuery::try_from(path.to_string()).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let result = match (client_streaming, server_streaming) {
        (false, false) => grpc
            .unary(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ()),
        (false, true) => grpc
            .server_streaming(tonic::Request::new(()), path, codec)
            .await
            .map(|_| ()),
        (true, false) => grpc
            .client_streaming(
                tonic::Request::new(tokio_stream::empty::<()>()),
                path,
                codec,
            )
            .await
            .map(|_| ()),
        (true, true) => grpc
            .streaming(
                tonic::Request::new(tokio_stream::empty::<()>()),
                path,
                codec,
            )
            .await
            .map(|_| ()),
    };
    result.err().map_or(tonic::Code::Ok, |status| status.code())
}

/// Goal: every RPC the proto declares enforces its access rule on a real
/// node, so a new RPC cannot slip through without one. Method: walk the
/// compiled descriptor set; call each RPC (empty request) with no token,
/// a made-up token, a viewer token and an operator token; peer-only RPCs
/// must refuse them all, client RPCs must refuse the first two as
/// unauthenticated and let each role through exactly where its rule says.
/// The operator's writes carry empty requests, which every write refuses
/// as invalid, so nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_enforces_its_rule() {
    use blixard_consensus::TokenRole;
    use blixard_daemon::services::rules::{allows, rule, Permission, Rule};
    use prost::Message as _;
    let cluster = TestCluster::start(1, Timings::default()).await;
    let secret = |role: &str| {
        let created: serde_json::Value = serde_json::from_str(&cluster.cli_ok(
            1,
            &[
                "acl", "token", "create", "--name", role, "--role", role, "-o", "json",
            ],
        ))
        .unwrap();
        created["secret"].as_str().unwrap().to_string()
    };
    let viewer = secret("viewer");
    let operator = secret("operator");
    // A custom role: VMs only, reading and writing.
    cluster.cli_ok(
        1,
        &[
            "acl",
            "role",
            "create",
            "vm-hands",
            "--allow",
            "vm:read,vm:write",
        ],
    );
    let custom = secret("vm-hands");
    let custom_allows = |permission| matches!(permission, Permission::VmRead | Permission::VmWrite);
    let set = prost_types::FileDescriptorSet::decode(blixard_api::FILE_DESCRIPTOR_SET).unwrap();
    let mut checked = 0;
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let rule = rule(&path).unwrap_or_else(|| panic!("{path} has no rule"));
                let (client_streaming, server_streaming) =
                    (method.client_streaming(), method.server_streaming());
                let call = |token: Option<String>| {
                    let path = path.clone();
                    let cluster = &cluster;
                    async move {
                        let channel = cluster.channel_with(1, token.as_deref()).await.unwrap();
                        raw_call(channel, &path, client_streaming, server_streaming).await
                    }
                };
                // A node's certificate, alone or carrying a client's token
                // as a node forwarding that client's request does.
                let call_as_node = |token: Option<String>| {
                    let path = path.clone();
                    let cluster = &cluster;
                    async move {
                        let channel = cluster
                            .peer_channel_with(1, 5, token.as_deref())
                            .await
                            .unwrap();
                        raw_call(channel, &path, client_streaming, server_streaming).await
                    }
                };
                let denied = tonic::Code::PermissionDenied;
                let unauthenticated = tonic::Code::Unauthenticated;
                let (anonymous, forged, as_viewer, as_operator, as_custom) = (
                    call(None).await,
                    call(Some("blx_made-up".into())).await,
                    call(Some(viewer.clone())).await,
                    call(Some(operator.clone())).await,
                    call(Some(custom.clone())).await,
                );
                match rule {
                    // Anyone reaches it; the join token in the request
                    // (here none) is the credential the service checks.
                    Rule::JoinToken => {
                        for code in [anonymous, forged, as_viewer, as_operator, as_custom] {
                            assert!(
                                code != denied && code != unauthenticated,
                                "{path} refused before its service: {code:?}"
                            );
                        }
                    }
                    Rule::Peer => {
                        for code in [anonymous, forged, as_viewer, as_operator, as_custom] {
                            assert_eq!(code, denied, "{path}");
                        }
                    }
                    Rule::Client(permission) => {
                        let (node_alone, node_for_viewer) = (
                            call_as_node(None).await,
                            call_as_node(Some(viewer.clone())).await,
                        );
                        if permission.is_read() {
                            assert!(
                                node_alone != denied && node_alone != unauthenticated,
                                "{path} refused a node certificate: {node_alone:?}"
                            );
                        } else {
                            assert_eq!(node_alone, denied, "{path} let a node certificate write");
                        }
                        assert_eq!(
                            node_for_viewer == denied,
                            !allows(&TokenRole::Viewer, permission),
                            "{path} through a node with a viewer's token: {node_for_viewer:?}"
                        );
                        assert_eq!(anonymous, unauthenticated, "{path} without a token");
                        assert_eq!(forged, unauthenticated, "{path} with a made-up token");
                        for (role, code) in [
                            (TokenRole::Viewer, as_viewer),
                            (TokenRole::Operator, as_operator),
                            (TokenRole::Custom("vm-hands".into()), as_custom),
                        ] {
                            let allowed = match &role {
                                TokenRole::Custom(_) => custom_allows(permission),
                                built_in => allows(built_in, permission),
                            };
                            if allowed {
                                assert!(
                                    code != denied && code != unauthenticated,
                                    "{path} refused a {role:?} token: {code:?}"
                                );
                            } else {
                                assert_eq!(code, denied, "{path} let a {role:?} token through");
                            }
                        }
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 25, "walked only {checked} RPCs");
    let (names, _) = cluster.vm_names(1).await.unwrap();
    assert!(names.is_empty(), "a refused call changed state: {names:?}");
}

/// Goal: a node dialled by id is that node: another node's certificate
/// cannot answer for it (a worker posing as a voter to feed a forged
/// state, or to receive raft messages). Method: dial node 2's address as
/// a node would, expecting node 3, then node 2, then any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dialled_by_id_must_present_that_nodes_certificate() {
    use blixard_api::connect::Security;
    use blixard_api::tls;
    let cluster = TestCluster::start(2, Timings::default()).await;
    let ca = &blixard_tests::test_ca().1;
    let me = tls::issue_node_cert(ca, 9).unwrap();
    let security = Security::node(&ca.cert_pem, &me);
    let dial = |node: Option<u64>| {
        let endpoint = security
            .endpoint_for(cluster.address(2), node)
            .unwrap()
            .connect_timeout(Duration::from_secs(2));
        async move { endpoint.connect().await }
    };
    let wrong = dial(Some(3)).await;
    assert!(wrong.is_err(), "node 2 answered as node 3");
    assert!(dial(Some(2)).await.is_ok(), "node 2 refused as itself");
    assert!(dial(None).await.is_ok(), "node 2 refused as a cluster node");
}

/// A chitchat node of the attacker's, gossiping as `node_id` to the
/// cluster's nodes with `security` (none: an outsider).
async fn forged_gossip(
    cluster: &TestCluster,
    node_id: u64,
    memory_mib: u64,
    security: Option<blixard_membership::GossipSecurity>,
) -> blixard_membership::Membership {
    use blixard_membership::{Membership, MembershipConfig, NodeInfo, NodeRole};
    let address = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = MembershipConfig {
        node_id,
        cluster_name: "blixard".into(),
        cluster_id: cluster.cluster_id(1).await,
        gossip_bind: address,
        gossip_advertise: address,
        seeds: (1..=3).map(|id| cluster.address(id).to_string()).collect(),
        gossip_interval_ms: 50,
        phi_threshold: 8.0,
        dead_node_forget_after_ms: 3_600_000,
        security,
    };
    let info = NodeInfo {
        node_id,
        api_address: address.to_string(),
        role: NodeRole::Worker,
        vcpus_total: 512,
        memory_mib_total: memory_mib,
        memory_mib_free: memory_mib,
        disk_mib_free: 1 << 30,
        hypervisors: vec!["qemu".into()],
        accel: "kvm".into(),
        labels: Default::default(),
        vms_running: 0,
        version: "forged".into(),
    };
    Membership::start(config, &info).await.unwrap()
}

/// Goal: gossip from anyone without the cluster's gossip key is not even
/// read, and a gossip key holder cannot speak for another node nor get a
/// node scheduled on by gossip alone. Method: the review's forged
/// chitchat node impersonating live node 2 with a newer generation, with
/// no key, with a wrong key, and with the key but node 5's certificate; a
/// made-up node 77 offering 1 TiB of memory with no key, and node 78 with
/// the key and a real certificate of its own. Every node must refuse and
/// log the forgeries, keep the real node 2 (its address, alive, voter),
/// list neither 77 nor any forger, leave a VM only 77 or 78 could hold
/// unplaced, and take writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_gossip_is_refused_and_changes_nothing() {
    use blixard_api::identity::{self, GOSSIP_KEY_FILE};
    use blixard_api::pb::node_client::NodeClient;
    use blixard_api::tls;
    use blixard_daemon::security::gossip_security;
    let cluster = TestCluster::start(3, Timings::default()).await;
    let ca = &blixard_tests::test_ca().1;
    let keys = identity::parse_gossip_keys(
        std::path::Path::new(GOSSIP_KEY_FILE),
        &blixard_tests::test_gossip_keys(),
    )
    .unwrap();
    let wrong_keys = identity::parse_gossip_keys(
        std::path::Path::new(GOSSIP_KEY_FILE),
        &identity::create_gossip_key().unwrap(),
    )
    .unwrap();
    let certified = |id: u64, keys: &[identity::GossipKey]| {
        let node = tls::issue_node_cert(ca, id).unwrap();
        Some(gossip_security(&ca.cert_pem, &node, keys.to_vec()).unwrap())
    };
    let real_two = eventually(
        "node 2 in node 1's gossip",
        Duration::from_secs(20),
        || async {
            let nodes = NodeClient::new(cluster.channel(1).await?)
                .list(pb::ListNodesRequest::default())
                .await
                .ok()?
                .into_inner()
                .nodes;
            let two = nodes.into_iter().find(|n| n.node_id == 2)?;
            (!two.gossip_address.is_empty()).then_some(two.gossip_address)
        },
    )
    .await;
    const TIB_MIB: u64 = 1 << 20;
    let forgers = vec![
        forged_gossip(&cluster, 2, TIB_MIB, None).await,
        forged_gossip(&cluster, 2, TIB_MIB, certified(2, &wrong_keys)).await,
        forged_gossip(&cluster, 2, TIB_MIB, certified(5, &keys)).await,
        forged_gossip(&cluster, 77, TIB_MIB, None).await,
        forged_gossip(&cluster, 78, TIB_MIB, certified(78, &keys)).await,
    ];
    let impostor_address = forgers[2].gossip_address().to_string();

    // Every node has heard (and refused) the outsiders, and has seen the
    // key holder's record for node 2 and ignored it.
    for id in 1..=3 {
        eventually(
            &format!("node {id} to refuse forged gossip"),
            Duration::from_secs(30),
            || async {
                // Listing nodes makes the node read its gossip view.
                NodeClient::new(cluster.channel(id).await?)
                    .list(pb::ListNodesRequest::default())
                    .await
                    .ok()?;
                let log = cluster.log(id);
                let refused = log.contains("refused a gossip datagram");
                let ignored = log.lines().any(|line| {
                    line.contains("ignoring an unverified gossip record")
                        && line.contains(&impostor_address)
                        && line.contains("the certificate of node 5 gossips as node 2")
                });
                (refused && ignored).then_some(())
            },
        )
        .await;
    }

    // A VM only a 1 TiB node could hold stays unplaced: gossip alone does
    // not make a node the scheduler may use.
    let mut spec = blixard_tests::flake_spec("too-big");
    spec.memory_mib = TIB_MIB / 2;
    cluster
        .vm_client(1)
        .await
        .create(pb::CreateVmRequest {
            spec: Some(spec),
            replicas: 0,
            stopped: false,
        })
        .await
        .unwrap();
    cluster
        .vm_client(1)
        .await
        .start(pb::VmNameRequest {
            name: "too-big".into(),
        })
        .await
        .unwrap();
    let reason = eventually(
        "the scheduler to give up on too-big",
        Duration::from_secs(30),
        || async {
            let vm = cluster
                .vm_client(1)
                .await
                .get(pb::VmNameRequest {
                    name: "too-big".into(),
                })
                .await
                .ok()?
                .into_inner()
                .vm?;
            let reason = vm.observed?.reason;
            assert_eq!(vm.assigned_node, 0, "placed on gossip alone");
            reason.contains("no node fits").then_some(reason)
        },
    )
    .await;
    assert!(!reason.contains("77") && !reason.contains("78"), "{reason}");

    for id in 1..=3 {
        let nodes = NodeClient::new(cluster.channel(id).await.unwrap())
            .list(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        let ids: Vec<u64> = nodes.iter().map(|n| n.node_id).collect();
        assert!(
            !ids.contains(&77),
            "node {id} lists the outsider 77: {nodes:?}"
        );
        let two = nodes.iter().find(|n| n.node_id == 2).unwrap();
        assert_eq!(two.gossip_address, real_two, "node {id}: {two:?}");
        assert_eq!(two.liveness, "alive", "node {id}: {two:?}");
        assert_eq!(two.role, "voter", "node {id}: {two:?}");
        assert!(two.problem.is_empty(), "node {id}: {two:?}");
        // Node 78 holds the key and its own certificate: gossip may show
        // it, but only as what it is, a node the cluster never admitted.
        if let Some(ghost) = nodes.iter().find(|n| n.node_id == 78) {
            assert!(!ghost.member && !ghost.eligible, "node {id}: {ghost:?}");
        }
    }
    assert_healthy(&cluster, "forged-gossip", &["too-big"]).await;
    for forger in forgers {
        forger.shutdown().await;
    }
}

/// `cluster join-token create --ttl TTL` through node 2, as JSON.
fn make_join_token(cluster: &TestCluster, ttl: &str) -> serde_json::Value {
    let made = cluster.cli_ok(
        2,
        &[
            "cluster",
            "join-token",
            "create",
            "--ttl",
            ttl,
            "-o",
            "json",
        ],
    );
    serde_json::from_str(&made).unwrap()
}

/// Goal: a new node gets its certificate with a one-time join token
/// instead of a hand-made one: the token works once, and an expired one
/// not at all. Method: node 1 holds the CA key; `cluster join-token
/// create`; node 4 starts with only ca.pem and the token and joins; node
/// 5 with the same (used) token and node 6 with an expired one exit
/// saying why, and never join. Then, by raw requests: node 4 may ask
/// again for its own key (a lost answer) but not for another; an id a
/// certificate was issued for gets no second one, even after it is
/// retired with `remove-node` before it ever joined; a revoked token
/// signs nothing; `join-token list` shows what each was spent on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_give_a_new_node_its_certificate_once() {
    use blixard_tests::{Network, NodeOptions};
    let mut cluster =
        TestCluster::start_with(3, Timings::default(), Network::Loopback, |id| NodeOptions {
            ca_key: id == 1,
            ..NodeOptions::default()
        })
        .await;
    cluster.wait_voters(3).await;
    let made = |ttl: &str| make_join_token(&cluster, ttl);
    let token = made("10m")["join_token"].as_str().unwrap().to_string();
    let brief = made("1s");
    let with_token = |token: &str| NodeOptions {
        join_via: Some(1),
        join_token: Some(token.to_string()),
        ..NodeOptions::default()
    };
    cluster.add_node_with(4, with_token(&token));
    eventually(
        "node 4 to join with its new certificate",
        Duration::from_secs(30),
        || async {
            let members = cluster.status(1).await?.members;
            let listed = cluster.cli(1, &["node", "list", "-o", "json"]);
            let nodes: serde_json::Value = serde_json::from_slice(&listed.stdout).ok()?;
            let joined = nodes["nodes"].as_array()?.iter().any(|n| {
                n["node_id"] == 4
                    && (n["role"] == "worker" || n["role"] == "voter" || n["role"] == "learner")
            });
            (joined || members.iter().any(|m| m.node_id == 4)).then_some(())
        },
    )
    .await;
    let tls_dir = cluster.dir.path().join("node4").join("tls");
    let cert = std::fs::read_to_string(tls_dir.join("node.pem")).unwrap();
    assert_eq!(
        blixard_api::tls::node_id_of_pem(std::path::Path::new("node.pem"), &cert).unwrap(),
        4
    );
    {
        use std::os::unix::fs::PermissionsExt;
        for secret in ["node-key.pem", "gossip.key"] {
            let mode = std::fs::metadata(tls_dir.join(secret))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
    }

    // The expired token's time passes by the clock, not by a sleep.
    let expires = brief["expires_at_unix_ms"].as_u64().unwrap();
    eventually(
        "the brief token to expire",
        Duration::from_secs(10),
        || async {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            (now > expires).then_some(())
        },
    )
    .await;
    let brief = brief["join_token"].as_str().unwrap().to_string();
    for (id, token, reason) in [
        (5, token.as_str(), "not valid here"),
        (6, brief.as_str(), "expired"),
    ] {
        cluster.add_node_with(id, with_token(token));
        cluster.wait_exit_saying(id, reason).await;
        assert!(
            !cluster
                .dir
                .path()
                .join(format!("node{id}/tls/node.pem"))
                .exists(),
            "node {id} got a certificate"
        );
    }
    let trail = cluster.cli_ok(1, &["audit", "-o", "json"]);
    assert!(trail.contains("use_join_token"), "{trail}");

    let made = |ttl: &str| make_join_token(&cluster, ttl);
    let issue = |token: String, node_id: u64, csr_pem: String| {
        let cluster = &cluster;
        async move {
            let channel = cluster.channel_with(1, None).await.unwrap();
            pb::cluster_client::ClusterClient::new(channel)
                .issue_certificate(pb::IssueCertificateRequest {
                    join_token: token,
                    node_id,
                    csr_pem,
                })
                .await
                .map(|answer| answer.into_inner())
        }
    };
    let refused = |answer: Result<pb::IssueCertificateResponse, tonic::Status>, why: &str| {
        let status = answer.expect_err(why);
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    };
    // Node 4 lost its answer: the same key gets its certificate again.
    let key_pem = std::fs::read_to_string(tls_dir.join("node-key.pem")).unwrap();
    let same_key = blixard_api::tls::create_node_csr_for(&key_pem).unwrap();
    let again = issue(token.clone(), 4, same_key.clone()).await.unwrap();
    assert_eq!(
        blixard_api::tls::node_id_of_pem(std::path::Path::new("again"), &again.cert_pem).unwrap(),
        4
    );
    let (other_key, other_key_pem) = blixard_api::tls::create_node_csr().unwrap();
    refused(
        issue(token.clone(), 4, other_key.clone()).await,
        "another node's",
    );
    refused(issue(token.clone(), 7, same_key).await, "another node's");

    // Node 8 gets a certificate but never joins; removing it retires the id.
    let eight = made("10m");
    let eight_token = eight["join_token"].as_str().unwrap().to_string();
    let eight_cert = issue(eight_token.clone(), 8, other_key.clone())
        .await
        .unwrap()
        .cert_pem;
    // Its certificate is a node's: a peer-only RPC lets it in, until the
    // id is retired.
    let cluster_id = cluster.cluster_id(1).await;
    let as_eight = || async {
        let node = blixard_api::tls::CertifiedKey {
            cert_pem: eight_cert.clone(),
            key_pem: other_key_pem.clone(),
        };
        let ca = &blixard_tests::test_ca().1.cert_pem;
        let channel = blixard_api::connect::Security::node(ca, &node)
            .endpoint(cluster.address(1))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let channel = Connection::new(channel, blixard_api::connect::Bearer::new(None).unwrap());
        StateFeedClient::new(channel)
            .barrier(pb::BarrierRequest {
                cluster_id: cluster_id.clone(),
            })
            .await
            .map(|_| ())
    };
    as_eight().await.expect("node 8's certificate let in");
    let fresh = made("10m")["join_token"].as_str().unwrap().to_string();
    refused(
        issue(fresh, 8, other_key.clone()).await,
        "is or was in the cluster",
    );
    cluster.cli_ok(2, &["cluster", "remove-node", "8"]);
    eventually(
        "node 8's certificate to be refused",
        Duration::from_secs(10),
        || async {
            let refused = as_eight().await.err()?;
            (refused.code() == tonic::Code::PermissionDenied).then_some(())
        },
    )
    .await;
    refused(
        issue(eight_token, 8, other_key.clone()).await,
        "is or was in the cluster",
    );

    // A revoked token signs nothing.
    let revoked = made("10m");
    let accessor = revoked["accessor"].as_str().unwrap();
    cluster.cli_ok(2, &["cluster", "join-token", "revoke", accessor]);
    refused(
        issue(
            revoked["join_token"].as_str().unwrap().to_string(),
            9,
            other_key,
        )
        .await,
        "not valid here",
    );
    let listed: serde_json::Value =
        serde_json::from_str(&cluster.cli_ok(3, &["cluster", "join-token", "list", "-o", "json"]))
            .unwrap();
    let spent_on = |accessor: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["accessor"] == accessor)
            .map(|t| t["spent_on_node_id"].clone())
    };
    assert_eq!(
        spent_on(eight["accessor"].as_str().unwrap()),
        Some(8.into())
    );
    assert_eq!(spent_on(accessor), None, "revoked, yet listed: {listed}");
    assert!(
        !listed.to_string().contains("blxj."),
        "a secret listed: {listed}"
    );
}

/// Goal: a client with no CA file pins the cluster's CA on first use,
/// only with the fingerprint the operator confirms, and never swaps a
/// pinned CA for another. Method: `tls trust` against node 1 with a
/// wrong fingerprint (refused, exit 5, nothing written), without one off
/// a terminal (refused, exit 2), with the right one (the CA file
/// written); then `cluster status` with no `--ca-file` reads the pinned
/// CA from `$XDG_CONFIG_HOME`; a CA file holding another CA is never
/// overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pins_the_cluster_ca_it_confirms() {
    let cluster = TestCluster::start(1, Timings::default()).await;
    let home = tempfile::tempdir().unwrap();
    let pinned = home.path().join("blixard/ca.pem");
    let blixard = |args: &[&str]| {
        let mut command = std::process::Command::new(blixard_tests::blixard_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BLIXARD_") {
                command.env_remove(key);
            }
        }
        command
            .env("XDG_CONFIG_HOME", home.path())
            .arg("--addr")
            .arg(cluster.address(1))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let ca_pem = &blixard_tests::test_ca().1.cert_pem;
    let fingerprint = blixard_api::tls::fingerprint_sha256(ca_pem).unwrap();
    let wrong = "00".repeat(32);
    let refused = blixard(&["tls", "trust", "--fingerprint", &wrong]);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&fingerprint));
    assert!(!pinned.exists());
    let unconfirmed = blixard(&["tls", "trust"]);
    assert_eq!(unconfirmed.status.code(), Some(2), "{unconfirmed:?}");
    assert!(!pinned.exists());

    // Pasted as openssl shows it: upper case, with colons.
    let pasted = fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let trusted = blixard(&["tls", "trust", "--fingerprint", &pasted, "-o", "json"]);
    assert!(trusted.status.success(), "{trusted:?}");
    let trusted: serde_json::Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert_eq!(trusted["ca_sha256"], fingerprint.as_str());
    assert_eq!(trusted["node_id"], 1);
    assert_eq!(
        blixard_api::tls::fingerprint_sha256(&std::fs::read_to_string(&pinned).unwrap()).unwrap(),
        fingerprint
    );
    let token = cluster.token().unwrap();
    let status = blixard(&["--token", &token, "cluster", "status", "-o", "json"]);
    assert!(status.status.success(), "{status:?}");

    // Another CA pinned there stays, and the cluster is then not trusted.
    let other = blixard_api::tls::create_ca("other").unwrap();
    std::fs::write(&pinned, &other.cert_pem).unwrap();
    let replaced = blixard(&["tls", "trust", "--fingerprint", &fingerprint]);
    assert_eq!(replaced.status.code(), Some(2), "{replaced:?}");
    assert!(String::from_utf8_lossy(&replaced.stderr).contains("already trusts another CA"));
    assert_eq!(std::fs::read_to_string(&pinned).unwrap(), other.cert_pem);
    let status = blixard(&["--token", &token, "cluster", "status"]);
    assert!(!status.status.success(), "{status:?}");
}

/// Goal: a worker's certificate adds no node: joins go to a voter, never
/// through a worker. Method: three voters and a worker; the worker's
/// certificate asks a voter to join node 9 (refused; node 9 is nowhere);
/// node 6, given only the worker's address, still joins: the worker
/// names its voter and node 6 asks that one as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_go_to_a_voter_never_through_a_worker() {
    use blixard_tests::{Network, NodeOptions};
    let timings = Timings {
        voters: 3,
        ..Timings::default()
    };
    let without_agent = |_| NodeOptions {
        agent: false,
        ..NodeOptions::default()
    };
    let mut cluster = TestCluster::start_with(4, timings, Network::Loopback, without_agent).await;
    cluster.wait_voters(3).await;
    let worker = cluster.the_worker(4).await;
    let voter = (1..=4).find(|id| *id != worker).unwrap();
    let as_worker = cluster.peer_channel(voter, worker).await.unwrap();
    let joined = pb::cluster_client::ClusterClient::new(as_worker)
        .join(pb::JoinRequest {
            node_id: 9,
            address: "127.0.0.1:9".into(),
            cluster_id: cluster.cluster_id(voter).await,
        })
        .await
        .expect_err("a worker's certificate joined node 9");
    assert_eq!(joined.code(), tonic::Code::PermissionDenied, "{joined:?}");
    let listed = |cluster: &TestCluster, id: u64| {
        let nodes = cluster.cli_ok(voter, &["node", "list", "-o", "json"]);
        let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == id && n["role"] != "none")
    };
    assert!(!listed(&cluster, 9), "node 9 was added");

    // Asked directly, the worker passes nothing on: it names its voter.
    let as_six = cluster.peer_channel(worker, 6).await.unwrap();
    let redirected = pb::cluster_client::ClusterClient::new(as_six)
        .join(pb::JoinRequest {
            node_id: 6,
            address: "127.0.0.1:6".into(),
            cluster_id: cluster.cluster_id(voter).await,
        })
        .await
        .expect_err("a worker took a join");
    assert_eq!(
        redirected.code(),
        tonic::Code::FailedPrecondition,
        "{redirected:?}"
    );
    let named = |key| {
        redirected
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let via_node: u64 = named("blixard-join-via-node").unwrap().parse().unwrap();
    assert_ne!(via_node, worker);
    assert_eq!(
        named("blixard-join-via").unwrap(),
        cluster.address(via_node)
    );
    assert!(!listed(&cluster, 6), "the worker passed node 6's join on");

    cluster.add_node_with(
        6,
        NodeOptions {
            join_via: Some(worker),
            agent: false,
            ..NodeOptions::default()
        },
    );
    eventually(
        "node 6 to join through the worker's voter",
        Duration::from_secs(30),
        || async { listed(&cluster, 6).then_some(()) },
    )
    .await;
}
