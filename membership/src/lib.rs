//! Gossip membership over chitchat: every node advertises a [`NodeInfo`]
//! (addresses, role, resources, labels) and learns everyone else's, with
//! liveness from chitchat's phi-accrual failure detector.
//!
//! Invariants: a node writes only its own record; peers' records are read,
//! never trusted. With security on, datagrams not sealed with the cluster's
//! gossip key are dropped unread and records not signed by the node they
//! name are not members; with it off, a record that does not decode shows
//! up as a member with the decoding error and no info, so nothing
//! schedules on it. A node that restarted (new generation) replaces its
//! older generation in the view.

mod error;
mod gossip;
mod info;
mod sealed;
mod verify;

pub use error::{Error, Unreadable};
pub use gossip::{GossipSecurity, Member, Membership, MembershipConfig};
pub use info::{NodeInfo, NodeRole, INFO_KEY};
pub use verify::{Identity, IdentityError};
