//! The audit trail: who asked for each change, kept in the replicated
//! state.
//!
//! Invariant: a record is added exactly when a command that carries an
//! [`Audit`] (a client asked for it) is accepted, in the same apply on
//! every node and from the entry's bytes and the state alone, so every
//! node (and every worker replaying the transitions) holds the same trail.
//! The trail keeps the last [`AUDIT_RECORDS_MAX`] records; sequence
//! numbers never repeat.

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::command::ProposalTag;

/// Records the trail keeps (older ones fall off).
pub const AUDIT_RECORDS_MAX: usize = 4096;
/// Longest `from` (a socket address) and token accessor kept.
const FIELD_LEN_MAX: usize = 64;

/// Who asked, as the node that took the request established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Actor {
    /// A cluster node, by its certificate.
    Node { node_id: u64 },
    /// A client, by its token's accessor.
    Token { accessor: String },
    /// Security is off: nobody was proven.
    Anonymous,
}

/// What the node that took a client's request knows about it; travels in
/// the raft entry's context after its [`ProposalTag`] and clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    pub actor: Actor,
    /// The taking node's clock.
    pub at_unix_ms: u64,
    /// The client's address as that node saw it.
    pub from: String,
    /// The worker that took the request and handed it to a voter.
    #[serde(default)]
    pub relayed_by: Option<u64>,
}

impl AuditContext {
    /// The context an entry carries after its tag, if any, clipped to
    /// bounds. Bytes that do not decode carry none (the same on every
    /// node).
    pub fn from_entry_context(context: &[u8]) -> Option<Self> {
        let bytes = ProposalTag::after_clock(context);
        if bytes.is_empty() {
            return None;
        }
        let mut context: Self = serde_json::from_slice(bytes).ok()?;
        context.from = clip(&context.from);
        if let Actor::Token { accessor } = &mut context.actor {
            *accessor = clip(accessor);
        }
        Some(context)
    }
}

/// An accepted entry's audit context and the node that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub context: AuditContext,
    pub proposer: u64,
}

/// One accepted change in the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// The state revision the change made.
    pub revision: u64,
    pub at_unix_ms: u64,
    pub actor: Actor,
    /// The token's name when the change was made.
    pub token_name: Option<String>,
    /// The node the client spoke to.
    pub via_node: u64,
    pub from: String,
    /// The command (`create_vm`, ...).
    pub action: String,
    /// What it changed (a VM, a node, a token's accessor, `settings`).
    pub target: String,
}

impl AuditRecord {
    /// Whether `who` names this record's actor: a token's name or
    /// accessor, `node-ID`, or `anonymous`.
    pub fn is_by(&self, who: &str) -> bool {
        match &self.actor {
            Actor::Token { accessor } => accessor == who || self.token_name.as_deref() == Some(who),
            Actor::Node { node_id } => who == format!("node-{node_id}"),
            Actor::Anonymous => who == "anonymous",
        }
    }
}

/// What a command changes, as the trail names it.
pub fn target(command: &Command) -> String {
    match command {
        Command::CreateVm { spec, .. } => spec.name.clone(),
        Command::SetReplicas { template, .. } | Command::CreateGroup { template, .. } => {
            template.name.clone()
        }
        Command::ScaleGroup { group, .. } => group.clone(),
        Command::SetVmDesiredState { name, .. }
        | Command::DeleteVm { name }
        | Command::AssignVm { name, .. }
        | Command::MarkUnplaceable { name, .. }
        | Command::MarkVmLost { name, .. }
        | Command::ReportVm { name, .. } => name.clone(),
        Command::SetNodeAddress { node_id, .. }
        | Command::SetHostFacts { node_id, .. }
        | Command::SetNodeEligibility { node_id, .. }
        | Command::DrainNode { node_id, .. }
        | Command::FinishDrain { node_id, .. }
        | Command::RegisterWorker { node_id, .. }
        | Command::UnregisterWorker { node_id } => format!("node-{node_id}"),
        Command::SetSettings { .. } | Command::UpdateSettings { .. } => "settings".into(),
        Command::CreateToken { token } => token.accessor.clone(),
        Command::RevokeToken { accessor } => accessor.clone(),
        Command::CreateRole { role } => role.name.clone(),
        Command::CreateJoinToken { token } => token.accessor.clone(),
        Command::RevokeJoinToken { accessor } => accessor.clone(),
        Command::UseJoinToken { node_id, .. }
        | Command::AcceptNodeCertificate { node_id, .. }
        | Command::RetireNodeCertificates { node_id, .. }
        | Command::PinNodeCertificate { node_id, .. } => format!("node-{node_id}"),
        Command::DeleteRole { name } => name.clone(),
    }
}

fn clip(text: &str) -> String {
    let mut end = text.len().min(FIELD_LEN_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(from: &str) -> AuditContext {
        AuditContext {
            actor: Actor::Token {
                accessor: "a".repeat(100),
            },
            at_unix_ms: 7,
            from: from.into(),
            relayed_by: Some(4),
        }
    }

    #[test]
    fn contexts_travel_after_the_tag_clipped_and_never_fail_an_entry() {
        let tag = ProposalTag {
            proposer: 1,
            request_id: 9,
        };
        let bytes = tag.entry_context(1, Some(&context("10.0.0.9:5555\n")));
        assert_eq!(
            ProposalTag::decode(&bytes),
            Some(tag),
            "the tag still leads"
        );
        let decoded = AuditContext::from_entry_context(&bytes).unwrap();
        assert_eq!(decoded.from, "10.0.0.9:5555");
        assert_eq!(
            decoded.actor,
            Actor::Token {
                accessor: "a".repeat(FIELD_LEN_MAX)
            }
        );
        assert_eq!(decoded.relayed_by, Some(4));
        assert_eq!(AuditContext::from_entry_context(&tag.encode()), None);
        let mut junk = tag.encode();
        junk.extend_from_slice(b"{not json");
        assert_eq!(AuditContext::from_entry_context(&junk), None);
        assert_eq!(AuditContext::from_entry_context(b"short"), None);
    }
}
