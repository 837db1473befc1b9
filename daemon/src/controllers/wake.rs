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

use crate::shutdown::Shutdown;
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
        Self::on(raft.subscribe(), interval, spacing, relevant)
    }

    fn on(
        events: broadcast::Receiver<StateEvent>,
        interval: Duration,
        spacing: Duration,
        relevant: Relevant,
    ) -> Self {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Wake {
            ticker,
            events: Some(events),
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

    /// Waits for the next pass; `false` once the node stops.
    pub async fn next(&mut self, stop: &mut Shutdown) -> bool {
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
            _ = stop.stopped() => return false,
        };
        if let Some(changed) = woken_by_change {
            if changed.is_none() {
                self.events = None;
            }
            let since = self.last_pass.map_or(self.spacing, |last| last.elapsed());
            if since < self.spacing {
                tokio::select! {
                    _ = tokio::time::sleep(self.spacing - since) => {}
                    _ = stop.stopped() => return false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown::TaskGroup;

    const TICK: Duration = Duration::from_secs(3600);
    const PROMPTLY: Duration = Duration::from_secs(10);
    /// How long a wake that must not happen is given to happen anyway.
    const QUIET: Duration = Duration::from_millis(200);

    fn reset(revision: u64) -> StateEvent {
        StateEvent::Reset { revision }
    }

    /// Only even revisions matter to the loop under test.
    fn even_resets() -> Relevant {
        Box::new(|event| matches!(event, StateEvent::Reset { revision } if revision % 2 == 0))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn relevant_changes_wake_early_and_others_do_not() {
        runtime().block_on(async {
            let (events, receiver) = broadcast::channel(16);
            let group = TaskGroup::default();
            let mut stop = group.shutdown();
            let mut wake = Wake::on(receiver, TICK, Duration::ZERO, even_resets());
            // The first tick is immediate.
            assert!(wake.next(&mut stop).await);

            events.send(reset(1)).unwrap();
            assert!(tokio::time::timeout(QUIET, wake.next(&mut stop))
                .await
                .is_err());

            events.send(reset(2)).unwrap();
            let woke = tokio::time::timeout(PROMPTLY, wake.next(&mut stop)).await;
            assert_eq!(woke.ok(), Some(true));
        });
    }

    #[test]
    fn a_burst_wakes_once() {
        runtime().block_on(async {
            let (events, receiver) = broadcast::channel(16);
            let group = TaskGroup::default();
            let mut stop = group.shutdown();
            let mut wake = Wake::on(receiver, TICK, Duration::ZERO, even_resets());
            assert!(wake.next(&mut stop).await);
            for revision in [2, 4, 6, 8] {
                events.send(reset(revision)).unwrap();
            }
            let woke = tokio::time::timeout(PROMPTLY, wake.next(&mut stop)).await;
            assert_eq!(woke.ok(), Some(true));
            assert!(tokio::time::timeout(QUIET, wake.next(&mut stop))
                .await
                .is_err());
        });
    }

    #[test]
    fn falling_behind_counts_as_a_change_and_stop_ends_the_loop() {
        runtime().block_on(async {
            let (events, receiver) = broadcast::channel(2);
            let group = TaskGroup::default();
            let mut stop = group.shutdown();
            let mut wake = Wake::on(receiver, TICK, Duration::ZERO, even_resets());
            assert!(wake.next(&mut stop).await);
            // Irrelevant, but more than the buffer holds: what was missed
            // might have mattered.
            for revision in [1, 3, 5, 7] {
                events.send(reset(revision)).unwrap();
            }
            let woke = tokio::time::timeout(PROMPTLY, wake.next(&mut stop)).await;
            assert_eq!(woke.ok(), Some(true));

            group.stop().await;
            let stopped = tokio::time::timeout(PROMPTLY, wake.next(&mut stop)).await;
            assert_eq!(stopped.ok(), Some(false));
        });
    }
}
