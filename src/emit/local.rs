//! The embedded mode's emission: last runs recorded in the state file, then the message handed
//! to the in-process queue the worker reads. No lock to fence against: the process holding the
//! state file's lock (`crate::leader::file`) is the only beat.

use super::{EmitOutcome, Emitter, Error, Fire};
use crate::leader::Lease;
use crate::state::{self, FileState};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Records last runs in the state file, then hands messages to the in-process queue.
///
/// The state is written before the messages are queued: a crash in between loses messages
/// that lived only in memory anyway, and a restart never sends a recorded fire time again.
#[derive(Debug)]
pub struct LocalEmitter {
    /// The state file (also the beat's [`crate::state::StateStore`]).
    state: Arc<FileState>,
    /// The worker's end of the queue (Celery envelopes).
    queue: mpsc::UnboundedSender<Vec<u8>>,
}

impl LocalEmitter {
    /// Records into `state` and sends messages to `queue`.
    #[must_use]
    pub fn new(state: Arc<FileState>, queue: mpsc::UnboundedSender<Vec<u8>>) -> Self {
        Self { state, queue }
    }
}

#[async_trait]
impl Emitter for LocalEmitter {
    async fn emit(&self, _lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, Error> {
        let outcomes = self
            .state
            .update(|next| {
                let outcomes: Vec<EmitOutcome> = fires
                    .iter()
                    .map(|f| {
                        if state::record(next, &f.entry, f.fire_at_ms, &f.schedule_fingerprint) {
                            EmitOutcome::Sent
                        } else {
                            EmitOutcome::AlreadySent
                        }
                    })
                    .collect();
                let changed = outcomes.contains(&EmitOutcome::Sent);
                (outcomes, changed)
            })
            .map_err(|e| Error::Unavailable(Box::new(e)))?;
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
