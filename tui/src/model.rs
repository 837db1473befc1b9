//! The cluster as the dashboard last heard of it: VMs by name (kept by the
//! watch stream), nodes and raft status (polled), recent events (followed).
//!
//! Invariants: at most `EVENTS_KEPT_MAX` events and `OPS_HISTORY_MAX`
//! throughput samples are kept, however long the dashboard runs; the VM
//! map changes only as the watch stream says.

use std::collections::{BTreeMap, VecDeque};

use blixard_api::pb;

pub const EVENTS_KEPT_MAX: usize = 1_000;
/// Samples behind the overview's operations/s sparkline.
pub const OPS_HISTORY_MAX: usize = 120;

/// What the data source learned.
#[derive(Debug, Clone)]
pub enum Update {
    /// The watch stream (re)started: a full list follows as `Vm` events.
    VmsReset,
    Vm(Box<pb::VmEvent>),
    Nodes(Vec<pb::NodeInfo>),
    /// The connected node's status, and when it was read.
    Status {
        status: Box<pb::StatusResponse>,
        at_ms: u64,
    },
    Event(pb::ClusterEvent),
    Connected(String),
    Disconnected {
        address: String,
        reason: String,
    },
    /// Console output of the VM whose logs are open.
    Log {
        vm: String,
        data: Vec<u8>,
        at_ms: u64,
    },
    /// How an action the operator asked for went (shown, not kept).
    Notice {
        text: String,
        error: bool,
    },
}

/// Whether the dashboard is talking to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    Connecting,
    Connected(String),
    Lost { address: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct Model {
    pub vms: BTreeMap<String, pb::VmInfo>,
    pub nodes: Vec<pb::NodeInfo>,
    pub status: Option<pb::StatusResponse>,
    pub events: VecDeque<pb::ClusterEvent>,
    pub connection: Connection,
    /// State-changing operations per second between status reads.
    pub ops_per_s: VecDeque<u64>,
    last_revision: Option<(u64, u64)>,
    /// Bumped on every change, so views know when to rebuild their rows.
    pub generation: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            vms: BTreeMap::new(),
            nodes: Vec::new(),
            status: None,
            events: VecDeque::new(),
            connection: Connection::Connecting,
            ops_per_s: VecDeque::new(),
            last_revision: None,
            generation: 0,
        }
    }
}

impl Model {
    pub fn apply(&mut self, update: Update) {
        self.generation += 1;
        match update {
            Update::VmsReset => self.vms.clear(),
            Update::Vm(event) => {
                let kind = event.kind();
                let Some(vm) = event.vm else { return };
                let name = vm.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                match kind {
                    pb::VmEventKind::Deleted => {
                        self.vms.remove(&name);
                    }
                    _ => {
                        self.vms.insert(name, vm);
                    }
                }
            }
            Update::Nodes(nodes) => self.nodes = nodes,
            Update::Status { status, at_ms } => {
                if let Some((revision, then_ms)) = self.last_revision {
                    if at_ms > then_ms && status.revision >= revision {
                        let rate = (status.revision - revision) * 1000 / (at_ms - then_ms);
                        if self.ops_per_s.len() == OPS_HISTORY_MAX {
                            self.ops_per_s.pop_front();
                        }
                        self.ops_per_s.push_back(rate);
                    }
                }
                self.last_revision = Some((status.revision, at_ms));
                self.status = Some(*status);
            }
            Update::Event(event) => {
                // Following again (after a reconnect) sends recent events
                // once more: those already held are skipped. (0: a node
                // that does not number them.)
                if event.seq != 0 && self.events.iter().any(|held| held.seq == event.seq) {
                    return;
                }
                if self.events.len() == EVENTS_KEPT_MAX {
                    self.events.pop_front();
                }
                self.events.push_back(event);
            }
            Update::Connected(address) => self.connection = Connection::Connected(address),
            Update::Disconnected { address, reason } => {
                self.connection = Connection::Lost { address, reason }
            }
            Update::Notice { .. } | Update::Log { .. } => {}
        }
    }

    pub fn leader(&self) -> Option<u64> {
        self.status
            .as_ref()
            .map(|s| s.leader_id)
            .filter(|id| *id != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn vm_event(kind: pb::VmEventKind, name: &str) -> Update {
        Update::Vm(Box::new(pb::VmEvent {
            kind: kind as i32,
            vm: Some(pb::VmInfo {
                spec: Some(pb::VmSpec {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            revision: 1,
        }))
    }

    #[test]
    fn the_watch_stream_adds_modifies_and_deletes() {
        let mut model = Model::default();
        model.apply(vm_event(pb::VmEventKind::Added, "a"));
        model.apply(vm_event(pb::VmEventKind::Added, "b"));
        model.apply(vm_event(pb::VmEventKind::Deleted, "a"));
        assert_eq!(model.vms.keys().collect::<Vec<_>>(), ["b"]);
        model.apply(Update::VmsReset);
        assert!(model.vms.is_empty());
    }

    #[test]
    fn events_sent_again_after_a_reconnect_are_kept_once() {
        let mut model = Model::default();
        let event = |seq: u64| {
            Update::Event(pb::ClusterEvent {
                seq,
                ..Default::default()
            })
        };
        for seq in [1, 2, 3, 2, 3, 4] {
            model.apply(event(seq));
        }
        let seqs: Vec<u64> = model.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    #[test]
    fn events_and_throughput_history_stay_bounded() {
        let mut model = Model::default();
        for i in 0..EVENTS_KEPT_MAX as u64 + 10 {
            model.apply(Update::Event(pb::ClusterEvent {
                revision: i,
                ..Default::default()
            }));
        }
        assert_eq!(model.events.len(), EVENTS_KEPT_MAX);
        assert_eq!(model.events.front().map(|e| e.revision), Some(10));
        for i in 0..OPS_HISTORY_MAX as u64 + 5 {
            model.apply(Update::Status {
                status: Box::new(pb::StatusResponse {
                    revision: i * 50,
                    ..Default::default()
                }),
                at_ms: i * 1000,
            });
        }
        assert_eq!(model.ops_per_s.len(), OPS_HISTORY_MAX);
        assert!(model.ops_per_s.iter().all(|rate| *rate == 50));
    }
}
