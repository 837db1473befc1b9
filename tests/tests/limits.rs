//! Bounded resources against real `blixard agent` processes: clients
//! that open connections and never use them are held to their bound,
//! measured in the daemon's open files, and the node keeps serving its
//! peers and other clients; watchers that never read are bounded in
//! number and in the memory they cost, measured in the daemon's peak
//! resident memory.

use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb;
use blixard_api::pb::vm_client::VmClient;
use blixard_daemon::listener::CLIENT_CONNECTIONS_PER_ADDRESS_MAX;
use blixard_daemon::services::streams::STREAMS_PER_ADDRESS_MAX;
use blixard_tests::{
    create_vm, eventually, heavy_flake_spec, Network, NodeOptions, TestCluster, Timings,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A client that finishes its TLS handshake from `from` and then says
/// nothing; `None` if the node closed it during the handshake.
async fn silent_client(
    connector: &tokio_rustls::TlsConnector,
    address: std::net::SocketAddr,
    from: &str,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(address).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from(blixard_api::tls::SERVER_NAME).unwrap();
    connector.connect(name, tcp).await.ok()
}

/// Goal: one address holding idle connections open gets at most its
/// bound of them (the daemon's open files stay bounded), and the node
/// still commits writes with its peers and answers a client from another
/// address. Method: twice the per-address bound of handshaken, silent
/// connections from 127.0.0.2 to node 1; count node 1's open files; write
/// through node 1 from 127.0.0.1 and read the write back on node 1 and 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_are_bounded_and_the_node_keeps_serving() {
    let cluster = TestCluster::start(3, Timings::default()).await;
    let files_before = cluster.open_files(1);

    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = &blixard_tests::test_ca().1.cert_pem;
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let address: std::net::SocketAddr = cluster.address(1).parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..2 * CLIENT_CONNECTIONS_PER_ADDRESS_MAX {
        silent.extend(silent_client(&connector, address, "127.0.0.2").await);
    }

    // The connections past the bound are closed by the node once their
    // handshake is done; some margin for the node's own connections.
    let bound = files_before + CLIENT_CONNECTIONS_PER_ADDRESS_MAX + 32;
    eventually(
        &format!("node 1 to hold at most {bound} open files"),
        Duration::from_secs(30),
        || async { (cluster.open_files(1) <= bound).then_some(()) },
    )
    .await;

    let mut client = cluster.vm_client(1).await;
    create_vm(&mut client, "held-open").await.unwrap();
    for id in [1, 3] {
        eventually(
            &format!("node {id} to list held-open"),
            Duration::from_secs(20),
            || async {
                let (names, _) = cluster.vm_names(id).await?;
                names.iter().any(|n| n == "held-open").then_some(())
            },
        )
        .await;
    }
    assert!(
        cluster.open_files(1) <= bound,
        "node 1 holds {} open files",
        cluster.open_files(1)
    );
    drop(silent);
}

/// Goal: a client that opens watches and never reads gets at most its
/// address's bound of them (so it cannot take the node's), each costs
/// the node a bounded buffer rather than the whole VM list (about 3 MB
/// here), and each ends with `DataLoss` once it has stalled. Method:
/// 1000 VMs with 3 KB flake references; the per-address bound of watches
/// over two connections, never read; one more is refused, naming the
/// address; once every watch has stalled, each is read to its end and the
/// node's peak resident memory compared with before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watches_are_bounded_in_number_and_memory() {
    const VMS: usize = 1000;
    const CONNECTIONS: usize = 2;
    let cluster =
        TestCluster::start_with(1, Timings::default(), Network::Loopback, |_| NodeOptions {
            agent: false,
            ..NodeOptions::default()
        })
        .await;
    let mut client = cluster.vm_client(1).await;
    for i in 0..VMS {
        client
            .create(pb::CreateVmRequest {
                spec: Some(heavy_flake_spec(&format!("vm-{i:04}"), 3000)),
                replicas: 0,
                stopped: true,
            })
            .await
            .unwrap();
    }
    let peak_before = cluster.peak_rss_bytes(1);

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(VmClient::new(cluster.channel(1).await.unwrap()));
    }
    let mut watches = Vec::new();
    for i in 0..STREAMS_PER_ADDRESS_MAX {
        let watch = clients[i % CONNECTIONS]
            .watch(pb::WatchVmsRequest {})
            .await
            .unwrap();
        watches.push(watch.into_inner());
    }
    let refused = clients[0].watch(pb::WatchVmsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("127.0.0.1"), "{refused}");

    // Every producer gives up once its reader has taken nothing for the
    // stall deadline (the node logs each); then every watch, read, shows
    // what was buffered for it and ends with the stall's error.
    eventually("every watch to stall", Duration::from_secs(120), || async {
        let stalled = cluster
            .log(1)
            .matches("a stream's reader took nothing")
            .count();
        (stalled >= STREAMS_PER_ADDRESS_MAX).then_some(())
    })
    .await;
    // Read together: watches share their connection's HTTP/2 window, so
    // one read alone waits behind the others' unread data.
    let mut reading = tokio::task::JoinSet::new();
    for (i, mut watch) in watches.into_iter().enumerate() {
        reading.spawn(async move {
            loop {
                match watch.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break (i, tonic::Status::ok("")),
                    Err(status) => break (i, status),
                }
            }
        });
    }
    while let Some(ended) = reading.join_next().await {
        let (i, end) = ended.unwrap();
        assert_eq!(end.code(), tonic::Code::DataLoss, "watch {i}: {end}");
    }
    let grown = cluster.peak_rss_bytes(1).saturating_sub(peak_before);
    assert!(
        grown < 48 * 1024 * 1024,
        "{STREAMS_PER_ADDRESS_MAX} stalled watches grew the node's peak memory by {} MiB",
        grown / (1024 * 1024)
    );
}
