//! Drain progress: when a draining node is empty, or its deadline has
//! passed, the drain ends.
//!
//! Invariant: a drain ends without force only when no VM is assigned to
//! the node; with force only after its deadline.

use blixard_consensus::{ClusterState, Command};

/// Drain-ending commands due at `now_unix_ms`.
pub fn drain_steps(state: &ClusterState, now_unix_ms: u64) -> Vec<Command> {
    state
        .nodes
        .values()
        .filter_map(|node| {
            let drain = node.drain.as_ref()?;
            let empty = !state
                .vms
                .values()
                .any(|vm| vm.assigned_node == Some(node.node_id));
            if empty {
                Some(Command::FinishDrain {
                    node_id: node.node_id,
                    force: false,
                })
            } else if now_unix_ms >= drain.deadline_unix_ms {
                Some(Command::FinishDrain {
                    node_id: node.node_id,
                    force: true,
                })
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_consensus::{DesiredState, HostFacts, RunnerSource, VmSpec};

    #[test]
    fn a_drain_ends_when_empty_or_past_its_deadline() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.apply(Command::SetHostFacts {
            node_id: 1,
            facts: HostFacts {
                memory_mib_total: 1024,
                vcpus_total: 2,
                accel: "tcg".into(),
                labels: Default::default(),
                gossip_address: String::new(),
                fence_after_ms: 0,
            },
        });
        state.apply(Command::CreateVm {
            spec: VmSpec {
                name: "a".into(),
                vcpus: 1,
                memory_mib: 64,
                runner: RunnerSource::Flake {
                    flake_ref: "x".into(),
                },
                pinned_node: None,
                placement: Default::default(),
                failover: Default::default(),
                group: None,
                platform: None,
            },
            created_at_unix_ms: 0,
        });
        state.apply(Command::SetVmDesiredState {
            name: "a".into(),
            desired_state: DesiredState::Running,
        });
        state.apply(Command::AssignVm {
            name: "a".into(),
            node_id: Some(1),
            reason: String::new(),
            vcpu_overcommit: None,
            needs_agent: false,
        });
        assert!(drain_steps(&state, 0).is_empty());
        state.apply(Command::DrainNode {
            node_id: 1,
            at_unix_ms: 100,
            deadline_unix_ms: 200,
        });
        assert!(drain_steps(&state, 150).is_empty());
        assert_eq!(
            drain_steps(&state, 200),
            [Command::FinishDrain {
                node_id: 1,
                force: true
            }]
        );
        state.apply(Command::AssignVm {
            name: "a".into(),
            node_id: None,
            reason: String::new(),
            vcpu_overcommit: None,
            needs_agent: false,
        });
        assert_eq!(
            drain_steps(&state, 150),
            [Command::FinishDrain {
                node_id: 1,
                force: false
            }]
        );
    }
}
