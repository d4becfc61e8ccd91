//! Last runs in memory: the beat's tests and the in-memory emitter share one [`MemoryState`]
//! (clones share it), as the Redis emitter and state share one Redis.

use super::{Error, LastRun, StateStore};
use crate::store::Fault;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// An in-memory [`StateStore`]; clones share the same map.
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    last: Arc<Mutex<HashMap<String, LastRun>>>,
    fault: Fault,
}

impl MemoryState {
    /// Fails (or hangs) every call as `fault` says.
    #[must_use]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Runs `f` on the map under its lock: the emitter records with it.
    pub fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, LastRun>) -> R) -> R {
        f(&mut self.last.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait]
impl StateStore for MemoryState {
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, Error> {
        self.fault.enter().await?;
        Ok(self.with(|m| m.clone()))
    }

    async fn forget(&self, entries: &[String]) -> Result<(), Error> {
        self.fault.enter().await?;
        self.with(|m| {
            for e in entries {
                m.remove(e);
            }
        });
        Ok(())
    }
}
