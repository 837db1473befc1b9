/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("gossip could not bind {address}/udp: {detail}")]
    Bind { address: String, detail: String },
    #[error("could not sign this node's gossip info: {detail}")]
    Sign { detail: String },
    #[error("invalid gossip address {address:?}: {detail}")]
    Address { address: String, detail: String },
}
