//! Fencing: a node that cannot reach a raft quorum for `fence_after_ms`
//! stops its VMs, because by then the cluster may be placing them
//! elsewhere (see `failover`).
//!
//! Invariants: contact means a linearizable read barrier succeeded (a
//! leader confirmed by a quorum answered, and this node's state caught up
//! to it); once fenced, the node stays fenced until such a barrier
//! succeeds again, so the reconciler never acts on a stale assignment.

use crate::handle::ClusterHandle;
use crate::shutdown::Shutdown;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Runs until `stop`, publishing `true` on `fenced` while fenced.
pub async fn run(
    raft: ClusterHandle,
    fence_after_ms: u64,
    fenced: watch::Sender<bool>,
    mut stop: Shutdown,
) {
    let check_interval = Duration::from_millis((fence_after_ms / 5).clamp(100, 1_000));
    let mut last_contact = Instant::now();
    loop {
        let round_started = Instant::now();
        let barrier = tokio::time::timeout(check_interval, raft.read_barrier());
        let contact = tokio::select! {
            result = barrier => matches!(result, Ok(Ok(()))),
            _ = stop.stopped() => return,
        };
        let now = Instant::now();
        if contact {
            last_contact = now;
            if *fenced.borrow() {
                tracing::warn!("quorum reachable again; lifting the fence");
                let _ = fenced.send(false);
            }
        } else if !*fenced.borrow()
            && now.duration_since(last_contact) >= Duration::from_millis(fence_after_ms)
        {
            tracing::warn!(
                fence_after_ms,
                "no quorum reachable; fencing: stopping this node's VMs"
            );
            let _ = fenced.send(true);
        }
        // One check per interval, whether the barrier answered, failed at
        // once (no voter known yet) or timed out.
        tokio::select! {
            _ = tokio::time::sleep_until(round_started + check_interval) => {}
            _ = stop.stopped() => return,
        }
    }
}
