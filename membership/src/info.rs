//! What a node says about itself in gossip.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Unreadable;

/// The chitchat key holding a node's JSON-encoded [`NodeInfo`].
pub const INFO_KEY: &str = "blixard.node";

/// A node's part in consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Votes in raft.
    Voter,
    /// Holds the raft log without voting (catching up to become a voter,
    /// or demoted).
    Learner,
    /// Runs workloads; holds no raft log.
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Voter => "voter",
            NodeRole::Learner => "learner",
            NodeRole::Worker => "worker",
        }
    }
}

/// One node's self-description. Fields are added, never repurposed: peers
/// running older versions ignore fields they do not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: u64,
    /// gRPC address.
    pub api_address: String,
    pub role: NodeRole,
    pub vcpus_total: u32,
    pub memory_mib_total: u64,
    pub memory_mib_free: u64,
    /// Free space where the node keeps VM state.
    pub disk_mib_free: u64,
    /// Hypervisors the node can run, e.g. `["qemu"]`.
    pub hypervisors: Vec<String>,
    /// "kvm", "tcg", or "" before the agent has probed.
    pub accel: String,
    pub labels: BTreeMap<String, String>,
    pub vms_running: u32,
    pub version: String,
}

impl NodeInfo {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("node info always serializes")
    }

    pub fn decode(value: &str) -> Result<Self, Unreadable> {
        serde_json::from_str(value).map_err(|e| Unreadable::UndecodableInfo(e.to_string()))
    }
}
