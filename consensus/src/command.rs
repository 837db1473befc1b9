//! Commands carried in the Raft log and what applying them yields.
//!
//! Invariant: a command holds everything its application needs (ids,
//! timestamps, sizes), so applying it reads no clock, no randomness and no
//! I/O, and every node computes the same result.

use serde::{Deserialize, Serialize};

use crate::records::{
    CustomRole, DesiredState, HostFacts, JoinToken, Settings, SettingsUpdate, Token, VmObserved,
    VmRecord, VmSpec,
};

/// A state-machine command. New kinds of cluster state add variants here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Command {
    CreateVm {
        spec: VmSpec,
        created_at_unix_ms: u64,
    },
    SetVmDesiredState {
        name: String,
        desired_state: DesiredState,
    },
    DeleteVm {
        name: String,
    },
    /// Records (or updates) the address a member serves on.
    SetNodeAddress {
        node_id: u64,
        address: String,
    },
    /// A node's agent describes its host.
    SetHostFacts {
        node_id: u64,
        facts: HostFacts,
    },
    /// The scheduler places a VM on a node (or takes it off: `None`).
    AssignVm {
        name: String,
        node_id: Option<u64>,
        /// Why (shown in events).
        #[serde(default)]
        reason: String,
        /// The vCPUs per host core the scheduler placed by: a placement
        /// that carries it is judged again when it applies (`fit`). An
        /// entry written before that check (`None`) applies as it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vcpu_overcommit: Option<u32>,
        /// The node must run a node agent (`fit::Misfit::NoAgent`); an
        /// entry written before that check (`false`) applies as it did.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        needs_agent: bool,
    },
    /// The scheduler found no node for a pending VM.
    MarkUnplaceable {
        name: String,
        reason: String,
    },
    /// The VM's node has been dead past the VM's grace period.
    MarkVmLost {
        name: String,
        node_id: u64,
        reason: String,
        /// Take it off the node so it is placed elsewhere.
        replace: bool,
    },
    /// Creates or deletes members NAME-1..N of a replica group so exactly
    /// `replicas` exist; new ones copy `template` (named after the group).
    /// Unconditional: kept for entries already in logs; the services
    /// propose [`Command::CreateGroup`] and [`Command::ScaleGroup`], whose
    /// conditions apply decides.
    SetReplicas {
        template: VmSpec,
        replicas: u32,
        /// Desired state of new members.
        start: bool,
        created_at_unix_ms: u64,
    },
    /// Creates replica group `template.name` with members NAME-1..N, all
    /// copies of `template`. Refused if a VM or a group of that name
    /// exists when it applies (of two racing creates, one wins).
    CreateGroup {
        template: VmSpec,
        replicas: u32,
        /// Desired state of the members.
        start: bool,
        created_at_unix_ms: u64,
    },
    /// Resizes replica group `group` to `replicas` (0 deletes it), new
    /// members copying an existing member as the group holds it when this
    /// applies. Refused if the group is gone by then.
    ScaleGroup {
        group: String,
        replicas: u32,
        /// Desired state of new members.
        start: bool,
        created_at_unix_ms: u64,
    },
    SetNodeEligibility {
        node_id: u64,
        eligible: bool,
    },
    /// Marks the node ineligible and evicts its VMs.
    DrainNode {
        node_id: u64,
        at_unix_ms: u64,
        deadline_unix_ms: u64,
    },
    /// Ends a drain (nothing left on the node, or the deadline passed:
    /// `force` then takes the remaining VMs off it).
    FinishDrain {
        node_id: u64,
        force: bool,
    },
    /// Replaces every setting (kept for entries already in logs; the
    /// services propose [`Command::UpdateSettings`]).
    SetSettings {
        settings: Settings,
    },
    /// Changes the settings the update names, merged into the settings
    /// as they are when it applies (never as a caller read them).
    UpdateSettings {
        update: SettingsUpdate,
    },
    /// A node that runs VMs without holding the raft log (a worker).
    RegisterWorker {
        node_id: u64,
        address: String,
    },
    /// Removes a worker's record (raft members leave by configuration
    /// change instead). Its VMs lose their assignment.
    UnregisterWorker {
        node_id: u64,
    },
    /// The node a VM is assigned to reports what it observes.
    ReportVm {
        name: String,
        node_id: u64,
        observed: VmObserved,
    },
    CreateToken {
        token: Token,
    },
    RevokeToken {
        accessor: String,
    },
    CreateRole {
        role: CustomRole,
    },
    CreateJoinToken {
        token: JoinToken,
    },
    /// A node holding the CA key spends a join token on a certificate for
    /// `node_id` (a new id) and the key hashing to `key_sha256`;
    /// `at_unix_ms` is that node's clock, against which the token's expiry
    /// is judged. Spending it again on the same id and key is accepted
    /// (the node asking again after losing the answer).
    UseJoinToken {
        accessor: String,
        node_id: u64,
        #[serde(default)]
        key_sha256: String,
        at_unix_ms: u64,
    },
    /// A join token is withdrawn, spent or not.
    RevokeJoinToken {
        accessor: String,
    },
    /// A voter holding the CA key issued node `node_id` the certificate
    /// `issued_sha256` for a renewal the node asked for presenting
    /// `presented_sha256`: both are added to the certificates the node is
    /// accepted with (which then hold only the pair if the bound is
    /// passed). Refused if `presented_sha256` is no longer accepted.
    AcceptNodeCertificate {
        node_id: u64,
        presented_sha256: String,
        issued_sha256: String,
    },
    /// Node `node_id` serves its renewed certificate `keep_sha256`: every
    /// other certificate naming it is refused from now on (a stolen old
    /// key is cut off). Refused unless `keep_sha256` is accepted.
    RetireNodeCertificates {
        node_id: u64,
        keep_sha256: String,
    },
    /// Node `node_id`, accepted so far with any certificate of the
    /// cluster CA naming it, is held from now on to `certificate_sha256`,
    /// the one it serves (a node pins itself once it is in the state, so
    /// a certificate made by hand later for its id is refused). Refused
    /// once the node is held to certificates already.
    PinNodeCertificate {
        node_id: u64,
        certificate_sha256: String,
    },
    /// Refused while a token has the role.
    DeleteRole {
        name: String,
    },
}

/// One change of the cluster state, as workers replay it: every accepted
/// command and every membership change that touched the state advances
/// the revision by exactly one, so a worker holding revision `r` that
/// applies the transition of revision `r + 1` holds exactly the state the
/// voters held at `r + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "transition")]
pub enum Transition {
    Command {
        command: Box<Command>,
        /// Who asked, for the audit trail (absent for the cluster's own
        /// decisions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit: Option<Box<crate::audit::Audit>>,
        /// When it was proposed (see [`ProposalTag::proposed_at`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_unix_ms: Option<u64>,
    },
    MemberAdded {
        node_id: u64,
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_unix_ms: Option<u64>,
    },
    MemberRemoved {
        node_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_unix_ms: Option<u64>,
    },
}

impl Command {
    /// The command's name as it is encoded (`create_vm`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateVm { .. } => "create_vm",
            Command::SetVmDesiredState { .. } => "set_vm_desired_state",
            Command::DeleteVm { .. } => "delete_vm",
            Command::SetNodeAddress { .. } => "set_node_address",
            Command::SetHostFacts { .. } => "set_host_facts",
            Command::AssignVm { .. } => "assign_vm",
            Command::MarkUnplaceable { .. } => "mark_unplaceable",
            Command::MarkVmLost { .. } => "mark_vm_lost",
            Command::SetReplicas { .. } => "set_replicas",
            Command::CreateGroup { .. } => "create_group",
            Command::ScaleGroup { .. } => "scale_group",
            Command::SetNodeEligibility { .. } => "set_node_eligibility",
            Command::DrainNode { .. } => "drain_node",
            Command::FinishDrain { .. } => "finish_drain",
            Command::SetSettings { .. } => "set_settings",
            Command::UpdateSettings { .. } => "update_settings",
            Command::RegisterWorker { .. } => "register_worker",
            Command::UnregisterWorker { .. } => "unregister_worker",
            Command::ReportVm { .. } => "report_vm",
            Command::CreateToken { .. } => "create_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::CreateRole { .. } => "create_role",
            Command::CreateJoinToken { .. } => "create_join_token",
            Command::UseJoinToken { .. } => "use_join_token",
            Command::RevokeJoinToken { .. } => "revoke_join_token",
            Command::AcceptNodeCertificate { .. } => "accept_node_certificate",
            Command::RetireNodeCertificates { .. } => "retire_node_certificates",
            Command::PinNodeCertificate { .. } => "pin_node_certificate",
            Command::DeleteRole { .. } => "delete_role",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::Error> {
        serde_json::from_slice(bytes).map_err(|e| crate::Error::Corrupt {
            what: "command",
            detail: e.to_string(),
        })
    }
}

/// What applying an accepted command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The state revision after the command.
    pub revision: u64,
    /// The VM the command touched, as it is now (`None` after a delete).
    pub vm: Option<VmRecord>,
}

/// Why the state machine refused a command. Refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    #[error("a VM named {name:?} already exists")]
    VmExists { name: String },
    #[error("no VM named {name:?}")]
    VmNotFound { name: String },
    #[error("undecodable command: {detail}")]
    Undecodable { detail: String },
    #[error("membership change refused: {detail}")]
    ConfChange { detail: String },
    #[error("VM {name:?} is assigned to node {assigned:?}, not node {node_id}")]
    NotAssigned {
        name: String,
        node_id: u64,
        assigned: Option<u64>,
    },
    #[error("no member with node id {node_id}")]
    NoSuchNode { node_id: u64 },
    #[error("VM {name:?} does not fit on node {node_id}: {reason}")]
    DoesNotFit {
        name: String,
        node_id: u64,
        reason: String,
    },
    #[error("no replica group named {group:?}")]
    NoSuchGroup { group: String },
    #[error(
        "a VM or replica group named {name:?} already exists; use `vm scale` to resize a group"
    )]
    GroupExists { name: String },
    #[error("no token with accessor {accessor:?}")]
    NoSuchToken { accessor: String },
    #[error("{detail}")]
    Invalid { detail: String },
}

/// An event as the cluster keeps it: numbered and timed by the log, so
/// every node holds the same records (see `ClusterState::events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Orders the cluster's events: the revision of the entry that told
    /// it and its place among that entry's events
    /// (`revision << EVENT_PLACE_BITS | place`), so every node numbers an
    /// event alike whatever it held before (a store from before events
    /// were kept, or a snapshot).
    pub seq: u64,
    /// The state revision the entry that told it made.
    pub revision: u64,
    /// When the entry was proposed, by its proposer's clock (for entries
    /// from before entries carried it: the event before's time).
    pub at_unix_ms: u64,
    pub event: Event,
}

/// Bits of an [`EventRecord::seq`] for the event's place in its entry
/// (an entry tells far fewer than 2^20 events: a group is at most 1000).
pub const EVENT_PLACE_BITS: u32 = 20;

/// Something that happened to the cluster, for `events` and the TUI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub vm: Option<String>,
    pub node_id: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    VmCreated,
    VmDeleted,
    VmPlaced,
    VmUnplaceable,
    VmStarting,
    VmRunning,
    VmStopped,
    VmRestarted,
    VmFailed,
    VmLost,
    VmEvicted,
    NodeJoined,
    NodeRemoved,
    NodeEligibility,
    DrainStarted,
    DrainFinished,
    SettingsChanged,
    TokenCreated,
    TokenRevoked,
    RoleCreated,
    RoleDeleted,
    JoinTokenCreated,
    JoinTokenUsed,
    JoinTokenRevoked,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::VmCreated => "vm_created",
            EventKind::VmDeleted => "vm_deleted",
            EventKind::VmPlaced => "vm_placed",
            EventKind::VmUnplaceable => "vm_unplaceable",
            EventKind::VmStarting => "vm_starting",
            EventKind::VmRunning => "vm_running",
            EventKind::VmStopped => "vm_stopped",
            EventKind::VmRestarted => "vm_restarted",
            EventKind::VmFailed => "vm_failed",
            EventKind::VmLost => "vm_lost",
            EventKind::VmEvicted => "vm_evicted",
            EventKind::NodeJoined => "node_joined",
            EventKind::NodeRemoved => "node_removed",
            EventKind::NodeEligibility => "node_eligibility",
            EventKind::DrainStarted => "drain_started",
            EventKind::DrainFinished => "drain_finished",
            EventKind::SettingsChanged => "settings_changed",
            EventKind::TokenCreated => "token_created",
            EventKind::TokenRevoked => "token_revoked",
            EventKind::RoleCreated => "role_created",
            EventKind::RoleDeleted => "role_deleted",
            EventKind::JoinTokenCreated => "join_token_created",
            EventKind::JoinTokenUsed => "join_token_used",
            EventKind::JoinTokenRevoked => "join_token_revoked",
        }
    }
}

/// A change to the VM table, in the order it was applied (for watchers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmChange {
    Added(VmRecord),
    Modified(VmRecord),
    Deleted(VmRecord),
}

/// Identifies who proposed an entry so only that node answers the client.
/// Stored in the raft entry's `context`, which is: this tag (16 bytes),
/// the proposer's clock (8 bytes, big-endian milliseconds since the epoch,
/// whose first byte is 0 for the next two million years), then for a
/// client's change its audit context (JSON, which starts with `{`).
/// Entries from before the clock have the tag then the JSON: the clock's
/// first byte tells them apart. A read request's context is the tag alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalTag {
    pub proposer: u64,
    pub request_id: u64,
}

impl ProposalTag {
    /// Bytes of an encoded tag; an entry's context may go on after them
    /// (see [`crate::audit::AuditContext`]).
    pub const ENCODED_LEN: usize = 16;

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.proposer.to_be_bytes());
        bytes.extend_from_slice(&self.request_id.to_be_bytes());
        bytes
    }

    /// A proposed entry's context: this tag, the clock, the audit
    /// context if any (see the type's documentation).
    pub fn entry_context(
        &self,
        at_unix_ms: u64,
        audit: Option<&crate::audit::AuditContext>,
    ) -> Vec<u8> {
        let mut bytes = self.encode();
        bytes.extend_from_slice(&at_unix_ms.min(PROPOSED_AT_MAX).to_be_bytes());
        if let Some(audit) = audit {
            bytes.extend(serde_json::to_vec(audit).expect("audit contexts serialize"));
        }
        bytes
    }

    /// When the entry with this context was proposed, if it says.
    pub fn proposed_at(context: &[u8]) -> Option<u64> {
        let clock = context.get(Self::ENCODED_LEN..Self::ENCODED_LEN + 8)?;
        (clock[0] == 0).then(|| u64::from_be_bytes(clock.try_into().expect("8 bytes")))
    }

    /// What follows the tag and the clock: an audit context, or nothing.
    pub fn after_clock(context: &[u8]) -> &[u8] {
        let rest = context.get(Self::ENCODED_LEN..).unwrap_or_default();
        match Self::proposed_at(context) {
            Some(_) => &rest[8..],
            None => rest,
        }
    }

    /// `None` for entries raft-rs made itself (empty context).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let proposer = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
        let request_id = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self {
            proposer,
            request_id,
        })
    }
}

/// The largest clock an entry context holds (2^56 - 1 ms, in the year
/// 2,285,000): its first byte stays 0.
const PROPOSED_AT_MAX: u64 = (1 << 56) - 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_contexts_carry_the_clock_and_old_ones_still_read() {
        let tag = ProposalTag {
            proposer: 3,
            request_id: 9,
        };
        let audit = crate::audit::AuditContext {
            actor: crate::audit::Actor::Node { node_id: 3 },
            at_unix_ms: 5,
            from: "127.0.0.1".into(),
            relayed_by: None,
        };
        let with = tag.entry_context(1_700_000_000_000, Some(&audit));
        assert_eq!(ProposalTag::decode(&with), Some(tag));
        assert_eq!(ProposalTag::proposed_at(&with), Some(1_700_000_000_000));
        assert_eq!(
            crate::audit::AuditContext::from_entry_context(&with),
            Some(audit.clone())
        );
        let bare = tag.entry_context(u64::MAX, None);
        assert_eq!(ProposalTag::proposed_at(&bare), Some(PROPOSED_AT_MAX));
        assert_eq!(crate::audit::AuditContext::from_entry_context(&bare), None);

        // An entry written before the clock: tag, then the audit JSON.
        let mut old = tag.encode();
        old.extend(serde_json::to_vec(&audit).unwrap());
        assert_eq!(ProposalTag::proposed_at(&old), None);
        assert_eq!(
            crate::audit::AuditContext::from_entry_context(&old),
            Some(audit)
        );
        assert_eq!(ProposalTag::proposed_at(&tag.encode()), None);
    }

    #[test]
    fn kinds_are_the_encoded_tags() {
        let command = Command::UnregisterWorker { node_id: 4 };
        let encoded: serde_json::Value = serde_json::from_slice(&command.encode()).unwrap();
        assert_eq!(encoded["type"], command.kind());
    }
}
