//! Certificate rotation on real daemons: `blixard cluster rotate-certs`
//! gives every node a new key and certificate while the cluster takes
//! writes, without a restart, and loses none of them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blixard_api::pb;
use blixard_api::pb::state_feed_client::StateFeedClient;
use blixard_api::tls;
use blixard_tests::{create_vm, eventually, Network, NodeOptions, TestCluster, Timings};

/// The SHA-256 of the certificate node `id` keeps in its data directory.
fn kept_fingerprint(cluster: &TestCluster, id: u64) -> String {
    let path = cluster.dir.path().join(format!("node{id}/tls/node.pem"));
    tls::fingerprint_sha256(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The SHA-256 of the certificate node `id` presents to a new TLS
/// connection now.
async fn served_fingerprint(cluster: &TestCluster, id: u64) -> String {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = &blixard_tests::test_ca().1.cert_pem;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(cluster.address(id))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME).unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let served = &stream.get_ref().1.peer_certificates().unwrap()[0];
    tls::fingerprint_sha256_der(served.as_ref())
}

/// Goal: a node is held to the certificate it serves from the moment it
/// is in the state, not only after its first renewal, so a certificate
/// the CA makes later for its id (a CA key holder posing as the node) is
/// refused. Method: a voter and a worker (which pins through its voter's
/// feed); a certificate made by hand for each is refused at both nodes
/// within a deadline, while their own keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_held_to_the_certificate_it_serves() {
    let timings = Timings {
        voters: 1,
        ..Timings::default()
    };
    let cluster = TestCluster::start_without_agents(2, timings).await;
    assert_eq!(cluster.the_worker(2).await, 2);
    let cluster_id = cluster.cluster_id(1).await;
    let barrier = async |at: u64, node: &tls::CertifiedKey| {
        let channel = cluster.channel_holding(at, node).await.unwrap();
        StateFeedClient::new(channel)
            .barrier(pb::BarrierRequest {
                cluster_id: cluster_id.clone(),
            })
            .await
    };
    for id in [1, 2] {
        let by_hand = tls::issue_node_cert(&blixard_tests::test_ca().1, id).unwrap();
        for at in [1, 2] {
            let refused = eventually(
                &format!("node {at} to refuse a hand-made certificate of node {id}"),
                Duration::from_secs(20),
                // (A worker feeds nobody: it refuses the hand-made
                // certificate's barrier with FailedPrecondition until it
                // refuses the certificate itself.)
                || async {
                    barrier(at, &by_hand)
                        .await
                        .err()
                        .filter(|e| e.code() == tonic::Code::PermissionDenied)
                },
            )
            .await;
            assert!(
                refused
                    .message()
                    .contains("not the one the cluster holds it to"),
                "{refused:?}"
            );
        }
        // The voter answers its own certificate (a worker feeds nobody).
        barrier(1, &cluster.kept_pair(id).unwrap())
            .await
            .unwrap_or_else(|e| panic!("node {id}'s own certificate: {e:?}"));
    }
}

/// Goal: `cluster rotate-certs` renews every node's certificate (voters
/// and a worker) under a write load, serves the new one without a
/// restart, and loses no acknowledged write. Method: node 1 holds the CA
/// key; two writers create VMs through two other nodes; rotate through
/// node 2; every node keeps and serves a new certificate; writes go on;
/// a voter (not the CA's) SIGKILLed and restarted comes back on its new
/// certificate; every node holds every acknowledged write. And the old
/// certificates are retired: a copy of an old key (or a certificate made
/// by hand for a renewed node) is refused on peer calls, a feed of the
/// state opened with one ends, and every node stays alive in gossip
/// (which carries and believes the new certificates only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_certificates_under_load_loses_no_write() {
    let timings = Timings {
        voters: 3,
        // The voter killed below must come back as a voter on its new
        // certificate: autopilot must not hand its vote to the worker
        // while it is down (how long that takes depends on the load).
        dead_voter_after_ms: 600_000,
        ..Timings::default()
    };
    let mut cluster = TestCluster::start_with(4, timings, Network::Loopback, |id| NodeOptions {
        ca_key: id == 1,
        agent: false,
        ..NodeOptions::default()
    })
    .await;
    cluster.wait_voters(3).await;
    // Which node autopilot left a worker depends on join order; the
    // voter restarted below is one without the CA key.
    let worker = cluster.the_worker(4).await;
    let victim = [3, 4, 2].into_iter().find(|id| *id != worker).unwrap();
    let before: Vec<String> = (1..=4).map(|id| kept_fingerprint(&cluster, id)).collect();
    let old_pairs: Vec<tls::CertifiedKey> =
        (1..=4).map(|id| cluster.kept_pair(id).unwrap()).collect();
    // A voter other than the CA holder answers the peer calls below.
    let judge = [2, 3, 4].into_iter().find(|id| *id != worker).unwrap();
    // A feed of the state a copy of the worker's old key holds open.
    let mut stolen_feed = {
        let channel = cluster
            .channel_holding(judge, &old_pairs[worker as usize - 1])
            .await
            .unwrap();
        StateFeedClient::new(channel)
            .subscribe(pb::FeedRequest {
                from_revision: 0,
                cluster_id: cluster.cluster_id(judge).await,
            })
            .await
            .unwrap()
            .into_inner()
    };
    assert!(stolen_feed.message().await.unwrap().is_some());

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in [3, 4] {
        let mut client = cluster.vm_client(id).await;
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            // Bounded: each writer makes at most 3000 attempts.
            for i in 0..3000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("r{id}-{i:04}");
                if create_vm(&mut client, &name).await.is_ok() {
                    acknowledged.lock().unwrap().push(name);
                }
            }
        }));
    }
    let written = |count: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            eventually("writes", Duration::from_secs(30), || async {
                (acknowledged.lock().unwrap().len() >= count).then_some(())
            })
            .await
        }
    };
    written(30).await;

    let rotated = tokio::task::block_in_place(|| {
        cluster.cli_ok(2, &["cluster", "rotate-certs", "-o", "json"])
    });
    let rotated: serde_json::Value = serde_json::from_str(&rotated).unwrap();
    let rotated = rotated.as_array().unwrap();
    assert_eq!(rotated.len(), 4, "{rotated:?}");
    for (i, id) in (1..=4u64).enumerate() {
        let renewed = rotated
            .iter()
            .find(|r| r["node_id"] == id)
            .unwrap_or_else(|| panic!("node {id} not renewed: {rotated:?}"));
        assert_eq!(renewed["error"], serde_json::Value::Null, "{renewed}");
        assert_eq!(renewed["signed_by"], 1, "{renewed}");
        let kept = kept_fingerprint(&cluster, id);
        assert_ne!(kept, before[i], "node {id} kept its old certificate");
        assert_eq!(renewed["cert_sha256"], kept.as_str());
        assert_eq!(served_fingerprint(&cluster, id).await, kept, "node {id}");
        let tls_dir = cluster.dir.path().join(format!("node{id}/tls"));
        // The kept key is the certificate's, and stays private.
        let kept = cluster.kept_pair(id).unwrap();
        let signer = blixard_api::identity::NodeSigner::new(&kept).unwrap();
        let signature = signer.sign(b"rotation").unwrap();
        blixard_api::identity::NodeVerifier::new(&blixard_tests::test_ca().1.cert_pem)
            .unwrap()
            .check_signature(signer.certificate_der(), b"rotation", &signature)
            .unwrap_or_else(|e| panic!("node {id}: the kept key is not the certificate's: {e}"));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tls_dir.join("node-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "node {id}'s key");
        }
        for leftover in [
            "node.pem.next",
            "node-key.pem.next",
            "node.pem.next.partial",
        ] {
            assert!(!tls_dir.join(leftover).exists(), "node {id}: {leftover}");
        }
    }

    // The old certificates are retired everywhere.
    let cluster_id = cluster.cluster_id(1).await;
    let barrier = async |at: u64, node: &tls::CertifiedKey| {
        let channel = cluster.channel_holding(at, node).await.unwrap();
        StateFeedClient::new(channel)
            .barrier(pb::BarrierRequest {
                cluster_id: cluster_id.clone(),
            })
            .await
    };
    for id in 1..=4u64 {
        let by_hand = tls::issue_node_cert(&blixard_tests::test_ca().1, id).unwrap();
        for at in 1..=4u64 {
            let refused = barrier(at, &old_pairs[id as usize - 1]).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
            assert!(
                refused
                    .message()
                    .contains("not the one the cluster holds it to"),
                "node {id}'s old certificate at node {at}: {refused:?}"
            );
            // One the CA makes by hand now is not the renewed one either.
            let refused = barrier(at, &by_hand).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        }
        barrier(judge, &cluster.kept_pair(id).unwrap())
            .await
            .unwrap_or_else(|e| panic!("node {id}'s renewed certificate: {e:?}"));
    }
    // A node's key alone (without an admin's token) renews nothing.
    {
        let (csr_pem, _key) = tls::create_node_csr().unwrap();
        let channel = cluster
            .channel_holding(1, &cluster.kept_pair(worker).unwrap())
            .await
            .unwrap();
        let refused = pb::cluster_client::ClusterClient::new(channel)
            .sign_certificate(pb::SignCertificateRequest { csr_pem })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stolen_feed.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the feed opened with an old key ends within 10 s")
    .expect("the feed ends with a refusal");
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");

    // Writes go on, and a voter restarted from its files comes back on
    // the new certificate (its peers accept it).
    let so_far = acknowledged.lock().unwrap().len();
    written(so_far + 30).await;
    cluster.kill(victim);
    let so_far = acknowledged.lock().unwrap().len();
    written(so_far + 10).await;
    cluster.restart(victim);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged: BTreeSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    for id in 1..=4 {
        eventually(
            "the node to hold every write",
            Duration::from_secs(30),
            || async {
                let (names, _) = cluster.vm_names(id).await?;
                let names: BTreeSet<String> = names.into_iter().collect();
                acknowledged.is_subset(&names).then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        served_fingerprint(&cluster, victim).await,
        kept_fingerprint(&cluster, victim)
    );
    eventually(
        "the restarted node to be an alive voter again",
        Duration::from_secs(30),
        || async {
            let listed = cluster.cli(1, &["node", "list", "-o", "json"]);
            let nodes: serde_json::Value = serde_json::from_slice(&listed.stdout).ok()?;
            let nodes = nodes["nodes"].as_array()?;
            let voter_again = nodes.iter().any(|n| {
                n["node_id"] == victim && n["role"] == "voter" && n["liveness"] == "alive"
            });
            // Gossip believes every node on its renewed certificate.
            let all_alive = (1..=4u64).all(|id| {
                nodes
                    .iter()
                    .any(|n| n["node_id"] == id && n["liveness"] == "alive")
            });
            (voter_again && all_alive).then_some(())
        },
    )
    .await;
}
