//! When a control loop runs its next pass: on its ticker, or soon after a
//! state change it cares about, whichever comes first.
//!
//! Invariants: a pass never waits longer than one tick; relevant changes
//! only make it sooner, never more often than once per `spacing` (a burst
//! of thousands wakes it once); irrelevant changes (another node's VMs, a
//! stopped VM being created) never wake it, so a loop's cost does not grow
//! with the cluster's write rate; the ticker alone keeps the loop going if
//! the change stream ends.

use std::time::Duration;

use blixard_consensus::{StateEvent, VmChange, VmRecord};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::handle::ClusterHandle;

/// Which state changes wake a loop early.
pub type Relevant = Box<dyn Fn(&StateEvent) -> bool + Send + Sync>;

/// The VM a change is about, as it is after the change.
pub fn changed_vm(event: &StateEvent) -> Option<&VmRecord> {
    match event {
        StateEvent::Vm { change, .. } => Some(match change.as_ref() {
            VmChange::Added(vm) | VmChange::Modified(vm) | VmChange::Deleted(vm) => vm,
        }),
        StateEvent::Reset { .. } | StateEvent::Cluster(_) => None,
    }
}

pub struct Wake {
    ticker: Interval,
    events: Option<broadcast::Receiver<StateEvent>>,
    relevant: Relevant,
    spacing: Duration,
    last_pass: Option<Instant>,
}

impl Wake {
    pub fn new(
        raft: &ClusterHandle,
        interval: Duration,
        spacing: Duration,
        relevant: Relevant,
    ) -> Self {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Wake {
            ticker,
            events: Some(raft.subscribe()),
            relevant,
            spacing,
            last_pass: None,
        }
    }

    /// Receives until a relevant change; a lagging receiver counts as one
    /// (what it missed may have been). `None`: the stream ended.
    async fn relevant_change(
        events: &mut broadcast::Receiver<StateEvent>,
        relevant: &Relevant,
    ) -> Option<()> {
        loop {
            match events.recv().await {
                Ok(event) if relevant(&event) => return Some(()),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => return Some(()),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Waits for the next pass; `false` once `stop` turns true.
    pub async fn next(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let relevant = &self.relevant;
        let events = &mut self.events;
        let changed = async {
            match events.as_mut() {
                Some(events) => Self::relevant_change(events, relevant).await,
                None => std::future::pending().await,
            }
        };
        let woken_by_change = tokio::select! {
            _ = self.ticker.tick() => None,
            changed = changed => Some(changed),
            _ = stop.wait_for(|s| *s) => return false,
        };
        if let Some(changed) = woken_by_change {
            if changed.is_none() {
                self.events = None;
            }
            let since = self.last_pass.map_or(self.spacing, |last| last.elapsed());
            if since < self.spacing {
                tokio::select! {
                    _ = tokio::time::sleep(self.spacing - since) => {}
                    _ = stop.wait_for(|s| *s) => return false,
                }
            }
        }
        // One pass covers every change queued so far.
        if let Some(events) = self.events.as_mut() {
            loop {
                match events.try_recv() {
                    Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        self.events = None;
                        break;
                    }
                }
            }
        }
        self.last_pass = Some(Instant::now());
        true
    }
}
