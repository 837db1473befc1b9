//! The one error type of the consensus crate.

/// Everything that can go wrong inside consensus, from a client's point of view.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// LMDB refused an operation; the node stops rather than diverge.
    #[error("storage: {0}")]
    Storage(#[from] heed::Error),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A stored or received record did not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    /// No leader is known, so the request cannot be ordered.
    #[error("no leader is known; the cluster may be electing one or has lost quorum")]
    NoLeader,
    /// The request was not committed and applied within its deadline; it may
    /// still commit later (the outcome is unknown).
    #[error("timed out after {timeout_ms} ms waiting for the cluster; the outcome is unknown")]
    Timeout { timeout_ms: u64 },
    /// No member of the cluster could be reached (from a worker).
    #[error("no cluster member reachable: {detail}")]
    Unreachable { detail: String },
    /// A voter refused a request a worker forwarded (a token it does not
    /// hold, a bad argument); `code` is its gRPC status code, kept so the
    /// client sees the voter's refusal, not an outage.
    #[error("{message}")]
    Refused { code: i32, message: String },
    /// The raft loop is shutting down or has stopped.
    #[error("this node's raft loop has stopped")]
    Stopped,
    /// The request queue is full; the caller should retry later.
    #[error("too many requests queued on this node ({queued_max}); retry later")]
    Busy { queued_max: usize },
    /// The state machine refused the command (deterministically, on every node).
    #[error("{0}")]
    Rejected(#[from] crate::command::Rejection),
    /// The store file is not a store this node can read (not LMDB,
    /// truncated); the node refuses to start rather than guess.
    #[error(
        "store {path} cannot be read ({detail}); restore it from a backup or recover the node \
         as a new one (README: Recovering a node)"
    )]
    StoreUnreadable { path: String, detail: String },
    /// A write failed with the disk (nearly) full.
    #[error("no space left on device for the store in {path} ({free_bytes} bytes free): {detail}")]
    DiskFull {
        path: String,
        free_bytes: u64,
        detail: String,
    },
    /// Opening the data directory failed.
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
