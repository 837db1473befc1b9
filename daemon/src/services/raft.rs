//! The receiving side of the Raft peer transport.
//!
//! Invariant: with TLS on, only messages whose `from` is the node the
//! connection's certificate names reach the raft loop (which checks the
//! rest of each message before raft-rs sees it).

use blixard_api::pb;
use blixard_consensus::{RaftHandle, RaftMessage};
use protobuf::Message as _;
use tonic::{Request, Response, Status, Streaming};

pub struct RaftService {
    pub node_id: u64,
    pub raft: RaftHandle,
}

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for RaftService {
    async fn stream(
        &self,
        request: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<pb::RaftStreamAck>, Status> {
        let peer = super::require_node(&request, "RaftTransport.Stream")?;
        let mut stream = request.into_inner();
        while let Some(item) = stream.message().await? {
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
