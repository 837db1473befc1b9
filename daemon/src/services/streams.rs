//! Long-lived client streams (`vm watch`, `events --follow`) and their
//! bounds.
//!
//! Invariants:
//! - At most [`STREAMS_MAX`] such streams are open on a node; a slot is
//!   held until the gRPC stream itself is dropped (what it has buffered
//!   lives as long as it does), and a stream past the bound is refused
//!   with `ResourceExhausted`.
//! - A stream's producer never waits more than [`STALL_MS`] for room: a
//!   reader that takes nothing that long is ended with `DataLoss` (the one
//!   slot of its buffer kept free for that error), and the producer's task
//!   and memory go with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::Status;

use super::lease::BoxedStream;

/// Watch and follow streams open on one node at most.
pub const STREAMS_MAX: usize = 256;
/// A stream whose reader takes nothing for this long is ended.
pub const STALL_MS: u64 = 30_000;
/// Items buffered between a stream's producer and gRPC.
pub const BUFFERED_MAX: usize = 32;

/// The node's stream slots (one per node, shared by the services).
#[derive(Debug, Clone)]
pub struct StreamSlots(Arc<Semaphore>);

impl Default for StreamSlots {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(STREAMS_MAX)))
    }
}

impl StreamSlots {
    /// A slot for one stream, or `ResourceExhausted` naming the bound.
    pub fn take(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{STREAMS_MAX} watch and follow streams are open on this node; close one or use \
                 another node"
            ))
        })
    }
}

/// The sending half of one bounded stream.
pub struct Sender<T> {
    tx: mpsc::Sender<Result<T, Status>>,
}

/// A bounded stream holding `slot` until gRPC drops it, and its sender.
pub fn channel<T: Send + 'static>(slot: OwnedSemaphorePermit) -> (Sender<T>, BoxedStream<T>) {
    // One more than the items, for the error that ends a stalled stream.
    let (tx, rx) = mpsc::channel(BUFFERED_MAX + 1);
    let stream = ReceiverStream::new(rx).map(move |item| {
        let _held = &slot;
        item
    });
    (Sender { tx }, Box::pin(stream))
}

impl<T> Sender<T> {
    /// Sends `item`; false once the stream is over (the reader left, or
    /// stalled and was ended with `DataLoss`, or `item` was an error).
    pub async fn send(&self, item: Result<T, Status>) -> bool {
        let end = item.is_err();
        let stall = Duration::from_millis(STALL_MS);
        // Two slots: one for the item, one kept for the stall error.
        match tokio::time::timeout(stall, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                permits.next().expect("two permits").send(item);
                !end
            }
            Ok(Err(_closed)) => false,
            Err(_stalled) => {
                tracing::info!("a stream's reader took nothing for {STALL_MS} ms; ended it");
                let _ = self.tx.try_send(Err(Status::data_loss(format!(
                    "this stream's reader took nothing for {} s; watch again",
                    STALL_MS / 1000
                ))));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a reader that never reads costs its producer at most the
    /// buffer and then `DataLoss`; a slot is held until the stream is
    /// dropped; past the bound, `ResourceExhausted`. (Paused time: the
    /// stall deadline passes without waiting for it.)
    #[tokio::test(start_paused = true)]
    async fn a_stalled_reader_is_ended_and_slots_are_held_by_the_stream() {
        let slots = StreamSlots::default();
        let mut held = Vec::new();
        for _ in 0..STREAMS_MAX {
            held.push(slots.take().unwrap());
        }
        assert_eq!(
            slots.take().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        let slot = held.pop().unwrap();
        let (tx, mut stream) = channel::<u32>(slot);
        assert!(slots.take().is_err(), "the stream holds its slot");
        let mut sent = 0u32;
        while tx.send(Ok(sent)).await {
            sent += 1;
        }
        assert_eq!(sent as usize, BUFFERED_MAX);
        for expected in 0..sent {
            assert_eq!(stream.next().await.unwrap().unwrap(), expected);
        }
        let ended = stream.next().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::DataLoss);
        drop(tx);
        assert!(stream.next().await.is_none());
        drop(stream);
        assert!(slots.take().is_ok(), "a dropped stream gives its slot back");
    }
}
