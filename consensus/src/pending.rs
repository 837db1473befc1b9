//! Client requests waiting on the raft loop, each with a deadline.
//!
//! Invariants: every waiting request is answered exactly once (by its
//! result, by expiry, or with `Stopped` when the loop ends), and at most
//! `REQUESTS_PENDING_MAX` wait at a time.

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::command::Applied;
use crate::{Error, Result};

/// Bound on proposals plus reads waiting for the log.
pub const REQUESTS_PENDING_MAX: usize = 8192;

pub type ProposalReply = oneshot::Sender<Result<Applied>>;
pub type ReadReply = oneshot::Sender<Result<()>>;

struct Waiting<R> {
    reply: R,
    deadline_tick: u64,
    /// When raft was last asked for it (reads only: they are asked again
    /// until confirmed, see [`Pending::reads_to_ask_again`]).
    asked_tick: u64,
}

/// Proposals keyed by request id, reads keyed by request id until raft
/// hands back their read index, then by read index until applied.
#[derive(Default)]
pub struct Pending {
    proposals: HashMap<u64, Waiting<ProposalReply>>,
    reads_unconfirmed: HashMap<u64, Waiting<ReadReply>>,
    reads_confirmed: Vec<(u64, ReadReply)>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.proposals.len() + self.reads_unconfirmed.len() + self.reads_confirmed.len()
    }

    pub fn is_full(&self) -> bool {
        self.len() >= REQUESTS_PENDING_MAX
    }

    pub fn add_proposal(&mut self, request_id: u64, reply: ProposalReply, deadline_tick: u64) {
        let previous = self.proposals.insert(
            request_id,
            Waiting {
                reply,
                deadline_tick,
                asked_tick: 0,
            },
        );
        assert!(previous.is_none(), "request id {request_id} reused");
    }

    pub fn add_read(
        &mut self,
        request_id: u64,
        reply: ReadReply,
        deadline_tick: u64,
        now_tick: u64,
    ) {
        self.reads_unconfirmed.insert(
            request_id,
            Waiting {
                reply,
                deadline_tick,
                asked_tick: now_tick,
            },
        );
    }

    /// The reads raft has not confirmed though it was asked `every_ticks`
    /// ago or more, now counted as asked again. A read index request is
    /// lost without a word when the leader it went to dies, changes, or
    /// has not committed in its term yet; asking again is safe (the
    /// leader drops a request it already holds, and a second answer finds
    /// the read gone), so a barrier waits a few ticks, not its timeout.
    pub fn reads_to_ask_again(&mut self, now_tick: u64, every_ticks: u64) -> Vec<u64> {
        self.reads_unconfirmed
            .iter_mut()
            .filter(|(_, w)| now_tick.saturating_sub(w.asked_tick) >= every_ticks)
            .map(|(request_id, w)| {
                w.asked_tick = now_tick;
                *request_id
            })
            .collect()
    }

    /// Answers a proposal this node made; a proposal we no longer wait for
    /// (expired) is ignored.
    pub fn answer_proposal(&mut self, request_id: u64, result: Result<Applied>) {
        if let Some(waiting) = self.proposals.remove(&request_id) {
            let _ = waiting.reply.send(result);
        }
    }

    /// Raft confirmed the read may be served once `read_index` is applied.
    pub fn confirm_read(&mut self, request_id: u64, read_index: u64) {
        if let Some(waiting) = self.reads_unconfirmed.remove(&request_id) {
            self.reads_confirmed.push((read_index, waiting.reply));
        }
    }

    /// Answers every confirmed read whose index is now applied.
    pub fn release_reads(&mut self, applied_index: u64) {
        let mut index = 0;
        while index < self.reads_confirmed.len() {
            if self.reads_confirmed[index].0 <= applied_index {
                let (_, reply) = self.reads_confirmed.swap_remove(index);
                let _ = reply.send(Ok(()));
            } else {
                index += 1;
            }
        }
    }

    /// Fails everything whose deadline has passed.
    pub fn expire(&mut self, now_tick: u64, timeout_ms: u64) {
        for waiting in take_expired(&mut self.proposals, now_tick) {
            let _ = waiting.reply.send(Err(Error::Timeout { timeout_ms }));
        }
        for waiting in take_expired(&mut self.reads_unconfirmed, now_tick) {
            let _ = waiting.reply.send(Err(Error::Timeout { timeout_ms }));
        }
    }
}

fn take_expired<R>(waiting: &mut HashMap<u64, Waiting<R>>, now_tick: u64) -> Vec<Waiting<R>> {
    let expired: Vec<u64> = waiting
        .iter()
        .filter(|(_, w)| w.deadline_tick <= now_tick)
        .map(|(id, _)| *id)
        .collect();
    expired
        .into_iter()
        .filter_map(|id| waiting.remove(&id))
        .collect()
}

/// Bits of a request id below its epoch: 2^40 requests (days at a million
/// a second) before the node begins another epoch.
const REQUEST_COUNTER_BITS: u32 = 40;

/// The ids a node tags its proposals and reads with: a durable epoch
/// (begun at every start and whenever the counter runs out) above a
/// counter.
///
/// Invariant: no id repeats one this node handed out before, in this
/// process or an earlier one (up to 2^24 epochs), so an entry an earlier
/// incarnation proposed that applies after a restart answers no new
/// request.
#[derive(Debug)]
pub struct RequestIds {
    epoch: u64,
    counter: u64,
}

impl RequestIds {
    pub fn new(epoch: u64) -> Self {
        Self { epoch, counter: 0 }
    }

    /// The next id, or `None` once this epoch is used up: the caller
    /// begins a new durable epoch and calls [`RequestIds::new`].
    pub fn next(&mut self) -> Option<u64> {
        self.counter += 1;
        if self.counter >= 1 << REQUEST_COUNTER_BITS {
            return None;
        }
        let epoch = self.epoch & ((1 << (64 - REQUEST_COUNTER_BITS)) - 1);
        Some(epoch << REQUEST_COUNTER_BITS | self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_of_different_epochs_never_meet() {
        let mut first = RequestIds::new(1);
        let before: Vec<u64> = (0..1000).map(|_| first.next().unwrap()).collect();
        let mut second = RequestIds::new(2);
        let after: Vec<u64> = (0..1000).map(|_| second.next().unwrap()).collect();
        assert!(before.iter().all(|id| *id != 0 && !after.contains(id)));
        assert!(before.windows(2).all(|w| w[0] < w[1]));
        let mut used_up = RequestIds {
            epoch: 3,
            counter: (1 << REQUEST_COUNTER_BITS) - 2,
        };
        assert!(used_up.next().is_some());
        assert_eq!(used_up.next(), None);
    }
}
