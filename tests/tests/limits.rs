//! Bounded resources against real `blixard agent` processes: clients
//! that open connections and never use them are held to their bound,
//! measured in the daemon's open files, and the node keeps serving its
//! peers and other clients; watchers that never read are bounded in
//! number and in the memory they cost, measured in the daemon's peak
//! resident memory. A list past the message limit is read in pages.

use std::sync::Arc;
use std::time::Duration;

use blixard_api::limits::{PAGE_BYTES_MAX, PAGE_ITEMS_DEFAULT};
use blixard_api::pb;
use blixard_api::pb::vm_client::VmClient;
use blixard_daemon::listener::CLIENT_CONNECTIONS_PER_ADDRESS_MAX;
use blixard_daemon::services::streams::STREAMS_PER_ADDRESS_MAX;
use blixard_tests::{create_vm, eventually, heavy_flake_spec, TestCluster, Timings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A TLS client of the test CA speaking HTTP/2, with no certificate.
fn tls_connector() -> tokio_rustls::TlsConnector {
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
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

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

    let connector = tls_connector();
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

    // Nodes come in pages too: one at a time, each once.
    let nodes = blixard_api::pb::node_client::NodeClient::new(cluster.channel(2).await.unwrap());
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = nodes
            .clone()
            .list(pb::ListNodesRequest {
                limit: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.nodes.len(), 1, "{page:?}");
        ids.push(page.nodes[0].node_id);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, [1, 2, 3]);
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
    let cluster = TestCluster::start_without_agents(1, Timings::default()).await;
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
            .watch(pb::WatchVmsRequest::default())
            .await
            .unwrap();
        watches.push(watch.into_inner());
    }
    let refused = clients[0]
        .watch(pb::WatchVmsRequest::default())
        .await
        .unwrap_err();
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

/// Goal: a VM list larger than gRPC's 4 MiB message limit is read whole,
/// page by page, by the API and the CLI, each page within its bounds and
/// each VM exactly once, and a group's members are listed alone. Method:
/// 1200 VMs with 4 KB flake references (about 5 MB listed) and a group
/// of 3; the first page's size and token; every page at a limit of 97;
/// `vm list --output json` and `vm list --group`; a token from nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_past_the_message_limit_comes_in_pages() {
    const VMS: usize = 1200;
    let cluster = TestCluster::start_without_agents(1, Timings::default()).await;
    let client = cluster.vm_client(1).await;
    // Created a few at a time: the list is what is under test.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..VMS {
        let mut client = client.clone();
        creates.spawn(async move {
            client
                .create(pb::CreateVmRequest {
                    spec: Some(heavy_flake_spec(&format!("vm-{i:04}"), 4000)),
                    replicas: 0,
                    stopped: true,
                })
                .await
                .unwrap();
        });
        if creates.len() == 16 {
            creates.join_next().await.unwrap().unwrap();
        }
    }
    creates.join_all().await;
    let mut group = client.clone();
    group
        .create(pb::CreateVmRequest {
            spec: Some(blixard_tests::flake_spec("g")),
            replicas: 3,
            stopped: true,
        })
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..VMS).map(|i| format!("vm-{i:04}")).collect();
    expected.extend(["g-1", "g-2", "g-3"].map(String::from));
    expected.sort();

    let first = client
        .clone()
        .list(pb::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let encoded = prost::Message::encoded_len(&first);
    assert!(
        encoded <= PAGE_BYTES_MAX + 64,
        "a first page of {encoded} bytes"
    );
    assert!(!first.vms.is_empty() && first.vms.len() <= PAGE_ITEMS_DEFAULT);
    assert!(!first.next_page_token.is_empty());

    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .clone()
            .list(pb::ListVmsRequest {
                limit: 97,
                page_token: token,
                group: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.vms.len() <= 97);
        pages += 1;
        listed.extend(page.vms.into_iter().map(|vm| vm.spec.unwrap().name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, expected, "every VM once, in name order");
    assert_eq!(pages, expected.len().div_ceil(97));

    let json: serde_json::Value =
        serde_json::from_str(&cluster.cli_ok(1, &["vm", "list", "--output", "json"])).unwrap();
    let names: Vec<&str> = json["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected);
    let json: serde_json::Value = serde_json::from_str(
        &cluster.cli_ok(1, &["vm", "list", "--group", "g", "--output", "json"]),
    )
    .unwrap();
    assert_eq!(json["vms"].as_array().unwrap().len(), 3, "{json}");

    let refused = client
        .clone()
        .list(pb::ListVmsRequest {
            limit: 0,
            page_token: "vm/".to_string() + &"x".repeat(10_000),
            group: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("page_token"), "{refused:?}");
    assert!(refused.message().len() < 200, "{}", refused.message());
}

/// Goal: a connection with no call in flight is closed once it has idled
/// for `[api] idle_timeout_ms` (its descriptor given back), a connection
/// holding a quiet watch is not, and a client whose connection was closed
/// for idling is served again on its next call. Method: a node with a 2 s
/// idle timeout; a watch on its own connection and a client that made one
/// call; 64 handshaken, silent connections; poll until each silent one
/// reads its end and the node's open files are back; then the client
/// calls again and the watch sees the VM it creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_holding_no_call_are_closed_when_idle() {
    const SILENT: usize = 64;
    let mut cluster = TestCluster::start_without_agents(1, Timings::default()).await;
    cluster.kill(1);
    cluster.set_config(1, "api.idle_timeout_ms", "2000");
    cluster.restart(1);
    let mut watcher = eventually("node 1 back", Duration::from_secs(30), || async {
        let mut client = VmClient::new(cluster.channel(1).await?);
        let watch = client.watch(pb::WatchVmsRequest::default()).await.ok()?;
        Some(watch.into_inner())
    })
    .await;
    let mut client = cluster.vm_client(1).await;
    create_vm(&mut client, "before").await.unwrap();
    let files_before = cluster.open_files(1);

    let connector = tls_connector();
    let address: std::net::SocketAddr = cluster.address(1).parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(
            silent_client(&connector, address, "127.0.0.1")
                .await
                .expect("a handshake under every bound"),
        );
    }
    assert!(cluster.open_files(1) >= files_before + SILENT);
    for (i, stream) in silent.iter_mut().enumerate() {
        // The node's HTTP/2 settings come first, then the end.
        use tokio::io::AsyncReadExt;
        let mut sent = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut sent));
        assert!(
            read.await.is_ok(),
            "silent connection {i} still open after 30 s"
        );
    }
    eventually(
        "node 1 to give the idle connections' descriptors back",
        Duration::from_secs(30),
        || async { (cluster.open_files(1) <= files_before).then_some(()) },
    )
    .await;

    // The client's own connection idled out too; its next call connects
    // again. The watch's connection held a call and is still open.
    create_vm(&mut client, "after").await.unwrap();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), watcher.message())
            .await
            .expect("the watch to see the VM")
            .expect("the watch to stay open")
            .expect("an event");
        // SYNCED carries no VM.
        if event.vm.is_some_and(|vm| vm.spec.unwrap().name == "after") {
            break;
        }
    }
}
