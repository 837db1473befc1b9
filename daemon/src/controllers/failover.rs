//! Failover: which VMs on dead nodes count as lost.
//!
//! Invariant: a VM is marked lost only after its node has been dead (as
//! this leader observed it) for the VM's grace period, and never sooner
//! than the node's own fencing period plus a margin: by then a node that
//! is alive but cut off has stopped the VM itself, so the replacement
//! never runs beside the original.

use std::collections::BTreeMap;

use blixard_consensus::{ClusterState, Command, VmPhase};

/// Time between a node fencing itself and the cluster replacing its VMs,
/// for clock-rate differences and the fence's own stop time.
pub const FENCE_MARGIN_MS: u64 = 3_000;

/// The lost-VM commands due, given how long each dead node has been dead.
pub fn lost_vms(state: &ClusterState, dead_for_ms: &BTreeMap<u64, u64>) -> Vec<Command> {
    let mut commands = Vec::new();
    for vm in state.vms.values() {
        let Some(node_id) = vm.assigned_node else {
            continue;
        };
        let Some(dead_ms) = dead_for_ms.get(&node_id).copied() else {
            continue;
        };
        if matches!(vm.observed.phase, VmPhase::Lost | VmPhase::Stopped) {
            continue;
        }
        let fence_after_ms = state
            .nodes
            .get(&node_id)
            .and_then(|n| n.host.as_ref())
            .map_or(0, |h| h.fence_after_ms);
        let grace_ms = vm
            .spec
            .failover
            .lost_after_ms
            .unwrap_or(state.settings.lost_after_ms)
            .max(fence_after_ms + FENCE_MARGIN_MS);
        if dead_ms < grace_ms {
            continue;
        }
        commands.push(Command::MarkVmLost {
            name: vm.spec.name.clone(),
            node_id,
            reason: format!("node {node_id} dead for {} s", dead_ms / 1000),
            replace: vm
                .spec
                .failover
                .replace
                .unwrap_or(state.settings.replace_lost),
        });
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_consensus::{DesiredState, HostFacts, RunnerSource, VmSpec};

    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        for node_id in [1, 2] {
            state.add_member(node_id, format!("n{node_id}:1"));
            state.apply(Command::SetHostFacts {
                node_id,
                facts: HostFacts {
                    memory_mib_total: 1024,
                    vcpus_total: 2,
                    accel: "tcg".into(),
                    labels: Default::default(),
                    gossip_address: String::new(),
                    fence_after_ms: 5_000,
                },
            });
        }
        for (name, lost_after_ms) in [
            ("default", None),
            ("quick", Some(1_000)),
            ("slow", Some(60_000)),
        ] {
            state.apply(Command::CreateVm {
                spec: VmSpec {
                    name: name.into(),
                    vcpus: 1,
                    memory_mib: 64,
                    runner: RunnerSource::Flake {
                        flake_ref: "x".into(),
                    },
                    pinned_node: None,
                    placement: Default::default(),
                    failover: blixard_consensus::FailoverPolicy {
                        lost_after_ms,
                        replace: None,
                    },
                    group: None,
                    platform: None,
                },
                created_at_unix_ms: 0,
            });
            state.apply(Command::SetVmDesiredState {
                name: name.into(),
                desired_state: DesiredState::Running,
            });
            state.apply(Command::AssignVm {
                name: name.into(),
                node_id: Some(1),
                reason: String::new(),
                vcpu_overcommit: None,
                needs_agent: false,
            });
        }
        state
    }

    fn lost_names(commands: &[Command]) -> Vec<String> {
        commands
            .iter()
            .map(|c| match c {
                Command::MarkVmLost { name, .. } => name.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn grace_is_per_vm_but_never_shorter_than_the_fence() {
        let state = state();
        assert!(lost_vms(&state, &BTreeMap::new()).is_empty());
        assert!(lost_vms(&state, &BTreeMap::from([(2, 600_000)])).is_empty());
        // "quick" asks for 1 s, but node 1 fences after 5 s (+ margin).
        assert!(lost_vms(&state, &BTreeMap::from([(1, 7_999)])).is_empty());
        assert_eq!(
            lost_names(&lost_vms(&state, &BTreeMap::from([(1, 8_000)]))),
            ["quick"]
        );
        assert_eq!(
            lost_names(&lost_vms(&state, &BTreeMap::from([(1, 15_000)]))),
            ["default", "quick"]
        );
    }

    #[test]
    fn lost_vms_are_not_marked_twice() {
        let mut state = state();
        for command in lost_vms(&state, &BTreeMap::from([(1, 100_000)])) {
            state.apply(command);
        }
        assert!(lost_vms(&state, &BTreeMap::from([(1, 200_000)])).is_empty());
        assert!(state.vms.values().all(|vm| vm.assigned_node.is_none()));
    }
}
