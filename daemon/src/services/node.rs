//! The `Node` service: every node as raft and gossip see it, eligibility
//! and drains.

use crate::handle::ClusterHandle;
use std::collections::BTreeSet;
use std::sync::Arc;

use blixard_api::{pb, validate};
use blixard_consensus::{ClusterState, Command, DesiredState, RaftStatus, VmPhase};
use blixard_membership::{Member, Membership};
use tonic::{Request, Response, Status};

use super::pages::PageRequest;
use crate::Error;

/// Default drain deadline.
const DRAIN_DEADLINE_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// Longest drain deadline accepted (a day).
const DRAIN_DEADLINE_MS_MAX: u64 = 24 * 3600 * 1000;

pub struct NodeService {
    pub raft: ClusterHandle,
    pub membership: Arc<Membership>,
}

/// One node's row, joining the replicated record, the raft configuration
/// and gossip (any of which may be missing).
fn node_info(
    node_id: u64,
    state: &ClusterState,
    status: &RaftStatus,
    gossip: Option<&Member>,
) -> pb::NodeInfo {
    let record = state.nodes.get(&node_id);
    let raft_member = status.members.iter().find(|m| m.node_id == node_id);
    let info = gossip.and_then(|m| m.info.as_ref().ok());
    let mut row = pb::NodeInfo {
        node_id,
        member: raft_member.is_some(),
        role: match (raft_member, record) {
            (Some(m), _) if m.voter => "voter",
            (Some(_), _) => "learner",
            (None, Some(_)) => "worker",
            (None, None) => "none",
        }
        .into(),
        liveness: match gossip {
            _ if node_id == status.node_id => "alive",
            Some(m) if m.alive => "alive",
            Some(_) => "dead",
            None => "unknown",
        }
        .into(),
        eligible: record.is_some_and(|r| r.eligible),
        draining: record.is_some_and(|r| r.drain.is_some()),
        drain_deadline_unix_ms: record
            .and_then(|r| r.drain.as_ref())
            .map_or(0, |d| d.deadline_unix_ms),
        address: record
            .map(|r| r.address.clone())
            .or_else(|| info.map(|i| i.api_address.clone()))
            .unwrap_or_default(),
        gossip_address: gossip
            .map(|m| m.gossip_address.to_string())
            .unwrap_or_default(),
        problem: gossip
            .and_then(|m| m.info.as_ref().err())
            .map(ToString::to_string)
            .unwrap_or_default(),
        ..pb::NodeInfo::default()
    };
    row.reported = record.is_some_and(|r| r.host.is_some());
    if let Some(host) = record.and_then(|r| r.host.as_ref()) {
        row.vcpus_total = host.vcpus_total;
        row.memory_mib_total = host.memory_mib_total;
        row.accel = host.accel.clone();
        row.labels = host.labels.clone().into_iter().collect();
    }
    if let Some(info) = info {
        row.vcpus_total = info.vcpus_total;
        row.memory_mib_total = info.memory_mib_total;
        row.memory_mib_free = info.memory_mib_free;
        row.disk_mib_free = info.disk_mib_free;
        row.accel = info.accel.clone();
        row.hypervisors = info.hypervisors.clone();
        row.labels = info.labels.clone().into_iter().collect();
        row.vms_running = info.vms_running;
        row.version = info.version.clone();
    }
    for vm in state
        .vms
        .values()
        .filter(|vm| vm.assigned_node == Some(node_id))
    {
        row.vms_assigned += 1;
        let holds = vm.desired_state == DesiredState::Running
            || !matches!(vm.observed.phase, VmPhase::Stopped | VmPhase::Failed);
        if holds {
            row.vcpus_allocated += vm.spec.vcpus;
            row.memory_mib_allocated += vm.spec.memory_mib;
        }
    }
    row
}

impl NodeService {
    /// One page of nodes (a node is in the state, in gossip, or both),
    /// the revision it was read at and the next page's token.
    async fn rows(
        &self,
        page: &PageRequest<u64>,
    ) -> Result<(Vec<pb::NodeInfo>, u64, String), Status> {
        self.raft.read_barrier().await.map_err(Error::from)?;
        let members = self.membership.members().await;
        let status = self.raft.status();
        Ok(self.raft.read_state(|state| {
            let ids: BTreeSet<u64> = state
                .nodes
                .keys()
                .copied()
                // A removed node's gossip (it may still be running) lists
                // nothing: its id is retired.
                .chain(
                    members
                        .iter()
                        .map(|m| m.node_id)
                        .filter(|id| !state.removed_nodes.contains(id)),
                )
                .collect();
            let after = page
                .after
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            let rows = ids.range((after, std::ops::Bound::Unbounded)).map(|&id| {
                let gossip = members.iter().find(|m| m.node_id == id);
                (id, node_info(id, state, &status, gossip))
            });
            let (rows, token) = page.cut(rows);
            (rows, state.revision, token)
        }))
    }

    async fn row(&self, node_id: u64) -> Result<pb::NodeInfo, Status> {
        validate::node_id(node_id).map_err(Error::from)?;
        let only = PageRequest {
            after: node_id.checked_sub(1),
            items_max: 1,
        };
        let (rows, _, _) = self.rows(&only).await?;
        rows.into_iter()
            .find(|row| row.node_id == node_id)
            .ok_or_else(|| Status::not_found(format!("no node {node_id}")))
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn list(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let request = request.into_inner();
        let page = PageRequest::new(request.limit, &request.page_token)?;
        let (nodes, revision, next_page_token) = self.rows(&page).await?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            revision,
            next_page_token,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        Ok(Response::new(self.row(request.into_inner().node_id).await?))
    }

    async fn set_eligibility(
        &self,
        request: Request<pb::SetEligibilityRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let requester = super::requester(&request);
        let request = request.into_inner();
        validate::node_id(request.node_id).map_err(Error::from)?;
        self.raft
            .propose_for(
                Command::SetNodeEligibility {
                    node_id: request.node_id,
                    eligible: request.eligible,
                },
                requester,
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(self.row(request.node_id).await?))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let requester = super::requester(&request);
        let request = request.into_inner();
        validate::node_id(request.node_id).map_err(Error::from)?;
        let deadline_ms = match request.deadline_ms {
            0 => DRAIN_DEADLINE_MS_DEFAULT,
            ms if ms > DRAIN_DEADLINE_MS_MAX => {
                return Err(Status::invalid_argument(format!(
                    "drain deadline {ms} ms exceeds the maximum of {DRAIN_DEADLINE_MS_MAX} ms"
                )))
            }
            ms => ms,
        };
        let now = blixard_api::unix_ms_now();
        self.raft
            .propose_for(
                Command::DrainNode {
                    node_id: request.node_id,
                    at_unix_ms: now,
                    deadline_unix_ms: now + deadline_ms,
                },
                requester,
            )
            .await
            .map_err(Error::from)?;
        Ok(Response::new(self.row(request.node_id).await?))
    }
}
