//! Waits between retries of a peer, a node or a stream.
//!
//! Invariant: each wait lies between half the current step and the step,
//! drawn at random (so clients that failed together do not retry
//! together); the step doubles from the first wait up to the cap, and
//! [`Backoff::reset`] starts it again from the first.

use std::time::Duration;

// madsim's generator: seeded in the simulation, so a run repeats.
use madsim::rand::{thread_rng, Rng as _};

#[derive(Debug, Clone)]
pub struct Backoff {
    first_ms: u64,
    max_ms: u64,
    step_ms: u64,
}

impl Backoff {
    /// Steps from `first_ms` up to `max_ms`.
    pub fn new(first_ms: u64, max_ms: u64) -> Self {
        debug_assert!(first_ms > 0, "a backoff that never waits is a busy loop");
        Self {
            first_ms,
            max_ms: max_ms.max(first_ms),
            step_ms: first_ms,
        }
    }

    /// The next wait; the step after it is twice as long, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step_ms;
        self.step_ms = step.saturating_mul(2).min(self.max_ms);
        let half = step / 2;
        Duration::from_millis(half + thread_rng().gen_range(0..=step - half))
    }

    /// After a success: the next wait is short again.
    pub fn reset(&mut self) {
        self.step_ms = self.first_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(100, 1000);
        for step in [100, 200, 400, 800, 1000, 1000] {
            let wait = backoff.next_wait().as_millis() as u64;
            assert!(
                (step / 2..=step).contains(&wait),
                "{wait} for a step of {step}"
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
    }
}
