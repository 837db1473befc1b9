//! When a control loop runs its next pass: on its ticker, or soon after
//! the cluster state changes, whichever comes first.
//!
//! Invariants: a pass never waits longer than one tick; state changes only
//! make it sooner, never more often than once per `spacing` (a burst of
//! thousands of changes wakes it once); the ticker alone keeps the loop
//! going if the change stream ends.

use std::time::Duration;

use blixard_consensus::StateEvent;
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::handle::ClusterHandle;

pub struct Wake {
    ticker: Interval,
    events: Option<broadcast::Receiver<StateEvent>>,
    spacing: Duration,
    last_pass: Option<Instant>,
}

impl Wake {
    pub fn new(raft: &ClusterHandle, interval: Duration, spacing: Duration) -> Self {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Wake {
            ticker,
            events: Some(raft.subscribe()),
            spacing,
            last_pass: None,
        }
    }

    /// Waits for the next pass; `false` once `stop` turns true.
    pub async fn next(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let events = &mut self.events;
        let changed = async {
            match events.as_mut() {
                Some(events) => Some(events.recv().await.err()),
                None => std::future::pending().await,
            }
        };
        let woken_by_change = tokio::select! {
            _ = self.ticker.tick() => None,
            error = changed => error,
            _ = stop.wait_for(|s| *s) => return false,
        };
        if let Some(error) = woken_by_change {
            if let Some(broadcast::error::RecvError::Closed) = error {
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
