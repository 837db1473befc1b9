//! Autopilot: keep the voter count the cluster's settings ask for.
//!
//! Invariants: the leader is never demoted; a dead voter is demoted only
//! when a live worker can take its place (the promotion itself is the
//! raft loop's, which promotes caught-up, active learners while voters
//! are short), so a dead voter that cannot be replaced keeps its vote and
//! may come back; with more voters than wanted, dead ones go first.

use std::collections::BTreeMap;

use blixard_consensus::{MembershipChange, RaftStatus, Settings};

/// The next membership change, if any.
pub fn next_change(
    status: &RaftStatus,
    settings: &Settings,
    alive: &dyn Fn(u64) -> bool,
    dead_for_ms: &BTreeMap<u64, u64>,
) -> Option<MembershipChange> {
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    let spare_worker = status.members.iter().any(|m| !m.voter && alive(m.node_id));
    let wanted = settings.voters as usize;
    let long_dead = voters.iter().copied().find(|id| {
        *id != status.leader_id
            && dead_for_ms
                .get(id)
                .is_some_and(|ms| *ms >= settings.dead_voter_after_ms)
    });
    if voters.len() > wanted {
        let surplus = long_dead
            .or_else(|| {
                voters
                    .iter()
                    .copied()
                    .find(|id| !alive(*id) && *id != status.leader_id)
            })
            .or_else(|| {
                voters
                    .iter()
                    .copied()
                    .rev()
                    .find(|id| *id != status.leader_id)
            })?;
        return Some(MembershipChange::Demote { node_id: surplus });
    }
    match (long_dead, spare_worker) {
        (Some(node_id), true) => Some(MembershipChange::Demote { node_id }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_consensus::MemberStatus;

    fn status(voters: &[u64], workers: &[u64]) -> RaftStatus {
        let member = |node_id, voter| MemberStatus {
            node_id,
            address: String::new(),
            voter,
        };
        RaftStatus {
            leader_id: 1,
            members: voters
                .iter()
                .map(|id| member(*id, true))
                .chain(workers.iter().map(|id| member(*id, false)))
                .collect(),
            ..RaftStatus::default()
        }
    }

    #[test]
    fn a_long_dead_voter_is_demoted_only_with_a_spare() {
        let settings = Settings::default();
        let dead = BTreeMap::from([(3, settings.dead_voter_after_ms)]);
        let alive = |id: u64| id != 3;
        assert_eq!(
            next_change(&status(&[1, 2, 3], &[4]), &settings, &alive, &dead),
            Some(MembershipChange::Demote { node_id: 3 })
        );
        assert_eq!(
            next_change(&status(&[1, 2, 3], &[]), &settings, &alive, &dead),
            None
        );
        let recently = BTreeMap::from([(3, 10)]);
        assert_eq!(
            next_change(&status(&[1, 2, 3], &[4]), &settings, &alive, &recently),
            None
        );
        let no_live_spare = |id: u64| id != 3 && id != 4;
        assert_eq!(
            next_change(&status(&[1, 2, 3], &[4]), &settings, &no_live_spare, &dead),
            None
        );
    }

    #[test]
    fn surplus_voters_are_demoted_but_never_the_leader() {
        let settings = Settings::default();
        let alive = |_| true;
        assert_eq!(
            next_change(
                &status(&[1, 2, 3, 4, 5], &[]),
                &settings,
                &alive,
                &BTreeMap::new()
            ),
            Some(MembershipChange::Demote { node_id: 5 })
        );
        let mut leader_last = status(&[1, 2, 3, 4], &[]);
        leader_last.leader_id = 4;
        assert_eq!(
            next_change(&leader_last, &settings, &alive, &BTreeMap::new()),
            Some(MembershipChange::Demote { node_id: 3 })
        );
    }
}
