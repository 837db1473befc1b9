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

/// Why a node's gossip record is not believed (shown with the member, and
/// logged once per record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("no certificate gossiped")]
    NoCertificate,
    #[error("no node info gossiped yet")]
    NoInfo,
    #[error("undecodable certificate")]
    UndecodableCertificate,
    #[error("certificate refused: {0}")]
    CertificateRefused(String),
    #[error("the certificate of node {certified} gossips as node {node_id}")]
    OtherNodesCertificate { certified: u64, node_id: u64 },
    #[error("the info is not signed")]
    Unsigned,
    #[error("undecodable signature")]
    UndecodableSignature,
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("undecodable node info: {0}")]
    UndecodableInfo(String),
    #[error("node info claims node id {claims} but gossips as {node_id}")]
    OtherNodesInfo { claims: u64, node_id: u64 },
    #[error(
        "node {0}'s record is signed with a certificate the cluster no longer accepts \
         (renewed or removed)"
    )]
    RetiredCertificate(u64),
    /// Before the first check of an incarnation's record.
    #[error("not checked yet")]
    Unchecked,
}
