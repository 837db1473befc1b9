//! Raft consensus for Blixard: tikv/raft-rs driven over a durable LMDB log,
//! applying commands to a deterministic cluster state machine.
//!
//! Invariant: the cluster state on every node is the result of applying the
//! same committed log prefix, in order, exactly once.

pub mod audit;
pub mod command;
mod error;
pub mod fit;
pub mod handle;
pub mod history;
pub mod node;
mod pending;
pub mod published;
pub mod records;
pub mod state;
pub mod storage;
pub mod validate;

pub use blixard_api::placement::{self, FailoverPolicy, Placement, Rule, RuleError, Strategy};
pub use command::{
    Applied, Command, Event, EventKind, EventRecord, Rejection, Transition, VmChange,
};
pub use error::{Error, Result};
pub use handle::{
    publish_events, FeedEvent, MemberStatus, MembershipChange, RaftHandle, RaftStatus, Role,
    StateEvent, VM_EVENTS_BUFFERED_MAX,
};
pub use history::{HistoryTooOld, Resume, VmHistory};
pub use node::{RaftConfig, RaftNode, Transport};
pub use published::Published;
pub use raft::prelude::Message as RaftMessage;
pub use records::{
    validate_settings, CustomRole, DesiredState, Drain, HostFacts, JoinToken, JoinTokenUse,
    NodeRecord, Permission, PortForward, RunnerSource, Settings, SettingsUpdate, Token, TokenRole,
    VmObserved, VmPhase, VmRecord, VmSpec,
};
pub use state::{ClusterState, JoinTokenRefusal, RECENT_EVENTS_MAX};
pub use storage::{DataIdentity, LogStore, DATA_FORMAT_VERSION, STORE_FILE};
