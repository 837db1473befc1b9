//! A worker's replica of the cluster state, fed by a voter over the
//! `StateFeed` stream instead of the raft log.
//!
//! Invariants: the mirror only moves forward by a snapshot or by the
//! transition of exactly its revision + 1, so it always equals the state
//! the voters held at its revision; any gap or mismatch drops the stream
//! and the next subscription resumes from the mirror's revision (or
//! starts over from a snapshot when the voter no longer has it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use blixard_api::pb;
use blixard_api::pb::state_feed_client::StateFeedClient;
use blixard_consensus::{ClusterState, MemberStatus, Published, RaftHandle, Transition};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::shutdown::Shutdown;

const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Forwarded writes and barriers answer within the voter's own request
/// timeout; this bounds a call to a voter that went silent.
const CALL_TIMEOUT_MS: u64 = 15_000;
const KEEPALIVE_INTERVAL_MS: u64 = 1_000;
const KEEPALIVE_TIMEOUT_MS: u64 = 1_000;
/// How long a feed may stay silent before the worker asks again: voters
/// send nothing while nothing changes, so this is a liveness check of the
/// voter (by a Status call), not of the stream.
const UPSTREAM_CHECK_INTERVAL_MS: u64 = 1_000;
const RESUBSCRIBE_DELAY_MS: u64 = 200;

/// Where a worker may follow the state from: an address, and the node it
/// must be when known (its certificate is checked for that node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feeder {
    pub address: String,
    pub node_id: Option<u64>,
}

/// What a worker knows of raft from the voter that feeds it.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub address: Option<String>,
    /// The feeding node: the id it was dialled by, else the one it
    /// reports (a claim only: a connection pinned to it fails closed if
    /// the claim was false).
    pub node_id: Option<u64>,
    pub leader_id: u64,
    pub term: u64,
    pub members: Vec<MemberStatus>,
}

pub struct Mirror {
    /// Set when the mirror must be replaced by a snapshot (its replay went
    /// out of step): the next subscription asks for revision 0.
    needs_snapshot: AtomicBool,
    /// The replica and its watchers.
    published: Published,
    revision: watch::Sender<u64>,
    upstream: Mutex<Upstream>,
    /// When a voter with a leader last confirmed this mirror's feed.
    confirmed_at: Mutex<Option<tokio::time::Instant>>,
    /// The last refusal logged (each new one is logged once, not at every
    /// retry).
    last_refusal: Mutex<String>,
}

impl Default for Mirror {
    fn default() -> Self {
        Self {
            needs_snapshot: AtomicBool::new(false),
            published: Published::new(ClusterState::default()),
            revision: watch::channel(0).0,
            upstream: Mutex::new(Upstream::default()),
            confirmed_at: Mutex::new(None),
            last_refusal: Mutex::new(String::new()),
        }
    }
}

impl Mirror {
    /// The replica and its watchers (served while this node is a worker).
    pub fn published(&self) -> &Published {
        &self.published
    }

    pub fn read<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        self.published.read(read)
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Replaces the mirror with a member's own state, when this node stops
    /// being a raft member: the mirror starts where raft left off rather
    /// than from whatever it held before.
    pub fn seed(&self, seed: ClusterState) {
        let mut state = self.published.state_mut();
        if seed.revision < state.revision {
            return;
        }
        *state = seed;
        self.published.restart_history(state.revision);
        self.revision.send_replace(state.revision);
    }

    /// How long since a voter with a leader last confirmed the feed
    /// (`None`: never), i.e. how stale the mirror may be.
    pub fn unconfirmed_for(&self) -> Option<Duration> {
        self.confirmed_at
            .lock()
            .expect("confirmation lock poisoned")
            .map(|at| at.elapsed())
    }

    pub fn upstream(&self) -> Upstream {
        self.upstream
            .lock()
            .expect("upstream lock poisoned")
            .clone()
    }

    /// Waits until the mirror holds `revision` (or later).
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> bool {
        let mut watcher = self.revision.subscribe();
        tokio::time::timeout(timeout, watcher.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Applies one feed item; an error means the stream must start over.
    fn apply(&self, item: pb::FeedItem) -> Result<(), OutOfStep> {
        let mut state = self.published.state_mut();
        match item.item {
            Some(pb::feed_item::Item::Snapshot(bytes)) => {
                let snapshot =
                    ClusterState::decode(&bytes).map_err(|e| OutOfStep::Undecodable {
                        what: "snapshot",
                        detail: e.to_string(),
                    })?;
                if snapshot.revision != item.revision {
                    return Err(OutOfStep::SnapshotRevision {
                        claims: item.revision,
                        holds: snapshot.revision,
                    });
                }
                let starting_over = self.needs_snapshot.swap(false, Ordering::Relaxed);
                if snapshot.revision < state.revision && !starting_over {
                    return Err(OutOfStep::OlderSnapshot {
                        snapshot: snapshot.revision,
                        mirror: state.revision,
                    });
                }
                tracing::info!(revision = item.revision, "mirror: snapshot");
                *state = snapshot;
                self.published.restart_history(item.revision);
            }
            Some(pb::feed_item::Item::Transition(bytes)) => {
                if item.revision <= state.revision {
                    return Ok(());
                }
                if Some(item.revision) != state.revision.checked_add(1) {
                    return Err(OutOfStep::Gap {
                        to: item.revision,
                        after: state.revision,
                    });
                }
                let transition: Transition =
                    serde_json::from_slice(&bytes).map_err(|e| OutOfStep::Undecodable {
                        what: "transition",
                        detail: e.to_string(),
                    })?;
                let outcome = state.replay(transition);
                if state.revision != item.revision {
                    return Err(OutOfStep::Replay {
                        reached: state.revision,
                        expected: item.revision,
                        result: format!("{:?}", outcome.result),
                    });
                }
                self.published
                    .publish(item.revision, outcome.vm_changes, outcome.recorded);
            }
            None => return Err(OutOfStep::Empty),
        }
        self.revision.send_replace(state.revision);
        Ok(())
    }
}

/// Why a feed item cannot follow what the mirror holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfStep {
    #[error("undecodable {what}: {detail}")]
    Undecodable { what: &'static str, detail: String },
    #[error("snapshot claims revision {claims} but holds {holds}")]
    SnapshotRevision { claims: u64, holds: u64 },
    #[error("snapshot at revision {snapshot} is older than the mirror's {mirror}")]
    OlderSnapshot { snapshot: u64, mirror: u64 },
    #[error("transition to revision {to} after {after}")]
    Gap { to: u64, after: u64 },
    #[error("replay reached revision {reached} instead of {expected} ({result})")]
    Replay {
        reached: u64,
        expected: u64,
        result: String,
    },
    #[error("empty feed item")]
    Empty,
}

/// Why no channel to a peer was made.
#[derive(Debug, thiserror::Error)]
pub enum PeerConnectError {
    #[error("{address}: {source}")]
    Failed {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("{address}: no answer within {timeout_ms} ms")]
    Silent { address: String, timeout_ms: u64 },
}

/// A channel to `address` (node `node_id`'s certificate only, when
/// given) for node-to-node calls: bounded connect and call times, and
/// HTTP/2 pings so a silent peer breaks the channel.
pub async fn connect(address: &str, node_id: Option<u64>) -> Result<Channel, PeerConnectError> {
    let failed = |source| PeerConnectError::Failed {
        address: address.to_string(),
        source,
    };
    let endpoint = blixard_api::connect::installed()
        .endpoint_for(address, node_id)
        .map_err(failed)?
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true);
    connect_within(address, endpoint).await
}

/// Like [`connect`], with a deadline on every call (not for streams).
pub async fn connect_for_calls(
    address: &str,
    node_id: Option<u64>,
) -> Result<Channel, PeerConnectError> {
    let endpoint = blixard_api::connect::installed()
        .endpoint_for(address, node_id)
        .map_err(|source| PeerConnectError::Failed {
            address: address.to_string(),
            source,
        })?
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS));
    connect_within(address, endpoint).await
}

/// Connects within [`CONNECT_TIMEOUT_MS`], handshakes included: a peer
/// that accepts TCP but answers nothing (stopped, or its host cut off
/// after the kernel queued the connection) fails here, not at the first
/// call's deadline.
async fn connect_within(
    address: &str,
    endpoint: tonic::transport::Endpoint,
) -> Result<Channel, PeerConnectError> {
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    match tokio::time::timeout(timeout, endpoint.connect_timeout(timeout).connect()).await {
        Ok(connected) => connected.map_err(|source| PeerConnectError::Failed {
            address: address.to_string(),
            source,
        }),
        Err(_) => Err(PeerConnectError::Silent {
            address: address.to_string(),
            timeout_ms: CONNECT_TIMEOUT_MS,
        }),
    }
}

/// Whether this node's raft loop holds the state (it is a raft member).
pub fn is_member(raft: &RaftHandle) -> bool {
    let status = raft.status();
    status.members.iter().any(|m| m.node_id == status.node_id)
}

/// Keeps the mirror following a voter while this node is not a raft
/// member. `candidates` gives the feeders to try, in order.
pub async fn run(
    mirror: std::sync::Arc<Mirror>,
    raft: RaftHandle,
    cluster_id: String,
    candidates: impl Fn() -> Vec<Feeder>,
    mut stop: Shutdown,
) {
    let mut attempt = 0usize;
    let mut was_member = false;
    loop {
        if stop.is_stopping() {
            return;
        }
        let member = is_member(&raft);
        // Watches follow one source of the state: each switch ends those
        // of the other (they watch again, from the source now serving).
        if was_member && !member {
            tracing::info!("no longer a raft member; following the state as a worker");
            mirror.seed(raft.read_state(|s| s.clone()));
            raft.published().end_watches();
        }
        if member && !was_member {
            mirror.published().end_watches();
        }
        was_member = member;
        if !member {
            let feeders = candidates();
            if !feeders.is_empty() {
                let feeder = &feeders[attempt % feeders.len()];
                attempt += 1;
                follow(&mirror, &raft, &cluster_id, feeder, &mut stop).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_DELAY_MS)) => {}
            _ = stop.stopped() => return,
        }
    }
}

/// Follows one voter's feed until it fails, this node becomes a member,
/// or `stop`.
async fn follow(
    mirror: &Mirror,
    raft: &RaftHandle,
    cluster_id: &str,
    feeder: &Feeder,
    stop: &mut Shutdown,
) {
    let address = feeder.address.as_str();
    let channel = match connect(address, feeder.node_id).await {
        Ok(channel) => channel,
        Err(error) => {
            tracing::debug!(%error, "mirror: cannot reach feed");
            return;
        }
    };
    let from_revision = match mirror.needs_snapshot.load(Ordering::Relaxed) {
        true => 0,
        false => mirror.revision(),
    };
    // A snapshot of the whole state comes as one message (the voter sends
    // up to the raft message bound).
    let mut feed = StateFeedClient::new(channel.clone())
        .max_decoding_message_size(crate::transport::RAFT_MESSAGE_BYTES_MAX);
    let mut cluster = pb::cluster_client::ClusterClient::new(channel);
    let subscribe = tokio::time::timeout(
        Duration::from_millis(UPSTREAM_CHECK_INTERVAL_MS * 3),
        feed.subscribe(pb::FeedRequest {
            from_revision,
            cluster_id: cluster_id.to_string(),
        }),
    );
    let mut stream = match subscribe.await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            let refused = status.code() == tonic::Code::PermissionDenied;
            let mut last = mirror.last_refusal.lock().expect("refusal lock poisoned");
            if refused && *last != status.message() {
                // Not a passing failure: this node is not let in.
                tracing::warn!(%address, "mirror: feed refused: {}", status.message());
                *last = status.message().to_string();
            } else {
                tracing::debug!(%address, error = status.message(), "mirror: feed refused");
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%address, "mirror: feed did not answer");
            return;
        }
    };
    tracing::info!(%address, from_revision, "mirror: following");
    let mut check = tokio::time::interval(Duration::from_millis(UPSTREAM_CHECK_INTERVAL_MS));
    loop {
        tokio::select! {
            item = stream.message() => match item {
                Ok(Some(item)) => {
                    if let Err(error) = mirror.apply(item) {
                        // Starting over from a snapshot also heals a mirror
                        // whose replay disagrees with the voters'.
                        tracing::warn!(%error, "mirror: feed out of step; starting over from a snapshot");
                        mirror.needs_snapshot.store(true, Ordering::Relaxed);
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::debug!(%address, "mirror: feed ended");
                    return;
                }
            },
            _ = check.tick() => {
                if is_member(raft) {
                    tracing::info!("now a raft member; the mirror stops following");
                    return;
                }
                let status = tokio::time::timeout(
                    Duration::from_millis(UPSTREAM_CHECK_INTERVAL_MS),
                    cluster.status(pb::StatusRequest {}),
                )
                .await;
                let Ok(Ok(status)) = status else {
                    tracing::debug!(%address, "mirror: feeding node stopped answering");
                    return;
                };
                let status = status.into_inner();
                // A feeder that lost its quorum (or its membership) sends
                // nothing and answers nothing useful: find another.
                if status.leader_id == 0 || status.node_role == "worker" {
                    tracing::info!(%address, "mirror: feeding node has no leader; switching");
                    return;
                }
                *mirror.confirmed_at.lock().expect("confirmation lock poisoned") =
                    Some(tokio::time::Instant::now());
                *mirror.upstream.lock().expect("upstream lock poisoned") = Upstream {
                    address: Some(address.to_string()),
                    node_id: feeder
                        .node_id
                        .or((status.node_id != 0).then_some(status.node_id)),
                    leader_id: status.leader_id,
                    term: status.term,
                    members: status
                        .members
                        .iter()
                        .map(|m| MemberStatus {
                            node_id: m.node_id,
                            address: m.address.clone(),
                            voter: m.role() == pb::MemberRole::Voter,
                        })
                        .collect(),
                };
            }
            _ = stop.stopped() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_consensus::Command;

    fn snapshot(state: &ClusterState) -> pb::FeedItem {
        pb::FeedItem {
            revision: state.revision,
            item: Some(pb::feed_item::Item::Snapshot(state.encode())),
        }
    }

    fn transition(revision: u64, transition: &Transition) -> pb::FeedItem {
        pb::FeedItem {
            revision,
            item: Some(pb::feed_item::Item::Transition(
                serde_json::to_vec(transition).unwrap(),
            )),
        }
    }

    fn added(node_id: u64) -> Transition {
        Transition::MemberAdded {
            node_id,
            address: format!("n{node_id}:1"),
            at_unix_ms: Some(node_id),
        }
    }

    #[test]
    fn the_mirror_moves_only_by_snapshot_or_the_next_transition() {
        let mut voter = ClusterState::default();
        voter.replay(added(1));
        let mirror = Mirror::default();
        mirror.apply(snapshot(&voter)).unwrap();
        assert_eq!(mirror.revision(), 1);

        for id in [2, 3] {
            voter.replay(added(id));
            mirror
                .apply(transition(voter.revision, &added(id)))
                .unwrap();
        }
        assert_eq!(mirror.read(|s| s.clone()), voter);
        // A repeat is ignored; a gap is refused and changes nothing.
        mirror.apply(transition(3, &added(3))).unwrap();
        let gap = mirror.apply(transition(9, &added(9)));
        assert_eq!(gap, Err(OutOfStep::Gap { to: 9, after: 3 }));
        assert_eq!(mirror.read(|s| s.clone()), voter);

        // An older snapshot is refused unless the mirror is starting over.
        let mut old = ClusterState::default();
        old.replay(added(1));
        assert!(mirror.apply(snapshot(&old)).is_err());
        mirror.needs_snapshot.store(true, Ordering::Relaxed);
        mirror.apply(snapshot(&old)).unwrap();
        assert_eq!(mirror.revision(), 1);
    }

    #[test]
    fn a_replay_that_disagrees_is_refused() {
        let mirror = Mirror::default();
        // Deleting a VM that does not exist is refused by the state
        // machine, so it cannot be the transition of any revision.
        let bogus = Transition::Command {
            command: Box::new(Command::DeleteVm { name: "x".into() }),
            audit: None,
            at_unix_ms: None,
        };
        let error = mirror.apply(transition(1, &bogus)).unwrap_err().to_string();
        assert!(
            error.contains("replay reached revision 0 instead of 1"),
            "{error}"
        );
    }
}
