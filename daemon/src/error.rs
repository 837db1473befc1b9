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
