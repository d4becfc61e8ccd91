//! The beat's boundaries: leadership, atomic emission and last-run state, as small traits.
//! Redis implementations live in the Redis edge; in-memory and file implementations live in
//! `embedded`. The beat loop knows nothing else about the outside world.

use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;

/// A fencing-token lease on leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Random value stored in the lock key; only its holder may renew, release or emit.
    pub token: String,
    /// Fencing epoch, incremented on every acquisition.
    pub epoch: u64,
    /// When the acquiring call was sent: the lease is valid until `acquired_at + ttl` at best.
    pub acquired_at: tokio::time::Instant,
    /// Lock time-to-live.
    pub ttl: Duration,
}

/// Last recorded fire of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LastRun {
    /// Scheduled fire time, ms since the Unix epoch.
    pub fire_at_ms: i64,
    /// How many times the entry was sent.
    pub count: u64,
    /// Fingerprint of the schedule that produced it; a change means "new schedule".
    pub fingerprint: String,
}

/// One due (entry, fire time) with its encoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// Entry name.
    pub entry: String,
    /// Scheduled fire time, ms since the Unix epoch.
    pub fire_at_ms: i64,
    /// Destination list key (queue with kombu's priority suffix).
    pub list_key: Vec<u8>,
    /// The Celery envelope, JSON text.
    pub payload: Vec<u8>,
    /// Fingerprint of the entry's schedule.
    pub fingerprint: String,
}

/// What happened to one fire in an emission batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitOutcome {
    /// Pushed and recorded.
    Sent,
    /// A fire time at or after this one was already recorded: nothing pushed.
    AlreadySent,
}

/// Errors at the beat's boundaries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lease no longer holds: nothing was sent.
    #[error("leadership lost (fencing epoch {epoch})")]
    LeaseLost {
        /// The epoch of the lost lease.
        epoch: u64,
    },
    /// The store cannot be reached or answered with an error.
    #[error("{0}")]
    Unavailable(String),
}

/// Leadership among replicas.
#[async_trait]
pub trait LeaderLock: Send + Sync {
    /// Takes the lock if it is free.
    async fn try_acquire(&self) -> Result<Option<Lease>, Error>;
    /// Extends the lease; `false` when it was lost.
    async fn renew(&self, lease: &Lease) -> Result<bool, Error>;
    /// Gives the lock up if still held.
    async fn release(&self, lease: &Lease) -> Result<(), Error>;
}

/// Atomic "if still leader and not yet sent: push and record".
#[async_trait]
pub trait Emitter: Send + Sync {
    /// Sends a batch; `Err(LeaseLost)` when nothing was sent because the lease is gone.
    async fn emit(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error>;
}

/// Last-run state per entry.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// All recorded last runs.
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, Error>;
    /// Drops the state of entries removed from the schedule files.
    async fn forget(&self, entries: &[String]) -> Result<(), Error>;
}
