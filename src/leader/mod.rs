//! Leadership among replicas: the [`LeaderLock`] port, the [`Lease`] it grants, and every
//! implementation — Redis ([`redis`], the HA mode), in-memory ([`memory`], the beat's tests),
//! and the exclusive lock on the state file ([`file`], the embedded mode).
//!
//! Owns the lock's protocol and the fencing epoch. Never imports `emit`, `state` or `beat`:
//! when to renew and when to stop sending belong to the beat's [`crate::beat::term`].

pub mod amqp;
pub mod file;
pub mod memory;
pub mod redis;

pub use crate::store::Error;
pub use amqp::AmqpLeader;
pub use file::FileLeader;
pub use memory::MemoryLeader;
pub use redis::{RedisLeader, DEFAULT_TTL};

use async_trait::async_trait;
use std::time::Duration;

/// A fencing-token lease on leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The value the lock holds while this lease is valid (`hostname:pid:random` on Redis);
    /// unique per acquisition, so a stale holder can never pass for the current one.
    pub token: String,
    /// Fencing epoch: incremented on every acquisition by anyone. Goes into logs, metrics and
    /// the `beatd_epoch` message header.
    pub epoch: u64,
    /// Taken *before* the acquiring request was sent, so `acquired_at + ttl` is never later
    /// than the server-side expiry. After a successful [`LeaderLock::renew`] the caller sets
    /// it to the instant taken before sending the renewal.
    pub acquired_at: tokio::time::Instant,
    /// Lock time-to-live; renew every `ttl / 3`.
    pub ttl: Duration,
}

impl Lease {
    /// The local instant after which this replica must assume the lease is gone and stop
    /// emitting, whatever the lock store says.
    #[must_use]
    pub fn deadline(&self) -> tokio::time::Instant {
        self.acquired_at + self.ttl
    }

    /// How often to renew: a third of the TTL, so two renewals can fail before expiry.
    #[must_use]
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// Who holds the lock, for `beatd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The token stored in the lock (`hostname:pid:random`).
    pub holder: String,
    /// The current fencing epoch (the holder's, since every acquisition increments it).
    pub epoch: u64,
    /// Time left before the lock expires unless renewed.
    pub ttl_left: Duration,
}

/// Leadership among replicas.
///
/// Renewal as the holder should do it, every [`Lease::renew_every`]:
///
/// ```text
/// let sent = tokio::time::Instant::now();
/// match lock.renew(&lease).await {
///     Ok(true) => lease.acquired_at = sent,         // deadline moves to sent + ttl
///     Ok(false) => /* lost: stop emitting now, become a standby */,
///     Err(_) => /* unknown: keep the old deadline, retry; stop at lease.deadline() */,
/// }
/// ```
#[async_trait]
pub trait LeaderLock: Send + Sync {
    /// Takes the lock if nobody holds it; increments the epoch in the same atomic step.
    /// `Ok(None)` when someone (possibly this replica) already holds it.
    async fn try_acquire(&self) -> Result<Option<Lease>, Error>;
    /// Extends the lock to a full TTL if it still holds `lease.token`; `Ok(false)` = lost.
    async fn renew(&self, lease: &Lease) -> Result<bool, Error>;
    /// Deletes the lock if it still holds `lease.token` (a no-op otherwise), and tells
    /// standbys that can hear it ([`Handover`]).
    async fn release(&self, lease: &Lease) -> Result<(), Error>;
}

/// How a standby learns that the lock was released, so a graceful handover does not wait for
/// the next poll. Separate from [`LeaderLock`] because only a shared lock store can announce;
/// [`Poll`] is the answer of every other one.
#[async_trait]
pub trait Handover: Send + Sync {
    /// Returns when the lock may have been released, at the latest after `max`.
    async fn released(&self, max: Duration);
}

/// A standby that only polls: waits the whole interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Poll;

#[async_trait]
impl Handover for Poll {
    async fn released(&self, max: Duration) {
        tokio::time::sleep(max).await;
    }
}
