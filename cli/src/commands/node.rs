//! `blixard node list | status | eligibility | drain`.

use std::collections::BTreeMap;
use std::time::Duration;

use blixard_api::{pb, validate};
use serde::Serialize;

use crate::cli::{NodeCommand, OutputFormat};
use crate::client::{self, status_error};
use crate::output;

/// How often a waiting drain polls the node.
const DRAIN_POLL_INTERVAL_MS: u64 = 250;

#[derive(Serialize, schemars::JsonSchema)]
pub struct NodeView {
    pub node_id: u64,
    pub address: String,
    pub gossip_address: String,
    pub role: String,
    pub liveness: String,
    pub eligible: bool,
    pub draining: bool,
    pub vcpus_total: u32,
    pub vcpus_allocated: u32,
    pub memory_mib_total: u64,
    pub memory_mib_allocated: u64,
    pub memory_mib_free: u64,
    pub disk_mib_free: u64,
    pub accel: String,
    pub hypervisors: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub vms_running: u32,
    pub vms_assigned: u32,
    pub version: String,
    /// Why the node's gossip record could not be read (empty when fine).
    pub problem: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct NodeListView {
    pub revision: u64,
    pub nodes: Vec<NodeView>,
}

fn view(node: &pb::NodeInfo) -> NodeView {
    NodeView {
        node_id: node.node_id,
        address: node.address.clone(),
        gossip_address: node.gossip_address.clone(),
        role: node.role.clone(),
        liveness: node.liveness.clone(),
        eligible: node.eligible,
        draining: node.draining,
        vcpus_total: node.vcpus_total,
        vcpus_allocated: node.vcpus_allocated,
        memory_mib_total: node.memory_mib_total,
        memory_mib_allocated: node.memory_mib_allocated,
        memory_mib_free: node.memory_mib_free,
        disk_mib_free: node.disk_mib_free,
        accel: node.accel.clone(),
        hypervisors: node.hypervisors.clone(),
        labels: node.labels.clone().into_iter().collect(),
        vms_running: node.vms_running,
        vms_assigned: node.vms_assigned,
        version: node.version.clone(),
        problem: node.problem.clone(),
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn eligibility_text(node: &NodeView) -> &'static str {
    match (node.draining, node.eligible) {
        (true, _) => "draining",
        (false, true) => "eligible",
        (false, false) => "ineligible",
    }
}

fn nodes_table(nodes: &[NodeView]) -> comfy_table::Table {
    let mut table = output::table(&[
        "NODE",
        "ADDRESS",
        "ROLE",
        "LIVENESS",
        "SCHEDULING",
        "VCPUS",
        "MEMORY MiB (alloc/total)",
        "VMS",
        "ACCEL",
        "LABELS",
    ]);
    for node in nodes {
        table.add_row(vec![
            node.node_id.to_string(),
            node.address.clone(),
            node.role.clone(),
            node.liveness.clone(),
            eligibility_text(node).into(),
            format!("{}/{}", node.vcpus_allocated, node.vcpus_total),
            format!("{}/{}", node.memory_mib_allocated, node.memory_mib_total),
            format!("{}/{}", node.vms_running, node.vms_assigned),
            if node.accel.is_empty() {
                "-".into()
            } else {
                node.accel.clone()
            },
            labels_text(&node.labels),
        ]);
    }
    table
}

fn node_detail_table(node: &NodeView) -> comfy_table::Table {
    let mut table = output::table(&["FIELD", "VALUE"]);
    let rows = [
        ("node", node.node_id.to_string()),
        ("address", node.address.clone()),
        ("gossip address", node.gossip_address.clone()),
        ("role", node.role.clone()),
        ("liveness", node.liveness.clone()),
        ("scheduling", eligibility_text(node).into()),
        (
            "vcpus allocated/total",
            format!("{}/{}", node.vcpus_allocated, node.vcpus_total),
        ),
        (
            "memory MiB allocated/total",
            format!("{}/{}", node.memory_mib_allocated, node.memory_mib_total),
        ),
        ("host memory MiB free", node.memory_mib_free.to_string()),
        ("disk MiB free", node.disk_mib_free.to_string()),
        ("accel", node.accel.clone()),
        ("hypervisors", node.hypervisors.join(",")),
        ("labels", labels_text(&node.labels)),
        (
            "VMs running/assigned",
            format!("{}/{}", node.vms_running, node.vms_assigned),
        ),
        ("version", node.version.clone()),
        ("problem", node.problem.clone()),
    ];
    for (field, value) in rows {
        table.add_row(vec![field.to_string(), value]);
    }
    table
}

pub async fn run(command: NodeCommand, addr: &str, format: OutputFormat) -> anyhow::Result<()> {
    match command {
        NodeCommand::List => {
            let response = client::list_nodes(&client::node(addr).await?).await?;
            let list = NodeListView {
                revision: response.revision,
                nodes: response.nodes.iter().map(view).collect(),
            };
            output::print(format, &list, |l| nodes_table(&l.nodes))
        }
        NodeCommand::Status { node_id } => {
            validate::node_id(node_id)?;
            let node = client::node(addr)
                .await?
                .get(pb::NodeRequest { node_id })
                .await
                .map_err(status_error)?
                .into_inner();
            output::print(format, &view(&node), node_detail_table)
        }
        NodeCommand::Eligibility {
            node_id, enable, ..
        } => {
            validate::node_id(node_id)?;
            let node = client::node(addr)
                .await?
                .set_eligibility(pb::SetEligibilityRequest {
                    node_id,
                    eligible: enable,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::print(format, &view(&node), node_detail_table)
        }
        NodeCommand::Drain {
            node_id,
            deadline,
            no_wait,
        } => drain(addr, format, node_id, deadline, no_wait).await,
    }
}

/// Starts a drain and, unless told not to, follows it with a spinner
/// (on a terminal) until the node holds no VMs and the drain has ended.
async fn drain(
    addr: &str,
    format: OutputFormat,
    node_id: u64,
    deadline_ms: u64,
    no_wait: bool,
) -> anyhow::Result<()> {
    validate::node_id(node_id)?;
    let mut client = client::node(addr).await?;
    let mut node = client
        .drain(pb::DrainRequest {
            node_id,
            deadline_ms,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if !no_wait {
        let progress = output::spinner(&format!("draining node {node_id}"));
        let started = node.vms_assigned;
        while node.draining || node.vms_assigned > 0 {
            progress.set_message(format!(
                "draining node {node_id}: {} of {started} VM(s) moved, {} left",
                started.saturating_sub(node.vms_assigned),
                node.vms_assigned
            ));
            tokio::time::sleep(Duration::from_millis(DRAIN_POLL_INTERVAL_MS)).await;
            node = client
                .get(pb::NodeRequest { node_id })
                .await
                .map_err(status_error)?
                .into_inner();
        }
        progress.finish_and_clear();
    }
    output::print(format, &view(&node), node_detail_table)
}
