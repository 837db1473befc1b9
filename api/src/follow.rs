//! Following a cluster through one member at a time, as the dashboard and
//! the REPL do: the addresses to try (those given, then the members the
//! cluster names), in turn, with a wait between failed sessions.
//!
//! Invariants: at most [`ADDRESSES_MAX`] addresses are kept, the ones
//! given first; each failure moves on to the next address; the wait
//! between sessions doubles (jittered) up to its cap and starts short
//! again after a session that held.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::pb;

/// Member addresses remembered to fail over to.
pub const ADDRESSES_MAX: usize = 64;
const WAIT_FIRST_MS: u64 = 250;
const WAIT_MAX_MS: u64 = 5_000;

/// How a session with one member ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub reason: String,
    /// Whether the session had worked (the next wait is short again).
    pub held: bool,
}

impl Ended {
    pub fn new(reason: impl std::fmt::Display, held: bool) -> Self {
        Self {
            reason: reason.to_string(),
            held,
        }
    }
}

/// The members to follow the cluster through.
#[derive(Debug, Clone)]
pub struct Members {
    addresses: Vec<String>,
    next: usize,
    backoff: Backoff,
}

impl Members {
    /// Starts from `seeds` (at least one address).
    pub fn new(seeds: Vec<String>) -> Self {
        assert!(!seeds.is_empty(), "following a cluster needs an address");
        let mut seeds = seeds;
        seeds.truncate(ADDRESSES_MAX);
        Self {
            addresses: seeds,
            next: 0,
            backoff: Backoff::new(WAIT_FIRST_MS, WAIT_MAX_MS),
        }
    }

    /// The address to try now: the one after the last that failed.
    pub fn current(&self) -> &str {
        &self.addresses[self.next % self.addresses.len()]
    }

    /// Remembers the members `status` names, within the bound.
    pub fn learn(&mut self, status: &pb::StatusResponse) {
        for member in &status.members {
            if member.address.is_empty() || self.addresses.contains(&member.address) {
                continue;
            }
            if self.addresses.len() == ADDRESSES_MAX {
                break;
            }
            self.addresses.push(member.address.clone());
        }
    }

    /// After a session through the current address ended: moves to the
    /// next address and returns how long to wait before trying it.
    pub fn failed(&mut self, ended: &Ended) -> Duration {
        if ended.held {
            self.backoff.reset();
        }
        self.next = self.next.wrapping_add(1);
        self.backoff.next_wait()
    }

    /// Starts over from `seed` alone (the REPL's `connect ADDR`).
    pub fn restart_from(&mut self, seed: String) {
        *self = Self::new(vec![seed]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(addresses: &[&str]) -> pb::StatusResponse {
        pb::StatusResponse {
            members: addresses
                .iter()
                .map(|address| pb::Member {
                    address: address.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn failures_go_round_the_members_it_learned() {
        let mut members = Members::new(vec!["a:1".into()]);
        members.learn(&status(&["a:1", "b:1", "", "c:1"]));
        let mut tried = Vec::new();
        for _ in 0..4 {
            tried.push(members.current().to_string());
            members.failed(&Ended::new("down", false));
        }
        assert_eq!(tried, ["a:1", "b:1", "c:1", "a:1"]);
        members.restart_from("z:9".into());
        assert_eq!(members.current(), "z:9");
    }

    #[test]
    fn addresses_are_bounded_and_waits_grow_until_a_session_holds() {
        let mut members = Members::new(vec!["seed:1".into()]);
        let many: Vec<String> = (0..200).map(|i| format!("n{i}:1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        members.learn(&status(&many));
        assert_eq!(members.addresses.len(), ADDRESSES_MAX);
        assert_eq!(members.addresses[0], "seed:1");

        let waits: Vec<Duration> = (0..6)
            .map(|_| members.failed(&Ended::new("down", false)))
            .collect();
        assert!(waits[5] > Duration::from_millis(WAIT_FIRST_MS), "{waits:?}");
        assert!(waits
            .iter()
            .all(|w| *w <= Duration::from_millis(WAIT_MAX_MS)));
        let after_holding = members.failed(&Ended::new("lost", true));
        assert!(after_holding <= Duration::from_millis(WAIT_FIRST_MS));
    }
}
