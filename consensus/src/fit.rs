//! Whether a node may take a VM, judged on the cluster state alone.
//!
//! The scheduler places by these rules (adding only whether gossip sees
//! the node alive), and `apply` checks them again when a placement
//! commits, as Nomad's plan applier does: a placement decided on an older
//! state (a deposed leader's, or two decided on the same state) never
//! oversubscribes a node or breaks a rule.
//!
//! Invariant: [`misfit`] is a pure function of the VM, the node's facts
//! and what the node already carries, so the scheduler and `apply` cannot
//! disagree on a rule.

use std::collections::BTreeMap;

use crate::records::{DesiredState, NodeRecord, VmPhase, VmRecord, VmSpec};

/// Most vCPUs a node may hand out per host core that a placement may
/// claim (a node's `[scheduler] vcpu_overcommit` is at most this).
pub const VCPU_OVERCOMMIT_MAX: u32 = 64;

/// A node's capacity as its agent reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kvm: bool,
    /// Whether a node agent runs VMs there (it reports an acceleration;
    /// a node with `[agent] enabled = false` reports none).
    pub runs_vms: bool,
}

/// What a node offers VMs, from its record.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    pub node_id: u64,
    pub eligible: bool,
    /// `None` until the node has reported its host.
    pub capacity: Option<Capacity>,
    /// Labels plus the built-ins `node`, `memory`, `vcpus`, `accel`.
    pub attributes: BTreeMap<String, String>,
}

impl NodeFacts {
    pub fn of(node: &NodeRecord) -> Self {
        let mut attributes = BTreeMap::new();
        let capacity = node.host.as_ref().map(|host| {
            attributes.extend(host.labels.clone());
            attributes.insert("memory".into(), host.memory_mib_total.to_string());
            attributes.insert("vcpus".into(), host.vcpus_total.to_string());
            attributes.insert("accel".into(), host.accel.clone());
            Capacity {
                vcpus: host.vcpus_total,
                memory_mib: host.memory_mib_total,
                kvm: host.accel == "kvm",
                runs_vms: !host.accel.is_empty(),
            }
        });
        attributes.insert("node".into(), node.node_id.to_string());
        NodeFacts {
            node_id: node.node_id,
            eligible: node.eligible,
            capacity,
            attributes,
        }
    }
}

/// What a node already carries: the VMs placed on it that hold resources.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub anti_affinity: BTreeMap<String, u32>,
    pub affinity: BTreeMap<String, u32>,
    pub groups: BTreeMap<String, u32>,
}

impl Load {
    pub fn add(&mut self, vm: &VmRecord) {
        self.vcpus += u64::from(vm.spec.vcpus);
        self.memory_mib += vm.spec.memory_mib;
        if let Some(group) = &vm.spec.placement.anti_affinity_group {
            *self.anti_affinity.entry(group.clone()).or_default() += 1;
        }
        if let Some(group) = &vm.spec.placement.affinity_group {
            *self.affinity.entry(group.clone()).or_default() += 1;
        }
        if let Some(group) = &vm.spec.group {
            *self.groups.entry(group.clone()).or_default() += 1;
        }
    }
}

/// Whether a VM holds resources on its assigned node: it should run, or
/// has not yet stopped.
pub fn holds_resources(vm: &VmRecord) -> bool {
    vm.desired_state == DesiredState::Running
        || !matches!(vm.observed.phase, VmPhase::Stopped | VmPhase::Failed)
}

/// Why a node cannot take a VM. Kept as data (not text) so that checking
/// a thousand nodes allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    NotPinned,
    Ineligible,
    NotReporting,
    /// No node agent runs there: a VM placed there would never start.
    NoAgent,
    /// Index into the VM's constraints.
    Constraint(usize),
    AntiAffinity,
    Memory,
    Vcpus,
}

impl Misfit {
    pub fn describe(self, spec: &VmSpec) -> String {
        match self {
            Misfit::NotPinned => "not the pinned node".into(),
            Misfit::Ineligible => "ineligible".into(),
            Misfit::NotReporting => "not yet reporting resources".into(),
            Misfit::NoAgent => "running no node agent".into(),
            Misfit::Constraint(i) => {
                format!("excluded by constraint {}", spec.placement.constraints[i])
            }
            Misfit::AntiAffinity => format!(
                "already run anti-affinity group {}",
                spec.placement
                    .anti_affinity_group
                    .as_deref()
                    .unwrap_or_default()
            ),
            Misfit::Memory => format!("without {} MiB of memory free", spec.memory_mib),
            Misfit::Vcpus => format!("without {} vCPUs free", spec.vcpus),
        }
    }
}

/// The first hard rule `node`, carrying `load`, breaks for `vm`, or
/// `None` if it may take it. vCPUs are counted against the node's cores
/// times `vcpu_overcommit` (0: not counted).
pub fn misfit(
    vm: &VmRecord,
    node: &NodeFacts,
    load: &Load,
    vcpu_overcommit: u32,
) -> Option<Misfit> {
    let spec = &vm.spec;
    if spec
        .pinned_node
        .is_some_and(|pinned| pinned != node.node_id)
    {
        return Some(Misfit::NotPinned);
    }
    if !node.eligible {
        return Some(Misfit::Ineligible);
    }
    let Some(capacity) = node.capacity else {
        return Some(Misfit::NotReporting);
    };
    if !capacity.runs_vms {
        return Some(Misfit::NoAgent);
    }
    if let Some(i) = spec
        .placement
        .constraints
        .iter()
        .position(|rule| !rule.matches(&node.attributes))
    {
        return Some(Misfit::Constraint(i));
    }
    if spec
        .placement
        .anti_affinity_group
        .as_ref()
        .is_some_and(|group| load.anti_affinity.contains_key(group))
    {
        return Some(Misfit::AntiAffinity);
    }
    if capacity.memory_mib.saturating_sub(load.memory_mib) < spec.memory_mib {
        return Some(Misfit::Memory);
    }
    let vcpus_max = u64::from(capacity.vcpus) * u64::from(vcpu_overcommit);
    if vcpu_overcommit > 0 && load.vcpus + u64::from(spec.vcpus) > vcpus_max {
        return Some(Misfit::Vcpus);
    }
    None
}
