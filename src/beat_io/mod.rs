//! The beat's boundary to the outside world: the leader lock, the emitter and the last-run
//! store, as three small traits the beat loop holds as `Arc<dyn …>`.
//!
//! Owns the traits, the values that cross them ([`Lease`], [`Fire`], [`EmitOutcome`],
//! [`LastRun`], [`LeaderInfo`]) and their in-process implementations in [`memory`] (single
//! process, tests, embedded mode). Does not own any Redis code: the Redis implementations live
//! in [`crate::redis_edge`], and nothing here depends on them.
//!
//! The contract every implementation keeps is the one DESIGN.md's exactly-once argument rests
//! on: [`Emitter::emit`] pushes a fire only while the lease's token still holds the lock, and
//! only when the entry's recorded last fire time is older, and records the new one in the same
//! atomic step.

pub mod memory;

use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;

pub use memory::{MemoryEmitter, MemoryLeader, Pushed};

/// What went wrong at the boundary. The beat loop needs exactly two answers: step down
/// ([`Error::LeaseLost`]) or retry later with backoff ([`Error::Unavailable`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lock no longer holds this lease's token; the call pushed and recorded nothing.
    #[error("lease lost: the leader lock no longer holds this replica's token")]
    LeaseLost,
    /// The backing store could not be reached or refused the operation. Emission and state
    /// writes are idempotent per (entry, fire time), so the caller may simply retry.
    #[error("beat backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

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
    /// Deletes the lock if it still holds `lease.token` (a no-op otherwise).
    async fn release(&self, lease: &Lease) -> Result<(), Error>;
    /// The current holder, if any.
    async fn holder(&self) -> Result<Option<LeaderInfo>, Error>;
    /// Waits until the lock may have been released, at most `max`: a standby calls it between
    /// attempts. The default just sleeps; a store that can announce releases returns early so
    /// a graceful handover does not wait for the next poll.
    async fn wait_released(&self, max: Duration) {
        tokio::time::sleep(max).await;
    }
}

/// One due (entry, fire time) with its encoded Celery message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// Entry name; last-run state is keyed by it.
    pub entry: String,
    /// The scheduled fire time, milliseconds since the Unix epoch (UTC).
    pub fire_at_ms: i64,
    /// The Redis list to `LPUSH` to: the queue name, or `queue + "\x06\x16" + step` for a
    /// kombu priority sub-queue.
    pub list_key: String,
    /// The complete envelope JSON.
    pub payload: Vec<u8>,
    /// Identifies the schedule the fire was planned from; stored beside the last run so a
    /// changed schedule can be told apart from a restart.
    pub schedule_fingerprint: String,
}

/// What happened to one [`Fire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitOutcome {
    /// Pushed and recorded by this call.
    Sent,
    /// Not pushed: the entry's recorded last fire time is the same or later (another leader,
    /// an earlier call, or an earlier fire of the same entry in this batch sent it).
    AlreadySent,
}

/// Pushes due fires exactly once.
#[async_trait]
pub trait Emitter: Send + Sync {
    /// Atomically, while the lock still holds `lease.token`: for each fire (in order) whose
    /// entry's recorded last fire time is older (missing = older), pushes the payload to its
    /// list and records the last run, run count and fingerprint. Returns one outcome per fire,
    /// in order.
    ///
    /// Fires of one entry must come oldest first: a fire not newer than one sent earlier in
    /// the same batch is `AlreadySent`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the token no longer holds. Implementations that split a big
    /// batch into several atomic calls push nothing after the loss, but fires of earlier
    /// calls are then already sent *and recorded*, so no other leader sends them again.
    /// [`Error::Unavailable`] when the store failed; the outcome of the batch is unknown
    /// and calling again with the same fires is safe.
    async fn emit(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error>;

    /// Whether this emitter can park fires ahead of their fire time ([`Emitter::stage`]).
    /// The beat then sends a fire time's messages with one O(1) [`Emitter::commit`] at the
    /// instant instead of encoding and pushing them all then.
    fn stages(&self) -> bool {
        false
    }

    /// Parks `fires` (all of one fire time, `batch.at_ms`) in the store, invisible to
    /// workers, while the lock still holds `lease.token`. Returns one outcome per fire:
    /// [`EmitOutcome::AlreadySent`] for a fire whose entry's recorded last fire time is the
    /// same or later, or which this batch already holds. May be called several times for one
    /// batch (chunks); nothing is recorded as sent until the batch is committed and settled.
    ///
    /// # Errors
    /// [`Error::LeaseLost`], or [`Error::Unavailable`] (the chunk may or may not be parked;
    /// the caller then recovers and replans).
    async fn stage(
        &self,
        lease: &Lease,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, Error> {
        let _ = (lease, batch, fires);
        Err(Error::Unavailable("this emitter does not stage".into()))
    }

    /// Makes a staged batch visible to workers, atomically and only while the lock still
    /// holds `lease.token`. Committing a committed batch again is a no-op.
    ///
    /// # Errors
    /// [`Error::LeaseLost`]; [`Error::Unavailable`] when the store failed or the batch is no
    /// longer staged (rolled back by [`Emitter::recover`]).
    async fn commit(&self, lease: &Lease, batch: BatchId) -> Result<(), Error> {
        let _ = (lease, batch);
        Err(Error::Unavailable("this emitter does not stage".into()))
    }

    /// Records the last runs of a committed batch (as [`Emitter::emit`] does for its fires)
    /// and forgets the batch. Idempotent; safe to leave to [`Emitter::recover`] if it fails.
    ///
    /// # Errors
    /// [`Error::Unavailable`].
    async fn settle(&self, batch: BatchId) -> Result<(), Error> {
        let _ = batch;
        Ok(())
    }

    /// At the start of a term (and before any replan): settles every committed batch and
    /// rolls back every batch never committed, whoever staged them, so the recorded last
    /// runs are exactly what workers can see. Only the current leader may call it.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] or [`Error::Unavailable`].
    async fn recover(&self, lease: &Lease) -> Result<(), Error> {
        let _ = lease;
        Ok(())
    }
}

/// Names one staged batch: the fires of one fire time, staged under one leadership term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId {
    /// The epoch of the term that staged it.
    pub epoch: u64,
    /// The fire time of every fire in it, ms since the Unix epoch.
    pub at_ms: i64,
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.at_ms)
    }
}

/// The last run recorded for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    /// The last fire time sent, milliseconds since the Unix epoch (UTC).
    pub fire_at_ms: i64,
    /// How many fires of this entry have been sent, ever.
    pub count: u64,
    /// The schedule fingerprint sent with the last fire; `None` if never recorded.
    pub fingerprint: Option<String>,
}

/// Reads and prunes the last-run state that [`Emitter::emit`] writes.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Every entry with a recorded last run.
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, Error>;
    /// Drops the state of entries removed from the schedule files.
    async fn forget(&self, entries: &[String]) -> Result<(), Error>;
}
