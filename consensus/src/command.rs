//! Commands carried in the Raft log and what applying them yields.
//!
//! Invariant: a command holds everything its application needs (ids,
//! timestamps, sizes), so applying it reads no clock, no randomness and no
//! I/O, and every node computes the same result.

use serde::{Deserialize, Serialize};

/// How a VM obtains its `microvm-run` runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerSource {
    /// Blixard writes a qemu `-M microvm` runner for this kernel and initramfs.
    Kernel {
        kernel_path: String,
        initrd_path: String,
        cmdline: String,
        /// TCP forwards from 127.0.0.1 on the VM's node into the guest.
        #[serde(default)]
        ports: Vec<PortForward>,
    },
    /// `nix build FLAKE#nixosConfigurations.NAME.config.microvm.declaredRunner`.
    Flake { flake_ref: String },
}

/// A TCP port forwarded from the host's loopback into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// What the operator wants a VM to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Stopped,
    Running,
}

/// The operator's definition of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub runner: RunnerSource,
    /// Run only on this node (`--node`); otherwise the scheduler places it.
    #[serde(default)]
    pub pinned_node: Option<u64>,
}

/// Where a VM is in its life, as its node last reported (or the scheduler
/// decided, for `Pending` and `Scheduled`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Wants to run; no node assigned yet.
    Pending,
    /// Assigned to a node that has not started it yet.
    Scheduled,
    Starting,
    Running,
    Stopping,
    #[default]
    Stopped,
    /// See `VmObserved::reason`.
    Failed,
}

/// What the node running a VM observed, reported through the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmObserved {
    pub phase: VmPhase,
    /// The node that reported (or was assigned, for `Scheduled`).
    pub node: Option<u64>,
    /// Hypervisor process id on `node`.
    pub pid: Option<u32>,
    /// Milliseconds from spawning the hypervisor to the guest running.
    pub boot_ms: Option<u64>,
    /// How the hypervisor last exited, e.g. "exit code 1" or "signal 9".
    pub exit_status: Option<String>,
    /// Times the agent restarted the VM after it died unasked.
    pub restarts: u32,
    /// Why the VM failed (empty otherwise).
    pub reason: String,
    /// When the node observed this, stamped by the node.
    pub observed_at_unix_ms: u64,
}

/// A VM as the cluster state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub desired_state: DesiredState,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub created_at_unix_ms: u64,
    /// The node that should run the VM (set by the scheduler).
    #[serde(default)]
    pub assigned_node: Option<u64>,
    #[serde(default)]
    pub observed: VmObserved,
}

/// A cluster member as the cluster state holds it (its raft role lives in
/// the raft configuration, not here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    pub address: String,
    /// Facts the node's agent reported about its host (absent until then).
    #[serde(default)]
    pub host: Option<HostFacts>,
}

/// A host's capacity and hypervisor acceleration, reported by its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub memory_mib_total: u64,
    pub vcpus_total: u32,
    /// "kvm" or "tcg": what the agent's probe found usable.
    pub accel: String,
}

/// A state-machine command. New kinds of cluster state add variants here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Command {
    CreateVm {
        spec: VmSpec,
        created_at_unix_ms: u64,
    },
    SetVmDesiredState {
        name: String,
        desired_state: DesiredState,
    },
    DeleteVm {
        name: String,
    },
    /// Records (or updates) the address a member serves on.
    SetNodeAddress {
        node_id: u64,
        address: String,
    },
    /// A node's agent describes its host.
    SetHostFacts {
        node_id: u64,
        facts: HostFacts,
    },
    /// The scheduler places a VM on a node (or takes it off: `None`).
    AssignVm {
        name: String,
        node_id: Option<u64>,
    },
    /// The node a VM is assigned to reports what it observes.
    ReportVm {
        name: String,
        node_id: u64,
        observed: VmObserved,
    },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::Error> {
        serde_json::from_slice(bytes).map_err(|e| crate::Error::Corrupt {
            what: "command",
            detail: e.to_string(),
        })
    }
}

/// What applying an accepted command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The state revision after the command.
    pub revision: u64,
    /// The VM the command touched, as it is now (`None` after a delete).
    pub vm: Option<VmRecord>,
}

/// Why the state machine refused a command. Refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("a VM named {name:?} already exists")]
    VmExists { name: String },
    #[error("no VM named {name:?}")]
    VmNotFound { name: String },
    #[error("undecodable command: {detail}")]
    Undecodable { detail: String },
    #[error("membership change refused: {detail}")]
    ConfChange { detail: String },
    #[error("VM {name:?} is assigned to node {assigned:?}, not node {node_id}")]
    NotAssigned {
        name: String,
        node_id: u64,
        assigned: Option<u64>,
    },
    #[error("no member with node id {node_id}")]
    NoSuchNode { node_id: u64 },
}

/// A change to the VM table, in the order it was applied (for watchers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmChange {
    Added(VmRecord),
    Modified(VmRecord),
    Deleted(VmRecord),
}

/// Identifies who proposed an entry so only that node answers the client.
/// Stored in the raft entry's `context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalTag {
    pub proposer: u64,
    pub request_id: u64,
}

impl ProposalTag {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.proposer.to_be_bytes());
        bytes.extend_from_slice(&self.request_id.to_be_bytes());
        bytes
    }

    /// `None` for entries raft-rs made itself (empty context).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let proposer = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
        let request_id = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self {
            proposer,
            request_id,
        })
    }
}
