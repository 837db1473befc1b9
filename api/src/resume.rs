//! Where a `Vm.Watch` has got to, so a watcher that lost its stream
//! resumes from there (`after_revision`) instead of listing again.
//!
//! Invariant: once the watch has said SYNCED, every event [`Position::take`]
//! accepts is one the watcher has not had, and a resumed stream replays
//! from the start of the last revision it saw (of whose changes only some
//! may have arrived), skipping the ones that did: changes of one revision
//! come in the order they were applied, the same on every node.

use crate::pb;

/// A watcher's place in the stream of VM changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// Whether the watch has said SYNCED (before it, the initial list).
    synced: bool,
    /// The newest revision seen, how many of its changes the watcher has,
    /// and how many of them came on the current stream (fewer only while
    /// a resumed stream replays them).
    revision: u64,
    have: usize,
    came: usize,
}

impl Position {
    /// Notes `event` and says whether the watcher should apply it (a
    /// replayed change it already had is not).
    pub fn take(&mut self, event: &pb::VmEvent) -> bool {
        if event.kind() == pb::VmEventKind::Synced {
            // A SYNCED never names less than what was sent before it; if
            // it did, what the watcher has of its last revision still
            // counts.
            if event.revision >= self.revision || !self.synced {
                *self = Position {
                    synced: true,
                    revision: event.revision,
                    ..Position::default()
                };
            }
            return true;
        }
        if !self.synced {
            return true;
        }
        if event.revision != self.revision {
            self.revision = event.revision;
            self.have = 0;
            self.came = 0;
        }
        self.came += 1;
        if self.came <= self.have {
            return false;
        }
        self.have += 1;
        true
    }

    /// The request that resumes the watch, or `None` before SYNCED (the
    /// initial list cannot be resumed: watch from the start).
    pub fn resume(&mut self) -> Option<pb::WatchVmsRequest> {
        if !self.synced {
            return None;
        }
        self.came = 0;
        let after_revision = match self.have {
            0 => self.revision,
            _ => self.revision - 1,
        };
        Some(pb::WatchVmsRequest {
            after_revision: Some(after_revision),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: pb::VmEventKind, revision: u64) -> pb::VmEvent {
        pb::VmEvent {
            kind: kind as i32,
            vm: None,
            revision,
        }
    }

    use pb::VmEventKind::{Added, Deleted, Modified, Synced};

    #[test]
    fn the_initial_list_cannot_be_resumed() {
        let mut position = Position::default();
        assert!(position.take(&event(Added, 5)));
        assert_eq!(position.resume(), None);
    }

    #[test]
    fn a_resume_replays_a_cut_revision_and_skips_what_arrived() {
        let mut position = Position::default();
        position.take(&event(Added, 5));
        position.take(&event(Synced, 7));
        assert_eq!(
            position.clone().resume(),
            Some(pb::WatchVmsRequest {
                after_revision: Some(7)
            })
        );
        // Revision 9 made three changes; two arrived before the cut.
        assert!(position.take(&event(Modified, 8)));
        assert!(position.take(&event(Added, 9)));
        assert!(position.take(&event(Added, 9)));
        assert_eq!(
            position.resume(),
            Some(pb::WatchVmsRequest {
                after_revision: Some(8)
            })
        );
        // The replay: revision 9's three, then 10.
        assert!(!position.take(&event(Added, 9)));
        assert!(!position.take(&event(Added, 9)));
        assert!(position.take(&event(Added, 9)));
        assert!(position.take(&event(Deleted, 10)));
        assert!(position.take(&event(Synced, 10)));
        // Cut again right after SYNCED: nothing to replay.
        assert_eq!(
            position.resume(),
            Some(pb::WatchVmsRequest {
                after_revision: Some(10)
            })
        );
    }

    #[test]
    fn a_resume_cut_again_before_its_replay_skips_the_same_changes() {
        let mut position = Position::default();
        position.take(&event(Synced, 3));
        position.take(&event(Added, 4));
        position.take(&event(Added, 4));
        assert_eq!(position.resume().unwrap().after_revision, Some(3));
        // One of the two replayed, then the stream breaks again.
        assert!(!position.take(&event(Added, 4)));
        assert_eq!(position.resume().unwrap().after_revision, Some(3));
        assert!(!position.take(&event(Added, 4)));
        assert!(!position.take(&event(Added, 4)));
        assert!(position.take(&event(Added, 4)));
    }
}
