//! What the REPL knows of the cluster, kept fresh in the background: the
//! connected node's role and health (for the prompt), and the VM, group,
//! node and label names (for completion and highlighting).
//!
//! Invariants: the VM names follow the watch stream (refreshed on every
//! change, not on a timer); the snapshot is only ever written here, and
//! readers (completer, highlighter, prompt) never wait on the network;
//! when the node fails, the next known member is tried, with backoff, and
//! the snapshot says which node commands go to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use blixard_api::follow::{Ended, Members};
use blixard_api::pb;
use tokio::sync::watch;

use crate::client::{self, status_error};

const POLL_INTERVAL_MS: u64 = 2_000;

/// One VM as completion describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmBrief {
    pub phase: String,
    pub node: u64,
    pub group: String,
}

/// One node as completion describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeBrief {
    pub role: String,
    pub liveness: String,
    pub address: String,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Where commands go.
    pub addr: String,
    /// The cluster's name, once a node has said it.
    pub cluster: String,
    /// Why the node cannot be reached (`None` while it answers).
    pub lost: Option<String>,
    pub node_id: u64,
    /// voter, learner or worker.
    pub role: String,
    pub leader_id: u64,
    pub vms: BTreeMap<String, VmBrief>,
    pub nodes: BTreeMap<u64, NodeBrief>,
    /// `key=value` of every node label.
    pub labels: BTreeSet<String>,
}

impl Snapshot {
    pub fn groups(&self) -> BTreeSet<String> {
        self.vms
            .values()
            .filter(|vm| !vm.group.is_empty())
            .map(|vm| vm.group.clone())
            .collect()
    }
}

pub type Shared = Arc<RwLock<Snapshot>>;

/// Asks the line editor to redraw the prompt in place (reedline's repaint
/// signal; its type is not exported, so it travels as a closure).
pub type Repaint = Arc<dyn Fn() + Send + Sync>;

/// Reads the snapshot; a writer that panicked leaves the last good one.
pub fn read(shared: &Shared) -> std::sync::RwLockReadGuard<'_, Snapshot> {
    shared.read().unwrap_or_else(|e| e.into_inner())
}

fn write(shared: &Shared) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
    shared.write().unwrap_or_else(|e| e.into_inner())
}

/// Applies `change`; if the prompt now reads differently, asks reedline
/// to redraw it in place (the operator may be mid-line).
fn update(shared: &Shared, repaint: &Repaint, change: impl FnOnce(&mut Snapshot)) {
    let mut snapshot = write(shared);
    let before = super::prompt::describe(&snapshot);
    change(&mut snapshot);
    if super::prompt::describe(&snapshot) != before {
        repaint();
    }
}

/// Keeps `shared` fresh, following `target` (which `connect` changes),
/// until `target`'s sender is dropped; `repaint` redraws the prompt.
pub async fn follow(shared: Shared, mut target: watch::Receiver<String>, repaint: Repaint) {
    let mut members = Members::new(vec![target.borrow_and_update().clone()]);
    loop {
        let addr = members.current().to_string();
        update(&shared, &repaint, |s| s.addr = addr.clone());
        let outcome = tokio::select! {
            outcome = session(&shared, &repaint, &addr, &mut members) => outcome,
            changed = target.changed() => match changed {
                Ok(()) => {
                    // `connect ADDR`: start over from that node.
                    members.restart_from(target.borrow_and_update().clone());
                    update(&shared, &repaint, |s| s.lost = None);
                    continue;
                }
                Err(_) => return,
            },
        };
        let wait = members.failed(&outcome);
        update(&shared, &repaint, |snapshot| {
            snapshot.lost = Some(outcome.reason);
            snapshot.role.clear();
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = target.changed() => {
                if changed.is_err() {
                    return;
                }
                members.restart_from(target.borrow_and_update().clone());
            }
        }
    }
}

fn ended(reason: impl std::fmt::Display, held: bool) -> Ended {
    Ended::new(reason, held)
}

/// Follows one node until it fails.
async fn session(shared: &Shared, repaint: &Repaint, addr: &str, members: &mut Members) -> Ended {
    let mut cluster = match client::cluster(addr).await {
        Ok(cluster) => cluster,
        Err(e) => return ended(format!("{e:#}"), false),
    };
    let mut vms = match client::vm(addr).await {
        Ok(vms) => vms,
        Err(e) => return ended(format!("{e:#}"), false),
    };
    let nodes = match client::node(addr).await {
        Ok(nodes) => nodes,
        Err(e) => return ended(format!("{e:#}"), false),
    };
    let mut watch = match vms.watch(pb::WatchVmsRequest::default()).await {
        Ok(watch) => watch.into_inner(),
        Err(status) => return ended(status_error(status), false),
    };
    update(shared, repaint, |snapshot| {
        snapshot.vms.clear();
        snapshot.lost = None;
    });
    let mut poll = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
    loop {
        tokio::select! {
            event = watch.message() => {
                let event = match event {
                    Ok(Some(event)) => event,
                    Ok(None) => return ended("the VM watch ended", true),
                    Err(status) => return ended(status_error(status), true),
                };
                let kind = event.kind();
                let Some(vm) = event.vm else { continue };
                let Some(spec) = vm.spec.as_ref() else { continue };
                let mut snapshot = write(shared);
                if kind == pb::VmEventKind::Deleted {
                    snapshot.vms.remove(&spec.name);
                } else {
                    let brief = VmBrief {
                        phase: blixard_api::phase_name(&vm).into(),
                        node: vm.assigned_node,
                        group: spec.group.clone(),
                    };
                    snapshot.vms.insert(spec.name.clone(), brief);
                }
            }
            _ = poll.tick() => {
                let status = match cluster.status(pb::StatusRequest {}).await {
                    Ok(status) => status.into_inner(),
                    Err(status) => return ended(status_error(status), true),
                };
                members.learn(&status);
                let listed = match client::list_nodes(&nodes).await {
                    Ok(listed) => listed.nodes,
                    Err(error) => return ended(error, true),
                };
                update(shared, repaint, |snapshot| {
                snapshot.node_id = status.node_id;
                snapshot.cluster = status.cluster_name.clone();
                snapshot.role = status.node_role.clone();
                snapshot.leader_id = status.leader_id;
                snapshot.nodes = listed
                    .iter()
                    .map(|n| {
                        (n.node_id, NodeBrief {
                            role: n.role.clone(),
                            liveness: n.liveness.clone(),
                            address: n.address.clone(),
                        })
                    })
                    .collect();
                snapshot.labels = listed
                    .iter()
                    .flat_map(|n| n.labels.iter().map(|(k, v)| format!("{k}={v}")))
                    .collect();
                });
            }
        }
    }
}
