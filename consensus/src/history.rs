//! The VM changes a node applied last, so a watcher that lost its stream
//! can resume from the revision it had reached instead of listing again.
//!
//! Invariant: [`VmHistory::since`] answers for a revision only when it
//! holds every change applied after it; a change is kept and sent to
//! watchers in the same step ([`VmHistory::publish`], under the history's
//! lock), so a watcher that subscribed before reading the history misses
//! nothing between the two and gets nothing twice once it skips what the
//! history gave it. At most [`VM_HISTORY_CHANGES_MAX`] changes and
//! [`VM_HISTORY_BYTES_MAX`] bytes of them (as JSON) are kept: several
//! times what a watcher may fall behind before it is told to resume, so
//! that it usually can.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::handle::{StateEvent, VM_EVENTS_BUFFERED_MAX};
use crate::VmChange;

/// Changes kept at most: four times the changes a watcher may fall
/// behind by before it is ended (it then resumes from here).
pub const VM_HISTORY_CHANGES_MAX: usize = 4 * VM_EVENTS_BUFFERED_MAX;
/// Bytes of changes (their VMs as JSON) kept at most.
pub const VM_HISTORY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The last VM changes applied on this node, by revision.
#[derive(Debug)]
pub struct VmHistory {
    /// Every change applied after this revision is held.
    from: u64,
    /// Every change of an entry up to this revision was sent.
    published: u64,
    /// Each change with its size in bytes.
    changes: VecDeque<(u64, Arc<VmChange>, usize)>,
    bytes: usize,
}

/// What a resumed watch replays: the changes after its revision, and the
/// revision it has then reached.
#[derive(Debug)]
pub struct Resume {
    pub changes: Vec<(u64, Arc<VmChange>)>,
    pub through: u64,
}

/// A resume from a revision the history no longer (or never) covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "revision {after} is older than this node's history of VM changes (it starts after \
     revision {from}); watch from the start"
)]
pub struct HistoryTooOld {
    pub after: u64,
    pub from: u64,
}

impl VmHistory {
    /// An empty history of a state at `revision`.
    pub fn new(revision: u64) -> Self {
        Self {
            from: revision,
            published: revision,
            changes: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Keeps `changes`, made by the entry applied at `revision`, and sends
    /// them to watchers; every change through `revision` is then published
    /// (an entry that changed no VM is published too).
    pub fn publish(
        &mut self,
        events: &broadcast::Sender<StateEvent>,
        revision: u64,
        changes: Vec<VmChange>,
    ) {
        for change in changes {
            let change = Arc::new(change);
            let bytes = json_len(&change);
            self.bytes += bytes;
            self.changes.push_back((revision, change.clone(), bytes));
            while self.changes.len() > VM_HISTORY_CHANGES_MAX || self.bytes > VM_HISTORY_BYTES_MAX {
                let Some((dropped, _, bytes)) = self.changes.pop_front() else {
                    break;
                };
                self.bytes -= bytes;
                // Changes of that revision may remain, but not all.
                self.from = self.from.max(dropped);
            }
            let _ = events.send(StateEvent::Vm { change, revision });
        }
        self.published = self.published.max(revision);
    }

    /// The state was replaced at `revision` (a snapshot): nothing before
    /// it can be resumed from; watchers are told to start over.
    pub fn reset(&mut self, events: &broadcast::Sender<StateEvent>, revision: u64) {
        *self = Self::new(revision);
        let _ = events.send(StateEvent::Reset { revision });
    }

    /// Every change of an entry up to this revision has been sent.
    pub fn published(&self) -> u64 {
        self.published
    }

    /// The changes applied after revision `after`, for a watcher that saw
    /// everything up to it.
    pub fn since(&self, after: u64) -> Result<Resume, HistoryTooOld> {
        if after < self.from {
            return Err(HistoryTooOld {
                after,
                from: self.from,
            });
        }
        let start = self
            .changes
            .partition_point(|(revision, _, _)| *revision <= after);
        let changes = self.changes.range(start..);
        Ok(Resume {
            changes: changes.map(|(r, change, _)| (*r, change.clone())).collect(),
            through: self.published.max(after),
        })
    }
}

/// The size of `change`'s VM as JSON: what it weighs, near enough.
fn json_len(change: &VmChange) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (VmChange::Added(vm) | VmChange::Modified(vm) | VmChange::Deleted(vm)) = change;
    let mut count = Count(0);
    // Writing to a counter cannot fail, nor can a VM record's JSON.
    let _ = serde_json::to_writer(&mut count, vm);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DesiredState, RunnerSource, VmRecord, VmSpec};

    fn added(name: &str) -> VmChange {
        VmChange::Added(VmRecord {
            spec: VmSpec::for_tests(name),
            desired_state: DesiredState::Stopped,
            create_revision: 1,
            mod_revision: 1,
            created_at_unix_ms: 0,
            assigned_node: None,
            observed: Default::default(),
            evicting: false,
        })
    }

    fn names(resume: &Resume) -> Vec<(u64, String)> {
        resume
            .changes
            .iter()
            .map(|(revision, change)| {
                let (VmChange::Added(vm) | VmChange::Modified(vm) | VmChange::Deleted(vm)) =
                    change.as_ref();
                (*revision, vm.spec.name.clone())
            })
            .collect()
    }

    #[test]
    fn a_resume_gets_exactly_the_changes_after_its_revision() {
        let (events, mut watcher) = broadcast::channel(16);
        let mut history = VmHistory::new(10);
        history.publish(&events, 11, vec![added("a"), added("b")]);
        history.publish(&events, 12, vec![]);
        history.publish(&events, 13, vec![added("c")]);
        assert_eq!(history.published(), 13);
        let resume = history.since(11).unwrap();
        assert_eq!(names(&resume), [(13, "c".to_string())]);
        assert_eq!(resume.through, 13);
        assert_eq!(history.since(10).unwrap().changes.len(), 3);
        // A watcher ahead of this node (it saw 20 elsewhere): nothing yet.
        let ahead = history.since(20).unwrap();
        assert!(ahead.changes.is_empty());
        assert_eq!(ahead.through, 20);
        assert_eq!(
            history.since(9).unwrap_err(),
            HistoryTooOld { after: 9, from: 10 }
        );
        // Every change was also sent, in order.
        let mut sent = Vec::new();
        while let Ok(StateEvent::Vm { revision, .. }) = watcher.try_recv() {
            sent.push(revision);
        }
        assert_eq!(sent, [11, 11, 13]);
    }

    #[test]
    fn a_full_history_resumes_only_after_what_it_forgot() {
        let (events, _) = broadcast::channel(1);
        let mut history = VmHistory::new(0);
        for revision in 1..=VM_HISTORY_CHANGES_MAX as u64 / 2 {
            history.publish(&events, revision, vec![added("x"), added("y")]);
        }
        history.publish(&events, 99_999, vec![added("z")]);
        // Revision 1 lost one of its two changes: only after 1 resumes.
        assert_eq!(history.since(0).unwrap_err().from, 1);
        let resume = history.since(1).unwrap();
        assert_eq!(resume.changes.len(), VM_HISTORY_CHANGES_MAX - 1);
        assert_eq!(resume.changes[0].0, 2);
        history.reset(&events, 100_000);
        assert!(history.since(99_999).is_err());
        assert!(history.since(100_000).unwrap().changes.is_empty());
    }

    #[test]
    fn a_history_is_bounded_in_bytes() {
        let (events, _) = broadcast::channel(1);
        let mut history = VmHistory::new(0);
        let mut heavy = added("h");
        if let VmChange::Added(vm) = &mut heavy {
            vm.spec.runner = RunnerSource::Flake {
                flake_ref: "x".repeat(1 << 20),
            };
        }
        for revision in 1..=100 {
            history.publish(&events, revision, vec![heavy.clone()]);
        }
        assert!(history.bytes <= VM_HISTORY_BYTES_MAX, "{}", history.bytes);
        let kept = history.changes.len() as u64;
        assert!((60..100).contains(&kept), "{kept}");
        assert_eq!(
            history.since(100 - kept).unwrap().changes.len() as u64,
            kept
        );
        assert!(history.since(99 - kept).is_err());
    }
}
