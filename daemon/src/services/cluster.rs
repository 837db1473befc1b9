//! The `Cluster` service: status, join, node removal, settings, events.

use crate::handle::ClusterHandle;
use std::pin::Pin;
use std::sync::Arc;

use blixard_api::{pb, tls, validate};
use blixard_consensus::{
    ClusterState, Command, JoinTokenRefusal, MembershipChange, RaftStatus, SettingsUpdate,
    StateEvent,
};
use blixard_membership::Membership;
use futures::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::{lease, streams, Caller};
use crate::controllers::autopilot::{self, JoinAs, Joined};
use crate::convert::{event_to_pb, host_to_pb, settings_to_pb};
use crate::Error;

pub struct ClusterService {
    /// This node's cluster id (its data directory's).
    pub cluster_id: String,
    pub raft: ClusterHandle,
    pub membership: Arc<Membership>,
    pub join_lock: tokio::sync::Mutex<()>,
    /// Set on nodes holding the CA key (they issue certificates).
    pub issuer: Option<crate::security::Issuer>,
    /// How this node's certificate is renewed (`None` with security off).
    pub renewal: Option<Arc<crate::security::Renewal>>,
    /// The node's watch and follow streams.
    pub streams: super::streams::StreamSlots,
}

/// Signatures made at once; more wait their turn (a flood must not take
/// every core). Held only while signing.
static SIGNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// How long a request waits for a signing slot before it is refused.
const SIGNING_WAIT_MS: u64 = 5_000;
/// Read barriers for join tokens this node does not know yet, at once;
/// past that an unknown token is refused at once.
static UNKNOWN_TOKEN_BARRIERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs `sign` holding a [`SIGNING`] slot.
async fn signing<T>(sign: impl FnOnce() -> T) -> Result<T, Status> {
    let _slot = tokio::time::timeout(
        std::time::Duration::from_millis(SIGNING_WAIT_MS),
        SIGNING.acquire(),
    )
    .await
    .map_err(|_| Status::resource_exhausted("too many signing requests; retry shortly"))?
    .map_err(|_| Status::unavailable("this node is shutting down"))?;
    Ok(sign())
}

impl ClusterService {
    /// Spends a join token on a certificate: checked against the state
    /// (after a read barrier, so a token made a moment ago is known)
    /// before anything is signed, signed, then spent through the log;
    /// the certificate is handed out only once the spend is committed.
    async fn issue(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Result<pb::IssueCertificateResponse, Status> {
        let requester = super::requester(&request);
        let request = request.into_inner();
        let Some(issuer) = &self.issuer else {
            return Err(Status::failed_precondition(
                "this node holds no CA key ([tls] ca_key_file): join through a voter that does",
            ));
        };
        if !self.raft.is_member() {
            return Err(Status::failed_precondition(
                "this node is a worker: join through a voter holding the CA key",
            ));
        }
        validate::node_id(request.node_id).map_err(Error::from)?;
        if request.csr_pem.len() > CSR_LEN_MAX {
            return Err(Status::invalid_argument(format!(
                "a signing request of {} bytes; at most {CSR_LEN_MAX}",
                request.csr_pem.len()
            )));
        }
        let refused = |detail: String| Status::unauthenticated(detail);
        let unknown = || refused(JoinTokenRefusal::Unknown.to_string());
        let accessor = crate::tokens::join_token_accessor(&request.join_token)
            .ok_or_else(unknown)?
            .to_string();
        let presented = crate::tokens::hash(&request.join_token);
        let known = || {
            self.raft.read_state(|s| {
                s.join_tokens
                    .get(&accessor)
                    .is_some_and(|t| t.secret_sha256 == presented)
            })
        };
        // A token made a moment ago may not be applied here yet: only then
        // is the leader asked, and only a few callers at a time, so made-up
        // tokens cost nothing but a local lookup.
        if !known() {
            let Ok(_barrier) = UNKNOWN_TOKEN_BARRIERS.try_acquire() else {
                return Err(unknown());
            };
            self.raft.read_barrier().await.map_err(Error::from)?;
            if !known() {
                return Err(unknown());
            }
        }
        // Signing proves the request parses and names its key; nothing is
        // handed out unless the spend below commits.
        let signed = signing(|| tls::sign_node_csr(&issuer.ca, request.node_id, &request.csr_pem))
            .await?
            .map_err(|e| Status::invalid_argument(format!("signing request: {e}")))?;
        let at_unix_ms = blixard_api::unix_ms_now();
        self.raft
            .read_state(|s| {
                s.join_token_spend(&accessor, request.node_id, &signed.key_sha256, at_unix_ms)
            })
            .map_err(|refusal| refused(refusal.to_string()))?;
        self.raft
            .propose_for(
                Command::UseJoinToken {
                    accessor,
                    node_id: request.node_id,
                    key_sha256: signed.key_sha256,
                    at_unix_ms,
                },
                requester,
            )
            .await
            .map_err(|e| match e {
                blixard_consensus::Error::Rejected(rejection) => refused(rejection.to_string()),
                other => Status::from(Error::from(other)),
            })?;
        tracing::info!(
            node_id = request.node_id,
            "issued a certificate for a join token"
        );
        Ok(pb::IssueCertificateResponse {
            cert_pem: signed.cert_pem,
            ca_pem: issuer.ca.cert_pem.clone(),
            gossip_keys: issuer.gossip_keys.clone(),
        })
    }
}

impl ClusterService {
    /// A certificate for `node_id`'s new key from the first other voter
    /// that holds the CA key (workers never hold it).
    /// Has a voter holding the CA key sign this node's renewal, with the
    /// token of the admin who asked for it (a node's certificate alone,
    /// or a copy of its key, renews nothing).
    async fn signed_by_a_peer(
        &self,
        node_id: u64,
        csr_pem: String,
        authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> Result<(String, u64), Status> {
        let voters = self.raft.status().member_ids();
        let peers: Vec<(u64, String)> = self.raft.read_state(|s| {
            s.nodes
                .values()
                .filter(|n| n.node_id != node_id && voters.contains(&n.node_id))
                .map(|n| (n.node_id, n.address.clone()))
                .collect()
        });
        let mut answers = Vec::new();
        for (peer, address) in peers {
            let channel = match crate::mirror::connect_for_calls(&address, Some(peer)).await {
                Ok(channel) => channel,
                Err(e) => {
                    answers.push(format!("node {peer}: {e}"));
                    continue;
                }
            };
            let mut request = Request::new(pb::SignCertificateRequest {
                csr_pem: csr_pem.clone(),
            });
            if let Some(authorization) = &authorization {
                request
                    .metadata_mut()
                    .insert(super::AUTHORIZATION, authorization.clone());
            }
            let signed = pb::cluster_client::ClusterClient::new(channel)
                .sign_certificate(request)
                .await;
            match signed {
                Ok(signed) => return Ok((signed.into_inner().cert_pem, peer)),
                Err(status) => answers.push(format!("node {peer}: {}", status.message())),
            }
        }
        Err(Status::unavailable(format!(
            "no voter holding the CA key signed the new certificate ({})",
            match answers.is_empty() {
                true => "no other voter is known".to_string(),
                false => answers.join("; "),
            }
        )))
    }
}

/// The metadata key of a worker's join refusal naming the voter to ask.
pub const JOIN_VIA: &str = "blixard-join-via";
/// With [`JOIN_VIA`]: that voter's node id, so the joiner accepts only its
/// certificate there.
pub const JOIN_VIA_NODE: &str = "blixard-join-via-node";

/// How often a renewed node asks to retire its old certificates, and how
/// long it waits between asks.
const RETIRE_ATTEMPTS_MAX: u32 = 10;
const RETIRE_RETRY_MS: u64 = 300;

/// A join token lives this long unless asked otherwise.
const JOIN_TOKEN_TTL_MS_DEFAULT: u64 = 3_600_000;
/// The largest signing request taken (one key, no extensions to speak of).
const CSR_LEN_MAX: usize = 8 * 1024;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ClusterEvent, Status>> + Send>>;

/// Gossip addresses of the members this node sees alive (itself
/// included), never a removed node's.
async fn gossip_seeds(membership: &Membership, raft: &ClusterHandle) -> Vec<String> {
    let alive = membership.members().await;
    raft.read_state(|s| {
        alive
            .into_iter()
            .filter(|m| m.alive && !s.removed_nodes.contains(&m.node_id))
            .map(|m| m.gossip_address.to_string())
            .collect()
    })
}

/// How long a leadership transfer may take before removal gives up.
const LEADERSHIP_TRANSFER_TIMEOUT_MS: u64 = 10_000;
const LEADERSHIP_POLL_INTERVAL_MS: u64 = 20;

impl ClusterService {
    /// A worker does not pass joins on (its certificate would vouch for
    /// a node it cannot check): it names the voter it follows, in
    /// [`JOIN_VIA`], for the joiner to ask itself.
    fn redirect_join(&self) -> Status {
        let upstream = self.raft.mirror().upstream();
        let Some(address) = upstream.address else {
            return Status::unavailable(
                "this worker is not connected to a voter yet; retry or join through a voter",
            );
        };
        let mut status = Status::failed_precondition(format!(
            "this node is a worker; join through a voter: {address}"
        ));
        if let Ok(value) = address.parse() {
            status.metadata_mut().insert(JOIN_VIA, value);
        }
        if let Some(value) = upstream.node_id.and_then(|id| id.to_string().parse().ok()) {
            status.metadata_mut().insert(JOIN_VIA_NODE, value);
        }
        status
    }

    /// If `node_id` leads, hands leadership to another voter (this node
    /// when it is one: it is alive, since it is serving this request) and
    /// waits until another node leads.
    async fn move_leadership_off(&self, node_id: u64) -> Result<(), Status> {
        let status = self.raft.status();
        if status.leader_id != node_id {
            return Ok(());
        }
        let me = status.node_id;
        let me_is_voter = status.members.iter().any(|m| m.node_id == me && m.voter);
        let to = (me != node_id && me_is_voter).then_some(me);
        let transferee = self
            .raft
            .transfer_leadership(to)
            .await
            .map_err(Error::from)?;
        let polls = LEADERSHIP_TRANSFER_TIMEOUT_MS / LEADERSHIP_POLL_INTERVAL_MS;
        for _ in 0..polls {
            let leader = self.raft.status().leader_id;
            if leader != 0 && leader != node_id {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(
                LEADERSHIP_POLL_INTERVAL_MS,
            ))
            .await;
        }
        Err(Status::unavailable(format!(
            "leadership did not move from node {node_id} to node {transferee} within {LEADERSHIP_TRANSFER_TIMEOUT_MS} ms; retry"
        )))
    }
}

pub fn members_to_pb(status: &RaftStatus, state: &ClusterState) -> Vec<pb::Member> {
    status
        .members
        .iter()
        .map(|m| pb::Member {
            host: state
                .nodes
                .get(&m.node_id)
                .and_then(|n| n.host.as_ref())
                .map(host_to_pb),
            node_id: m.node_id,
            address: m.address.clone(),
            role: if m.voter {
                pb::MemberRole::Voter
            } else {
                pb::MemberRole::Learner
            } as i32,
        })
        .collect()
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.raft.status();
        let revision = self.raft.read_state(|s| s.revision);
        Ok(Response::new(pb::StatusResponse {
            node_id: status.node_id,
            leader_id: status.leader_id,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            raft_role: status.role.as_str().to_string(),
            members: self.raft.read_state(|state| members_to_pb(&status, state)),
            revision,
            first_log_index: status.first_log_index,
            gossip_address: self.membership.gossip_address().to_string(),
            gossip_seeds: gossip_seeds(&self.membership, &self.raft).await,
            node_role: self.raft.node_role().as_str().into(),
            feed_source: match self.raft.is_member() {
                true => String::new(),
                false => self.raft.mirror().upstream().address.unwrap_or_default(),
            },
            cluster_name: self.membership.cluster_name().to_string(),
            cluster_id: self.cluster_id.clone(),
        }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let caller = super::require_node(&request, "Cluster.Join")?;
        let requester = super::requester(&request);
        let request = request.into_inner();
        validate::node_id(request.node_id).map_err(Error::from)?;
        validate::address(&request.address).map_err(Error::from)?;
        super::same_cluster(&self.cluster_id, &request.cluster_id, "joining node")?;
        if self
            .raft
            .read_state(|s| s.removed_nodes.contains(&request.node_id))
        {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster; join with a new node id (and its own \
                 certificate)",
                request.node_id
            )));
        }
        // A node joins as itself, and only as itself.
        if let Some(caller) = caller.filter(|caller| *caller != request.node_id) {
            return Err(Status::permission_denied(format!(
                "node {caller}'s certificate cannot join the cluster as node {}",
                request.node_id
            )));
        }
        if !self.raft.is_member() {
            return Err(self.redirect_join());
        }
        // One join at a time on this node, so two joiners cannot both
        // take the last seat among the voters-to-be.
        let _serialized = self.join_lock.lock().await;
        self.raft.read_barrier().await.map_err(Error::from)?;
        // Again, as of the barrier: a removal this node had not applied
        // when the join arrived must still keep the id out.
        if self
            .raft
            .read_state(|s| s.removed_nodes.contains(&request.node_id))
        {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster; join with a new node id",
                request.node_id
            )));
        }
        let (known, wanted_members) = self.raft.read_state(|s| {
            (
                s.nodes.get(&request.node_id).map(|n| n.address.clone()),
                s.settings.voters as usize,
            )
        });
        let status = self.raft.status();
        let is_member = status.members.iter().any(|m| m.node_id == request.node_id);
        let decision = autopilot::join_as(
            request.node_id,
            &request.address,
            known.as_deref(),
            is_member,
            status.members.len(),
            wanted_members,
        )
        .map_err(|taken| Status::already_exists(taken.to_string()))?;
        let role = match decision {
            JoinAs::Already(Joined::Learner) => "learner",
            JoinAs::Already(Joined::Worker) => "worker",
            JoinAs::Learner => {
                self.raft
                    .change_membership(MembershipChange::AddLearner {
                        node_id: request.node_id,
                        address: request.address,
                    })
                    .await
                    .map_err(Error::from)?;
                // The raft status is published after the loop's iteration;
                // the next join (waiting on the lock) must count this one.
                for _ in 0..(LEADERSHIP_TRANSFER_TIMEOUT_MS / LEADERSHIP_POLL_INTERVAL_MS) {
                    let members = self.raft.status().members;
                    if members.iter().any(|m| m.node_id == request.node_id) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(
                        LEADERSHIP_POLL_INTERVAL_MS,
                    ))
                    .await;
                }
                "learner"
            }
            JoinAs::Worker => {
                self.raft
                    .propose_for(
                        Command::RegisterWorker {
                            node_id: request.node_id,
                            address: request.address,
                        },
                        requester,
                    )
                    .await
                    .map_err(Error::from)?;
                "worker"
            }
        };
        let status = self.raft.status();
        Ok(Response::new(pb::JoinResponse {
            members: self.raft.read_state(|state| members_to_pb(&status, state)),
            leader_id: status.leader_id,
            gossip_seeds: gossip_seeds(&self.membership, &self.raft).await,
            role: role.into(),
        }))
    }

    async fn get_settings(
        &self,
        _request: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        self.raft.read_barrier().await.map_err(Error::from)?;
        let settings = self.raft.read_state(|s| s.settings.clone());
        Ok(Response::new(settings_to_pb(&settings)))
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        let requester = super::requester(&request);
        let update = request.into_inner();
        // Merged when it applies: two operators changing different
        // settings at once both get their change.
        let update = SettingsUpdate {
            voters: update.voters,
            dead_voter_after_ms: update.dead_voter_after_ms,
            lost_after_ms: update.lost_after_ms,
            replace_lost: update.replace_lost,
        };
        let command = Command::UpdateSettings { update };
        blixard_consensus::validate::command(&command)
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))?;
        self.raft
            .propose_for(command, requester)
            .await
            .map_err(Error::from)?;
        // The settings as of this update or later: the proposal returns
        // once this node (a worker's copy too) has applied it, and a
        // failed read must not report a change that took effect as failed.
        let settings = self.raft.read_state(|s| s.settings.clone());
        Ok(Response::new(settings_to_pb(&settings)))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request_from = request.remote_addr().map(|a| a.ip());
        let request = request.into_inner();
        let slot = self.streams.take(request_from)?;
        // Subscribe before reading the backlog so nothing falls between.
        let mut events = self.raft.subscribe();
        let recent = self.raft.recent_events();
        let skip = recent.len().saturating_sub(request.recent_max as usize);
        let backlog: Vec<pb::ClusterEvent> = recent[skip..].iter().map(event_to_pb).collect();
        let mut last_seq = recent.last().map_or(0, |r| r.seq);
        let (tx, stream) = streams::channel(slot);
        let follow = request.follow;
        let raft = self.raft.clone();
        tokio::spawn(async move {
            for event in backlog {
                if !tx.send(Ok(event)).await {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let received = tokio::select! {
                    () = tx.closed() => return,
                    received = events.recv() => received,
                };
                let item = match received {
                    Ok(StateEvent::Cluster(record)) if record.seq > last_seq => {
                        last_seq = record.seq;
                        Ok(event_to_pb(&record))
                    }
                    // The state was replaced (a snapshot), or this node
                    // switched between member and worker: follow the
                    // state now served, and send what it holds past the
                    // last event sent (subscribed first: nothing between).
                    Ok(StateEvent::Reset { .. }) => {
                        // One source for both (membership may switch).
                        let published = raft.published();
                        events = published.subscribe();
                        for record in published.recent_events() {
                            if record.seq > last_seq {
                                last_seq = record.seq;
                                if !tx.send(Ok(event_to_pb(&record))).await {
                                    return;
                                }
                            }
                        }
                        continue;
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => Err(Status::data_loss(
                        format!("follower fell {missed} events behind; follow again"),
                    )),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !tx.send(item).await {
                    return;
                }
            }
        });
        Ok(Response::new(lease::while_token_valid(
            caller.as_ref(),
            self.raft.clone(),
            stream,
        )))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let requester = super::requester(&request);
        let ttl_ms = match request.into_inner().ttl_ms {
            0 => JOIN_TOKEN_TTL_MS_DEFAULT,
            ms => ms,
        };
        let now = blixard_api::unix_ms_now();
        let made = crate::tokens::generate_join_token(now, now.saturating_add(ttl_ms));
        let command = Command::CreateJoinToken {
            token: made.token.clone(),
        };
        blixard_consensus::validate::command(&command)
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))?;
        self.raft
            .propose_for(command, requester)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            join_token: made.secret,
            accessor: made.token.accessor,
            expires_at_unix_ms: made.token.expires_at_unix_ms,
        }))
    }

    async fn issue_certificate(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssueCertificateResponse>, Status> {
        // Anyone may ask: every refusal is logged (rate-limited) here, as
        // the interceptor logs its own.
        let from = request.remote_addr();
        let answer = self.issue(request).await;
        if let Err(status) = &answer {
            super::note_refusal("/blixard.v1.Cluster/IssueCertificate", from, status);
        }
        answer.map(Response::new)
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let requester = super::requester(&request);
        let node_id = request.get_ref().node_id;
        validate::node_id(node_id).map_err(Error::from)?;
        let Some(renewal) = &self.renewal else {
            return Err(Status::failed_precondition(
                "security is off ([security] insecure = true): no certificate to renew",
            ));
        };
        if node_id != renewal.node_id {
            // Passed on with the client's token: a node's certificate
            // alone renews nothing.
            let address = self
                .raft
                .read_state(|s| s.nodes.get(&node_id).map(|n| n.address.clone()))
                .ok_or_else(|| Status::not_found(format!("node {node_id} is not a member")))?;
            let channel = crate::mirror::connect_for_calls(&address, Some(node_id))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let mut forwarded = Request::new(request.into_inner());
            if let Some(authorization) = requester.authorization {
                forwarded
                    .metadata_mut()
                    .insert(super::AUTHORIZATION, authorization);
            }
            return pb::cluster_client::ClusterClient::new(channel)
                .renew_certificate(forwarded)
                .await;
        }
        let Ok(_running) = renewal.running.try_lock() else {
            return Err(Status::aborted(format!(
                "node {node_id} is renewing its certificate already"
            )));
        };
        let (csr_pem, key_pem) =
            tls::create_node_csr().map_err(|e| Status::internal(e.to_string()))?;
        // Only a voter records what it signs itself (a worker holding the
        // CA key asks a voter, as any worker does).
        let self_signer = renewal.issuer.as_ref().filter(|_| self.raft.is_member());
        let (cert_pem, signed_by) = match self_signer {
            Some(issuer) => {
                let signed = tls::sign_node_csr(&issuer.ca, node_id, &csr_pem)
                    .map_err(|e| Status::internal(e.to_string()))?;
                // As a peer signing it would: the pair is accepted before
                // the new one is used.
                self.raft
                    .propose_for(
                        Command::AcceptNodeCertificate {
                            node_id,
                            presented_sha256: renewal.live.current_sha256(),
                            issued_sha256: tls::fingerprint_sha256(&signed.cert_pem)
                                .map_err(|e| Status::internal(e.to_string()))?,
                        },
                        requester.clone(),
                    )
                    .await
                    .map_err(Error::from)?;
                (signed.cert_pem, node_id)
            }
            None => {
                self.signed_by_a_peer(node_id, csr_pem, requester.authorization.clone())
                    .await?
            }
        };
        let node = tls::CertifiedKey { cert_pem, key_pem };
        renewal
            .install(&node)
            .map_err(|e| Status::internal(e.to_string()))?;
        let cert_sha256 =
            tls::fingerprint_sha256(&node.cert_pem).map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(%cert_sha256, signed_by, "renewed this node's certificate");
        // Served and dialled with from now on: every older certificate of
        // this node (a copy of its old key included) is refused from here.
        // Retried: the voter a worker hands this to may not have applied
        // the signer's acceptance of the new certificate yet.
        let retire = Command::RetireNodeCertificates {
            node_id,
            keep_sha256: cert_sha256.clone(),
        };
        let mut attempt = 1;
        while let Err(error) = self
            .raft
            .propose_for(retire.clone(), requester.clone())
            .await
        {
            if attempt == RETIRE_ATTEMPTS_MAX {
                return Err(Status::unavailable(format!(
                    "node {node_id} serves its new certificate {}…, but its old one is still \
                     accepted: {error} (run rotate-certs for it again)",
                    &cert_sha256[..16]
                )));
            }
            attempt += 1;
            tokio::time::sleep(std::time::Duration::from_millis(RETIRE_RETRY_MS)).await;
        }
        Ok(Response::new(pb::RenewCertificateResponse {
            node_id,
            cert_sha256,
            signed_by,
        }))
    }

    async fn sign_certificate(
        &self,
        request: Request<pb::SignCertificateRequest>,
    ) -> Result<Response<pb::SignCertificateResponse>, Status> {
        // The rule lets only nodes in, by their certificate; the new one
        // names the id the old one proves.
        let (Some(Caller::Node(node_id)), Some(presented)) = (
            request.extensions().get::<Caller>().cloned(),
            request
                .extensions()
                .get::<super::PresentedCertificate>()
                .cloned(),
        ) else {
            return Err(Status::permission_denied(
                "only a node renews its own certificate",
            ));
        };
        // Renewing is an admin's decision: a copy of a node's key alone
        // must not get a certificate the state then accepts.
        let hash = super::bearer_hash(request.metadata())?;
        let requester = super::requester(&request);
        let Some(issuer) = &self.issuer else {
            return Err(Status::failed_precondition(
                "this node holds no CA key ([tls] ca_key_file)",
            ));
        };
        let csr_pem = request.into_inner().csr_pem;
        if csr_pem.len() > CSR_LEN_MAX {
            return Err(Status::invalid_argument(format!(
                "a signing request of {} bytes; at most {CSR_LEN_MAX}",
                csr_pem.len()
            )));
        }
        // The interceptor checked the caller against this node's copy of
        // the removed ids; a removal committed a moment ago is seen after
        // a barrier.
        self.raft.read_barrier().await.map_err(Error::from)?;
        let verdict = self.raft.read_state(|s| {
            super::certificate_refusal(s, &presented).map_or_else(
                || {
                    super::token_verdict(
                        s,
                        &hash,
                        super::rules::Permission::ClusterAdmin,
                        "a certificate renewal",
                    )
                },
                Err,
            )
        })?;
        let super::Caller::Client { accessor, .. } = verdict else {
            unreachable!("a token's verdict is a client");
        };
        let mut requester = requester;
        requester.audit.actor = blixard_consensus::audit::Actor::Token { accessor };
        requester.audit.relayed_by = Some(node_id);
        let signed = signing(|| tls::sign_node_csr(&issuer.ca, node_id, &csr_pem))
            .await?
            .map_err(|e| Status::invalid_argument(format!("signing request: {e}")))?;
        // The node is accepted with the certificate it asked with and the
        // new one until it retires the old; handed out only once that is
        // committed (apply refuses a presented certificate since retired).
        self.raft
            .propose_for(
                Command::AcceptNodeCertificate {
                    node_id,
                    presented_sha256: presented.sha256,
                    issued_sha256: tls::fingerprint_sha256(&signed.cert_pem)
                        .map_err(|e| Status::internal(e.to_string()))?,
                },
                requester,
            )
            .await
            .map_err(Error::from)?;
        tracing::info!(node_id, "signed a renewed certificate");
        Ok(Response::new(pb::SignCertificateResponse {
            cert_pem: signed.cert_pem,
        }))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        self.raft.read_barrier().await.map_err(Error::from)?;
        let now = blixard_api::unix_ms_now();
        let join_tokens = self.raft.read_state(|s| {
            s.join_tokens
                .values()
                .filter(|t| t.expires_at_unix_ms > now)
                .map(|t| pb::JoinTokenInfo {
                    accessor: t.accessor.clone(),
                    created_at_unix_ms: t.created_at_unix_ms,
                    expires_at_unix_ms: t.expires_at_unix_ms,
                    spent_on_node_id: t.spent.as_ref().map(|spent| spent.node_id),
                })
                .collect()
        });
        Ok(Response::new(pb::ListJoinTokensResponse { join_tokens }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let requester = super::requester(&request);
        let command = Command::RevokeJoinToken {
            accessor: request.into_inner().accessor,
        };
        blixard_consensus::validate::command(&command)
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))?;
        let applied = self
            .raft
            .propose_for(command, requester)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::RevokeJoinTokenResponse {
            revision: applied.revision,
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let requester = super::requester(&request);
        let request = request.into_inner();
        let node_id = request.node_id;
        validate::node_id(node_id).map_err(Error::from)?;
        if !self.raft.is_member() {
            let upstream = self.raft.mirror().upstream();
            let Some(address) = upstream.address else {
                return Err(Status::unavailable(
                    "this worker is not connected to a voter yet; retry through a voter",
                ));
            };
            let channel = crate::mirror::connect(&address, upstream.node_id)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            // With the client's token: a worker's certificate alone
            // removes nothing.
            let mut forwarded = Request::new(request);
            if let Some(authorization) = requester.authorization {
                forwarded
                    .metadata_mut()
                    .insert(super::AUTHORIZATION, authorization);
            }
            return pb::cluster_client::ClusterClient::new(channel)
                .remove_node(forwarded)
                .await;
        }
        self.raft.read_barrier().await.map_err(Error::from)?;
        let is_member = self
            .raft
            .status()
            .members
            .iter()
            .any(|m| m.node_id == node_id);
        // A node given a certificate that never joined is retired the way
        // a worker is: by id, so its certificate is refused from now on.
        let is_worker = self.raft.read_state(|s| {
            s.nodes.contains_key(&node_id)
                || (s.issued_node_ids.contains(&node_id) && !s.removed_nodes.contains(&node_id))
        });
        match (is_member, is_worker) {
            (true, _) => {
                self.move_leadership_off(node_id).await?;
                self.raft
                    .change_membership(MembershipChange::Remove { node_id })
                    .await
                    .map_err(Error::from)?;
            }
            (false, true) => {
                self.raft
                    .propose_for(Command::UnregisterWorker { node_id }, requester)
                    .await
                    .map_err(Error::from)?;
            }
            (false, false) => {
                return Err(Status::not_found(format!("node {node_id} is not a member")));
            }
        }
        Ok(Response::new(pb::RemoveNodeResponse {
            members: {
                let status = self.raft.status();
                self.raft.read_state(|state| members_to_pb(&status, state))
            },
        }))
    }
}
