//! The zero-setup mode of `beatd run`: no Redis, one process. Leadership is the exclusive
//! lock on the state file, the queue is an in-process channel, and last runs live in a JSON
//! file. Owns those three implementations of the beat's ports; owns no scheduling logic.

pub mod state_file;

use crate::beat_io::{
    EmitOutcome, Emitter, Error, Fire, LastRun, LeaderInfo, LeaderLock, Lease, StateStore,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

pub use state_file::StateLock;

/// Leadership in embedded mode: the process that holds the state-file lock is the only beat,
/// so the lease never expires.
#[derive(Debug)]
pub struct EmbeddedLeader {
    /// Proof that this process owns the state file.
    _lock: StateLock,
}

impl EmbeddedLeader {
    /// Wraps the lock taken on the state file.
    #[must_use]
    pub fn new(lock: StateLock) -> Self {
        Self { _lock: lock }
    }
}

#[async_trait]
impl LeaderLock for EmbeddedLeader {
    async fn try_acquire(&self) -> Result<Option<Lease>, Error> {
        Ok(Some(Lease {
            token: "embedded".into(),
            epoch: 1,
            acquired_at: tokio::time::Instant::now(),
            // Renewal is a no-op; a long TTL keeps the loop from renewing needlessly often.
            ttl: Duration::from_secs(3600),
        }))
    }

    async fn renew(&self, _lease: &Lease) -> Result<bool, Error> {
        Ok(true)
    }

    async fn release(&self, _lease: &Lease) -> Result<(), Error> {
        Ok(())
    }

    async fn holder(&self) -> Result<Option<LeaderInfo>, Error> {
        Ok(Some(LeaderInfo {
            holder: "embedded".into(),
            epoch: 1,
            ttl_left: Duration::from_secs(3600),
        }))
    }
}

/// Records last runs in the state file, then hands messages to the in-process queue.
///
/// The state is written before the messages are queued: a crash in between loses messages
/// that lived only in memory anyway, and a restart never sends a recorded fire time again.
#[derive(Debug)]
pub struct FileEmitter {
    /// The state file.
    path: PathBuf,
    /// The state as last written.
    state: Mutex<HashMap<String, LastRun>>,
    /// The worker's end of the queue (Celery envelopes).
    queue: mpsc::UnboundedSender<Vec<u8>>,
}

impl FileEmitter {
    /// Loads `path` (missing = empty) and sends messages to `queue`.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn open(
        path: &Path,
        queue: mpsc::UnboundedSender<Vec<u8>>,
    ) -> Result<Self, state_file::Error> {
        let state = state_file::read(path)?;
        Ok(Self {
            path: path.into(),
            state: Mutex::new(state),
            queue,
        })
    }
}

fn unavailable(e: state_file::Error) -> Error {
    Error::Unavailable(Box::new(e))
}

#[async_trait]
impl Emitter for FileEmitter {
    async fn emit(&self, _lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error> {
        let mut state = self.state.lock().expect("state lock");
        let mut next = state.clone();
        let outcomes: Vec<EmitOutcome> = fires
            .iter()
            .map(|f| {
                let rec = next.entry(f.entry.clone()).or_insert(LastRun {
                    fire_at_ms: i64::MIN,
                    count: 0,
                    fingerprint: None,
                });
                if rec.fire_at_ms >= f.fire_at_ms {
                    return EmitOutcome::AlreadySent;
                }
                rec.fire_at_ms = f.fire_at_ms;
                rec.count += 1;
                rec.fingerprint = Some(f.schedule_fingerprint.clone());
                EmitOutcome::Sent
            })
            .collect();
        if outcomes.contains(&EmitOutcome::Sent) {
            state_file::write(&self.path, &next).map_err(unavailable)?;
            *state = next;
        }
        for (fire, outcome) in fires.iter().zip(&outcomes) {
            if *outcome == EmitOutcome::Sent {
                // A closed queue means the worker has stopped during shutdown; the fire is
                // recorded, as it would be once pushed to Redis.
                let _ = self.queue.send(fire.payload.clone());
            }
        }
        Ok(outcomes)
    }
}

#[async_trait]
impl StateStore for FileEmitter {
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, Error> {
        Ok(self.state.lock().expect("state lock").clone())
    }

    async fn forget(&self, entries: &[String]) -> Result<(), Error> {
        let mut state = self.state.lock().expect("state lock");
        let mut next = state.clone();
        for name in entries {
            next.remove(name);
        }
        state_file::write(&self.path, &next).map_err(unavailable)?;
        *state = next;
        Ok(())
    }
}
