//! What this node tells the cluster about itself: its gossip record
//! (resources, role, labels, load) every `FACTS_INTERVAL_MS`, and its
//! static host facts in the replicated state whenever they change.
//!
//! Invariant: the replicated facts change only when the host's static
//! facts do (memory total, cores, acceleration, labels, addresses), so
//! gossip carries everything that moves and the log stays quiet.

use crate::handle::ClusterHandle;
use crate::listener::LiveCertificate;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::{Command, HostFacts, VmPhase};
use blixard_membership::{Membership, NodeInfo};
use tokio::sync::watch;

use crate::shutdown::Shutdown;

const FACTS_INTERVAL_MS: u64 = 1_000;

/// Who this node is, from its configuration.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: u64,
    pub api_address: String,
    pub gossip_address: String,
    pub labels: BTreeMap<String, String>,
    /// Where free disk is measured.
    pub data_dir: PathBuf,
    pub fence_after_ms: u64,
}

/// Memory total and free (MiB) from /proc/meminfo.
fn memory_mib() -> (u64, u64) {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn disk_mib_free(path: &Path) -> u64 {
    blixard_consensus::storage::free_bytes(path).map_or(0, |bytes| bytes / (1024 * 1024))
}

fn vcpus_total() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Publishes this node's facts until `stop`. `accel` is `None` until the
/// node agent has probed (and "" where no agent runs); `renewed` is
/// notified when the node's certificate was renewed (gossip then carries
/// the new one at once); `certificate` is the one this node serves
/// (`None` with security off), which it pins once it is in the state.
pub async fn run(
    raft: ClusterHandle,
    membership: Arc<Membership>,
    identity: Identity,
    accel: watch::Receiver<Option<String>>,
    renewed: Arc<tokio::sync::Notify>,
    certificate: Option<Arc<LiveCertificate>>,
    mut stop: Shutdown,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(FACTS_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = renewed.notified() => {}
            _ = stop.stopped() => return,
        }
        let (memory_mib_total, memory_mib_free) = memory_mib();
        let accel_now = accel.borrow().clone();
        let status = raft.status();
        let vms_running = raft.read_state(|state| {
            state
                .vms
                .values()
                .filter(|vm| {
                    vm.assigned_node == Some(identity.node_id)
                        && vm.observed.phase == VmPhase::Running
                })
                .count() as u32
        });
        let info = NodeInfo {
            node_id: identity.node_id,
            api_address: identity.api_address.clone(),
            role: raft.node_role(),
            vcpus_total: vcpus_total(),
            memory_mib_total,
            memory_mib_free,
            disk_mib_free: disk_mib_free(&identity.data_dir),
            hypervisors: match accel_now.as_deref() {
                Some("") | None => Vec::new(),
                Some(_) => vec!["qemu".into()],
            },
            accel: accel_now.clone().unwrap_or_default(),
            labels: identity.labels.clone(),
            vms_running,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        membership.publish(&info).await;
        if let Some(certificate) = &certificate {
            pin_certificate(&raft, identity.node_id, certificate).await;
        }

        let Some(accel) = accel_now else {
            continue;
        };
        if status.leader_id == 0 {
            continue;
        }
        let facts = HostFacts {
            memory_mib_total,
            vcpus_total: vcpus_total(),
            accel,
            labels: identity.labels.clone(),
            gossip_address: identity.gossip_address.clone(),
            fence_after_ms: identity.fence_after_ms,
        };
        let committed = raft.read_state(|s| {
            s.nodes
                .get(&identity.node_id)
                .map(|n| n.host.as_ref() == Some(&facts))
        });
        // Not a member yet (joining), or already up to date.
        if committed != Some(false) {
            continue;
        }
        let command = Command::SetHostFacts {
            node_id: identity.node_id,
            facts,
        };
        if let Err(error) = raft.propose(command).await {
            tracing::debug!(%error, "host facts not committed yet");
        }
    }
}

/// Holds this node, once the state has it, to the certificate it serves:
/// from then on only a renewal gives it another, so a certificate made
/// later for its id (by whoever holds the CA key) is refused everywhere.
/// Until then any certificate of the CA naming it is accepted, as for a
/// node of an older version.
async fn pin_certificate(raft: &ClusterHandle, node_id: u64, certificate: &LiveCertificate) {
    let unpinned = raft.read_state(|s| {
        s.nodes
            .get(&node_id)
            .is_some_and(|n| n.certificates_sha256.is_empty())
    });
    if !unpinned || raft.status().leader_id == 0 {
        return;
    }
    let certificate_sha256 = certificate.current_sha256();
    let command = Command::PinNodeCertificate {
        node_id,
        certificate_sha256: certificate_sha256.clone(),
    };
    match raft.propose(command).await {
        Ok(_) => tracing::info!(%certificate_sha256, "pinned this node's certificate"),
        Err(error) => tracing::debug!(%error, "certificate not pinned yet"),
    }
}
