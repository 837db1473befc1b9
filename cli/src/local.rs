//! A local cluster of real `blixard agent` processes on 127.0.0.1, for
//! `blixard dev` and `blixard-bench`. Node 1 bootstraps; the others join
//! through it.
//!
//! The cluster runs with TLS: a CA of its own, a certificate per node.
//!
//! Invariant: every child started here is stopped (SIGTERM, then SIGKILL
//! after a grace period) when the cluster is dropped, on success or error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use blixard_api::identity::{self, GossipKey, GOSSIP_KEY_FILE};
use blixard_api::{pb, tls};
use indicatif::ProgressBar;

use crate::client;

const STARTUP_DEADLINE_MS: u64 = 30_000;
const POLL_INTERVAL_MS: u64 = 100;
const STOP_GRACE_MS: u64 = 10_000;
/// The voter count a cluster bootstraps with (the daemon's default).
const VOTERS_DEFAULT: usize = 3;

pub struct LocalNode {
    pub node_id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Child,
}

impl LocalNode {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
    /// The cluster CA certificate clients verify the nodes against.
    pub ca_file: PathBuf,
    /// The management token node 1 wrote when it founded the cluster.
    pub token: String,
    /// The cluster's CA, to give simulated nodes certificates (bench).
    pub ca: tls::CertifiedKey,
    /// The cluster's gossip keys, for simulated nodes to gossip (bench).
    pub gossip_keys: Vec<GossipKey>,
}

/// What [`prepare_tls`] made or found.
struct LocalTls {
    ca_file: PathBuf,
    ca: tls::CertifiedKey,
    gossip_keys: Vec<GossipKey>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let pid = nix::unistd::Pid::from_raw(node.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        for node in &mut self.nodes {
            loop {
                match node.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = node.child.kill();
                        let _ = node.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
                }
            }
        }
    }
}

/// Makes the cluster's CA in `dir/ca` and each node's certificates in
/// its `DATA_DIR/tls` (where the agent looks), reusing those a kept
/// directory already holds; installs the CA for this process's clients.
fn prepare_tls(dir: &Path, nodes: u64) -> anyhow::Result<LocalTls> {
    let ca_dir = dir.join("ca");
    if !ca_dir.join(tls::CA_FILE).exists() {
        tls::write_ca(&ca_dir, &tls::create_ca("dev")?)?;
    }
    let ca = tls::read_ca(&ca_dir)?;
    // A directory kept from before gossip was sealed has no gossip key.
    if !ca_dir.join(GOSSIP_KEY_FILE).exists() {
        tls::write_new(
            &ca_dir.join(GOSSIP_KEY_FILE),
            &identity::create_gossip_key()?,
            0o600,
        )?;
    }
    let gossip_keys = tls::read_gossip_key_text(&ca_dir)?;
    for node_id in 1..=nodes {
        let node_dir = data_dir(dir, node_id).join("tls");
        if node_dir.join(tls::NODE_CERT_FILE).exists() && !node_dir.join(GOSSIP_KEY_FILE).exists() {
            tls::write_new(&node_dir.join(GOSSIP_KEY_FILE), &gossip_keys, 0o600)?;
        }
        if !node_dir.join(tls::NODE_CERT_FILE).exists() {
            tls::write_node(
                &node_dir,
                &ca,
                &gossip_keys,
                &tls::issue_node_cert(&ca, node_id)?,
            )?;
        }
    }
    blixard_api::connect::install(blixard_api::connect::Security::client(&ca.cert_pem));
    Ok(LocalTls {
        ca_file: ca_dir.join(tls::CA_FILE),
        ca,
        gossip_keys: identity::parse_gossip_keys(&ca_dir.join(GOSSIP_KEY_FILE), &gossip_keys)?,
    })
}

fn data_dir(dir: &Path, node_id: u64) -> PathBuf {
    dir.join(format!("node{node_id}"))
}

fn spawn_agent(
    program: &Path,
    dir: &Path,
    node_id: u64,
    address: &str,
    join: Option<&str>,
    config_text: &str,
) -> anyhow::Result<LocalNode> {
    let data_dir = data_dir(dir, node_id);
    let log_path = dir.join(format!("node{node_id}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let config = dir.join(format!("node{node_id}.toml"));
    std::fs::write(&config, config_text)?;
    let mut command = Command::new(program);
    command
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .args(["--node-id", &node_id.to_string()])
        .args(["--bind", address])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Node 1 founds the cluster (on a later `dev` over the same
    // directory its data is there and nothing is founded again).
    match join {
        Some(join) => command.args(["--join", join]),
        None => command.arg("--bootstrap"),
    };
    let child = command.spawn().context("cannot start a blixard agent")?;
    Ok(LocalNode {
        node_id,
        address: address.to_string(),
        data_dir,
        log_path,
        child,
    })
}

/// Polls until `ready` answers `Some` or the start-up deadline passes.
async fn wait_until<F, Fut>(what: &str, spinner: &ProgressBar, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    spinner.set_message(format!("waiting for {what}"));
    let deadline = Instant::now() + Duration::from_millis(STARTUP_DEADLINE_MS);
    loop {
        if ready().await.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {STARTUP_DEADLINE_MS} ms waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

async fn status(address: &str) -> Option<pb::StatusResponse> {
    let mut client = client::cluster(address).await.ok()?;
    Some(client.status(pb::StatusRequest {}).await.ok()?.into_inner())
}

impl LocalCluster {
    /// Starts one agent per address in `dir` with `config_text` as each
    /// node's config file; returns once the voters are elected and every
    /// node has reported its host to the cluster.
    pub async fn start(
        program: &Path,
        dir: &Path,
        addresses: &[String],
        config_text: &str,
        spinner: &ProgressBar,
    ) -> anyhow::Result<Self> {
        let local_tls = prepare_tls(dir, addresses.len() as u64)?;
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            ca_file: local_tls.ca_file,
            token: String::new(),
            ca: local_tls.ca,
            gossip_keys: local_tls.gossip_keys,
        };
        let first = addresses[0].clone();
        cluster
            .nodes
            .push(spawn_agent(program, dir, 1, &first, None, config_text)?);
        let token_file = data_dir(dir, 1).join(blixard_api::MANAGEMENT_TOKEN_FILE);
        wait_until("node 1 to write its management token", spinner, || async {
            let text = std::fs::read_to_string(&token_file).ok()?;
            (!text.trim().is_empty()).then_some(())
        })
        .await?;
        cluster.token = std::fs::read_to_string(&token_file)?.trim().to_string();
        client::set_token(Some(&cluster.token))?;
        wait_until("node 1 to elect itself", spinner, || async {
            (status(&first).await?.leader_id == 1).then_some(())
        })
        .await?;
        for (i, address) in addresses.iter().enumerate().skip(1) {
            let node = spawn_agent(
                program,
                dir,
                i as u64 + 1,
                address,
                Some(&first),
                config_text,
            )?;
            cluster.nodes.push(node);
        }
        let voters_wanted = addresses.len().min(VOTERS_DEFAULT);
        let nodes_wanted = addresses.len();
        wait_until("the voters and every node's report", spinner, || async {
            let voters = status(&first)
                .await?
                .members
                .iter()
                .filter(|m| m.role() == pb::MemberRole::Voter)
                .count();
            let nodes = client::node(&first).await.ok()?;
            let nodes = client::list_nodes(&nodes).await.ok()?;
            let reported = nodes.nodes.iter().filter(|n| n.reported).count();
            (voters == voters_wanted && reported == nodes_wanted).then_some(())
        })
        .await?;
        Ok(cluster)
    }
}
