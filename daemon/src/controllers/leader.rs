//! The leader's control loop: failover, drains, placement and autopilot,
//! one pass every `LEADER_PASS_INTERVAL_MS`, sooner when the state changes.
//!
//! Invariants: only the raft leader acts, and every decision goes through
//! the log, so a deposed leader's late proposals are refused or harmless;
//! how long a node has been dead is measured from when this leader first
//! saw it dead, so a new leader waits out a full grace period again
//! rather than trusting anyone's clock.

use crate::handle::ClusterHandle;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::Shutdown;
use blixard_api::limits;
use blixard_api::validate::clip;
use blixard_consensus::{Command, DesiredState, Rejection, Role, StateEvent};
use blixard_membership::Membership;
use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::controllers::scheduler::{self, Decision, Params};
use crate::controllers::wake::{self, Wake};
use crate::controllers::{autopilot, drain, failover};

const LEADER_PASS_INTERVAL_MS: u64 = 200;
/// A state change (a VM to place) wakes the loop early, at most this often.
const PASS_SPACING_MS: u64 = 10;
/// Bound on commands proposed in one pass (the rest wait a pass).
const COMMANDS_PER_PASS_MAX: usize = 4096;
/// Enough to fill raft's batches (256 requests per Ready), a quarter of the
/// node's pending-request bound.
const PROPOSALS_IN_FLIGHT_MAX: usize = 1024;

/// Which nodes gossip sees alive, and since when the others are dead.
#[derive(Default)]
struct Liveness {
    alive: BTreeSet<u64>,
    dead_since: BTreeMap<u64, Instant>,
}

impl Liveness {
    async fn observe(&mut self, membership: &Membership, nodes: &[u64], me: u64) {
        self.alive = membership
            .members()
            .await
            .into_iter()
            .filter(|m| m.alive)
            .map(|m| m.node_id)
            .collect();
        self.alive.insert(me);
        let now = Instant::now();
        self.dead_since.retain(|id, _| nodes.contains(id));
        for id in nodes {
            if self.alive.contains(id) {
                self.dead_since.remove(id);
            } else {
                self.dead_since.entry(*id).or_insert(now);
            }
        }
    }

    fn dead_for_ms(&self) -> BTreeMap<u64, u64> {
        self.dead_since
            .iter()
            .map(|(id, since)| (*id, since.elapsed().as_millis() as u64))
            .collect()
    }
}

/// Runs until the node stops.
pub async fn run(
    raft: ClusterHandle,
    membership: Arc<Membership>,
    params: Params,
    mut stop: Shutdown,
) {
    let me = raft.status().node_id;
    let mut liveness = Liveness::default();
    let mut wake = Wake::new(
        &raft,
        Duration::from_millis(LEADER_PASS_INTERVAL_MS),
        Duration::from_millis(PASS_SPACING_MS),
        // A VM waiting for a node. News about nodes (joins, drains) waits
        // for the tick: cluster events come with every write.
        Box::new(|event| match event {
            StateEvent::Reset { .. } => true,
            _ => wake::changed_vm(event).is_some_and(|vm| {
                vm.desired_state == DesiredState::Running && vm.assigned_node.is_none()
            }),
        }),
    );
    while wake.next(&mut stop).await {
        let status = raft.status();
        if status.role != Role::Leader {
            liveness = Liveness::default();
            continue;
        }
        let nodes: Vec<u64> = raft.read_state(|s| s.nodes.keys().copied().collect());
        liveness.observe(&membership, &nodes, me).await;
        let dead_for_ms = liveness.dead_for_ms();
        let alive = |id: u64| liveness.alive.contains(&id);

        let commands = raft.read_state(|state| {
            let mut commands = failover::lost_vms(state, &dead_for_ms);
            commands.extend(drain::drain_steps(state, blixard_api::unix_ms_now()));
            commands
        });
        propose_all(&raft, commands).await;

        let decisions = raft.read_state(|state| {
            let views = scheduler::node_views(state, &alive);
            scheduler::schedule(state, &views, params)
                .into_iter()
                .filter_map(|decision| match decision {
                    Decision::Place {
                        vm,
                        node_id,
                        reason,
                    } => Some(Command::AssignVm {
                        name: vm,
                        node_id: Some(node_id),
                        reason: clip(&reason, limits::TEXT_LEN_MAX),
                        // Judged again by this when it applies.
                        vcpu_overcommit: Some(params.vcpu_overcommit.max(1)),
                        needs_agent: true,
                    }),
                    // Only a changed reason is worth a log entry.
                    Decision::Unplaceable { vm, reason } => {
                        let reason = clip(&reason, limits::TEXT_LEN_MAX);
                        let known = state.vms.get(&vm).map(|v| v.observed.reason.as_str());
                        (known != Some(reason.as_str()))
                            .then_some(Command::MarkUnplaceable { name: vm, reason })
                    }
                })
                .collect::<Vec<_>>()
        });
        propose_all(&raft, decisions).await;

        let (settings, workers) = raft.read_state(|s| {
            let workers: Vec<(u64, String)> = s
                .nodes
                .values()
                .filter(|n| !status.members.iter().any(|m| m.node_id == n.node_id))
                .map(|n| (n.node_id, n.address.clone()))
                .collect();
            (s.settings.clone(), workers)
        });
        let change = autopilot::next_change(&status, &settings, &workers, &alive, &dead_for_ms);
        if let Some(change) = change {
            tracing::info!(?change, "autopilot changing the voter set");
            if let Err(error) = raft.change_membership(change).await {
                tracing::warn!(%error, "autopilot change not committed");
            }
        }
    }
}

/// Proposes commands concurrently (raft batches them into few entries),
/// at most `PROPOSALS_IN_FLIGHT_MAX` at a time so clients' requests keep
/// room in the node's pending queue; refusals are normal (the state moved
/// on) and retried next pass.
async fn propose_all(raft: &ClusterHandle, mut commands: Vec<Command>) {
    commands.truncate(COMMANDS_PER_PASS_MAX);
    let mut results = stream::iter(commands.into_iter().map(|command| async move {
        let described = format!("{command:?}");
        (described, raft.propose(command).await)
    }))
    .buffer_unordered(PROPOSALS_IN_FLIGHT_MAX);
    let mut misfits = 0u32;
    while let Some((command, result)) = results.next().await {
        if let Err(error) = result {
            if matches!(
                &error,
                blixard_consensus::Error::Rejected(Rejection::DoesNotFit { .. })
            ) {
                misfits += 1;
            }
            tracing::debug!(%error, command, "leader command not applied");
        }
    }
    if misfits > 0 {
        // The state moved on since the pass decided: placed next pass.
        tracing::info!(
            misfits,
            "placements no longer fitting their node when applied"
        );
    }
}
