//! The daemon's error type and its mapping onto gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read or parsed.
    #[error("config {origin}: {detail}")]
    Config { origin: String, detail: String },
    /// The configuration parsed but makes no sense.
    #[error("invalid configuration: {detail}")]
    InvalidConfig { detail: String },
    /// Another process holds the data directory.
    #[error("data directory {path} is in use by another blixard process")]
    DataDirLocked { path: String },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The data directory belongs to another node.
    #[error(
        "data directory {path} belongs to node {recorded}, not node {configured}: start it \
         as node {recorded}, or give node {configured} a data directory of its own"
    )]
    NotThisNode {
        path: String,
        recorded: u64,
        configured: u64,
    },
    /// The identity says a store was here; it is gone or empty.
    #[error(
        "data directory {path} belongs to node {node_id} of cluster {cluster_id}, but its store \
         ({store_file}) is {what}: this node's raft state is lost, and starting would make it a \
         member that forgot its votes. Restore {store_file} from a backup; or, on a live member, run \
         `blixard cluster remove-node {node_id}`, then move {path} aside and start this host \
         as a new node (a new node id, --join) (README: Recovering a node)",
        store_file = blixard_consensus::STORE_FILE
    )]
    StoreLost {
        path: String,
        node_id: u64,
        cluster_id: String,
        what: &'static str,
    },
    /// A start without raft state, with nowhere to join and no request
    /// to found.
    #[error(
        "data directory {path} {what} and neither --join nor --bootstrap was given: give \
         --join HOST:PORT to join a cluster, or --bootstrap (on one node, once, on an empty \
         data directory) to found a new one"
    )]
    NothingToJoin { path: String, what: &'static str },
    /// A first start asked both to found and to join.
    #[error(
        "data directory {path} is empty and both --bootstrap and --join were given: a first \
         start founds a new cluster (--bootstrap, on one node, once) or joins one (--join), not \
         either"
    )]
    BootstrapAndJoin { path: String },
    /// `identity.toml` and the store name different owners.
    #[error(
        "data directory {path}: identity.toml names {file} but its store names {store}; the \
         store or the file was copied from elsewhere (README: Recovering a node)"
    )]
    IdentityMismatch {
        path: String,
        file: String,
        store: String,
    },
    /// A store without any identity.
    #[error(
        "data directory {path} holds a store but no identity.toml, and the store names no \
         owner: move it aside and start this host as a new node (README: Recovering a node)"
    )]
    IdentityMissing { path: String },
    #[error("{path} cannot be read: {detail} (README: Recovering a node)")]
    IdentityUnreadable { path: String, detail: String },
    /// None of the join addresses answered.
    #[error("could not join the cluster: {detail}")]
    Join { detail: String },
    #[error("cannot start the raft thread: {detail}")]
    RaftThread { detail: String },
    #[error("gRPC server on {bind}: {detail}")]
    Serve { bind: String, detail: String },
    /// The node's certificates are missing, unreadable or not its own.
    #[error("TLS: {detail}")]
    Tls { detail: String },
    #[error(transparent)]
    Consensus(#[from] blixard_consensus::Error),
    #[error(transparent)]
    Validation(#[from] blixard_api::ValidationError),
    #[error(transparent)]
    Membership(#[from] blixard_membership::Error),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        use blixard_consensus::{Error as C, Rejection as R};
        let code = match &error {
            Error::Validation(_) => Code::InvalidArgument,
            Error::Consensus(C::Rejected(R::VmExists { .. } | R::GroupExists { .. })) => {
                Code::AlreadyExists
            }
            Error::Consensus(C::Rejected(R::VmNotFound { .. })) => Code::NotFound,
            Error::Consensus(C::Rejected(
                R::NoSuchNode { .. } | R::NoSuchGroup { .. } | R::NoSuchToken { .. },
            )) => Code::NotFound,
            Error::Consensus(C::Rejected(R::Invalid { .. } | R::NotAssigned { .. })) => {
                Code::FailedPrecondition
            }
            Error::Consensus(C::Rejected(R::ConfChange { .. })) => Code::FailedPrecondition,
            Error::Consensus(C::NoLeader | C::Stopped | C::Unreachable { .. }) => Code::Unavailable,
            Error::Consensus(C::Timeout { .. }) => Code::DeadlineExceeded,
            Error::Consensus(C::Busy { .. }) => Code::ResourceExhausted,
            Error::Consensus(C::Refused { code, .. }) => Code::from_i32(*code),
            Error::Join { .. } => Code::Unavailable,
            _ => Code::Internal,
        };
        Status::new(code, error.to_string())
    }
}

impl From<blixard_consensus::Rejection> for Error {
    fn from(rejection: blixard_consensus::Rejection) -> Self {
        Error::Consensus(rejection.into())
    }
}
