//! The door between the network and `RawNode::step`: every raft message a
//! peer sends is checked here first.
//!
//! Invariant: a message that passes [`check`] cannot make raft-rs panic
//! and comes from a current member (or, to a node that holds no
//! configuration yet, is one of the leader's messages that bring it one).
//! raft-rs trusts its peers: it `fatal!`s on an empty proposal, a commit
//! index past the log, an append that conflicts with committed entries or
//! a snapshot whose configuration cannot be restored, and applies any
//! proposal from anyone. Those are programmer errors among honest peers
//! and an attack from anyone else, so they are refused here, with the
//! reason, and never stepped. What this cannot tell is whether a member
//! is who it claims to be: that is the transport's authentication.

use protobuf::Message as _;
use raft::prelude::{
    ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
};
use raft::{Raft, Storage};

use crate::command::{Command, ProposalTag};
use crate::state::ClusterState;

/// No real log reaches this index (a billion entries a second for a
/// century is 2^62); anything larger is refused before raft-rs adds to it.
const INDEX_MAX: u64 = 1 << 62;
/// Entries one forwarded proposal may carry (raft forwards one at a time).
const PROPOSAL_ENTRIES_MAX: usize = 256;

/// Why a peer's message was not stepped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} from {from}: {reason}")]
pub struct Refused {
    pub kind: MessageType,
    pub from: u64,
    pub reason: Reason,
}

/// What is wrong with a refused message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("addressed to node {0}")]
    AddressedTo(u64),
    #[error("not from a peer")]
    NotFromAPeer,
    #[error("an index beyond {INDEX_MAX}")]
    IndexTooLarge,
    #[error("a node's message to itself")]
    Local,
    #[error("term {0} on this kind of message")]
    Term(u64),
    #[error("the sender is not a member")]
    NotAMember,
    #[error("this node is not the leader")]
    NotLeader,
    #[error("this node has no configuration yet")]
    Unconfigured,
    #[error("node {from} is not the leader of term {term}")]
    NotTheLeader { from: u64, term: u64 },
    #[error("a read answer must carry exactly its request's context")]
    ReadAnswerEntries,
    #[error("commit {commit} is past this log's last index {last}")]
    CommitPastLog { commit: u64, last: u64 },
    #[error("acknowledges index {index} past this log's last index {last}")]
    AcknowledgedPastLog { index: u64, last: u64 },
    #[error("a read request with {0} entries")]
    ReadRequestEntries(usize),
    #[error("a read context of node {0:?}")]
    ReadContext(Option<u64>),
    #[error("an empty proposal")]
    EmptyProposal,
    #[error("{0} entries in one proposal")]
    ProposalEntries(usize),
    #[error("an entry context of {0} bytes")]
    EntryContextBytes(usize),
    #[error("an entry proposed for node {0:?}, not by its sender")]
    ProposedForAnother(Option<u64>),
    #[error("a command that does not decode: {0}")]
    UndecodableCommand(String),
    #[error("{0}")]
    InvalidCommand(String),
    #[error("a configuration change that does not decode: {0}")]
    UndecodableConfChange(String),
    #[error("a configuration change of other than one node")]
    ConfChangeNotSingle,
    #[error("a configuration change of node 0")]
    ConfChangeOfNodeZero,
    #[error("a configuration change with a bad address: {0}")]
    ConfChangeAddress(String),
    #[error("a version 1 configuration change")]
    ConfChangeV1,
    #[error("anchor index {0} with term 0")]
    AnchorWithoutTerm(u64),
    #[error("entry {index} out of place after index {after}")]
    OutOfPlace { index: u64, after: u64 },
    #[error("entry {index} has term {term}")]
    EntryTerm { index: u64, term: u64 },
    #[error("entry {index} contradicts the committed log (term {here} here, {sent} sent)")]
    ContradictsCommitted { index: u64, here: u64, sent: u64 },
    #[error("anchor term {anchor} is below the committed term {committed}")]
    AnchorBelowCommitted { anchor: u64, committed: u64 },
    #[error("a snapshot without voters")]
    SnapshotWithoutVoters,
    #[error("a snapshot in a joint configuration")]
    SnapshotJoint,
    #[error("a snapshot with an impossible configuration")]
    SnapshotImpossible,
    #[error("a snapshot at index {index} term {term}")]
    SnapshotPosition { index: u64, term: u64 },
    #[error("a snapshot whose state does not decode: {0}")]
    SnapshotState(String),
}

/// Checks `message` against this node's raft state (see the module
/// invariant).
pub fn check<S: Storage>(message: &Message, raft: &Raft<S>) -> Result<(), Refused> {
    let refuse = |reason: Reason| {
        Err(Refused {
            kind: message.get_msg_type(),
            from: message.from,
            reason,
        })
    };
    if message.to != raft.id {
        return refuse(Reason::AddressedTo(message.to));
    }
    if message.from == raft::INVALID_ID || message.from == raft.id {
        return refuse(Reason::NotFromAPeer);
    }
    // raft-rs adds to indexes without checking for overflow.
    let indexes = [
        message.index,
        message.commit,
        message.reject_hint,
        message.request_snapshot,
        message.get_snapshot().get_metadata().index,
    ];
    if indexes
        .into_iter()
        .chain(message.entries.iter().map(|e| e.index))
        .any(|index| index > INDEX_MAX)
    {
        return refuse(Reason::IndexTooLarge);
    }
    let kind = message.get_msg_type();
    if is_local(kind) {
        return refuse(Reason::Local);
    }
    // raft-rs forwards proposals and read requests without a term (it
    // asserts so when it forwards them on) and stamps every other message
    // with one (a message without a term counts as local).
    let forwarded = matches!(kind, MessageType::MsgPropose | MessageType::MsgReadIndex);
    if forwarded != (message.term == 0) {
        return refuse(Reason::Term(message.term));
    }
    let conf = raft.prs().conf().to_conf_state();
    let configured = !conf.voters.is_empty();
    let is_leader = raft.state == raft::StateRole::Leader;
    // Any node of the cluster holds a certificate (workers too, and a
    // removed node until its certificate is replaced), so only members
    // of this node's configuration are heard: a worker sending an append
    // of a higher term would otherwise become this node's leader. A node
    // behind on configuration changes hears only the members it knows;
    // autopilot demotes a voter that was away before it adds another, so
    // the one such node (a demoted learner) waits for a leader it knows.
    if configured && !is_member(&conf, message.from) {
        return refuse(Reason::NotAMember);
    }
    // Only a leader acts on forwarded proposals and reads; a follower
    // would forward them on under the original sender, which its own
    // certificate does not name.
    if forwarded && !is_leader {
        return refuse(Reason::NotLeader);
    }
    if !configured
        && !matches!(
            kind,
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        )
    {
        return refuse(Reason::Unconfigured);
    }
    // In the leader's term only the leader sends what a leader sends:
    // another member could otherwise commit entries no quorum holds.
    let leader_only = matches!(
        kind,
        MessageType::MsgAppend
            | MessageType::MsgHeartbeat
            | MessageType::MsgSnapshot
            | MessageType::MsgReadIndexResp
            | MessageType::MsgTimeoutNow
    );
    if leader_only
        && message.term == raft.term
        && raft.leader_id != raft::INVALID_ID
        && message.from != raft.leader_id
    {
        return refuse(Reason::NotTheLeader {
            from: message.from,
            term: raft.term,
        });
    }
    let log = &raft.raft_log;
    match kind {
        MessageType::MsgPropose => proposal(message).or_else(refuse),
        MessageType::MsgReadIndex => read_request(message).or_else(refuse),
        MessageType::MsgReadIndexResp if message.entries.len() != 1 => {
            refuse(Reason::ReadAnswerEntries)
        }
        MessageType::MsgHeartbeat if message.commit > log.last_index() => {
            refuse(Reason::CommitPastLog {
                commit: message.commit,
                last: log.last_index(),
            })
        }
        // A follower forwards a transfer request to its leader with the
        // term raft-rs stamped on it; forwarding it again would trip
        // raft-rs's own assertion, so only a leader takes one.
        MessageType::MsgTransferLeader if !is_leader => refuse(Reason::NotLeader),
        MessageType::MsgAppend => append(message, raft).or_else(refuse),
        MessageType::MsgSnapshot => snapshot(message).or_else(refuse),
        MessageType::MsgAppendResponse if !message.reject && message.index > log.last_index() => {
            refuse(Reason::AcknowledgedPastLog {
                index: message.index,
                last: log.last_index(),
            })
        }
        _ => Ok(()),
    }
}

/// Messages raft-rs makes for its own node; never sent between nodes.
fn is_local(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
    )
}

fn is_member(conf: &ConfState, node_id: u64) -> bool {
    conf.voters
        .iter()
        .chain(&conf.learners)
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners_next)
        .any(|id| *id == node_id)
}

/// A read request carries one entry: the reading node's context, tagged
/// with that node (raft-rs reads `entries[0]`; contexts must not collide
/// across nodes).
fn read_request(message: &Message) -> Result<(), Reason> {
    let [entry] = message.entries.as_slice() else {
        return Err(Reason::ReadRequestEntries(message.entries.len()));
    };
    match ProposalTag::decode(&entry.data).map(|tag| tag.proposer) {
        Some(proposer) if proposer == message.from => Ok(()),
        other => Err(Reason::ReadContext(other)),
    }
}

/// A proposal's context: its tag and, for a client's change, who asked
/// (an accessor and an address of bounded length).
const ENTRY_CONTEXT_LEN_MAX: usize = 1024;

/// A forwarded proposal: entries this cluster's nodes make, each tagged
/// with the forwarding node as its proposer (the state machine trusts
/// that tag for who may change what).
fn proposal(message: &Message) -> Result<(), Reason> {
    if message.entries.is_empty() {
        return Err(Reason::EmptyProposal);
    }
    if message.entries.len() > PROPOSAL_ENTRIES_MAX {
        return Err(Reason::ProposalEntries(message.entries.len()));
    }
    for entry in message.entries.iter() {
        if entry.context.len() > ENTRY_CONTEXT_LEN_MAX {
            return Err(Reason::EntryContextBytes(entry.context.len()));
        }
        let tag = ProposalTag::decode(&entry.context);
        if tag.map(|t| t.proposer) != Some(message.from) {
            return Err(Reason::ProposedForAnother(tag.map(|t| t.proposer)));
        }
        proposed_entry(entry)?;
    }
    Ok(())
}

fn proposed_entry(entry: &Entry) -> Result<(), Reason> {
    match entry.get_entry_type() {
        EntryType::EntryNormal => {
            let command = Command::decode(&entry.data)
                .map_err(|e| Reason::UndecodableCommand(e.to_string()))?;
            crate::validate::command(&command).map_err(|e| Reason::InvalidCommand(e.to_string()))
        }
        EntryType::EntryConfChangeV2 => {
            let change = ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|e| Reason::UndecodableConfChange(e.to_string()))?;
            // Blixard changes one node at a time and never enters a joint
            // configuration (which its snapshots could not carry).
            if change.changes.len() != 1
                || change.get_transition() != raft::prelude::ConfChangeTransition::Auto
            {
                return Err(Reason::ConfChangeNotSingle);
            }
            if change.changes.iter().any(|c| c.node_id == raft::INVALID_ID) {
                return Err(Reason::ConfChangeOfNodeZero);
            }
            let adds = change
                .changes
                .iter()
                .any(|c| c.get_change_type() != ConfChangeType::RemoveNode);
            let address = std::str::from_utf8(&change.context)
                .map_err(|e| Reason::ConfChangeAddress(e.to_string()))?;
            if adds && !address.is_empty() {
                blixard_api::validate::address(address)
                    .map_err(|e| Reason::ConfChangeAddress(e.to_string()))?;
            }
            Ok(())
        }
        // Blixard proposes only version 2 configuration changes.
        EntryType::EntryConfChange => Err(Reason::ConfChangeV1),
    }
}

/// An append a legitimate leader could send: entries contiguous after the
/// one it anchors on, terms never decreasing and never above its own,
/// and nothing that contradicts what this node knows to be committed.
fn append<S: Storage>(message: &Message, raft: &Raft<S>) -> Result<(), Reason> {
    let log = &raft.raft_log;
    // Only the empty log's position 0 has term 0; raft-rs reads any index
    // past its log as term 0, so such an anchor would "match" there.
    if message.index > 0 && message.log_term == 0 {
        return Err(Reason::AnchorWithoutTerm(message.index));
    }
    let mut previous_term = message.log_term;
    for (offset, entry) in message.entries.iter().enumerate() {
        if Some(entry.index) != message.index.checked_add(offset as u64 + 1) {
            return Err(Reason::OutOfPlace {
                index: entry.index,
                after: message.index,
            });
        }
        // Every real entry has a term (raft-rs reads missing ones as 0).
        if entry.term == 0 || entry.term < previous_term || entry.term > message.term {
            return Err(Reason::EntryTerm {
                index: entry.index,
                term: entry.term,
            });
        }
        previous_term = entry.term;
        if entry.index <= log.committed {
            if let Ok(term) = log.term(entry.index) {
                if term != entry.term {
                    return Err(Reason::ContradictsCommitted {
                        index: entry.index,
                        here: term,
                        sent: entry.term,
                    });
                }
            }
        }
    }
    // The leader holds every committed entry and terms only grow along a
    // log, so the entry it anchors on at or past this node's commit index
    // has at least the committed entry's term (raft-rs's conflict search
    // would otherwise walk into the compacted part of the log).
    if message.index >= log.committed {
        if let Ok(committed_term) = log.term(log.committed) {
            if message.log_term < committed_term {
                return Err(Reason::AnchorBelowCommitted {
                    anchor: message.log_term,
                    committed: committed_term,
                });
            }
        }
    }
    Ok(())
}

/// A snapshot this node can install: its state decodes and its
/// configuration is one raft-rs can restore.
fn snapshot(message: &Message) -> Result<(), Reason> {
    let snapshot = message.get_snapshot();
    let metadata = snapshot.get_metadata();
    let conf = metadata.get_conf_state();
    if conf.voters.is_empty() {
        return Err(Reason::SnapshotWithoutVoters);
    }
    if !conf.voters_outgoing.is_empty() || !conf.learners_next.is_empty() {
        return Err(Reason::SnapshotJoint);
    }
    let voters: std::collections::BTreeSet<u64> = conf.voters.iter().copied().collect();
    let learners: std::collections::BTreeSet<u64> = conf.learners.iter().copied().collect();
    if voters.contains(&raft::INVALID_ID)
        || learners.contains(&raft::INVALID_ID)
        || !voters.is_disjoint(&learners)
        || voters.len() != conf.voters.len()
        || learners.len() != conf.learners.len()
    {
        return Err(Reason::SnapshotImpossible);
    }
    if metadata.index == 0 || metadata.term == 0 || metadata.term > message.term {
        return Err(Reason::SnapshotPosition {
            index: metadata.index,
            term: metadata.term,
        });
    }
    ClusterState::decode(&snapshot.data)
        .map(|_| ())
        .map_err(|e| Reason::SnapshotState(e.to_string()))
}

#[cfg(test)]
mod tests;
