//! Gossip at scale: real chitchat instances (Blixard's membership layer)
//! on 127.0.0.1, one UDP socket each, in this process, sealed and signed
//! as a secured cluster's gossip is (a CA and a certificate per node made
//! for the run).
//!
//! Invariant: every figure is the time until *every* observer saw the
//! change; p50/p99 are over the observers.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use blixard_api::identity::{self, GOSSIP_KEY_FILE};
use blixard_api::tls;
use blixard_daemon::security;
use blixard_membership::{
    GossipSecurity, Member, Membership, MembershipConfig, NodeInfo, NodeRole,
};
use indicatif::ProgressBar;

use super::load::percentile_ms;
use super::report::{Row, Unit};

const DEADLINE_MS: u64 = 120_000;
const PHI_THRESHOLD: f64 = 8.0;

fn free_udp_address() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn info(node_id: u64) -> NodeInfo {
    NodeInfo {
        node_id,
        api_address: String::new(),
        role: NodeRole::Worker,
        vcpus_total: 2,
        memory_mib_total: 4096,
        memory_mib_free: 4096,
        disk_mib_free: 0,
        hypervisors: Vec::new(),
        accel: String::new(),
        labels: Default::default(),
        vms_running: 0,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// What the benchmark's nodes prove themselves with.
struct BenchCa {
    ca: tls::CertifiedKey,
    keys: Vec<identity::GossipKey>,
}

impl BenchCa {
    fn new() -> anyhow::Result<Self> {
        let keys = identity::parse_gossip_keys(
            std::path::Path::new(GOSSIP_KEY_FILE),
            &identity::create_gossip_key()?,
        )?;
        Ok(Self {
            ca: tls::create_ca("blixard-bench")?,
            keys,
        })
    }

    fn security(&self, node_id: u64) -> anyhow::Result<GossipSecurity> {
        let node = tls::issue_node_cert(&self.ca, node_id)?;
        Ok(security::gossip_security(
            &self.ca.cert_pem,
            &node,
            self.keys.clone(),
        )?)
    }
}

async fn start(
    ca: &BenchCa,
    node_id: u64,
    seeds: Vec<String>,
    interval_ms: u64,
) -> anyhow::Result<Membership> {
    let address = free_udp_address()?;
    let config = MembershipConfig {
        node_id,
        cluster_name: "blixard-bench".into(),
        cluster_id: String::new(),
        gossip_bind: address,
        gossip_advertise: address,
        seeds,
        gossip_interval_ms: interval_ms,
        phi_threshold: PHI_THRESHOLD,
        dead_node_forget_after_ms: 3_600_000,
        security: Some(ca.security(node_id)?),
    };
    Ok(Membership::start(config, &info(node_id)).await?)
}

/// Polls each observer until `holds` is true of what it sees; returns how
/// long each took, in µs, sorted.
async fn observe(
    observers: &[Membership],
    poll_ms: u64,
    what: &str,
    holds: impl Fn(&[Member]) -> bool,
) -> anyhow::Result<Vec<u64>> {
    let started = Instant::now();
    let mut took_us: Vec<Option<u64>> = vec![None; observers.len()];
    loop {
        for (i, observer) in observers.iter().enumerate() {
            if took_us[i].is_none() && holds(&observer.members().await) {
                took_us[i] = Some(started.elapsed().as_micros() as u64);
            }
        }
        let pending = took_us.iter().filter(|t| t.is_none()).count();
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_millis(DEADLINE_MS),
            "{pending} of {} nodes had not seen {what} after {DEADLINE_MS} ms",
            observers.len()
        );
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
    let mut took: Vec<u64> = took_us.into_iter().flatten().collect();
    took.sort_unstable();
    Ok(took)
}

fn row(benchmark: String, took_us: &[u64], note: String) -> Row {
    Row {
        p50_ms: percentile_ms(took_us, 50),
        p99_ms: percentile_ms(took_us, 99),
        ..Row::figure(
            benchmark,
            took_us.last().copied().unwrap_or_default() as f64 / 1000.0,
            Unit::Ms,
            note,
        )
    }
}

/// Starts `nodes` gossiping nodes from one seed, then measures how fast a
/// newcomer becomes known to all and how fast its death is.
pub async fn rows(
    nodes: usize,
    interval_ms: u64,
    spinner: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    // Observing too often would take the CPU the gossip itself needs.
    let poll_ms = (interval_ms / 5).max(10);
    let note = format!(
        "{nodes} chitchat nodes on 127.0.0.1, sealed and signed, gossip every {interval_ms} ms, phi {PHI_THRESHOLD}; polled every {poll_ms} ms"
    );
    spinner.set_message(format!("gossip: starting {nodes} nodes"));
    let started = Instant::now();
    let ca = BenchCa::new()?;
    let first = start(&ca, 1, Vec::new(), interval_ms).await?;
    let seeds = vec![first.gossip_address().to_string()];
    let mut members = vec![first];
    for node_id in 2..=nodes as u64 {
        members.push(start(&ca, node_id, seeds.clone(), interval_ms).await?);
    }
    spinner.set_message(format!("gossip: {nodes} nodes converging"));
    let starting_us = started.elapsed().as_micros() as u64;
    let converged = observe(&members, poll_ms, "every node", |seen| {
        seen.iter().filter(|m| m.alive).count() == nodes
    })
    .await?;
    let converge_row = row(
        format!("gossip: {nodes} nodes started from one seed all see each other"),
        &converged
            .iter()
            .map(|us| us + starting_us)
            .collect::<Vec<_>>(),
        note.clone(),
    );

    spinner.set_message(format!("gossip: a new node joins {nodes}"));
    let newcomer_id = nodes as u64 + 1;
    let newcomer = start(&ca, newcomer_id, seeds.clone(), interval_ms).await?;
    let joined = observe(&members, poll_ms, "the new node", |seen| {
        seen.iter().any(|m| m.node_id == newcomer_id && m.alive)
    })
    .await?;

    spinner.set_message(format!("gossip: {nodes} nodes detect a killed node"));
    // Shutting gossip down sends no farewell: peers see it fall silent, as
    // they would a killed process.
    newcomer.shutdown().await;
    let died = observe(&members, poll_ms, "the node die", |seen| {
        seen.iter().any(|m| m.node_id == newcomer_id && !m.alive)
    })
    .await?;
    for member in members {
        member.stop();
    }
    Ok(vec![
        converge_row,
        row(
            format!("gossip: new node seen by all {nodes}"),
            &joined,
            note.clone(),
        ),
        row(
            format!("gossip: killed node marked dead by all {nodes}"),
            &died,
            note,
        ),
    ])
}
