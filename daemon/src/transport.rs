//! The Raft peer transport over gRPC: one long-lived client stream per peer.
//!
//! Invariants: sending never blocks the raft loop (each peer has a bounded
//! queue, overflow is dropped and raft retransmits); messages to one peer
//! leave in the order the loop produced them; a broken stream is re-opened
//! after a jittered, capped exponential wait (`blixard_api::backoff`).

use std::collections::HashMap;
use std::time::Duration;

use blixard_api::backoff::Backoff;
use blixard_api::pb;
use blixard_api::pb::raft_transport_client::RaftTransportClient;
use blixard_consensus::{RaftMessage, Transport};
use protobuf::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Messages queued for one peer before new ones are dropped.
const PEER_MESSAGES_QUEUED_MAX: usize = 1024;
const PEER_STREAM_BUFFER: usize = 64;
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// HTTP/2 pings on idle and busy streams: a peer that stops answering
/// (cut off, not closed) is noticed within interval + timeout and the
/// stream re-opened, instead of waiting out TCP's retransmission backoff.
const KEEPALIVE_INTERVAL_MS: u64 = 1_000;
const KEEPALIVE_TIMEOUT_MS: u64 = 1_000;
const RECONNECT_BACKOFF_MS_MIN: u64 = 20;
const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// A stream that lived this long resets the reconnect backoff.
const STREAM_HELD_MS: u64 = 10_000;
/// Snapshots carry the whole cluster state in one message.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

struct Peer {
    address: String,
    queue: mpsc::Sender<pb::RaftMessage>,
}

/// Implements [`Transport`] for the raft loop.
pub struct GrpcTransport {
    /// This node's own address, sent with every message.
    own_address: String,
    /// This node's cluster id, sent with every message.
    cluster_id: String,
    peers: HashMap<u64, Peer>,
    dropped_messages: u64,
    /// The runtime peer streams run on: the one the transport was made on,
    /// not the raft loop's own (which blocks in fsync).
    #[cfg(not(madsim))]
    runtime: tokio::runtime::Handle,
}

impl GrpcTransport {
    /// Must be called on the runtime that should carry the peer streams.
    pub fn new(own_address: String, cluster_id: String) -> Self {
        Self {
            own_address,
            cluster_id,
            peers: HashMap::new(),
            dropped_messages: 0,
            #[cfg(not(madsim))]
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn spawn_peer(&self, to: u64, address: &str, outbound: mpsc::Receiver<pb::RaftMessage>) {
        let task = run_peer(to, address.to_string(), outbound);
        #[cfg(not(madsim))]
        self.runtime.spawn(task);
        #[cfg(madsim)]
        tokio::spawn(task);
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, to: u64, address: &str, message: RaftMessage) {
        let stale = self.peers.get(&to).is_some_and(|p| p.address != address);
        if stale {
            // Dropping the old sender ends the old peer task.
            self.peers.remove(&to);
        }
        if !self.peers.contains_key(&to) {
            let (queue, outbound) = mpsc::channel(PEER_MESSAGES_QUEUED_MAX);
            self.spawn_peer(to, address, outbound);
            let peer = Peer {
                address: address.to_string(),
                queue,
            };
            self.peers.insert(to, peer);
        }
        let peer = &self.peers[&to];
        let bytes = message
            .write_to_bytes()
            .expect("raft messages always encode");
        if peer
            .queue
            .try_send(pb::RaftMessage {
                message: bytes,
                from_address: self.own_address.clone(),
                cluster_id: self.cluster_id.clone(),
            })
            .is_err()
        {
            self.dropped_messages += 1;
            if self.dropped_messages.is_power_of_two() {
                tracing::warn!(
                    to,
                    dropped_total = self.dropped_messages,
                    "peer queue full; dropping raft messages"
                );
            }
        }
    }

    fn reset(&mut self, to: u64) {
        // Dropping the sender ends the peer task and its stream.
        self.peers.remove(&to);
    }
}

async fn run_peer(to: u64, address: String, mut outbound: mpsc::Receiver<pb::RaftMessage>) {
    let mut backoff = Backoff::new(RECONNECT_BACKOFF_MS_MIN, RECONNECT_BACKOFF_MS_MAX);
    loop {
        // Connect only when there is something to say.
        let Some(first) = outbound.recv().await else {
            return;
        };
        let opened = tokio::time::Instant::now();
        match stream_to_peer(to, &address, first, &mut outbound).await {
            StreamEnd::QueueClosed => return,
            StreamEnd::Broken(reason) => {
                // A stream that held for a while was a success: the peer
                // is reached again quickly, not after the longest wait.
                if opened.elapsed() >= Duration::from_millis(STREAM_HELD_MS) {
                    backoff.reset();
                }
                let wait = backoff.next_wait();
                tracing::debug!(to, %address, %reason, ?wait, "raft stream to peer broke");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

enum StreamEnd {
    QueueClosed,
    Broken(String),
}

async fn stream_to_peer(
    to: u64,
    address: &str,
    first: pb::RaftMessage,
    outbound: &mut mpsc::Receiver<pb::RaftMessage>,
) -> StreamEnd {
    // Only node `to`'s certificate will do: raft messages (snapshots of
    // the whole state included) go to no other node.
    let endpoint = match blixard_api::connect::endpoint_for(address, to) {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
            .keep_alive_while_idle(true),
        Err(error) => return StreamEnd::Broken(error.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return StreamEnd::Broken(error.to_string()),
    };
    let mut client = RaftTransportClient::new(channel)
        .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
        .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX);
    let (stream_tx, stream_rx) = mpsc::channel(PEER_STREAM_BUFFER);
    if stream_tx.send(first).await.is_err() {
        return StreamEnd::Broken("stream closed before the first message".into());
    }
    let call = client.stream(ReceiverStream::new(stream_rx));
    tokio::pin!(call);
    loop {
        tokio::select! {
            result = &mut call => {
                return StreamEnd::Broken(match result {
                    Ok(_) => "peer closed the stream".into(),
                    Err(status) => status.to_string(),
                });
            }
            message = outbound.recv() => {
                let Some(message) = message else {
                    return StreamEnd::QueueClosed;
                };
                // A peer that stops reading without closing the stream is
                // caught by keepalive, or by the raft loop resetting the
                // connection of a peer it has not heard from.
                if stream_tx.send(message).await.is_err() {
                    return StreamEnd::Broken("stream closed".into());
                }
            }
        }
    }
}
