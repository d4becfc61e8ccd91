//! Last runs: what was sent for each entry, read at every term start to plan from. The
//! [`StateStore`] port and every implementation — Redis ([`redis`]), the embedded mode's JSON
//! file ([`file`]), in-memory ([`memory`]).
//!
//! Owns reading and pruning the state, and the one rule for recording a run ([`record`]).
//! Writing belongs to emission alone, atomically with the push (`crate::emit`), so state and
//! queue never disagree. `beatd status` reads the lock holder beside the last runs
//! ([`status`]), so this imports `leader`; never `emit` or `beat`.

pub mod file;
pub mod fleet;
pub mod memory;
pub mod redis;

pub use crate::store::Error;
pub use file::FileState;
pub use memory::MemoryState;
pub use redis::{status, RedisState, Status};

use async_trait::async_trait;
use std::collections::HashMap;

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

/// Reads and prunes the last-run state that emission writes.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Every entry with a recorded last run.
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, Error>;
    /// Drops the state of entries removed from the schedule files.
    async fn forget(&self, entries: &[String]) -> Result<(), Error>;
}

/// Records a run of `entry` at `fire_at_ms` unless one as recent is recorded; `false` means
/// it was already sent. The rule `emit.lua` keeps on Redis, for the in-process stores.
pub fn record(
    last: &mut HashMap<String, LastRun>,
    entry: &str,
    fire_at_ms: i64,
    fingerprint: &str,
) -> bool {
    let prev = last.get(entry);
    if prev.is_some_and(|l| l.fire_at_ms >= fire_at_ms) {
        return false;
    }
    let count = prev.map_or(0, |l| l.count) + 1;
    last.insert(
        entry.to_owned(),
        LastRun {
            fire_at_ms,
            count,
            fingerprint: Some(fingerprint.to_owned()),
        },
    );
    true
}
