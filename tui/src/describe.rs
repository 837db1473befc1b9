//! `d` (describe): a VM's or node's full spec and status as YAML.

use std::collections::BTreeMap;

use blixard_api::pb;
use serde::Serialize;

use crate::table::{phase_label, vm_phase};

#[derive(Serialize)]
struct VmDescription {
    name: String,
    desired_state: &'static str,
    state: &'static str,
    node: Option<u64>,
    vcpus: u32,
    memory_mib: u64,
    runner: String,
    group: Option<String>,
    constraints: Vec<String>,
    preferences: Vec<String>,
    anti_affinity_group: Option<String>,
    affinity_group: Option<String>,
    strategy: String,
    pid: Option<u32>,
    boot_ms: Option<u64>,
    restarts: u32,
    exit_status: Option<String>,
    reason: Option<String>,
    evicting: bool,
    created_at_unix_ms: u64,
    revisions: [u64; 2],
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

fn runner(spec: &pb::VmSpec) -> String {
    match spec.runner.as_ref().and_then(|r| r.source.as_ref()) {
        Some(pb::runner_source::Source::Kernel(kernel)) => {
            format!(
                "kernel {} initrd {}",
                kernel.kernel_path, kernel.initrd_path
            )
        }
        Some(pb::runner_source::Source::Flake(flake)) => format!("flake {}", flake.flake_ref),
        None => "-".into(),
    }
}

pub fn vm(vm: &pb::VmInfo) -> String {
    let spec = vm.spec.clone().unwrap_or_default();
    let observed = vm.observed.clone().unwrap_or_default();
    let description = VmDescription {
        name: spec.name.clone(),
        desired_state: match vm.desired_state() {
            pb::DesiredState::Running => "running",
            pb::DesiredState::Stopped | pb::DesiredState::Unspecified => "stopped",
        },
        state: phase_label(vm_phase(vm)),
        node: (vm.assigned_node != 0).then_some(vm.assigned_node),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        runner: runner(&spec),
        group: non_empty(&spec.group),
        constraints: spec.constraints.clone(),
        preferences: spec.preferences.clone(),
        anti_affinity_group: non_empty(&spec.anti_affinity_group),
        affinity_group: non_empty(&spec.affinity_group),
        strategy: non_empty(&spec.strategy).unwrap_or_else(|| "spread".into()),
        pid: (observed.pid != 0).then_some(observed.pid),
        boot_ms: (observed.boot_ms != 0).then_some(observed.boot_ms),
        restarts: observed.restarts,
        exit_status: non_empty(&observed.exit_status),
        reason: non_empty(&observed.reason),
        evicting: vm.evicting,
        created_at_unix_ms: vm.created_at_unix_ms,
        revisions: [vm.create_revision, vm.mod_revision],
    };
    serde_yaml_ng::to_string(&description).expect("plain data serializes")
}

#[derive(Serialize)]
struct NodeDescription<'a> {
    node_id: u64,
    address: &'a str,
    gossip_address: &'a str,
    role: &'a str,
    liveness: &'a str,
    eligible: bool,
    draining: bool,
    vcpus: String,
    memory_mib: String,
    memory_mib_free: u64,
    disk_mib_free: u64,
    accel: &'a str,
    hypervisors: &'a [String],
    labels: BTreeMap<&'a str, &'a str>,
    vms_assigned: u32,
    vms_running: u32,
    version: &'a str,
    problem: Option<String>,
}

pub fn node(node: &pb::NodeInfo) -> String {
    let description = NodeDescription {
        node_id: node.node_id,
        address: &node.address,
        gossip_address: &node.gossip_address,
        role: &node.role,
        liveness: &node.liveness,
        eligible: node.eligible,
        draining: node.draining,
        vcpus: format!("{} of {} allocated", node.vcpus_allocated, node.vcpus_total),
        memory_mib: format!(
            "{} of {} allocated",
            node.memory_mib_allocated, node.memory_mib_total
        ),
        memory_mib_free: node.memory_mib_free,
        disk_mib_free: node.disk_mib_free,
        accel: &node.accel,
        hypervisors: &node.hypervisors,
        labels: node
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        vms_assigned: node.vms_assigned,
        vms_running: node.vms_running,
        version: &node.version,
        problem: non_empty(&node.problem),
    };
    serde_yaml_ng::to_string(&description).expect("plain data serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_reads_as_yaml_with_its_spec_and_status() {
        let info = pb::VmInfo {
            spec: Some(pb::VmSpec {
                name: "web-1".into(),
                vcpus: 2,
                memory_mib: 256,
                constraints: vec!["storage=nvme".into()],
                ..Default::default()
            }),
            desired_state: pb::DesiredState::Running as i32,
            assigned_node: 3,
            observed: Some(pb::VmObserved {
                phase: pb::VmPhase::Failed as i32,
                reason: "kernel not found".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = vm(&info);
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(parsed["name"], "web-1");
        assert_eq!(parsed["state"], "Failed");
        assert_eq!(parsed["node"], 3);
        assert_eq!(parsed["reason"], "kernel not found");
        assert_eq!(parsed["constraints"][0], "storage=nvme");
    }
}
