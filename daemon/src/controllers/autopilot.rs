//! Autopilot: keep the voter count the cluster's settings ask for.
//!
//! Invariants: the leader is never demoted; a dead voter is demoted only
//! when a live learner or worker can take its place, so a dead voter that
//! cannot be replaced keeps its vote and may come back; with more voters
//! than wanted, dead ones go first; while voters are short and no live
//! learner is catching up, one live worker is made a learner. Promoting
//! a caught-up, active learner to voter is the raft loop's job.

use std::collections::BTreeMap;

use blixard_consensus::{MembershipChange, RaftStatus, Settings};

/// What a node asking to join becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinAs {
    /// A raft learner, on its way to voter: the members are fewer than
    /// the voters wanted.
    Learner,
    /// A log-less worker fed by a voter.
    Worker,
    /// It joined before (a retry after a restart) and is already this.
    Already(Joined),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    Learner,
    Worker,
}

/// A join refused: the id is taken at another address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id {node_id} is already a member at {address}; pick another id or remove it first")]
pub struct IdTaken {
    pub node_id: u64,
    pub address: String,
}

/// Decides what node `node_id`, joining from `address`, becomes: the
/// state's record of it (`known`: its address, if it joined before),
/// whether it is a raft member, and how many members there are of the
/// `voters_wanted`. Raft members (voters and the learners that will
/// become voters) up to the voter count; workers beyond it.
pub fn join_as(
    node_id: u64,
    address: &str,
    known: Option<&str>,
    is_member: bool,
    members: usize,
    voters_wanted: usize,
) -> Result<JoinAs, IdTaken> {
    match known {
        Some(known) if known == address => Ok(JoinAs::Already(match is_member {
            true => Joined::Learner,
            false => Joined::Worker,
        })),
        Some(known) => Err(IdTaken {
            node_id,
            address: known.to_string(),
        }),
        None if members < voters_wanted => Ok(JoinAs::Learner),
        None => Ok(JoinAs::Worker),
    }
}

/// The next membership change, if any.
pub fn next_change(
    status: &RaftStatus,
    settings: &Settings,
    workers: &[(u64, String)],
    alive: &dyn Fn(u64) -> bool,
    dead_for_ms: &BTreeMap<u64, u64>,
) -> Option<MembershipChange> {
    let voters: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    let live_learner = status.members.iter().any(|m| !m.voter && alive(m.node_id));
    // A learner that is alive, or that gossip has not seen dead for long
    // (it may have just joined), is on its way to becoming a voter.
    let learner_in_progress = status.members.iter().any(|m| {
        !m.voter
            && dead_for_ms
                .get(&m.node_id)
                .is_none_or(|ms| *ms < settings.dead_voter_after_ms)
    });
    let live_worker = workers.iter().find(|(id, _)| alive(*id));
    let spare = live_learner || live_worker.is_some();
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
    if let (Some(node_id), true) = (long_dead, spare) {
        return Some(MembershipChange::Demote { node_id });
    }
    // Voters dead only briefly still count: they may be back any moment.
    let counted_voters = voters
        .iter()
        .filter(|id| {
            dead_for_ms
                .get(id)
                .is_none_or(|ms| *ms < settings.dead_voter_after_ms)
        })
        .count();
    match (counted_voters < wanted && !learner_in_progress, live_worker) {
        (true, Some((node_id, address))) => Some(MembershipChange::AddLearner {
            node_id: *node_id,
            address: address.clone(),
        }),
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
            next_change(&status(&[1, 2, 3], &[4]), &settings, &[], &alive, &dead),
            Some(MembershipChange::Demote { node_id: 3 })
        );
        assert_eq!(
            next_change(&status(&[1, 2, 3], &[]), &settings, &[], &alive, &dead),
            None
        );
        let recently = BTreeMap::from([(3, 10)]);
        assert_eq!(
            next_change(&status(&[1, 2, 3], &[4]), &settings, &[], &alive, &recently),
            None
        );
        let no_live_spare = |id: u64| id != 3 && id != 4;
        assert_eq!(
            next_change(
                &status(&[1, 2, 3], &[4]),
                &settings,
                &[],
                &no_live_spare,
                &dead
            ),
            None
        );
    }

    #[test]
    fn a_worker_becomes_a_learner_while_voters_are_short() {
        let settings = Settings::default();
        let workers = [(5, "n5:1".to_string())];
        let dead = BTreeMap::from([(3, settings.dead_voter_after_ms)]);
        let alive = |id: u64| id != 3;
        // First the dead voter goes (a worker can replace it) ...
        assert_eq!(
            next_change(&status(&[1, 2, 3], &[]), &settings, &workers, &alive, &dead),
            Some(MembershipChange::Demote { node_id: 3 })
        );
        // ... then, with two live voters, the worker becomes a learner.
        assert_eq!(
            next_change(&status(&[1, 2], &[3]), &settings, &workers, &alive, &dead),
            Some(MembershipChange::AddLearner {
                node_id: 5,
                address: "n5:1".into()
            })
        );
        // A voter dead only briefly still counts.
        let briefly = BTreeMap::from([(3, 10)]);
        assert_eq!(
            next_change(
                &status(&[1, 2, 3], &[]),
                &settings,
                &workers,
                &alive,
                &briefly
            ),
            None
        );
        // A learner just joined (not yet seen by gossip): nothing more.
        let unseen = |id: u64| id != 3 && id != 4;
        let just_joined = BTreeMap::from([(3, settings.dead_voter_after_ms), (4, 10)]);
        assert_eq!(
            next_change(
                &status(&[1, 2], &[3, 4]),
                &settings,
                &workers,
                &unseen,
                &just_joined
            ),
            None
        );
        // A live learner already catching up: nothing more.
        let none_dead = BTreeMap::new();
        assert_eq!(
            next_change(
                &status(&[1, 2], &[4]),
                &settings,
                &workers,
                &alive,
                &none_dead
            ),
            None
        );
        let dead_worker = |id: u64| id != 3 && id != 5;
        assert_eq!(
            next_change(
                &status(&[1, 2], &[3]),
                &settings,
                &workers,
                &dead_worker,
                &dead
            ),
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
                &[],
                &alive,
                &BTreeMap::new()
            ),
            Some(MembershipChange::Demote { node_id: 5 })
        );
        let mut leader_last = status(&[1, 2, 3, 4], &[]);
        leader_last.leader_id = 4;
        assert_eq!(
            next_change(&leader_last, &settings, &[], &alive, &BTreeMap::new()),
            Some(MembershipChange::Demote { node_id: 3 })
        );
    }

    #[test]
    fn joiners_become_members_up_to_the_voter_count_then_workers() {
        use super::{join_as, IdTaken, JoinAs, Joined};
        assert_eq!(join_as(4, "a:1", None, false, 2, 3), Ok(JoinAs::Learner));
        assert_eq!(join_as(4, "a:1", None, false, 3, 3), Ok(JoinAs::Worker));
        assert_eq!(join_as(4, "a:1", None, false, 5, 3), Ok(JoinAs::Worker));
        // A retry after a restart finds what it became.
        assert_eq!(
            join_as(4, "a:1", Some("a:1"), true, 3, 3),
            Ok(JoinAs::Already(Joined::Learner))
        );
        assert_eq!(
            join_as(4, "a:1", Some("a:1"), false, 2, 3),
            Ok(JoinAs::Already(Joined::Worker))
        );
        // The id is someone else's.
        let taken = join_as(4, "b:1", Some("a:1"), false, 2, 3).unwrap_err();
        assert_eq!(
            taken,
            IdTaken {
                node_id: 4,
                address: "a:1".into()
            }
        );
        assert!(taken.to_string().contains("pick another id"), "{taken}");
    }
}
