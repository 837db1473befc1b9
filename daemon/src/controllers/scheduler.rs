//! Placement: which node runs each VM that should run.
//!
//! Invariants: `placements` is a pure function of the cluster state and the
//! set of live nodes (no I/O, no clock), so it can be tested and simulated;
//! it only places VMs that want to run and have no node; a pinned VM goes
//! only to its pinned node; a node never gets more memory than its host
//! reported (nodes that reported nothing are filled last, by load alone).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use blixard_consensus::{ClusterState, Command, DesiredState, RaftHandle, Role};

/// Assignments to propose, in VM name order.
pub fn placements(state: &ClusterState, live: &BTreeSet<u64>) -> Vec<(String, u64)> {
    let mut assigned_mib: BTreeMap<u64, u64> = live.iter().map(|id| (*id, 0)).collect();
    for vm in state.vms.values() {
        if let Some(node) = vm.assigned_node {
            if let Some(load) = assigned_mib.get_mut(&node) {
                *load += vm.spec.memory_mib;
            }
        }
    }
    let total_mib = |node: u64| {
        state
            .nodes
            .get(&node)
            .and_then(|n| n.host.as_ref())
            .map(|h| h.memory_mib_total)
    };
    let mut result = Vec::new();
    for vm in state.vms.values() {
        if vm.desired_state != DesiredState::Running || vm.assigned_node.is_some() {
            continue;
        }
        let fits = |node: u64, load: u64| {
            total_mib(node).is_none_or(|total| load + vm.spec.memory_mib <= total)
        };
        let choice = match vm.spec.pinned_node {
            Some(pinned) => assigned_mib
                .get(&pinned)
                .filter(|load| fits(pinned, **load))
                .map(|_| pinned),
            // Most free memory first; unknown hosts after known ones, then
            // least assigned, then lowest id (deterministic).
            None => assigned_mib
                .iter()
                .filter(|(node, load)| fits(**node, **load))
                .min_by_key(|(node, load)| {
                    let free = total_mib(**node).map(|total| total - **load);
                    (free.is_none(), std::cmp::Reverse(free), **load, **node)
                })
                .map(|(node, _)| *node),
        };
        if let Some(node) = choice {
            *assigned_mib
                .get_mut(&node)
                .expect("chosen among live nodes") += vm.spec.memory_mib;
            result.push((vm.spec.name.clone(), node));
        }
    }
    result
}

const SCHEDULE_INTERVAL_MS: u64 = 200;

/// On the leader, proposes placements every `SCHEDULE_INTERVAL_MS`. Live
/// nodes are the raft members for now (gossip liveness comes later).
pub async fn run(raft: RaftHandle) {
    let mut ticker = tokio::time::interval(Duration::from_millis(SCHEDULE_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let status = raft.status();
        if status.role != Role::Leader {
            continue;
        }
        let live: BTreeSet<u64> = status.members.iter().map(|m| m.node_id).collect();
        let todo = raft.read_state(|state| placements(state, &live));
        for (name, node_id) in todo {
            let command = Command::AssignVm {
                name: name.clone(),
                node_id: Some(node_id),
            };
            match raft.propose(command).await {
                Ok(_) => tracing::info!(vm = %name, node_id, "placed VM"),
                Err(error) => {
                    tracing::debug!(vm = %name, %error, "placement not committed; retrying")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_consensus::{HostFacts, RunnerSource, VmSpec};

    fn state_with(nodes: &[(u64, Option<u64>)], vms: &[(&str, u64, Option<u64>)]) -> ClusterState {
        let mut state = ClusterState::default();
        for (id, memory) in nodes {
            state.add_member(*id, format!("n{id}:1"));
            if let Some(memory_mib_total) = memory {
                state.apply(Command::SetHostFacts {
                    node_id: *id,
                    facts: HostFacts {
                        memory_mib_total: *memory_mib_total,
                        vcpus_total: 2,
                        accel: "tcg".into(),
                    },
                });
            }
        }
        for (name, memory_mib, pinned_node) in vms {
            state.apply(Command::CreateVm {
                spec: VmSpec {
                    name: name.to_string(),
                    vcpus: 1,
                    memory_mib: *memory_mib,
                    runner: RunnerSource::Flake {
                        flake_ref: "x".into(),
                    },
                    pinned_node: *pinned_node,
                },
                created_at_unix_ms: 0,
            });
            state.apply(Command::SetVmDesiredState {
                name: name.to_string(),
                desired_state: DesiredState::Running,
            });
        }
        state
    }

    #[test]
    fn spreads_by_free_memory_and_respects_pins() {
        let state = state_with(
            &[(1, Some(1024)), (2, Some(4096)), (3, Some(2048))],
            &[
                ("a", 1024, None),
                ("b", 1024, None),
                ("c", 1024, None),
                ("d", 512, Some(1)),
            ],
        );
        let live = BTreeSet::from([1, 2, 3]);
        let placed = placements(&state, &live);
        assert_eq!(
            placed,
            [
                ("a".into(), 2),
                ("b".into(), 2),
                ("c".into(), 3),
                ("d".into(), 1)
            ]
        );
    }

    #[test]
    fn nothing_fits_means_nothing_is_placed() {
        let state = state_with(
            &[(1, Some(256))],
            &[("big", 512, None), ("pinned-away", 64, Some(9))],
        );
        assert!(placements(&state, &BTreeSet::from([1])).is_empty());
    }

    #[test]
    fn hosts_without_facts_are_filled_by_load() {
        let state = state_with(
            &[(1, None), (2, None)],
            &[("a", 100, None), ("b", 100, None)],
        );
        assert_eq!(
            placements(&state, &BTreeSet::from([1, 2])),
            [("a".into(), 1), ("b".into(), 2)]
        );
    }
}
