//! Emission: putting a due fire's message where workers take it, exactly once per (entry,
//! fire time), fenced by the lease. The [`Emitter`] port (send now), the [`StagedEmitter`]
//! port (park ahead, make visible at the instant), and every implementation — Redis with its
//! Lua scripts ([`redis`]), in-memory ([`memory`], the beat's tests), and the embedded mode's
//! in-process queue over the state file ([`local`]).
//!
//! The contract every implementation keeps is the one DESIGN.md's exactly-once argument rests
//! on: a fire is pushed only while the lease's token still holds the lock, and only when the
//! entry's recorded last fire time is older, and the new one is recorded in the same atomic
//! step. Imports `leader` (the lease) and `state` (what is recorded); never `beat`.

pub mod amqp;
pub mod local;
pub mod memory;
mod prepared;
pub mod redis;

pub use crate::store::Error;
pub use amqp::{AmqpEmitter, AmqpFileEmitter, AmqpOptions, AmqpPublisher};
pub use local::LocalEmitter;
pub use memory::{MemoryEmitter, Pushed};
pub use redis::{send_one, EmitOptions, RedisEmitter};

use crate::leader::Lease;
use async_trait::async_trait;

/// One due (entry, fire time) with its encoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// Entry name; last-run state is keyed by it.
    pub entry: String,
    /// The scheduled fire time, milliseconds since the Unix epoch (UTC).
    pub fire_at_ms: i64,
    /// The Celery task id in the message (`headers.id`), for the fire's log line.
    pub task_id: String,
    /// The Redis list the message goes to: the queue name, or `queue + "\x06\x16" + step` for
    /// a kombu priority sub-queue (`LPUSH`ed, as kombu does); `rq:queue:<name>` for an RQ job
    /// (`RPUSH`ed, as RQ does).
    pub list_key: String,
    /// What lands in the list: the complete envelope JSON, or an RQ job's id.
    pub payload: Vec<u8>,
    /// An RQ job's hash, written with the push; `None` for a Celery message.
    pub rq: Option<Box<RqJobHash>>,
    /// Identifies the schedule the fire was planned from ([`crate::entry::Entry::fingerprint`]);
    /// stored beside the last run so a changed schedule can be told apart from a restart.
    pub schedule_fingerprint: String,
}

/// The `rq:job:<id>` hash of an RQ fire, as RQ writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RqJobHash {
    /// Field name → value, only the fields set (RQ's worker dies on an empty number).
    pub fields: Vec<(&'static str, Vec<u8>)>,
    /// `EXPIRE` of the hash in seconds, as RQ sets it for a job with a `ttl`.
    pub expire: Option<u64>,
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

/// Pushes due fires now, exactly once.
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

    /// At the start of a term, before anything is planned: finishes what an earlier term
    /// left half done. The default has nothing to finish; the AMQP emitter publishes again
    /// the fires whose publish was never confirmed, with their task ids.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] or [`Error::Unavailable`].
    async fn resume(&self, lease: &Lease) -> Result<(), Error> {
        let _ = lease;
        Ok(())
    }
}

/// Two-phase emission for fire times known in advance: the beat parks a fire time's messages
/// up to a few seconds ahead, then one O(1) [`StagedEmitter::commit`] at the instant makes
/// them visible. Overdue fires (catch-up) still go through [`Emitter::emit`].
#[async_trait]
pub trait StagedEmitter: Emitter {
    /// Parks `fires` (all of one fire time, `batch.at_ms`) in the store, invisible to
    /// workers, while the lock still holds `lease.token`. Returns one outcome per fire:
    /// [`EmitOutcome::AlreadySent`] for a fire whose entry's recorded last fire time is the
    /// same or later, or which this batch already holds. May be called several times for one
    /// batch (chunks); nothing is recorded as sent until the batch is committed.
    ///
    /// # Errors
    /// [`Error::LeaseLost`], or [`Error::Unavailable`] (the chunk may or may not be parked;
    /// the caller then recovers and replans).
    async fn stage(
        &self,
        lease: &Lease,
        batch: BatchId,
        fires: &[Fire],
    ) -> Result<Vec<EmitOutcome>, Error>;

    /// Makes a staged batch visible to workers, only while the lock still holds
    /// `lease.token` (onto an empty queue at once; onto a busy one an implementation may move
    /// it in bounded steps, and a batch partly visible is finished, never rolled back, by
    /// [`StagedEmitter::recover`]), then records its last runs (as [`Emitter::emit`] does)
    /// and forgets the batch. Once recorded, the batch is gone: committing it again is an error.
    ///
    /// # Errors
    /// [`Error::LeaseLost`]; [`Error::Unavailable`] when the store failed before the batch
    /// became visible, or the batch is no longer staged (rolled back by
    /// [`StagedEmitter::recover`]). A failure after it became visible is
    /// [`Committed::Unrecorded`], not an error.
    async fn commit(&self, lease: &Lease, batch: BatchId) -> Result<Committed, Error>;

    /// Called once a batch is fully staged, before its instant: lets an implementation get
    /// the commit ready (Redis queues the pushes onto busy queues, see `emit/prepared.rs`).
    /// Best effort, never fails: without it, or after a failure, the commit does everything.
    async fn prepare(&self, lease: &Lease, batch: BatchId);

    /// At the start of a term (and before any replan): records every committed batch and
    /// rolls back every batch never committed, whoever staged them, so the recorded last
    /// runs are exactly what workers can see. Only the current leader may call it.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] or [`Error::Unavailable`].
    async fn recover(&self, lease: &Lease) -> Result<(), Error>;
}

/// A committed batch: visible to workers, and whether its last runs are recorded yet.
#[derive(Debug)]
pub enum Committed {
    /// Visible and recorded.
    Recorded,
    /// Visible; recording failed. [`StagedEmitter::recover`] records it before anything else
    /// is sent, so the caller must recover (replan) next.
    Unrecorded(Error),
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
