//! Liveness that means something: each long-running loop (the beat, the worker's consumer)
//! holds a [`Heartbeat`] and beats it every turn; `/healthz` and the systemd watchdog report
//! healthy only while every registered loop has beaten within its bound. A loop stuck forever
//! (a call that never returns, a deadlock) then turns `/healthz` to 503 and stops `WATCHDOG=1`,
//! so Kubernetes or systemd restarts the process.
//!
//! Time is tokio's clock, so paused-time tests can age a heartbeat. Imports nothing from the
//! crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// One loop's proof of progress. Clones share it.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Heart>);

#[derive(Debug)]
struct Heart {
    /// The loop's name, shown in `/healthz` when it stalls.
    name: &'static str,
    /// A loop that has not beaten for this long is stalled.
    bound: Duration,
    /// Reference point of `last_ms`.
    origin: Instant,
    /// When the loop last beat, in ms after `origin`.
    last_ms: AtomicU64,
}

impl Heartbeat {
    /// Records that the loop turned.
    pub fn beat(&self) {
        let ms = u64::try_from(self.0.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last beat.
    #[must_use]
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed));
        self.0.origin.elapsed().saturating_sub(last)
    }

    /// Whether the loop beat within its bound.
    #[must_use]
    pub fn fresh(&self) -> bool {
        self.age() <= self.0.bound
    }

    /// The loop's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.0.name
    }
}

/// Every heartbeat of the process. Clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Liveness(Arc<Mutex<Vec<Heartbeat>>>);

impl Liveness {
    /// The bound of a loop whose longest normal wait is `longest_sleep`: three times it,
    /// at most `cap`, so one slow turn is not a stall but a stuck loop is found soon.
    #[must_use]
    pub fn bound_for(longest_sleep: Duration, cap: Duration) -> Duration {
        longest_sleep.saturating_mul(3).min(cap)
    }

    /// Registers a loop, fresh now.
    #[must_use]
    pub fn register(&self, name: &'static str, bound: Duration) -> Heartbeat {
        let h = Heartbeat(Arc::new(Heart {
            name,
            bound,
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(h.clone());
        h
    }

    /// The loops that have not beaten within their bound, with how long ago they last did.
    #[must_use]
    pub fn stalled(&self) -> Vec<(&'static str, Duration)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|h| !h.fresh())
            .map(|h| (h.name(), h.age()))
            .collect()
    }

    /// Whether every loop is turning.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.stalled().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_stops_beating_is_reported_after_its_bound() {
        let live = Liveness::default();
        let beat = live.register("beat", Duration::from_secs(3));
        let worker = live.register("worker", Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(2)).await;
        beat.beat();
        worker.beat();
        assert!(live.healthy());
        tokio::time::advance(Duration::from_secs(2)).await;
        worker.beat();
        tokio::time::advance(Duration::from_secs(2)).await;
        // beat: 4 s since its last turn; worker: 2 s.
        let stalled = live.stalled();
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!(stalled[0].0, "beat");
        assert!(!live.healthy());
        beat.beat();
        assert!(live.healthy());
        assert_eq!(
            Liveness::bound_for(Duration::from_secs(5), Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            Liveness::bound_for(Duration::from_secs(600), Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
