//! Run slots handed out in the order they were asked for. A tokio semaphore queues waiters in
//! the order they are first *polled*, and spawned jobs are polled in no particular order, so
//! prefetched messages would start out of delivery order. Here the consumer asks for a slot
//! for each message the moment it takes it (in delivery order), and one dispatcher grants
//! them first come, first served. A message with a future ETA asks only when its ETA passes,
//! so it never blocks the messages behind it.

use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// A granted slot: the task may run while this is held.
pub(crate) type Slot = OwnedSemaphorePermit;

/// A pending request; resolves to the slot when it is this request's turn. Dropping it
/// gives the turn up (a slot granted to a dropped request goes back at once).
pub(crate) type SlotRequest = oneshot::Receiver<Slot>;

/// `concurrency` slots, granted in request order.
#[derive(Clone)]
pub(crate) struct RunSlots {
    requests: mpsc::UnboundedSender<oneshot::Sender<Slot>>,
}

impl RunSlots {
    /// Starts the dispatcher; it ends when the last handle is dropped.
    pub(crate) fn new(concurrency: usize) -> Self {
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let (requests, mut pending) = mpsc::unbounded_channel::<oneshot::Sender<Slot>>();
        tokio::spawn(async move {
            while let Some(waiter) = pending.recv().await {
                if waiter.is_closed() {
                    continue;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                // A waiter that left meanwhile hands the slot straight back (dropped here).
                let _ = waiter.send(slot);
            }
        });
        Self { requests }
    }

    /// Joins the queue now; await the returned request for the slot.
    pub(crate) fn request(&self) -> SlotRequest {
        let (tx, rx) = oneshot::channel();
        // The dispatcher lives as long as any handle: sending cannot fail while `self` exists.
        let _ = self.requests.send(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grants_in_request_order_whatever_the_polling_order() {
        let slots = RunSlots::new(1);
        let first = slots.request().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut requests: Vec<_> = (0..8).map(|i| (i, slots.request())).collect();
        // Polled in reverse order of asking: the grants must still follow the asking order.
        requests.reverse();
        let mut jobs = tokio::task::JoinSet::new();
        for (i, req) in requests {
            let order = order.clone();
            jobs.spawn(async move {
                let slot = req.await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        while jobs.join_next().await.is_some() {}
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_request_given_up_passes_its_turn_on() {
        let slots = RunSlots::new(1);
        let held = slots.request().await.unwrap();
        let gone = slots.request();
        let next = slots.request();
        drop(gone);
        drop(held);
        assert!(tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .is_ok());
    }
}
