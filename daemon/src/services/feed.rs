//! The `StateFeed` service: how a voter (any raft member) feeds workers.
//!
//! Invariant: a subscriber receives either a snapshot or the transition
//! of exactly its revision + 1, in order, so it can check each step.

use std::pin::Pin;

use blixard_api::pb;
use blixard_consensus::audit::{Actor, AuditContext};
use blixard_consensus::{Command, FeedEvent, RaftHandle, Transition};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::rules::Permission;
use crate::mirror::is_member;
use crate::Error;

/// Items buffered per subscriber between the state and its stream.
const FEED_ITEMS_BUFFERED_MAX: usize = 256;

pub struct FeedService {
    /// This node's cluster id: a worker of another cluster is refused.
    pub cluster_id: String,
    pub raft: RaftHandle,
}

/// The largest audit context a worker may relay (an accessor and an
/// address, in JSON).
const AUDIT_CONTEXT_LEN_MAX: usize = 512;

type FeedStream = Pin<Box<dyn Stream<Item = Result<pb::FeedItem, Status>> + Send>>;

fn transition_item(revision: u64, transition: &Transition) -> pb::FeedItem {
    pb::FeedItem {
        revision,
        item: Some(pb::feed_item::Item::Transition(
            serde_json::to_vec(transition).expect("transitions serialize"),
        )),
    }
}

fn snapshot_item(raft: &RaftHandle) -> (u64, pb::FeedItem) {
    raft.read_state(|state| {
        let item = pb::FeedItem {
            revision: state.revision,
            item: Some(pb::feed_item::Item::Snapshot(state.encode())),
        };
        (state.revision, item)
    })
}

impl FeedService {
    fn require_member(&self) -> Result<(), Status> {
        match is_member(&self.raft) {
            true => Ok(()),
            false => Err(Status::failed_precondition(
                "this node holds no raft log (it is a worker); ask a voter",
            )),
        }
    }
}

/// What a worker may forward.
#[derive(Debug, PartialEq, Eq)]
enum Forward {
    /// A client's write: only with that client's token, allowing this.
    Client(Permission),
    /// The worker's report about itself.
    Report,
}

/// Whether a worker may forward `command`: the client writes a worker's
/// services make and the two reports a worker makes about itself. The
/// leader's decisions (placement, loss, drains ending) and membership
/// are never forwarded; node reports may not speak for a raft member,
/// which proposes its own.
fn forwardable(command: &Command, members: &[u64]) -> Result<Forward, NotForwardable> {
    match command {
        Command::CreateVm { .. }
        | Command::SetVmDesiredState { .. }
        | Command::DeleteVm { .. }
        | Command::SetReplicas { .. }
        | Command::CreateGroup { .. }
        | Command::ScaleGroup { .. } => Ok(Forward::Client(Permission::VmWrite)),
        Command::SetNodeEligibility { .. } | Command::DrainNode { .. } => {
            Ok(Forward::Client(Permission::NodeWrite))
        }
        // A renewed worker retires its old certificates itself, with the
        // token of the admin who asked for the renewal.
        Command::SetSettings { .. }
        | Command::UpdateSettings { .. }
        | Command::RetireNodeCertificates { .. } => Ok(Forward::Client(Permission::ClusterAdmin)),
        Command::CreateToken { .. }
        | Command::RevokeToken { .. }
        | Command::CreateJoinToken { .. }
        | Command::RevokeJoinToken { .. }
        | Command::CreateRole { .. }
        | Command::DeleteRole { .. } => Ok(Forward::Client(Permission::AclAdmin)),
        // A worker pins the certificate it serves (checked by the caller
        // to be the one it presents).
        Command::SetHostFacts { node_id, .. }
        | Command::ReportVm { node_id, .. }
        | Command::PinNodeCertificate { node_id, .. } => match members.contains(node_id) {
            true => Err(NotForwardable::Member(*node_id)),
            false => Ok(Forward::Report),
        },
        Command::SetNodeAddress { .. }
        | Command::AssignVm { .. }
        | Command::MarkUnplaceable { .. }
        | Command::MarkVmLost { .. }
        | Command::FinishDrain { .. }
        | Command::RegisterWorker { .. }
        | Command::UnregisterWorker { .. }
        | Command::UseJoinToken { .. }
        | Command::AcceptNodeCertificate { .. } => {
            Err(NotForwardable::MembersDecide(command.kind()))
        }
    }
}

/// Why a worker may not forward a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NotForwardable {
    #[error("node {0} is a raft member: it reports for itself")]
    Member(u64),
    #[error("{0} is decided by the cluster's members, never forwarded by a worker")]
    MembersDecide(&'static str),
}

#[tonic::async_trait]
impl pb::state_feed_server::StateFeed for FeedService {
    type SubscribeStream = FeedStream;

    async fn subscribe(
        &self,
        request: Request<pb::FeedRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let subscriber = super::require_node(&request, "StateFeed.Subscribe")?;
        let presented = request
            .extensions()
            .get::<super::PresentedCertificate>()
            .cloned();
        self.require_member()?;
        let request = request.into_inner();
        super::same_cluster(&self.cluster_id, &request.cluster_id, "worker")?;
        let from_revision = request.from_revision;
        let (retained, mut events) = self.raft.feed();
        let raft = self.raft.clone();
        let (tx, rx) = mpsc::channel(FEED_ITEMS_BUFFERED_MAX);
        tokio::spawn(async move {
            // Catch up: the retained transitions if they reach back to the
            // subscriber's revision, a snapshot otherwise.
            let reaches_back = retained
                .first()
                .is_some_and(|(first, _)| *first <= from_revision.saturating_add(1))
                && from_revision > 0;
            let mut sent = if reaches_back {
                let mut sent = from_revision;
                for (revision, transition) in retained.iter().filter(|(r, _)| *r > from_revision) {
                    if tx
                        .send(Ok(transition_item(*revision, transition)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent = *revision;
                }
                sent
            } else {
                let current = raft.read_state(|s| s.revision);
                // A subscriber at or ahead of this node (which may lag)
                // waits for the transitions it lacks.
                if current <= from_revision && from_revision > 0 {
                    from_revision
                } else {
                    let (revision, item) = snapshot_item(&raft);
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                    revision
                }
            };
            loop {
                let item = match events.recv().await {
                    Ok(FeedEvent::Transition {
                        revision,
                        transition,
                    }) => {
                        if revision <= sent {
                            continue;
                        }
                        if Some(revision) != sent.checked_add(1) {
                            // A transition fell between the snapshot and
                            // the subscription: start the follower over.
                            let (revision, item) = snapshot_item(&raft);
                            sent = revision;
                            item
                        } else {
                            sent = revision;
                            transition_item(revision, &transition)
                        }
                    }
                    Ok(FeedEvent::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (revision, item) = snapshot_item(&raft);
                        sent = revision;
                        item
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        let stream: FeedStream = Box::pin(ReceiverStream::new(rx));
        let (Some(_), Some(presented)) = (subscriber, presented) else {
            return Ok(Response::new(stream));
        };
        // A node removed from the cluster, or one whose certificate a
        // renewal retired, stops receiving the state on that connection.
        let raft = self.raft.clone();
        Ok(Response::new(super::lease::while_allowed(
            stream,
            move || raft.read_state(|s| super::certificate_refusal(s, &presented)),
        )))
    }

    async fn propose(
        &self,
        request: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let caller = super::require_node(&request, "StateFeed.Propose")?;
        self.require_member()?;
        let presented = request
            .extensions()
            .get::<super::PresentedCertificate>()
            .cloned();
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        super::same_cluster(&self.cluster_id, &request.cluster_id, "proposing node")?;
        let command = Command::decode(&request.command)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The worker's word for who asked it, recorded as relayed by it.
        let audit = match request.audit.as_slice() {
            [] => None,
            bytes if bytes.len() > AUDIT_CONTEXT_LEN_MAX => {
                return Err(Status::invalid_argument(format!(
                    "an audit context of {} bytes; at most {AUDIT_CONTEXT_LEN_MAX}",
                    bytes.len()
                )))
            }
            bytes => {
                let mut audit: AuditContext = serde_json::from_slice(bytes).map_err(|e| {
                    Status::invalid_argument(format!("undecodable audit context: {e}"))
                })?;
                audit.relayed_by = caller;
                Some(audit)
            }
        };
        // A worker reports only about itself, retires only its own
        // certificates and pins only the one it presents.
        if let (
            Some(caller),
            Command::SetHostFacts { node_id, .. }
            | Command::ReportVm { node_id, .. }
            | Command::RetireNodeCertificates { node_id, .. }
            | Command::PinNodeCertificate { node_id, .. },
        ) = (caller, &command)
        {
            if *node_id != caller {
                return Err(Status::permission_denied(format!(
                    "node {caller} cannot {} for node {node_id}",
                    command.kind()
                )));
            }
        }
        if let Command::PinNodeCertificate {
            certificate_sha256, ..
        } = &command
        {
            if caller.is_some() && presented.as_ref().map(|p| &p.sha256) != Some(certificate_sha256)
            {
                return Err(Status::permission_denied(
                    "a node pins only the certificate it presents",
                ));
            }
        }
        let members = self.raft.status().member_ids();
        let forward = forwardable(&command, &members)
            .map_err(|e| Status::permission_denied(e.to_string()))?;

        blixard_consensus::validate::command(&command)
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))?;
        // A client's write comes with the client's token, which must allow
        // it here too: a worker's certificate alone writes nothing, and the
        // trail names the token this node checked.
        let audit = match (forward, caller) {
            (Forward::Client(permission), Some(worker)) => {
                let hash = super::bearer_hash(&metadata)?;
                let verdict = self.raft.read_state(|state| {
                    super::token_verdict(state, &hash, permission, command.kind())
                })?;
                let super::Caller::Client { accessor, .. } = verdict else {
                    unreachable!("a token's verdict is a client");
                };
                let mut audit = audit.unwrap_or_else(|| AuditContext {
                    actor: Actor::Anonymous,
                    at_unix_ms: blixard_api::unix_ms_now(),
                    from: String::new(),
                    relayed_by: None,
                });
                audit.actor = Actor::Token { accessor };
                audit.relayed_by = Some(worker);
                Some(audit)
            }
            // A worker's reports about itself are the cluster's own
            // business: no one asked for them, and a worker's word for who
            // did never enters the trail unchecked.
            (Forward::Report, Some(_)) => None,
            (_, None) => audit,
        };
        let response = match self.raft.propose_audited(command, audit).await {
            Ok(applied) => pb::ProposeResponse {
                revision: applied.revision,
                outcome: Some(pb::propose_response::Outcome::AppliedVm(
                    applied
                        .vm
                        .map(|vm| serde_json::to_vec(&vm).expect("VM records serialize"))
                        .unwrap_or_default(),
                )),
            },
            Err(blixard_consensus::Error::Rejected(rejection)) => pb::ProposeResponse {
                revision: 0,
                outcome: Some(pb::propose_response::Outcome::Rejection(
                    serde_json::to_vec(&rejection).expect("rejections serialize"),
                )),
            },
            Err(error) => return Err(Error::from(error).into()),
        };
        Ok(Response::new(response))
    }

    async fn barrier(
        &self,
        request: Request<pb::BarrierRequest>,
    ) -> Result<Response<pb::BarrierResponse>, Status> {
        super::require_node(&request, "StateFeed.Barrier")?;
        self.require_member()?;
        super::same_cluster(&self.cluster_id, &request.get_ref().cluster_id, "node")?;
        self.raft.read_barrier().await.map_err(Error::from)?;
        Ok(Response::new(pb::BarrierResponse {
            revision: self.raft.read_state(|s| s.revision),
            leader_id: self.raft.status().leader_id,
        }))
    }
}
