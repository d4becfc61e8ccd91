//! Wall-clock time for the whole crate. This is the only module allowed to read the system
//! clock, so every schedule, catch-up and DST decision can be tested with a clock the test
//! controls.

use chrono::{DateTime, Utc};
use std::sync::Arc;

/// A source of wall-clock time (UTC instants).
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// Shared handle to a clock, as the beat loop and the worker hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The real system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that follows tokio's clock from a fixed origin, so `tokio::time::pause()` and
/// `advance()` move wall time too and a whole beat runs deterministically in tests.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    /// Wall time at `start`.
    origin: DateTime<Utc>,
    /// The tokio instant that corresponds to `origin`.
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `origin` now and advances with tokio's (possibly paused) time.
    #[must_use]
    pub fn starting_at(origin: DateTime<Utc>) -> Self {
        Self {
            origin,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        self.origin + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

/// Sleeps until the wall-clock instant `at` as seen by `clock`.
///
/// Sleeping on tokio's monotonic clock for the remaining wall duration keeps paused-time tests
/// exact; a wall clock stepped by NTP is re-read by the caller after waking.
pub async fn sleep_until(clock: &dyn Clock, at: DateTime<Utc>) {
    let left = (at - clock.now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let origin = DateTime::parse_from_rfc3339("2026-03-29T00:59:59Z")
            .unwrap()
            .to_utc();
        let clock = TokioClock::starting_at(origin);
        assert_eq!(clock.now(), origin);
        tokio::time::advance(std::time::Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), origin + chrono::Duration::milliseconds(1500));
        sleep_until(&clock, origin + chrono::Duration::seconds(10)).await;
        assert_eq!(clock.now(), origin + chrono::Duration::seconds(10));
    }
}
