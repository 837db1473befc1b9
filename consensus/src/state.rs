//! The replicated cluster state and the pure function that advances it.
//!
//! Invariants: `revision` counts accepted state-changing commands and only
//! grows; every VM's `create_revision <= mod_revision <= revision`; a
//! refused command changes nothing. `apply` does no I/O and reads no clock,
//! so every replica that applies the same log holds the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Applied, Command, NodeRecord, Rejection, VmChange, VmRecord};

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
    pub vm_change: Option<VmChange>,
}

impl Outcome {
    fn rejected(rejection: Rejection) -> Self {
        Self {
            result: Err(rejection),
            touched: Vec::new(),
            vm_change: None,
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
            } => self.update_vm(&name, |vm| vm.desired_state = desired_state),
            Command::DeleteVm { name } => self.delete_vm(&name),
            Command::SetNodeAddress { node_id, address } => self.set_node(node_id, address),
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

    /// A member was removed by a committed configuration change.
    pub fn remove_member(&mut self, node_id: u64) -> Outcome {
        self.revision += 1;
        self.nodes.remove(&node_id);
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: None,
            }),
            touched: vec![Touched::Node(node_id)],
            vm_change: None,
        }
    }

    fn create_vm(&mut self, spec: crate::command::VmSpec, created_at_unix_ms: u64) -> Outcome {
        if self.vms.contains_key(&spec.name) {
            return Outcome::rejected(Rejection::VmExists { name: spec.name });
        }
        self.revision += 1;
        let record = VmRecord {
            spec,
            desired_state: crate::command::DesiredState::Stopped,
            create_revision: self.revision,
            mod_revision: self.revision,
            created_at_unix_ms,
        };
        let name = record.spec.name.clone();
        self.vms.insert(name.clone(), record.clone());
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: Some(record.clone()),
            }),
            touched: vec![Touched::Vm(name)],
            vm_change: Some(VmChange::Added(record)),
        }
    }

    fn update_vm(&mut self, name: &str, change: impl FnOnce(&mut VmRecord)) -> Outcome {
        let Some(vm) = self.vms.get_mut(name) else {
            return Outcome::rejected(Rejection::VmNotFound { name: name.into() });
        };
        self.revision += 1;
        change(vm);
        vm.mod_revision = self.revision;
        let record = vm.clone();
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: Some(record.clone()),
            }),
            touched: vec![Touched::Vm(name.into())],
            vm_change: Some(VmChange::Modified(record)),
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
            vm_change: Some(VmChange::Deleted(record)),
        }
    }

    fn set_node(&mut self, node_id: u64, address: String) -> Outcome {
        self.revision += 1;
        self.nodes.insert(node_id, NodeRecord { node_id, address });
        Outcome {
            result: Ok(Applied {
                revision: self.revision,
                vm: None,
            }),
            touched: vec![Touched::Node(node_id)],
            vm_change: None,
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
