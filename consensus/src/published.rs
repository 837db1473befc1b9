//! The state a node serves and what it tells about changes to it. One
//! type for both kinds of node: on a raft member the raft loop writes it
//! as it applies entries; on a worker the mirror writes it as it replays
//! the feed. Reads, watches, resumes and the event stream are served from
//! it alike.
//!
//! Invariants: a change is in the state before subscribers hear of it, so
//! a subscriber that subscribes and then reads misses nothing; VM changes
//! are sent through the [`VmHistory`] (kept and sent in one step, see its
//! invariant); a state replaced whole (a snapshot, or a node switching
//! between member and worker) restarts the history and sends `Reset`.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::broadcast;

use crate::command::{EventRecord, VmChange};
use crate::handle::{publish_events, StateEvent, VM_EVENTS_BUFFERED_MAX};
use crate::history::{HistoryTooOld, Resume, VmHistory};
use crate::state::ClusterState;

pub struct Published {
    state: RwLock<ClusterState>,
    events: broadcast::Sender<StateEvent>,
    vm_history: Mutex<VmHistory>,
}

impl Published {
    pub fn new(state: ClusterState) -> Self {
        let revision = state.revision;
        Self {
            state: RwLock::new(state),
            events: broadcast::channel(VM_EVENTS_BUFFERED_MAX).0,
            vm_history: Mutex::new(VmHistory::new(revision)),
        }
    }

    pub fn read<R>(&self, read: impl FnOnce(&ClusterState) -> R) -> R {
        read(&self.state())
    }

    /// The state, held for reading.
    pub fn state(&self) -> RwLockReadGuard<'_, ClusterState> {
        self.state.read().expect("state lock poisoned")
    }

    /// The state, held for a change (tell subscribers with
    /// [`Published::publish`] once it is made).
    pub fn state_mut(&self) -> RwLockWriteGuard<'_, ClusterState> {
        self.state.write().expect("state lock poisoned")
    }

    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    /// The cluster's newest events, oldest first (kept in the state).
    pub fn recent_events(&self) -> Vec<EventRecord> {
        self.state().events.iter().cloned().collect()
    }

    fn vm_history(&self) -> MutexGuard<'_, VmHistory> {
        self.vm_history.lock().expect("history lock poisoned")
    }

    /// The VM changes applied after revision `after` (see [`VmHistory`]).
    pub fn vm_changes_since(&self, after: u64) -> Result<Resume, HistoryTooOld> {
        self.vm_history().since(after)
    }

    /// Every VM change up to this revision has been sent to subscribers.
    pub fn vm_changes_published(&self) -> u64 {
        self.vm_history().published()
    }

    /// Tells subscribers what one applied entry changed (the state holds
    /// it already): its VM changes at `revision`, then its events.
    pub fn publish(&self, revision: u64, vm_changes: Vec<VmChange>, events: Vec<EventRecord>) {
        self.vm_history()
            .publish(&self.events, revision, vm_changes);
        publish_events(&self.events, events);
    }

    /// Replaces the state whole (a snapshot): the history starts again at
    /// its revision and watchers re-read.
    pub fn replace(&self, state: ClusterState) {
        let mut held = self.state_mut();
        *held = state;
        self.restart_history(held.revision);
    }

    /// After the state was replaced whole under [`Published::state_mut`]:
    /// the history starts again at `revision` and watchers re-read.
    pub fn restart_history(&self, revision: u64) {
        self.vm_history().reset(&self.events, revision);
    }

    /// Ends every watch of this state (a `Reset`): the node switched
    /// between raft member and worker, and the other one serves now.
    pub fn end_watches(&self) {
        let revision = self.revision();
        let _ = self.events.send(StateEvent::Reset { revision });
    }
}
