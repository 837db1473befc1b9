//! Applying committed entries: commands to the state machine and
//! configuration changes to raft, each with its applied index in the same
//! transaction.
//!
//! Invariant: every committed entry advances the applied index by exactly
//! one, whether the state machine accepts it, refuses it, or it carries
//! nothing (a new leader's empty entry).

use heed::RwTxn;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft_proto::ConfChangeI;

use super::{RaftNode, Transport};
use crate::audit::{Audit, AuditContext};
use crate::command::{Applied, Command, ProposalTag, Rejection, Transition};
use crate::state::{ClusterState, Outcome};
use crate::{Error, Result};

impl<T: Transport> RaftNode<T> {
    pub(super) fn apply_entries(
        &mut self,
        wtxn: &mut RwTxn,
        entries: Vec<Entry>,
        answers: &mut Vec<(u64, Result<Applied>)>,
    ) -> Result<()> {
        for entry in entries {
            let applied_index = self.raw.store().applied_index();
            if entry.index <= applied_index {
                // Covered by a snapshot installed in this same Ready.
                continue;
            }
            let tag = ProposalTag::decode(&entry.context);
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(wtxn, &entry)?,
                // A conf change that does not decode came from a peer (ours
                // always do): the same bytes are refused alike everywhere,
                // rather than stopping every node that applies them.
                EntryType::EntryConfChange => match ConfChange::parse_from_bytes(&entry.data) {
                    Ok(change) => self.apply_conf_change(wtxn, &entry, &change)?,
                    Err(error) => self.refuse_entry(wtxn, &entry, error)?,
                },
                EntryType::EntryConfChangeV2 => match ConfChangeV2::parse_from_bytes(&entry.data) {
                    Ok(change) => self.apply_conf_change(wtxn, &entry, &change)?,
                    Err(error) => self.refuse_entry(wtxn, &entry, error)?,
                },
            };
            if let Some(tag) = tag.filter(|t| t.proposer == self.config.node_id) {
                answers.push((tag.request_id, result));
            }
        }
        Ok(())
    }

    fn apply_normal(&mut self, wtxn: &mut RwTxn, entry: &Entry) -> Result<Result<Applied>> {
        if entry.data.is_empty() {
            // A new leader's empty entry: nothing to apply.
            let state = self.shared.published.state();
            self.raw
                .mut_store()
                .record_applied(wtxn, entry.index, &state, &[])?;
            return Ok(Ok(Applied {
                revision: state.revision,
                vm: None,
            }));
        }
        let mut transitions = Vec::new();
        let proposer = ProposalTag::decode(&entry.context).map(|tag| tag.proposer);
        let at_unix_ms = ProposalTag::proposed_at(&entry.context);
        let audit = proposer.and_then(|proposer| {
            AuditContext::from_entry_context(&entry.context)
                .map(|context| Audit { context, proposer })
        });
        let conf_state = self.raw.store().conf_state();
        let members: Vec<u64> = conf_state
            .voters
            .iter()
            .chain(&conf_state.learners)
            .copied()
            .collect();
        let outcome = match Command::decode(&entry.data) {
            Ok(command) => {
                // Who may propose what is decided here, where the entry's
                // proposer and this point's membership are known; the
                // same on every node.
                let outcome = match crate::validate::authorize(&command, proposer, &members) {
                    Ok(()) => self.write_state(|state| {
                        state.apply_entry(command.clone(), audit.as_ref(), at_unix_ms)
                    }),
                    Err(rejection) => Outcome::rejected(rejection),
                };
                if let (Ok(applied), Some(audit)) = (&outcome.result, &audit) {
                    // Each voter also logs the trail as it grows: the
                    // replicated trail keeps only the newest records.
                    tracing::info!(
                        target: "blixard::audit",
                        revision = applied.revision,
                        actor = ?audit.context.actor,
                        via = audit.context.relayed_by.unwrap_or(audit.proposer),
                        from = %audit.context.from,
                        at_unix_ms = audit.context.at_unix_ms,
                        action = command.kind(),
                        target = %crate::audit::target(&command),
                        "audit"
                    );
                }
                if let Ok(applied) = &outcome.result {
                    transitions.push((
                        applied.revision,
                        Transition::Command {
                            command: Box::new(command),
                            audit: audit.map(Box::new),
                            at_unix_ms,
                        },
                    ));
                }
                outcome
            }
            Err(error) => {
                // Same bytes on every node, so every node refuses alike.
                tracing::error!(index = entry.index, %error, "undecodable command in log");
                Outcome::rejected(Rejection::Undecodable {
                    detail: error.to_string(),
                })
            }
        };
        self.record(wtxn, entry.index, outcome, transitions)
    }

    /// Records an undecodable entry as applied, changing nothing.
    fn refuse_entry(
        &mut self,
        wtxn: &mut RwTxn,
        entry: &Entry,
        error: protobuf::ProtobufError,
    ) -> Result<Result<Applied>> {
        tracing::error!(index = entry.index, %error, "undecodable conf change in log");
        let state = self.shared.published.state();
        self.raw
            .mut_store()
            .record_applied(wtxn, entry.index, &state, &[])?;
        Ok(Err(Rejection::Undecodable {
            detail: error.to_string(),
        }
        .into()))
    }

    fn apply_conf_change(
        &mut self,
        wtxn: &mut RwTxn,
        entry: &Entry,
        change: &impl ConfChangeI,
    ) -> Result<Result<Applied>> {
        let v2 = change.as_v2();
        let conf_state = match self.raw.apply_conf_change(v2.as_ref()) {
            Ok(conf_state) => conf_state,
            Err(error) => {
                let refused = Rejection::ConfChange {
                    detail: error.to_string(),
                };
                let state = self.shared.published.state();
                self.raw
                    .mut_store()
                    .record_applied(wtxn, entry.index, &state, &[])?;
                return Ok(Err(refused.into()));
            }
        };
        self.raw.mut_store().set_conf_state(wtxn, &conf_state)?;
        let address = String::from_utf8_lossy(v2.get_context()).to_string();
        let at_unix_ms = ProposalTag::proposed_at(&entry.context);
        let mut outcome: Option<Outcome> = None;
        let mut transitions = Vec::new();
        for single in v2.get_changes() {
            let node_id = single.node_id;
            let step = match single.get_change_type() {
                ConfChangeType::AddLearnerNode | ConfChangeType::AddNode if !address.is_empty() => {
                    let transition = Transition::MemberAdded {
                        node_id,
                        address: address.clone(),
                        at_unix_ms,
                    };
                    let step = self.write_state(|s| s.replay(transition.clone()));
                    Some((step, transition))
                }
                ConfChangeType::RemoveNode => {
                    let transition = Transition::MemberRemoved {
                        node_id,
                        at_unix_ms,
                    };
                    let step = self.write_state(|s| s.replay(transition.clone()));
                    Some((step, transition))
                }
                _ => None,
            };
            if let Some((step, transition)) = step {
                if let Ok(applied) = &step.result {
                    transitions.push((applied.revision, transition));
                }
                tracing::info!(node_id, change = ?single.get_change_type(), "membership changed");
                outcome = Some(match outcome {
                    None => step,
                    Some(mut so_far) => {
                        so_far.merge(step);
                        so_far
                    }
                });
            }
        }
        match outcome {
            Some(outcome) => self.record(wtxn, entry.index, outcome, transitions),
            None => {
                let state = self.shared.published.state();
                self.raw
                    .mut_store()
                    .record_applied(wtxn, entry.index, &state, &[])?;
                self.shared
                    .published
                    .publish(state.revision, Vec::new(), Vec::new());
                Ok(Ok(Applied {
                    revision: state.revision,
                    vm: None,
                }))
            }
        }
    }

    fn write_state(&self, apply: impl FnOnce(&mut ClusterState) -> Outcome) -> Outcome {
        apply(&mut self.shared.published.state_mut())
    }

    /// Persists an outcome's rows with the applied index and tells
    /// watchers and fed workers.
    fn record(
        &mut self,
        wtxn: &mut RwTxn,
        index: u64,
        outcome: Outcome,
        transitions: Vec<(u64, Transition)>,
    ) -> Result<Result<Applied>> {
        for (revision, transition) in transitions {
            self.shared.record_transition(revision, transition);
        }
        let state = self.shared.published.state();
        self.raw
            .mut_store()
            .record_applied(wtxn, index, &state, &outcome.touched)?;
        self.shared
            .published
            .publish(state.revision, outcome.vm_changes, outcome.recorded);
        Ok(outcome.result.map_err(Error::from))
    }
}
