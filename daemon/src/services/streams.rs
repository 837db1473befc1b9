//! Long-lived client streams (`vm watch`, `events --follow`) and their
//! bounds.
//!
//! Invariants:
//! - At most [`STREAMS_MAX`] such streams are open on a node, and at most
//!   [`STREAMS_PER_ADDRESS_MAX`] from one address, so one client that
//!   never reads cannot take them all; a slot is held until the gRPC
//!   stream itself is dropped (what it has buffered lives as long as it
//!   does), and a stream past a bound is refused with
//!   `ResourceExhausted`.
//! - A stream's producer never waits more than [`STALL_MS`] for room: a
//!   reader that takes nothing that long is ended with `DataLoss` (the one
//!   slot of its buffer kept free for that error), and the producer's task
//!   and memory go with it; a producer also ends as soon as its reader
//!   has gone ([`Sender::closed`]), with or without anything to send.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::Status;

use super::lease::BoxedStream;
use crate::bounds::{source_of, KeyedCounts, KeyedSlot};

/// Watch and follow streams open on one node at most.
pub const STREAMS_MAX: usize = 256;
/// A stream whose reader takes nothing for this long is ended.
pub const STALL_MS: u64 = 30_000;
/// Items buffered between a stream's producer and gRPC.
pub const BUFFERED_MAX: usize = 32;

/// Watch and follow streams open from one address (an IPv6 /64) at most.
pub const STREAMS_PER_ADDRESS_MAX: usize = 32;

/// The node's stream slots (one per node, shared by the services).
#[derive(Debug, Clone)]
pub struct StreamSlots {
    node: Arc<Semaphore>,
    per_address: KeyedCounts<IpAddr>,
}

impl Default for StreamSlots {
    fn default() -> Self {
        Self {
            node: Arc::new(Semaphore::new(STREAMS_MAX)),
            per_address: KeyedCounts::new(STREAMS_PER_ADDRESS_MAX),
        }
    }
}

/// One stream's place under the bounds.
#[derive(Debug)]
pub struct StreamSlot {
    _node: OwnedSemaphorePermit,
    _address: Option<KeyedSlot<IpAddr>>,
}

impl StreamSlots {
    /// A slot for one stream from `from` (unknown in the simulation), or
    /// `ResourceExhausted` naming the bound.
    pub fn take(&self, from: Option<IpAddr>) -> Result<StreamSlot, Status> {
        let address = match from.map(source_of) {
            Some(from) => Some(self.per_address.take(from).ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "{STREAMS_PER_ADDRESS_MAX} watch and follow streams are open from {from} on \
                     this node; close one"
                ))
            })?),
            None => None,
        };
        let node = self.node.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{STREAMS_MAX} watch and follow streams are open on this node; close one or use \
                 another node"
            ))
        })?;
        Ok(StreamSlot {
            _node: node,
            _address: address,
        })
    }
}

/// The sending half of one bounded stream.
pub struct Sender<T> {
    tx: mpsc::Sender<Result<T, Status>>,
}

/// A bounded stream holding `slot` until gRPC drops it, and its sender.
pub fn channel<T: Send + 'static>(slot: StreamSlot) -> (Sender<T>, BoxedStream<T>) {
    // One more than the items, for the error that ends a stalled stream.
    let (tx, rx) = mpsc::channel(BUFFERED_MAX + 1);
    let stream = ReceiverStream::new(rx).map(move |item| {
        let _held = &slot;
        item
    });
    (Sender { tx }, Box::pin(stream))
}

impl<T> Sender<T> {
    /// Completes once the reader has gone: a producer waiting for
    /// something to send selects on it, so a stream closed on a quiet
    /// cluster does not keep its task.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

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
        let from = |i: usize| Some(IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]));
        let one: Option<IpAddr> = Some([192, 0, 2, 1].into());
        let mut held = Vec::new();
        for _ in 0..STREAMS_PER_ADDRESS_MAX {
            held.push(slots.take(one).unwrap());
        }
        let refused = slots.take(one).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("192.0.2.1"), "{refused:?}");
        for i in STREAMS_PER_ADDRESS_MAX..STREAMS_MAX {
            held.push(slots.take(from(i)).unwrap());
        }
        let refused = slots.take(from(STREAMS_MAX)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let slot = held.pop().unwrap();
        let (tx, mut stream) = channel::<u32>(slot);
        assert!(slots.take(None).is_err(), "the stream holds its slot");
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
        assert!(
            slots.take(None).is_ok(),
            "a dropped stream gives its slot back"
        );
        // A producer waiting on a quiet source hears its reader go.
        let (tx, stream) = channel::<u32>(held.pop().unwrap());
        drop(stream);
        tx.closed().await;
    }
}
