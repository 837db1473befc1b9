//! The cloneable handle through which the rest of the daemon talks to the
//! raft loop, and the state the loop publishes for readers.
//!
//! Invariant: the published `ClusterState` is always the state at the
//! published `applied_index`; readers take the lock briefly and never hold
//! it across `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use raft::prelude::Message;
use raft::StateRole;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::audit::AuditContext;
use crate::command::{Applied, Command, EventRecord, Transition, VmChange};
use crate::published::Published;
use crate::state::ClusterState;
use crate::{Error, Result};

/// Bound on client requests queued for the raft loop.
pub const REQUESTS_QUEUED_MAX: usize = 4096;
/// Bound on peer messages queued for the raft loop; raft tolerates drops.
pub const MESSAGES_QUEUED_MAX: usize = 4096;
/// How often a request refused for want of a leader is sent again.
const NO_LEADER_RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// Watchers that fall this far behind must resynchronise. One leader pass
/// may commit 4096 placements and one command create 1000 VMs, so a
/// watcher keeping up must be able to take a couple of such bursts.
pub const VM_EVENTS_BUFFERED_MAX: usize = 8192;
/// Transitions kept for workers that reconnect: one further behind gets a
/// snapshot instead.
pub const FEED_RETAINED_MAX: usize = 4096;

/// A change to the membership, proposed as a raft `ConfChangeV2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner {
        node_id: u64,
        address: String,
    },
    /// A voter becomes a learner (it stays a member and keeps its VMs).
    Demote {
        node_id: u64,
    },
    Remove {
        node_id: u64,
    },
}

pub(crate) enum Request {
    Propose {
        /// Boxed: commands vary widely in size.
        command: Box<Command>,
        /// Who asked, when a client did (recorded in the audit trail).
        audit: Option<Box<AuditContext>>,
        reply: oneshot::Sender<Result<Applied>>,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: oneshot::Sender<Result<Applied>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Ask raft to hand leadership to `to` (or, on the leader, to its most
    /// caught-up other voter); answers with the chosen node.
    TransferLeader {
        to: Option<u64>,
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// One member as the raft configuration sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub node_id: u64,
    pub address: String,
    pub voter: bool,
}

/// What this node knows of raft, published after every loop iteration.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub node_id: u64,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_log_index: u64,
    pub role: Role,
    pub members: Vec<MemberStatus>,
}

impl RaftStatus {
    /// The raft members' ids (voters and learners).
    pub fn member_ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.node_id).collect()
    }
}

/// raft-rs's `StateRole`, owned so the status is `Default` and printable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    Candidate,
    PreCandidate,
    Leader,
}

impl From<StateRole> for Role {
    fn from(role: StateRole) -> Self {
        match role {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Leader => "leader",
        }
    }
}

/// A VM change with the revision after it, as watchers receive it.
#[derive(Debug, Clone)]
pub enum StateEvent {
    Vm {
        change: Arc<VmChange>,
        revision: u64,
    },
    /// The whole state was replaced (a snapshot, or the node switched
    /// between raft member and worker): re-read everything.
    Reset { revision: u64 },
    /// Something happened to the cluster (placement, loss, drain, ...).
    /// Sent after the state holds it, so a subscriber that then reads the
    /// state's events and skips those numbered up to the last it read
    /// misses none and sees none twice.
    Cluster(Arc<EventRecord>),
}

/// Sends each of `records` (just recorded in the state) to `events`'
/// subscribers.
pub fn publish_events(events: &broadcast::Sender<StateEvent>, records: Vec<EventRecord>) {
    for record in records {
        // Events have their own stream (`blixard events`); at thousands
        // of writes a second an info line each would drown the log.
        tracing::debug!(
            kind = record.event.kind.as_str(),
            revision = record.revision,
            "{}",
            record.event.message
        );
        let _ = events.send(StateEvent::Cluster(Arc::new(record)));
    }
}

/// What a voter tells the workers it feeds.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// The transition that produced `revision`.
    Transition {
        revision: u64,
        transition: Arc<Transition>,
    },
    /// The state was replaced by a snapshot: followers must start over.
    Reset,
}

pub(crate) struct Shared {
    /// The state as this node applied it, and its watchers.
    pub(crate) published: Published,
    pub(crate) status: RwLock<RaftStatus>,
    /// The last transitions applied, oldest first, for reconnecting workers.
    pub(crate) feed: Mutex<VecDeque<(u64, Arc<Transition>)>>,
    pub(crate) feed_events: broadcast::Sender<FeedEvent>,
}

impl Shared {
    pub(crate) fn new(state: ClusterState, status: RaftStatus) -> Self {
        Self {
            published: Published::new(state),
            status: RwLock::new(status),
            feed: Mutex::new(VecDeque::with_capacity(FEED_RETAINED_MAX)),
            feed_events: broadcast::channel(VM_EVENTS_BUFFERED_MAX).0,
        }
    }

    pub(crate) fn record_transition(&self, revision: u64, transition: Transition) {
        let transition = Arc::new(transition);
        let mut feed = self.feed.lock().expect("feed lock poisoned");
        if let Some((last, _)) = feed.back() {
            assert_eq!(revision, last + 1, "feed revisions must be consecutive");
        }
        if feed.len() == FEED_RETAINED_MAX {
            feed.pop_front();
        }
        feed.push_back((revision, transition.clone()));
        let _ = self.feed_events.send(FeedEvent::Transition {
            revision,
            transition,
        });
    }

    pub(crate) fn reset_feed(&self) {
        self.feed.lock().expect("feed lock poisoned").clear();
        let _ = self.feed_events.send(FeedEvent::Reset);
    }
}

/// Cheap to clone; every clone talks to the same raft loop.
#[derive(Clone)]
pub struct RaftHandle {
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) messages: mpsc::Sender<(Message, String)>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) request_timeout: Duration,
}

impl RaftHandle {
    /// Proposes a command; returns once it is committed and applied here,
    /// with the result of applying it.
    pub async fn propose(&self, command: Command) -> Result<Applied> {
        self.propose_audited(command, None).await
    }

    /// Proposes a command a client asked for (`audit` says who): once
    /// accepted, the audit trail records it.
    pub async fn propose_audited(
        &self,
        command: Command,
        audit: Option<AuditContext>,
    ) -> Result<Applied> {
        self.while_no_leader(|reply| Request::Propose {
            command: Box::new(command.clone()),
            audit: audit.clone().map(Box::new),
            reply,
        })
        .await
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Applied> {
        self.while_no_leader(|reply| Request::ChangeMembership {
            change: change.clone(),
            reply,
        })
        .await
    }

    /// Starts a leadership transfer to `to`, or (when this node leads and
    /// `to` is `None`) to the most caught-up other voter. Returns the
    /// transferee; the transfer itself completes asynchronously (watch
    /// `status().leader_id`).
    pub async fn transfer_leadership(&self, to: Option<u64>) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::TransferLeader { to, reply })?;
        self.wait(answer).await?
    }

    /// Waits until this node has applied everything committed before the
    /// call (raft ReadIndex), so a following read of the state is
    /// linearizable. Works on followers too.
    pub async fn read_barrier(&self) -> Result<()> {
        self.while_no_leader(|reply| Request::ReadIndex { reply })
            .await
    }

    /// Sends a request, and sends it again while the answer is `NoLeader`
    /// (an election is under way), until the request timeout. Safe: a
    /// request refused for want of a leader was never appended to the log.
    async fn while_no_leader<T>(
        &self,
        request: impl Fn(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(request(reply))?;
            match self.wait(answer).await? {
                Err(Error::NoLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(NO_LEADER_RETRY_INTERVAL).await;
                }
                other => return other,
            }
        }
    }

    /// The applied state (after `read_barrier` for linearizability) and
    /// its watchers.
    pub fn published(&self) -> &Published {
        &self.shared.published
    }

    /// Reads the applied state (after `read_barrier` for linearizability).
    pub fn read_state<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        self.shared.published.read(read)
    }

    /// Subscribes to the transitions this node applies, and returns the
    /// retained ones (oldest first) taken after subscribing, so nothing
    /// falls between the two.
    pub fn feed(&self) -> (Vec<(u64, Arc<Transition>)>, broadcast::Receiver<FeedEvent>) {
        let receiver = self.shared.feed_events.subscribe();
        let retained = self
            .shared
            .feed
            .lock()
            .expect("feed lock poisoned")
            .iter()
            .cloned()
            .collect();
        (retained, receiver)
    }

    pub fn status(&self) -> RaftStatus {
        self.shared
            .status
            .read()
            .expect("status lock poisoned")
            .clone()
    }

    /// Hands a message from a peer (and the address it says it serves on)
    /// to the loop; drops it when the queue is full (raft retransmits).
    pub fn step(&self, message: Message, from_address: String) -> Result<()> {
        match self.messages.try_send((message, from_address)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::Busy {
                queued_max: MESSAGES_QUEUED_MAX,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::Stopped),
        }
    }

    fn send(&self, request: Request) -> Result<()> {
        self.requests.try_send(request).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Busy {
                queued_max: REQUESTS_QUEUED_MAX,
            },
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })
    }

    async fn wait<T>(&self, answer: oneshot::Receiver<T>) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout {
                timeout_ms: self.request_timeout.as_millis() as u64,
            }),
        }
    }
}
