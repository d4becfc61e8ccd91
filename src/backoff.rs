//! The one retry policy of the crate: capped exponential backoff. Used by the beat loop, the
//! Redis connection, and the worker's consume and start loops. Imports nothing from the crate.

use std::time::Duration;

/// Doubles from `start` up to `max`; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// The crate's usual first wait.
    pub const START: Duration = Duration::from_millis(100);

    /// From [`Backoff::START`] up to `max`.
    #[must_use]
    pub fn new(max: Duration) -> Self {
        Self::between(Self::START, max)
    }

    /// From `start` up to `max`.
    #[must_use]
    pub fn between(start: Duration, max: Duration) -> Self {
        Self {
            start,
            max,
            current: start.min(max),
        }
    }

    /// Back to the first wait.
    pub fn reset(&mut self) {
        self.current = self.start.min(self.max);
    }

    /// The wait before the next attempt; the one after doubles.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        wait
    }

    /// The wait after `failures` consecutive failures (`0` and `1` both give the first wait),
    /// for callers that count failures instead of holding a `Backoff`.
    #[must_use]
    pub fn after(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.start.saturating_mul(1 << exp).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
        assert_eq!(b.after(3), Duration::from_millis(400));
        assert_eq!(b.after(u32::MAX), Duration::from_millis(500));
    }
}
