//! The receiving side of the Raft peer transport.
//!
//! Invariant: with TLS on, only messages whose `from` is the node the
//! connection's certificate names reach the raft loop (which checks the
//! rest of each message before raft-rs sees it), a message of another
//! cluster ends its stream before it is decoded, and a stream whose
//! certificate the state stops accepting ends within a second of its next
//! message.

use blixard_api::pb;
use blixard_consensus::{RaftHandle, RaftMessage};
use protobuf::Message as _;
use tonic::{Request, Response, Status, Streaming};

/// How often an open stream's certificate is checked against the state
/// again (every message would take the state lock at raft's pace).
const CERTIFICATE_RECHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub struct RaftService {
    pub node_id: u64,
    /// This node's cluster id: messages of another cluster are refused.
    pub cluster_id: String,
    pub raft: RaftHandle,
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for RaftService {
    async fn stream(
        &self,
        request: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<pb::RaftStreamAck>, Status> {
        let peer = super::require_node(&request, "RaftTransport.Stream")?;
        let presented = request
            .extensions()
            .get::<super::PresentedCertificate>()
            .cloned();
        let mut stream = request.into_inner();
        let mut rechecked = tokio::time::Instant::now();
        while let Some(item) = stream.message().await? {
            // A stream opened with a certificate a renewal (or a removal)
            // since retired ends; the node reconnects with its new one.
            if rechecked.elapsed() >= CERTIFICATE_RECHECK_INTERVAL {
                rechecked = tokio::time::Instant::now();
                if let Some(refusal) = presented.as_ref().and_then(|presented| {
                    self.raft
                        .read_state(|s| super::certificate_refusal(s, presented))
                }) {
                    return Err(refusal);
                }
            }
            // Before anything is decoded: a node of another cluster (one
            // that founded anew at a member's address) never reaches raft.
            super::same_cluster(&self.cluster_id, &item.cluster_id, "raft peer")?;
            let message = RaftMessage::parse_from_bytes(&item.message)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            // A node speaks only for itself: its certificate names it.
            if let Some(peer) = peer.filter(|peer| *peer != message.from) {
                return Err(Status::permission_denied(format!(
                    "node {peer} sent a raft message as node {}",
                    message.from
                )));
            }
            if message.to != self.node_id {
                return Err(Status::invalid_argument(format!(
                    "raft message for node {} reached node {}",
                    message.to, self.node_id
                )));
            }
            // Messages to this node are sent there (see the raft loop's
            // `send_messages`), so it must be an address.
            if !item.from_address.is_empty() {
                blixard_api::validate::address(&item.from_address)
                    .map_err(|e| Status::invalid_argument(format!("from_address: {e}")))?;
            }
            // A full queue drops the message; raft retransmits.
            if let Err(blixard_consensus::Error::Stopped) =
                self.raft.step(message, item.from_address)
            {
                return Err(Status::unavailable("raft loop stopped"));
            }
        }
        Ok(Response::new(pb::RaftStreamAck {}))
    }
}
