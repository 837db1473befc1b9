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

use blixard_api::connect::{Bearer, Connection, Security};
use blixard_api::pb;
use blixard_api::pb::{
    cluster_client::ClusterClient, node_client::NodeClient, vm_client::VmClient,
};
use blixard_api::tls;
use blixard_api::MANAGEMENT_TOKEN_FILE;
use nix::sys::signal::Signal;
use tonic::transport::Channel;

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

/// The CA every test cluster of this process uses, made once per
/// process; this process's own clients trust it from then on.
pub fn test_ca() -> &'static (PathBuf, tls::CertifiedKey) {
    static CA: OnceLock<(PathBuf, tls::CertifiedKey)> = OnceLock::new();
    CA.get_or_init(|| {
        // Kept for the whole test process (CLI runs read the file).
        let dir = tempfile::Builder::new()
            .prefix("blixard-test-ca-")
            .tempdir()
            .unwrap()
            .keep();
        let ca = tls::create_ca("test").unwrap();
        tls::write_ca(&dir, &ca).unwrap();
        blixard_api::connect::install(Security::client(&ca.cert_pem));
        (dir.join(tls::CA_FILE), ca)
    })
}

/// The gossip keys of the test CA's cluster (the key file's text).
pub fn test_gossip_keys() -> String {
    let ca_dir = test_ca().0.parent().expect("the CA file is in a directory");
    tls::read_gossip_key_text(ca_dir).unwrap()
}

/// The CA certificate file: give it to every CLI run (`--ca-file`).
pub fn ca_file() -> &'static Path {
    &test_ca().0
}

/// A free TCP port on 127.0.0.1 (the listener is closed before use).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for a node: gRPC on TCP and gossip on UDP share the port
/// number, so both must be free (in a namespace every port is).
fn free_node_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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

/// Timings for tests: fast elections, gossip and failover so tests stay
/// short.
#[derive(Clone, Copy)]
pub struct Timings {
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub snapshot_threshold: u64,
    /// Voters autopilot keeps (the rest of the nodes are workers).
    pub voters: u32,
    pub gossip_interval_ms: u64,
    pub fence_after_ms: u64,
    pub lost_after_ms: u64,
    pub dead_voter_after_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            election_timeout_ms: 500,
            heartbeat_interval_ms: 50,
            snapshot_threshold: 10_000,
            voters: 5,
            gossip_interval_ms: 100,
            fence_after_ms: 2_000,
            lost_after_ms: 4_000,
            dead_voter_after_ms: 3_000,
        }
    }
}

/// How to start one node beyond its id.
#[derive(Clone)]
pub struct NodeOptions {
    pub join_via: Option<u64>,
    pub labels: Vec<(String, String)>,
    /// Run a node agent (VMs); without it the node only places and votes.
    pub agent: bool,
    /// Give the node no certificate, only the CA's, and this join token
    /// to get one with.
    pub join_token: Option<String>,
    /// Give the node the CA's key too (it then issues certificates).
    pub ca_key: bool,
    /// Run its hypervisors as this user, with VM state under
    /// `DIR/vms-nodeN` (which that user can pass through).
    pub vm_user: Option<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            join_via: None,
            labels: Vec::new(),
            agent: true,
            join_token: None,
            ca_key: false,
            vm_user: None,
        }
    }
}

/// Where nodes live on the network.
pub enum Network {
    /// All on 127.0.0.1, each on its own port.
    Loopback,
    /// Each node in its own network namespace (`blx<tag>n<id>`, address
    /// 10.202.<tag>.<id>) on one bridge (`blx<tag>`, 10.202.<tag>.254), so
    /// a node can be cut off by taking its link down. Needs root.
    Namespaces { tag: u8 },
}

fn run_ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Network {
    /// Creates a bridge on a subnet no other test run is using.
    pub fn namespaces() -> Self {
        for tag in 1..=250u8 {
            let bridge = format!("blx{tag}");
            let created = Command::new("ip")
                .args(["link", "add", &bridge, "type", "bridge"])
                .output()
                .is_ok_and(|o| o.status.success());
            if created {
                run_ip(&[
                    "addr",
                    "add",
                    &format!("10.202.{tag}.254/24"),
                    "dev",
                    &bridge,
                ]);
                run_ip(&["link", "set", &bridge, "up"]);
                return Network::Namespaces { tag };
            }
        }
        panic!("no free bridge name blx1..blx250");
    }

    fn host(&self, id: u64) -> String {
        match self {
            Network::Loopback => "127.0.0.1".into(),
            Network::Namespaces { tag } => format!("10.202.{tag}.{id}"),
        }
    }

    /// Creates node `id`'s namespace and link (no-op on loopback).
    fn prepare(&self, id: u64) {
        let Network::Namespaces { tag } = self else {
            return;
        };
        let namespace = format!("blx{tag}n{id}");
        let link = format!("blx{tag}v{id}");
        if Path::new("/run/netns").join(&namespace).exists() {
            return;
        }
        run_ip(&["netns", "add", &namespace]);
        run_ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ]);
        run_ip(&["link", "set", &link, "master", &format!("blx{tag}")]);
        run_ip(&["link", "set", &link, "up"]);
        let in_namespace = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &namespace, "ip"];
            all.extend_from_slice(args);
            run_ip(&all);
        };
        in_namespace(&[
            "addr",
            "add",
            &format!("10.202.{tag}.{id}/24"),
            "dev",
            "eth0",
        ]);
        in_namespace(&["link", "set", "eth0", "up"]);
        in_namespace(&["link", "set", "lo", "up"]);
    }

    /// The command that runs `program` as node `id`.
    fn command(&self, id: u64, program: &Path) -> Command {
        match self {
            Network::Loopback => Command::new(program),
            Network::Namespaces { tag } => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &format!("blx{tag}n{id}")])
                    .arg(program);
                command
            }
        }
    }

    /// Takes node `id`'s link down (`connected = false`) or up again.
    pub fn set_link(&self, id: u64, connected: bool) {
        let Network::Namespaces { tag } = self else {
            panic!("only namespaced nodes can be cut off");
        };
        let state = if connected { "up" } else { "down" };
        run_ip(&["link", "set", &format!("blx{tag}v{id}"), state]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let Network::Namespaces { tag } = self else {
            return;
        };
        for id in 1..=64 {
            let namespace = format!("blx{tag}n{id}");
            if Path::new("/run/netns").join(&namespace).exists() {
                let _ = Command::new("ip")
                    .args(["netns", "del", &namespace])
                    .output();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("blx{tag}")])
            .output();
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, TestNode>,
    timings: Timings,
    /// Dropped after the nodes (field order), so processes go first.
    pub network: Network,
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
            // A pid whose cwd is inside this test's directory.
            let _ = signal_pid(pid, Signal::SIGKILL);
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
        let cluster = Self::start_with(count, timings, Network::Loopback, |_| {
            NodeOptions::default()
        })
        .await;
        cluster.wait_voters(count as usize).await;
        cluster
    }

    /// An empty cluster (no nodes yet) on `network`.
    pub fn empty(timings: Timings, network: Network) -> Self {
        test_ca();
        Self {
            dir: tempfile::Builder::new()
                .prefix("blixard-test-")
                .tempdir()
                .unwrap(),
            nodes: BTreeMap::new(),
            timings,
            network,
        }
    }

    /// Starts `count` nodes on 127.0.0.1 that run no node agent (nothing
    /// boots: the cluster state is what is under test).
    pub async fn start_without_agents(count: u64, timings: Timings) -> TestCluster {
        Self::start_with(count, timings, Network::Loopback, |_| NodeOptions {
            agent: false,
            ..NodeOptions::default()
        })
        .await
    }

    /// Starts `count` nodes as `options(id)` says (node 1 bootstraps, the
    /// rest join through node 1); returns once all are raft members and
    /// the voter count is reached.
    pub async fn start_with(
        count: u64,
        timings: Timings,
        network: Network,
        options: impl Fn(u64) -> NodeOptions,
    ) -> Self {
        let mut cluster = Self::empty(timings, network);
        cluster.add_node_with(1, options(1));
        cluster.wait_leader_among(&[1]).await;
        for id in 2..=count {
            let node_options = NodeOptions {
                join_via: Some(1),
                ..options(id)
            };
            cluster.add_node_with(id, node_options);
        }
        let voters = count.min(u64::from(timings.voters)) as usize;
        eventually(
            "every node to report its host facts, and the voters",
            Duration::from_secs(30),
            || async {
                let voting = cluster.voter_count(1).await?;
                let nodes = all_nodes(&NodeClient::new(cluster.channel(1).await?))
                    .await
                    .ok()?;
                let reported = nodes.nodes.iter().filter(|n| n.reported).count();
                (reported == count as usize && voting == voters).then_some(())
            },
        )
        .await;
        eventually(
            "gossip to see every node",
            Duration::from_secs(30),
            || async {
                let nodes = all_nodes(&NodeClient::new(cluster.channel(1).await?))
                    .await
                    .ok()?;
                let alive = nodes.nodes.iter().filter(|n| n.liveness == "alive").count();
                (alive == count as usize).then_some(())
            },
        )
        .await;
        cluster
    }

    /// Creates and starts node `id`, joining through `join_via` if given.
    pub fn add_node(&mut self, id: u64, join_via: Option<u64>) {
        self.add_node_with(
            id,
            NodeOptions {
                join_via,
                ..NodeOptions::default()
            },
        );
    }

    /// Creates and starts node `id` as `options` say.
    pub fn add_node_with(&mut self, id: u64, options: NodeOptions) {
        let port = free_node_port();
        self.network.prepare(id);
        let address = format!("{}:{port}", self.network.host(id));
        let data_dir = self.dir.path().join(format!("node{id}"));
        let config_path = self.dir.path().join(format!("node{id}.toml"));
        let t = self.timings;
        let mut join = options
            .join_via
            .map(|via| format!("join = [\"{}\"]\n", self.nodes[&via].address))
            .unwrap_or_else(|| "bootstrap = true\n".into());
        if let Some(token) = &options.join_token {
            join.push_str(&format!("join_token = \"{token}\"\n"));
        }
        let mut agent = String::new();
        if let Some(user) = &options.vm_user {
            // The test directory is private (0700): passable for the VM
            // user, still not listable.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))
                .unwrap();
            let state_dir = self.dir.path().join(format!("vms-node{id}"));
            agent = format!(
                "vm_user = \"{user}\"\nstate_dir = \"{}\"\n",
                state_dir.display()
            );
        }
        let labels: Vec<String> = options
            .labels
            .iter()
            .map(|(k, v)| format!("\"{k}\" = \"{v}\""))
            .collect();
        std::fs::write(
            &config_path,
            format!(
                "[cluster]\nnode_id = {id}\ndata_dir = \"{}\"\n{join}labels = {{ {} }}\n\n\
                 [api]\nbind = \"{address}\"\n\n\
                 [consensus]\nelection_timeout_ms = {}\nheartbeat_interval_ms = {}\nsnapshot_threshold = {}\n\n\
                 [agent]\nenabled = {}\naccel = \"tcg\"\nstop_timeout_ms = 4000\n{agent}\n\
                 [membership]\ngossip_interval_ms = {}\n\n\
                 [failover]\nfence_after_ms = {}\nlost_after_ms = {}\n\n\
                 [autopilot]\nvoters = {}\ndead_voter_after_ms = {}\n",
                data_dir.display(),
                labels.join(", "),
                t.election_timeout_ms,
                t.heartbeat_interval_ms,
                t.snapshot_threshold,
                options.agent,
                t.gossip_interval_ms,
                t.fence_after_ms,
                t.lost_after_ms,
                t.voters,
                t.dead_voter_after_ms,
            ),
        )
        .unwrap();
        // A test may have put other certificates there on purpose.
        let ca = &test_ca().1;
        let tls_dir = data_dir.join("tls");
        if options.join_token.is_some() {
            if !tls_dir.join(tls::CA_FILE).exists() {
                tls::write_new(&tls_dir.join(tls::CA_FILE), &ca.cert_pem, 0o644).unwrap();
            }
        } else if !tls_dir.join(tls::NODE_CERT_FILE).exists() {
            let node = tls::issue_node_cert(ca, id).unwrap();
            tls::write_node(&tls_dir, ca, &test_gossip_keys(), &node).unwrap();
        }
        if options.ca_key && !tls_dir.join(tls::CA_KEY_FILE).exists() {
            tls::write_new(&tls_dir.join(tls::CA_KEY_FILE), &ca.key_pem, 0o600).unwrap();
        }
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
        let child = self
            .network
            .command(id, blixard_bin())
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

    /// How many files (sockets included) node `id`'s process has open.
    pub fn open_files(&self, id: u64) -> usize {
        let child = self.nodes[&id].child.as_ref().expect("node is not running");
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .expect("the node's /proc/PID/fd")
            .count()
    }

    /// The most memory node `id`'s process has held resident (VmHWM).
    pub fn peak_rss_bytes(&self, id: u64) -> u64 {
        let child = self.nodes[&id].child.as_ref().expect("node is not running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    /// How node `id`'s process ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let child = self.nodes.get_mut(&id)?.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Waits (30 s at most) for node `id` to stop on its own, refusing:
    /// an error exit, never a signal, with `reason` in its log (returned).
    /// It can be restarted afterwards.
    pub async fn wait_exit_saying(&mut self, id: u64, reason: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.exit_status(id) {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "node {id} still runs");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.nodes.get_mut(&id).unwrap().child = None;
        assert!(
            status.code().is_some_and(|code| code != 0),
            "node {id} exited {status}"
        );
        let log = self.log(id);
        assert!(
            log.contains(reason),
            "node {id}'s log lacks {reason:?}:\n{log}"
        );
        log
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sets a key in node `id`'s config file (`api.bind` is `bind` in
    /// `[api]`; a key with no section is in `[cluster]`), replacing its
    /// line in that section or adding one; takes effect at its next start.
    pub fn set_config(&mut self, id: u64, key: &str, value: &str) {
        let path = &self.nodes[&id].config_path;
        let text = std::fs::read_to_string(path).unwrap();
        let (section, key) = key.split_once('.').unwrap_or(("cluster", key));
        let line = format!("{key} = {value}");
        let prefix = format!("{key} =");
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let header = format!("[{section}]");
        let start = lines.iter().position(|l| *l == header).unwrap() + 1;
        let end = lines[start..]
            .iter()
            .position(|l| l.starts_with('['))
            .map_or(lines.len(), |at| start + at);
        match lines[start..end]
            .iter()
            .position(|l| l.starts_with(&prefix))
        {
            Some(at) => lines[start + at] = line,
            None => lines.insert(start, line),
        }
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    /// Gives stopped node `id` a new port to serve (and gossip) on from its
    /// next start: the host moved.
    pub fn move_node(&mut self, id: u64) -> String {
        assert!(self.nodes[&id].child.is_none(), "node {id} is running");
        let port = free_node_port();
        let address = format!("{}:{port}", self.network.host(id));
        self.set_config(id, "api.bind", &format!("\"{address}\""));
        self.nodes.get_mut(&id).unwrap().address = address.clone();
        address
    }

    /// SIGSTOPs node `id` (`resume` continues it): its sockets stay open
    /// and answer nothing, like a host cut off without a reset.
    pub fn pause(&self, id: u64) {
        self.signal(id, Signal::SIGSTOP);
    }

    pub fn resume(&self, id: u64) {
        self.signal(id, Signal::SIGCONT);
    }

    fn signal(&self, id: u64, signal: Signal) {
        let child = self.nodes[&id].child.as_ref().expect("node is not running");
        let sent = signal_pid(child.id(), signal);
        assert!(sent.is_ok(), "{signal} to node {id}: {sent:?}");
    }

    /// SIGKILLs node `id` and every hypervisor it started: the host died.
    pub fn kill_host(&mut self, id: u64) {
        self.kill(id);
        let data_dir = self.nodes[&id].data_dir.clone();
        for pid in hypervisors_under(&data_dir) {
            // A hypervisor whose cwd is in node `id`'s data.
            let _ = signal_pid(pid, Signal::SIGKILL);
        }
    }

    /// Node ids whose data directory holds a running hypervisor of `name`.
    pub fn vm_hosts(&self, name: &str) -> Vec<u64> {
        let wanted = format!("microvm@{name}");
        self.nodes
            .values()
            .flat_map(|node| {
                hypervisors_named_under(&node.data_dir, name)
                    .into_iter()
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                            cmdline.split(|b| *b == 0).next() == Some(wanted.as_bytes())
                        })
                    })
                    .map(|_| node.id)
                    .collect::<Vec<_>>()
            })
            .collect()
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

    /// The management token the founding node wrote (once it has).
    pub fn token(&self) -> Option<String> {
        self.nodes.values().find_map(|node| {
            let path = node.data_dir.join(MANAGEMENT_TOKEN_FILE);
            let text = std::fs::read_to_string(path).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        })
    }

    /// A client's connection to node `id` (TLS, no client certificate),
    /// with the cluster's management token.
    pub async fn channel(&self, id: u64) -> Option<Connection> {
        self.channel_with(id, self.token().as_deref()).await
    }

    /// A client's connection to node `id` sending `token` (or none).
    pub async fn channel_with(&self, id: u64, token: Option<&str>) -> Option<Connection> {
        test_ca();
        let channel = self
            .channel_as(id, &blixard_api::connect::installed())
            .await?;
        Some(Connection::new(channel, Bearer::new(token).unwrap()))
    }

    /// A connection to node `id` from a process holding the certificate
    /// of node `as_node` (an authenticated peer, for attack tests); no
    /// token.
    pub async fn peer_channel(&self, id: u64, as_node: u64) -> Option<Connection> {
        self.peer_channel_with(id, as_node, None).await
    }

    /// [`Self::peer_channel`] sending a client's `token` too, as a node
    /// forwarding that client's request does.
    pub async fn peer_channel_with(
        &self,
        id: u64,
        as_node: u64,
        token: Option<&str>,
    ) -> Option<Connection> {
        let ca = &test_ca().1;
        // A node of the cluster is held to the certificate it serves: a
        // peer posing as it uses that one (its key, as an attacker who
        // took over the node holds it); any other id gets a new one.
        let node = self
            .kept_pair(as_node)
            .unwrap_or_else(|| tls::issue_node_cert(ca, as_node).unwrap());
        let channel = self
            .channel_as(id, &Security::node(&ca.cert_pem, &node))
            .await?;
        Some(Connection::new(channel, Bearer::new(token).unwrap()))
    }

    /// The certificate and key node `as_node` keeps in its data directory
    /// (`None` if it has none there).
    pub fn kept_pair(&self, as_node: u64) -> Option<tls::CertifiedKey> {
        let dir = self.dir.path().join(format!("node{as_node}")).join("tls");
        Some(tls::CertifiedKey {
            cert_pem: std::fs::read_to_string(dir.join(tls::NODE_CERT_FILE)).ok()?,
            key_pem: std::fs::read_to_string(dir.join(tls::NODE_KEY_FILE)).ok()?,
        })
    }

    /// A connection to node `id` presenting `node` (a certificate and its
    /// key, e.g. one a node kept before a renewal); no token.
    pub async fn channel_holding(&self, id: u64, node: &tls::CertifiedKey) -> Option<Connection> {
        let channel = self
            .channel_as(id, &Security::node(&test_ca().1.cert_pem, node))
            .await?;
        Some(Connection::new(channel, Bearer::new(None).unwrap()))
    }

    async fn channel_as(&self, id: u64, security: &Security) -> Option<Channel> {
        security
            .endpoint(self.address(id))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .ok()
    }

    pub async fn vm_client(&self, id: u64) -> VmClient<Connection> {
        let channel =
            eventually("a connection", Duration::from_secs(10), || self.channel(id)).await;
        VmClient::new(channel)
    }

    pub async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        let mut client = ClusterClient::new(self.channel(id).await?);
        Some(client.status(pb::StatusRequest {}).await.ok()?.into_inner())
    }

    /// The cluster's id, as node `id` reports it.
    pub async fn cluster_id(&self, id: u64) -> String {
        let status = self.status(id).await.expect("the node answers Status");
        assert_eq!(status.cluster_id.len(), 32, "{status:?}");
        status.cluster_id
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

    /// How many voters node `id` reports.
    pub async fn voter_count(&self, id: u64) -> Option<usize> {
        let status = self.status(id).await?;
        Some(
            status
                .members
                .iter()
                .filter(|m| m.role() == pb::MemberRole::Voter)
                .count(),
        )
    }

    pub async fn wait_voters(&self, count: usize) {
        eventually(
            "all nodes to be voters",
            Duration::from_secs(30),
            || async { (self.voter_count(1).await? == count).then_some(()) },
        )
        .await
    }

    /// Runs the real CLI against node `id`.
    pub fn cli(&self, id: u64, args: &[&str]) -> Output {
        let mut command = Command::new(blixard_bin());
        if let Some(token) = self.token() {
            command.arg("--token").arg(token);
        }
        command
            .arg("--addr")
            .arg(self.address(id))
            .arg("--ca-file")
            .arg(ca_file())
            .args(args)
            .output()
            .unwrap()
    }

    /// The one node among `1..=count` that is a worker (call it once the
    /// voters are in place; panics unless there is exactly one).
    pub async fn the_worker(&self, count: u64) -> u64 {
        let mut workers = Vec::new();
        for id in 1..=count {
            if self.status(id).await.unwrap().node_role == "worker" {
                workers.push(id);
            }
        }
        assert_eq!(workers.len(), 1, "workers among {count} nodes: {workers:?}");
        workers[0]
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

    /// Creates (stopped) a 1-vCPU, 128 MiB VM `name` through node `id`
    /// with `runner` (and `extra`) as its `vm create` arguments.
    fn create_with(&self, id: u64, name: &str, runner: &[&str], extra: &[&str]) {
        let mut args = vec!["vm", "create", name, "--vcpus", "1", "--memory", "128"];
        args.extend_from_slice(runner);
        args.extend_from_slice(extra);
        self.cli_ok(id, &args);
    }

    /// Creates (stopped) a VM `name` with a flake runner through node
    /// `id`: a VM that exists but is never started.
    pub fn create_flake(&self, id: u64, name: &str) {
        self.create_with(id, name, &["--flake", "/etc/vms#x"], &[]);
    }

    /// Creates (stopped) a VM `name` of the test guest through node `id`,
    /// with `extra` arguments for `vm create`.
    pub fn create_guest(&self, id: u64, name: &str, extra: &[&str]) {
        let (kernel, initrd) = guest_image();
        let runner = [
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ];
        self.create_with(id, name, &runner, extra);
    }

    /// Names of all VMs listed by node `id`, with the list's revision.
    pub async fn vm_names(&self, id: u64) -> Option<(Vec<String>, u64)> {
        let list = all_vms(&VmClient::new(self.channel(id).await?))
            .await
            .ok()?;
        let names = list
            .vms
            .iter()
            .map(|vm| vm.spec.as_ref().unwrap().name.clone())
            .collect();
        Some((names, list.revision))
    }
}

/// Every VM `client` lists, page by page.
pub async fn all_vms(client: &VmClient<Connection>) -> Result<pb::ListVmsResponse, tonic::Status> {
    blixard_api::pages::all_vms("", |request| {
        let mut client = client.clone();
        async move { client.list(request).await }
    })
    .await
}

/// Every node `client` lists, page by page.
pub async fn all_nodes(
    client: &NodeClient<Connection>,
) -> Result<pb::ListNodesResponse, tonic::Status> {
    blixard_api::pages::all_nodes(|request| {
        let mut client = client.clone();
        async move { client.list(request).await }
    })
    .await
}

pub async fn create_vm(
    client: &mut VmClient<Connection>,
    name: &str,
) -> Result<u64, tonic::Status> {
    let response = client
        .create(pb::CreateVmRequest {
            spec: Some(flake_spec(name)),
            replicas: 0,
            stopped: false,
        })
        .await?;
    Ok(response.into_inner().revision)
}

/// Sends `signal` to process `pid` (a process, not a node: see
/// `TestCluster::kill`).
pub fn signal_pid(pid: u32, signal: Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
}
