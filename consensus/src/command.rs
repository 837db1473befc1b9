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
    },
    /// `nix build FLAKE#nixosConfigurations.NAME.config.microvm.declaredRunner`.
    Flake { flake_ref: String },
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
}

/// A VM as the cluster state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub desired_state: DesiredState,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub created_at_unix_ms: u64,
}

/// A cluster member as the cluster state holds it (its raft role lives in
/// the raft configuration, not here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: u64,
    pub address: String,
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
