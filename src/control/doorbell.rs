//! The doorbell a submitted request rings, so an idle leader can look at the queue seldom and
//! still answer at once. On Redis each submit publishes on `{ns}:control:wake` and the
//! leader's subscription rings it; in-process the submit rings it directly.
//!
//! A ring is a hint, never the only way a request is found: while the bell is not
//! listening (no subscription yet, or lost) the leader polls at the short interval, and
//! while it is, still at the long one, for a request whose message was lost.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Rung for each request submitted ([`super::ControlStore::doorbell`]).
#[derive(Debug, Default)]
pub struct Doorbell {
    rung: Notify,
    listening: AtomicBool,
}

impl Doorbell {
    /// A bell that hears every ring from the start (in-process submits).
    #[must_use]
    pub fn listening() -> Self {
        Self {
            rung: Notify::new(),
            listening: AtomicBool::new(true),
        }
    }

    /// Rings it: the next (or the current) [`Doorbell::rung`] returns. Rings while nobody
    /// waits are kept as one.
    pub fn ring(&self) {
        self.rung.notify_one();
    }

    /// Returns at the next ring.
    pub async fn rung(&self) {
        self.rung.notified().await;
    }

    /// Whether each submit rings it now.
    #[must_use]
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Notes that submits ring it (a subscription holds) or may not (it was lost), and rings
    /// it either way: the leader then looks at once for a request submitted meanwhile, and
    /// picks its polling interval again.
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Relaxed);
        self.ring();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_ring_before_anyone_waits_is_kept_once() {
        let bell = Doorbell::default();
        assert!(!bell.is_listening());
        bell.ring();
        bell.ring();
        tokio::time::timeout(Duration::from_secs(1), bell.rung())
            .await
            .expect("the kept ring");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), bell.rung())
                .await
                .is_err(),
            "two rings while nobody waited are one"
        );
    }

    #[tokio::test]
    async fn a_change_of_listening_rings() {
        let bell = Doorbell::default();
        bell.set_listening(true);
        assert!(bell.is_listening());
        tokio::time::timeout(Duration::from_secs(1), bell.rung())
            .await
            .expect("rung by the change");
    }
}
