//! A three-member etcd cluster on 127.0.0.1 (Debian's etcd-server, fsync
//! on, as shipped), the reference Blixard's consensus is measured against.
//!
//! Invariant: every etcd started here is stopped when the cluster is
//! dropped (SIGTERM, then SIGKILL: a lone survivor may ignore SIGTERM).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, KvClient};
use indicatif::ProgressBar;

const MEMBERS: usize = 3;
const STARTUP_DEADLINE_MS: u64 = 30_000;
const POLL_INTERVAL_MS: u64 = 100;
const STOP_GRACE_MS: u64 = 5_000;

pub struct EtcdCluster {
    children: Vec<Child>,
    /// Client URLs, member i at index i.
    pub endpoints: Vec<String>,
    pub version: String,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &self.children {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
                }
            }
        }
    }
}

/// `etcd --version`'s first line, or why etcd cannot run.
pub fn version(binary: &str) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {binary:?} (install Debian's etcd-server)"))?;
    anyhow::ensure!(
        output.status.success(),
        "{binary} --version failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

impl EtcdCluster {
    /// Starts three members in `dir` and waits until each takes a write.
    pub async fn start(
        binary: &str,
        dir: &Path,
        ports: &[u16],
        spinner: &ProgressBar,
    ) -> anyhow::Result<Self> {
        assert_eq!(ports.len(), 2 * MEMBERS, "a client and a peer port each");
        let version = version(binary)?;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[MEMBERS + i]);
        let initial_cluster = (0..MEMBERS)
            .map(|i| format!("e{i}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            children: Vec::new(),
            endpoints: Vec::new(),
            version,
        };
        spinner.set_message("starting three etcd members");
        for (i, client_port) in ports[..MEMBERS].iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client_port}");
            let log_path = dir.join(format!("etcd{i}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("cannot create {}", log_path.display()))?;
            let child = Command::new(binary)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url(i)])
                .args(["--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "blixard-bench"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {binary}"))?;
            cluster.children.push(child);
            cluster.endpoints.push(client_url);
        }
        spinner.set_message("waiting for etcd to elect a leader");
        let deadline = Instant::now() + Duration::from_millis(STARTUP_DEADLINE_MS);
        for endpoint in &cluster.endpoints {
            loop {
                let ready = async {
                    let client = Client::connect([endpoint], None).await?;
                    client.kv_client().put("bench-ready", "1", None).await?;
                    Ok::<_, etcd_client::Error>(())
                };
                match ready.await {
                    Ok(()) => break,
                    Err(error) if Instant::now() >= deadline => {
                        anyhow::bail!("etcd at {endpoint} not ready in {STARTUP_DEADLINE_MS} ms: {error} (logs in {})", dir.display())
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await,
                }
            }
        }
        Ok(cluster)
    }

    /// The client URL of the current leader.
    pub async fn leader(&self) -> anyhow::Result<String> {
        for endpoint in &self.endpoints {
            let mut client = Client::connect([endpoint], None).await?;
            let status = client.status().await?;
            let me = status.header().map(|h| h.member_id());
            if me == Some(status.leader()) {
                return Ok(endpoint.clone());
            }
        }
        anyhow::bail!("no etcd member says it leads")
    }
}

/// KV clients for `clients` closed-loop clients over `endpoints`, one
/// connection per endpoint per `CLIENTS_PER_CONNECTION` clients.
pub async fn kv_clients(endpoints: &[String], clients: usize) -> anyhow::Result<Vec<KvClient>> {
    let per_endpoint = super::load::connections_per_endpoint(clients, endpoints.len());
    let mut kvs = Vec::new();
    for _ in 0..per_endpoint {
        for endpoint in endpoints {
            kvs.push(Client::connect([endpoint], None).await?.kv_client());
        }
    }
    Ok(kvs)
}
