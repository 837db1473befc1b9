//! The replicated cluster state and the pure function that advances it.
//!
//! Invariants: `revision` counts accepted state-changing commands and only
//! grows; every VM's `create_revision <= mod_revision <= revision`; a VM's
//! `assigned_node` names a member or is `None`; only the assigned node's
//! reports change a VM's observed state; a refused command changes nothing.
//! `apply` does no I/O and reads no clock, so every replica that applies the
//! same log holds the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{
    Applied, Command, DesiredState, HostFacts, NodeRecord, Rejection, VmChange, VmObserved,
    VmPhase, VmRecord, VmSpec,
};

/// A key of the state tables that a command touched; storage rewrites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Vm(String),
    Node(u64),
}

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub revision: u64,
    /// Ordered by name so every replica lists VMs in the same order.
    pub vms: BTreeMap<String, VmRecord>,
    pub nodes: BTreeMap<u64, NodeRecord>,
}

/// The outcome of applying one command.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Applied, Rejection>,
    pub touched: Vec<Touched>,
    /// VM changes in the order they happened (for watchers).
    pub vm_changes: Vec<VmChange>,
}

impl Outcome {
    fn rejected(rejection: Rejection) -> Self {
        Self {
            result: Err(rejection),
            touched: Vec::new(),
            vm_changes: Vec::new(),
        }
    }
}

impl ClusterState {
    /// Applies one command (see the module invariants).
    pub fn apply(&mut self, command: Command) -> Outcome {
        let revision_before = self.revision;
        let outcome = match command {
            Command::CreateVm {
                spec,
                created_at_unix_ms,
            } => self.create_vm(spec, created_at_unix_ms),
            Command::SetVmDesiredState {
                name,
                desired_state,
            } => self.update_vm(&name, |vm| {
                vm.desired_state = desired_state;
                match (desired_state, vm.assigned_node, vm.observed.phase) {
                    (DesiredState::Running, None, _) => vm.observed = pending(),
                    (DesiredState::Stopped, None, VmPhase::Pending) => {
                        vm.observed = VmObserved::default()
                    }
                    _ => {}
                }
                Ok(())
            }),
            Command::DeleteVm { name } => self.delete_vm(&name),
            Command::SetNodeAddress { node_id, address } => self.set_node(node_id, address),
            Command::SetHostFacts { node_id, facts } => self.set_host_facts(node_id, facts),
            Command::AssignVm { name, node_id } => self.assign_vm(&name, node_id),
            Command::ReportVm {
                name,
                node_id,
                observed,
            } => self.update_vm(&name, |vm| {
                if vm.assigned_node != Some(node_id) {
                    return Err(Rejection::NotAssigned {
                        name: vm.spec.name.clone(),
                        node_id,
                        assigned: vm.assigned_node,
                    });
                }
                vm.observed = VmObserved {
                    node: Some(node_id),
                    ..observed
                };
                Ok(())
            }),
        };
        match &outcome.result {
            Ok(applied) => assert_eq!(applied.revision, revision_before + 1),
            Err(_) => assert_eq!(self.revision, revision_before),
        }
        outcome
    }

    /// A member was added by a committed configuration change.
    pub fn add_member(&mut self, node_id: u64, address: String) -> Outcome {
        self.set_node(node_id, address)
    }

    /// A member was removed by a committed configuration change. Its VMs
    /// lose their assignment so the scheduler can place them elsewhere.
    pub fn remove_member(&mut self, node_id: u64) -> Outcome {
        self.revision += 1;
        self.nodes.remove(&node_id);
        let mut touched = vec![Touched::Node(node_id)];
        let mut vm_changes = Vec::new();
        for vm in self.vms.values_mut() {
            if vm.assigned_node == Some(node_id) {
                vm.assigned_node = None;
                vm.observed = match vm.desired_state {
                    DesiredState::Running => pending(),
                    DesiredState::Stopped => VmObserved::default(),
                };
                vm.mod_revision = self.revision;
                touched.push(Touched::Vm(vm.spec.name.clone()));
                vm_changes.push(VmChange::Modified(vm.clone()));
            }
        }
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: None,
            }),
            touched,
            vm_changes,
        }
    }

    fn create_vm(&mut self, spec: VmSpec, created_at_unix_ms: u64) -> Outcome {
        if self.vms.contains_key(&spec.name) {
            return Outcome::rejected(Rejection::VmExists { name: spec.name });
        }
        if let Some(node_id) = spec.pinned_node {
            if !self.nodes.contains_key(&node_id) {
                return Outcome::rejected(Rejection::NoSuchNode { node_id });
            }
        }
        self.revision += 1;
        let record = VmRecord {
            spec,
            desired_state: DesiredState::Stopped,
            create_revision: self.revision,
            mod_revision: self.revision,
            created_at_unix_ms,
            assigned_node: None,
            observed: VmObserved::default(),
        };
        let name = record.spec.name.clone();
        self.vms.insert(name.clone(), record.clone());
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: Some(record.clone()),
            }),
            touched: vec![Touched::Vm(name)],
            vm_changes: vec![VmChange::Added(record)],
        }
    }

    fn assign_vm(&mut self, name: &str, node_id: Option<u64>) -> Outcome {
        if let Some(node_id) = node_id {
            if !self.nodes.contains_key(&node_id) {
                return Outcome::rejected(Rejection::NoSuchNode { node_id });
            }
        }
        self.update_vm(name, |vm| {
            vm.assigned_node = node_id;
            vm.observed = match (node_id, vm.desired_state) {
                (Some(node), DesiredState::Running) => VmObserved {
                    phase: VmPhase::Scheduled,
                    node: Some(node),
                    restarts: vm.observed.restarts,
                    ..VmObserved::default()
                },
                (None, DesiredState::Running) => pending(),
                (_, DesiredState::Stopped) => VmObserved::default(),
            };
            Ok(())
        })
    }

    /// Changes one VM through `change`, which may refuse; a refusal leaves
    /// the VM as it was.
    fn update_vm(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut VmRecord) -> Result<(), Rejection>,
    ) -> Outcome {
        let Some(vm) = self.vms.get(name) else {
            return Outcome::rejected(Rejection::VmNotFound { name: name.into() });
        };
        let mut record = vm.clone();
        if let Err(rejection) = change(&mut record) {
            return Outcome::rejected(rejection);
        }
        self.revision += 1;
        record.mod_revision = self.revision;
        self.vms.insert(name.to_string(), record.clone());
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: Some(record.clone()),
            }),
            touched: vec![Touched::Vm(name.into())],
            vm_changes: vec![VmChange::Modified(record)],
        }
    }

    fn delete_vm(&mut self, name: &str) -> Outcome {
        let Some(mut record) = self.vms.remove(name) else {
            return Outcome::rejected(Rejection::VmNotFound { name: name.into() });
        };
        self.revision += 1;
        record.mod_revision = self.revision;
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: None,
            }),
            touched: vec![Touched::Vm(name.into())],
            vm_changes: vec![VmChange::Deleted(record)],
        }
    }

    fn set_node(&mut self, node_id: u64, address: String) -> Outcome {
        self.revision += 1;
        let host = self.nodes.get(&node_id).and_then(|n| n.host.clone());
        self.nodes.insert(
            node_id,
            NodeRecord {
                node_id,
                address,
                host,
            },
        );
        self.node_changed(node_id)
    }

    fn set_host_facts(&mut self, node_id: u64, facts: HostFacts) -> Outcome {
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return Outcome::rejected(Rejection::NoSuchNode { node_id });
        };
        self.revision += 1;
        node.host = Some(facts);
        self.node_changed(node_id)
    }

    /// The outcome of a change to one node's record (revision already
    /// advanced by the caller).
    fn node_changed(&self, node_id: u64) -> Outcome {
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: None,
            }),
            touched: vec![Touched::Node(node_id)],
            vm_changes: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("cluster state always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::Error> {
        serde_json::from_slice(bytes).map_err(|e| crate::Error::Corrupt {
            what: "snapshot",
            detail: e.to_string(),
        })
    }
}

fn pending() -> VmObserved {
    VmObserved {
        phase: VmPhase::Pending,
        ..VmObserved::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{DesiredState, RunnerSource, VmSpec};
    use proptest::prelude::*;

    fn spec(name: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            vcpus: 1,
            memory_mib: 128,
            runner: RunnerSource::Flake {
                flake_ref: "/etc/vms#x".into(),
            },
            pinned_node: None,
        }
    }

    fn create(name: &str) -> Command {
        Command::CreateVm {
            spec: spec(name),
            created_at_unix_ms: 7,
        }
    }

    #[test]
    fn duplicate_create_is_refused_and_changes_nothing() {
        let mut state = ClusterState::default();
        assert!(state.apply(create("a")).result.is_ok());
        let before = state.clone();
        let outcome = state.apply(create("a"));
        assert_eq!(
            outcome.result,
            Err(Rejection::VmExists { name: "a".into() })
        );
        assert_eq!(state, before);
    }

    #[test]
    fn lifecycle_moves_revisions() {
        let mut state = ClusterState::default();
        state.apply(create("a"));
        let started = state.apply(Command::SetVmDesiredState {
            name: "a".into(),
            desired_state: DesiredState::Running,
        });
        let vm = started.result.unwrap().vm.unwrap();
        assert_eq!((vm.create_revision, vm.mod_revision), (1, 2));
        assert_eq!(vm.desired_state, DesiredState::Running);
        assert!(state
            .apply(Command::DeleteVm { name: "a".into() })
            .result
            .is_ok());
        assert!(state.vms.is_empty());
        assert_eq!(state.revision, 3);
        assert!(state
            .apply(Command::DeleteVm { name: "a".into() })
            .result
            .is_err());
    }

    fn running_on(state: &mut ClusterState, name: &str, node: u64) {
        state.apply(create(name));
        state.apply(Command::SetVmDesiredState {
            name: name.into(),
            desired_state: DesiredState::Running,
        });
        assert_eq!(state.vms[name].observed.phase, VmPhase::Pending);
        let assigned = state.apply(Command::AssignVm {
            name: name.into(),
            node_id: Some(node),
        });
        assert_eq!(
            assigned.result.unwrap().vm.unwrap().observed.phase,
            VmPhase::Scheduled
        );
    }

    #[test]
    fn only_the_assigned_node_reports() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.add_member(2, "b:2".into());
        running_on(&mut state, "a", 1);
        let before = state.clone();
        let report = |node_id| Command::ReportVm {
            name: "a".into(),
            node_id,
            observed: VmObserved {
                phase: VmPhase::Running,
                pid: Some(42),
                ..VmObserved::default()
            },
        };
        assert!(matches!(
            state.apply(report(2)).result,
            Err(Rejection::NotAssigned {
                node_id: 2,
                assigned: Some(1),
                ..
            })
        ));
        assert_eq!(state, before);
        let accepted = state.apply(report(1)).result.unwrap().vm.unwrap();
        assert_eq!(accepted.observed.phase, VmPhase::Running);
        assert_eq!(accepted.observed.node, Some(1));
    }

    #[test]
    fn assignment_needs_a_member_and_removal_unassigns() {
        let mut state = ClusterState::default();
        state.add_member(1, "a:1".into());
        state.apply(create("a"));
        let refused = state.apply(Command::AssignVm {
            name: "a".into(),
            node_id: Some(9),
        });
        assert_eq!(refused.result, Err(Rejection::NoSuchNode { node_id: 9 }));
        state.apply(Command::DeleteVm { name: "a".into() });
        running_on(&mut state, "a", 1);
        let removed = state.remove_member(1);
        assert_eq!(removed.vm_changes.len(), 1);
        assert_eq!(state.vms["a"].assigned_node, None);
        assert_eq!(state.vms["a"].observed.phase, VmPhase::Pending);
    }

    fn arbitrary_command() -> impl Strategy<Value = Command> {
        let name = prop::sample::select(vec!["a", "b", "c"]);
        prop_oneof![
            name.clone().prop_map(create),
            name.clone()
                .prop_map(|n| Command::DeleteVm { name: n.into() }),
            (name, any::<bool>()).prop_map(|(n, run)| Command::SetVmDesiredState {
                name: n.into(),
                desired_state: if run {
                    DesiredState::Running
                } else {
                    DesiredState::Stopped
                },
            }),
        ]
    }

    proptest! {
        /// Replicas applying the same log agree, and a snapshot round-trips.
        #[test]
        fn replicas_agree(commands in prop::collection::vec(arbitrary_command(), 0..64)) {
            let mut one = ClusterState::default();
            let mut two = ClusterState::default();
            for command in commands {
                let a = one.apply(command.clone()).result;
                let b = two.apply(command).result;
                prop_assert_eq!(a, b);
            }
            prop_assert_eq!(&one, &two);
            prop_assert_eq!(ClusterState::decode(&one.encode()).unwrap(), one.clone());
            for vm in one.vms.values() {
                prop_assert!(vm.create_revision <= vm.mod_revision);
                prop_assert!(vm.mod_revision <= one.revision);
            }
        }
    }
}
