//! Streams a client opened live only as long as its token.
//!
//! Invariant: a stream opened with a token (`Caller::Client`) yields
//! nothing more once that token is revoked or expired on this node: within
//! [`TOKEN_RECHECK_INTERVAL_MS`] its last item is `Unauthenticated` naming
//! why, and then it ends. A node's feed ends likewise once the node is
//! removed from the cluster ([`while_allowed`]). Streams of a cluster run
//! with security off are passed through.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::time::{Interval, MissedTickBehavior};
use tonic::Status;

use super::Caller;
use crate::handle::ClusterHandle;

/// How often an open stream re-checks its token: the most a revoked or
/// expired token keeps a stream.
pub const TOKEN_RECHECK_INTERVAL_MS: u64 = 1_000;

pub type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `stream`, ended once `caller`'s token stops being valid.
pub fn while_token_valid<T: Send + 'static>(
    caller: Option<&Caller>,
    state: ClusterHandle,
    stream: BoxedStream<T>,
) -> BoxedStream<T> {
    let Some(Caller::Client { accessor, .. }) = caller else {
        return stream;
    };
    let accessor = accessor.clone();
    while_allowed(stream, move || {
        // A worker cut off from the voters cannot know of a revocation.
        if !state.is_member() {
            let stale_after = Duration::from_millis(super::TOKENS_STALE_AFTER_MS);
            if state
                .mirror()
                .unconfirmed_for()
                .is_none_or(|age| age > stale_after)
            {
                return Some(Status::unavailable(
                    "this worker lost the voters, so it cannot check tokens; this stream ends",
                ));
            }
        }
        let valid = state.read_state(|state| {
            state
                .tokens
                .get(&accessor)
                .map(|token| token.is_valid_at(blixard_api::unix_ms_now()))
        });
        match valid {
            Some(true) => None,
            Some(false) => Some(Status::unauthenticated(format!(
                "token {accessor} has expired; this stream ends"
            ))),
            None => Some(Status::unauthenticated(format!(
                "token {accessor} was revoked; this stream ends"
            ))),
        }
    })
}

/// `stream`, ended with the status `refusal` gives once it gives one
/// (asked every [`TOKEN_RECHECK_INTERVAL_MS`]).
pub fn while_allowed<T: Send + 'static>(
    stream: BoxedStream<T>,
    refusal: impl Fn() -> Option<Status> + Send + 'static,
) -> BoxedStream<T> {
    let mut recheck = tokio::time::interval(Duration::from_millis(TOKEN_RECHECK_INTERVAL_MS));
    recheck.set_missed_tick_behavior(MissedTickBehavior::Skip);
    Box::pin(Bounded {
        inner: stream,
        refusal: Box::new(refusal),
        recheck,
        ended: false,
    })
}

struct Bounded<T> {
    inner: BoxedStream<T>,
    refusal: Box<dyn Fn() -> Option<Status> + Send>,
    recheck: Interval,
    ended: bool,
}

impl<T> Stream for Bounded<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // Polling until pending leaves the timer registered to wake us.
        while this.recheck.poll_tick(cx).is_ready() {
            if let Some(status) = (this.refusal)() {
                this.ended = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        let next = this.inner.as_mut().poll_next(cx);
        if matches!(next, Poll::Ready(None)) {
            this.ended = true;
        }
        next
    }
}
