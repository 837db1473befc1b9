//! The daemon's one way to the cluster state: through the local raft loop
//! on raft members (voters and learners), through a voter on workers,
//! which hold no raft log.
//!
//! Invariants: a worker's reads come from its mirror, and a worker's
//! read barrier and writes return only once the mirror has reached the
//! voter's revision, so a worker reads its own writes and linearizable
//! reads stay linearizable; membership changes are only made on members.

use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb;
use blixard_api::pb::state_feed_client::StateFeedClient;
use blixard_consensus::audit::AuditContext;
use blixard_consensus::{
    Applied, ClusterState, Command, Error, EventRecord, HistoryTooOld, MembershipChange, Published,
    RaftHandle, RaftStatus, Rejection, Result, Resume, Role, StateEvent, VmRecord,
};
use blixard_membership::NodeRole;
use tokio::sync::broadcast;

use crate::mirror::{self, Mirror};

/// Who asked for a change, as the node that took the request knows it.
#[derive(Clone)]
pub struct Requester {
    /// Recorded in the audit trail (never a secret).
    pub audit: AuditContext,
    /// The client's `authorization` header, for a worker to hand on.
    pub authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Requester {
    // Never print a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("audit", &self.audit)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct ClusterHandle {
    raft: RaftHandle,
    mirror: Arc<Mirror>,
    request_timeout: Duration,
    /// Sent with each call to a voter, which refuses another cluster's.
    cluster_id: Arc<str>,
}

impl ClusterHandle {
    pub fn new(
        raft: RaftHandle,
        mirror: Arc<Mirror>,
        request_timeout: Duration,
        cluster_id: String,
    ) -> Self {
        Self {
            raft,
            mirror,
            request_timeout,
            cluster_id: cluster_id.into(),
        }
    }

    /// The raft loop itself (for the peer transport and the state feed).
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    pub fn is_member(&self) -> bool {
        mirror::is_member(&self.raft)
    }

    pub fn node_role(&self) -> NodeRole {
        let status = self.raft.status();
        match status.members.iter().find(|m| m.node_id == status.node_id) {
            Some(m) if m.voter => NodeRole::Voter,
            Some(_) => NodeRole::Learner,
            None => NodeRole::Worker,
        }
    }

    /// On members, raft's own status; on workers, the feeding voter's
    /// view of raft with this node's id and no log of its own.
    pub fn status(&self) -> RaftStatus {
        let status = self.raft.status();
        if self.is_member() {
            return status;
        }
        let upstream = self.mirror.upstream();
        RaftStatus {
            node_id: status.node_id,
            leader_id: upstream.leader_id,
            term: upstream.term,
            commit_index: 0,
            applied_index: 0,
            first_log_index: 0,
            role: Role::Follower,
            members: upstream.members,
        }
    }

    /// The state this node serves: its raft loop's while it is a member,
    /// its mirror's while it is a worker.
    pub fn published(&self) -> &Published {
        match self.is_member() {
            true => self.raft.published(),
            false => self.mirror.published(),
        }
    }

    pub fn read_state<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        self.published().read(read)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.published().subscribe()
    }

    /// The VM changes applied after revision `after`, from this node's
    /// history (`blixard_consensus::history`).
    pub fn vm_changes_since(&self, after: u64) -> Result<Resume, HistoryTooOld> {
        self.published().vm_changes_since(after)
    }

    /// Every VM change up to this revision has been sent to subscribers.
    pub fn vm_changes_published(&self) -> u64 {
        self.published().vm_changes_published()
    }

    pub fn recent_events(&self) -> Vec<EventRecord> {
        self.published().recent_events()
    }

    pub async fn change_membership(&self, change: MembershipChange) -> Result<Applied> {
        self.raft.change_membership(change).await
    }

    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<u64> {
        self.raft.transfer_leadership(to).await
    }

    /// Proposes one of the cluster's own decisions (no client asked).
    pub async fn propose(&self, command: Command) -> Result<Applied> {
        self.propose_by(command, None).await
    }

    /// Proposes a command a client asked for: the audit trail records who
    /// once it is accepted. A worker hands it to a voter with the client's
    /// token, which the voter checks again.
    pub async fn propose_for(&self, command: Command, requester: Requester) -> Result<Applied> {
        self.propose_by(command, Some(requester)).await
    }

    async fn propose_by(&self, command: Command, requester: Option<Requester>) -> Result<Applied> {
        if self.is_member() {
            let audit = requester.map(|r| r.audit);
            return self.raft.propose_audited(command, audit).await;
        }
        let mut client = self.feed_client().await?;
        let mut request = tonic::Request::new(pb::ProposeRequest {
            command: command.encode(),
            audit: requester
                .as_ref()
                .map(|r| serde_json::to_vec(&r.audit).expect("audit contexts serialize"))
                .unwrap_or_default(),
            cluster_id: self.cluster_id.to_string(),
        });
        if let Some(authorization) = requester.and_then(|r| r.authorization) {
            request
                .metadata_mut()
                .insert(crate::services::AUTHORIZATION, authorization);
        }
        let response = client
            .propose(request)
            .await
            .map_err(|s| self.forward_error(s))?
            .into_inner();
        let vm = match response.outcome {
            Some(pb::propose_response::Outcome::Rejection(bytes)) => {
                let rejection: Rejection =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        what: "rejection",
                        detail: e.to_string(),
                    })?;
                return Err(Error::Rejected(rejection));
            }
            Some(pb::propose_response::Outcome::AppliedVm(bytes)) if !bytes.is_empty() => Some(
                serde_json::from_slice::<VmRecord>(&bytes).map_err(|e| Error::Corrupt {
                    what: "VM record",
                    detail: e.to_string(),
                })?,
            ),
            _ => None,
        };
        self.wait_mirror(response.revision).await?;
        Ok(Applied {
            revision: response.revision,
            vm,
        })
    }

    /// See [`RaftHandle::read_barrier`]; on workers the mirror catches up
    /// to a voter's read point.
    pub async fn read_barrier(&self) -> Result<()> {
        if self.is_member() {
            return self.raft.read_barrier().await;
        }
        let mut client = self.feed_client().await?;
        let response = client
            .barrier(pb::BarrierRequest {
                cluster_id: self.cluster_id.to_string(),
            })
            .await
            .map_err(|s| self.forward_error(s))?
            .into_inner();
        self.wait_mirror(response.revision).await
    }

    async fn wait_mirror(&self, revision: u64) -> Result<()> {
        match self.mirror.wait_for(revision, self.request_timeout).await {
            true => Ok(()),
            false => Err(Error::Timeout {
                timeout_ms: self.request_timeout.as_millis() as u64,
            }),
        }
    }

    /// A client of the voter this worker follows or, when that one does
    /// not answer, of the next voter it knows of (nothing was sent to a
    /// voter that could not be connected to, so trying another is safe).
    async fn feed_client(&self) -> Result<StateFeedClient<tonic::transport::Channel>> {
        let upstream = self.mirror.upstream();
        let Some(address) = upstream.address.clone() else {
            return Err(Error::Unreachable {
                detail: "this worker is not following any voter yet".into(),
            });
        };
        let others = upstream
            .members
            .iter()
            .filter(|m| m.voter && !m.address.is_empty() && m.address != address)
            .map(|m| (m.address.clone(), Some(m.node_id)))
            .collect::<Vec<_>>();
        let mut failures = Vec::new();
        for (address, node_id) in std::iter::once((address, upstream.node_id)).chain(others) {
            match mirror::connect_for_calls(&address, node_id).await {
                Ok(channel) => {
                    return Ok(StateFeedClient::new(channel)
                        .max_encoding_message_size(crate::transport::RAFT_MESSAGE_BYTES_MAX)
                        .max_decoding_message_size(crate::transport::RAFT_MESSAGE_BYTES_MAX))
                }
                Err(error) => failures.push(error.to_string()),
            }
        }
        Err(Error::Unreachable {
            detail: failures.join("; "),
        })
    }

    fn forward_error(&self, status: tonic::Status) -> Error {
        match status.code() {
            tonic::Code::DeadlineExceeded => Error::Timeout {
                timeout_ms: self.request_timeout.as_millis() as u64,
            },
            tonic::Code::ResourceExhausted => Error::Busy { queued_max: 0 },
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled => Error::Unreachable {
                detail: status.message().to_string(),
            },
            code => Error::Refused {
                code: code as i32,
                message: status.message().to_string(),
            },
        }
    }
}
