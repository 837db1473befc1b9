//! The process harness: runs real `blixard agent` processes on 127.0.0.1, each
//! with its own data directory and port, and drives them over gRPC and the
//! real CLI.
//!
//! Invariant: every process a `TestCluster` starts is SIGKILLed when it is
//! dropped, so a failing test leaves nothing running.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blixard_api::pb;
use blixard_api::pb::{cluster_client::ClusterClient, vm_client::VmClient};
use tonic::transport::{Channel, Endpoint};

use crate::flake_spec;

pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The `blixard` binary: `BLIXARD_BIN`, or a fresh `cargo build` of it.
pub fn blixard_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("BLIXARD_BIN") {
            return PathBuf::from(bin);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--bin", "blixard"])
            .current_dir(workspace)
            .status()
            .expect("cannot run cargo build");
        assert!(status.success(), "cargo build --bin blixard failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace.join("target"));
        target.join("debug").join("blixard")
    })
}

/// A free TCP port on 127.0.0.1 (the listener is closed before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub struct TestNode {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    config_path: PathBuf,
    child: Option<Child>,
}

/// Raft timings for tests: fast elections so failover tests stay short.
#[derive(Clone, Copy)]
pub struct Timings {
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub snapshot_threshold: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            election_timeout_ms: 500,
            heartbeat_interval_ms: 50,
            snapshot_threshold: 10_000,
        }
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, TestNode>,
    timings: Timings,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Hypervisors outlive their agent by design; these are ours.
        for pid in hypervisors_under(self.dir.path()) {
            // SAFETY: kill(2) on a pid whose cwd is inside this test's directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn processes() -> impl Iterator<Item = (u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv0 = cmdline.split(|b| *b == 0).next()?.to_vec();
            Some((pid, String::from_utf8(argv0).ok()?))
        })
}

fn hypervisors_under(dir: &Path) -> Vec<u32> {
    hypervisors_named_under(dir, "")
}

/// Hypervisors (`microvm@PREFIX...`) whose working directory, their VM's
/// state directory, lies under `dir`; other tests' VMs are not ours.
fn hypervisors_named_under(dir: &Path, name_prefix: &str) -> Vec<u32> {
    let wanted = format!("microvm@{name_prefix}");
    processes()
        .filter(|(_, argv0)| argv0.starts_with(&wanted))
        .filter(|(pid, _)| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The test guest (kernel, initramfs), built once per workspace by
/// `blixard image build` (a no-op when up to date).
pub fn guest_image() -> &'static (PathBuf, PathBuf) {
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace.join("target"))
            .join("guest");
        let lock_path = workspace.join("target").join("guest.lock");
        std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
        // Test processes run in parallel: one builds, the others wait.
        let lock = std::fs::File::create(&lock_path).unwrap();
        lock.lock().unwrap();
        let output = Command::new(blixard_bin())
            .args(["image", "build", "--output", "json", "--out"])
            .arg(&out)
            .output()
            .expect("cannot run blixard image build");
        assert!(
            output.status.success(),
            "blixard image build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (out.join("vmlinuz"), out.join("initrd.gz"))
    })
}

impl TestCluster {
    /// Starts `count` nodes: node 1 bootstraps, the rest join through it;
    /// returns once all are voters.
    pub async fn start(count: u64, timings: Timings) -> Self {
        let mut cluster = Self {
            dir: tempfile::Builder::new()
                .prefix("blixard-test-")
                .tempdir()
                .unwrap(),
            nodes: BTreeMap::new(),
            timings,
        };
        cluster.add_node(1, None);
        cluster.wait_leader_among(&[1]).await;
        for id in 2..=count {
            cluster.add_node(id, Some(1));
        }
        cluster.wait_voters(count as usize).await;
        cluster
    }

    /// Creates and starts node `id`, joining through `join_via` if given.
    pub fn add_node(&mut self, id: u64, join_via: Option<u64>) {
        let address = format!("127.0.0.1:{}", free_port());
        let data_dir = self.dir.path().join(format!("node{id}"));
        let config_path = self.dir.path().join(format!("node{id}.toml"));
        let t = self.timings;
        let join = join_via
            .map(|via| format!("join = [\"{}\"]\n", self.nodes[&via].address))
            .unwrap_or_default();
        std::fs::write(
            &config_path,
            format!(
                "[cluster]\nnode_id = {id}\ndata_dir = \"{}\"\n{join}\n[api]\nbind = \"{address}\"\n\n[consensus]\nelection_timeout_ms = {}\nheartbeat_interval_ms = {}\nsnapshot_threshold = {}\n\n[agent]\naccel = \"tcg\"\nstop_timeout_ms = 4000\n",
                data_dir.display(),
                t.election_timeout_ms,
                t.heartbeat_interval_ms,
                t.snapshot_threshold
            ),
        )
        .unwrap();
        let node = TestNode {
            id,
            address,
            data_dir,
            log_path: self.dir.path().join(format!("node{id}.log")),
            config_path,
            child: None,
        };
        self.nodes.insert(id, node);
        self.restart(id);
    }

    /// (Re)starts node `id` from its config and data directory.
    pub fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap();
        let child = Command::new(blixard_bin())
            .arg("agent")
            .arg("--config")
            .arg(&node.config_path)
            .env("BLIXARD_LOG", "info,slog=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Pids of this cluster's hypervisors of VM `name` (on any node).
    pub fn vm_processes(&self, name: &str) -> Vec<u32> {
        let wanted = format!("microvm@{name}");
        hypervisors_named_under(self.dir.path(), name)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    cmdline.split(|b| *b == 0).next() == Some(wanted.as_bytes())
                })
            })
            .collect()
    }

    pub fn address(&self, id: u64) -> &str {
        &self.nodes[&id].address
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default()
    }

    pub async fn channel(&self, id: u64) -> Option<Channel> {
        Endpoint::from_shared(format!("http://{}", self.address(id)))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .ok()
    }

    pub async fn vm_client(&self, id: u64) -> VmClient<Channel> {
        let channel =
            eventually("a connection", Duration::from_secs(10), || self.channel(id)).await;
        VmClient::new(channel)
    }

    pub async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        let mut client = ClusterClient::new(self.channel(id).await?);
        Some(client.status(pb::StatusRequest {}).await.ok()?.into_inner())
    }

    /// Waits until every node in `ids` reports the same leader (one of
    /// `ids`) in the same term; returns the leader.
    pub async fn wait_leader_among(&self, ids: &[u64]) -> u64 {
        eventually("one agreed leader", Duration::from_secs(20), || async {
            let mut seen = Vec::new();
            for id in ids {
                let status = self.status(*id).await?;
                seen.push((status.leader_id, status.term));
            }
            let (leader, term) = seen[0];
            let agreed =
                leader != 0 && ids.contains(&leader) && seen.iter().all(|s| *s == (leader, term));
            agreed.then_some(leader)
        })
        .await
    }

    pub async fn wait_voters(&self, count: usize) {
        eventually(
            "all nodes to be voters",
            Duration::from_secs(30),
            || async {
                let status = self.status(1).await?;
                let voters = status
                    .members
                    .iter()
                    .filter(|m| m.role() == pb::MemberRole::Voter)
                    .count();
                (voters == count).then_some(())
            },
        )
        .await
    }

    /// Runs the real CLI against node `id`.
    pub fn cli(&self, id: u64, args: &[&str]) -> Output {
        Command::new(blixard_bin())
            .arg("--addr")
            .arg(self.address(id))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs the CLI against node `id`, asserts success, returns stdout.
    pub fn cli_ok(&self, id: u64, args: &[&str]) -> String {
        let output = self.cli(id, args);
        assert!(
            output.status.success(),
            "blixard {args:?} on node {id}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Names of all VMs listed by node `id`, with the list's revision.
    pub async fn vm_names(&self, id: u64) -> Option<(Vec<String>, u64)> {
        let mut client = VmClient::new(self.channel(id).await?);
        let list = client.list(pb::ListVmsRequest {}).await.ok()?.into_inner();
        let names = list
            .vms
            .iter()
            .map(|vm| vm.spec.as_ref().unwrap().name.clone())
            .collect();
        Some((names, list.revision))
    }
}

pub async fn create_vm(client: &mut VmClient<Channel>, name: &str) -> Result<u64, tonic::Status> {
    let response = client
        .create(pb::CreateVmRequest {
            spec: Some(flake_spec(name)),
        })
        .await?;
    Ok(response.into_inner().revision)
}
