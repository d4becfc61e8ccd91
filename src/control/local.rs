//! Controls in-process: `beatd run` (its HTTP port takes the requests) and the beat's tests.
//! Requests and replies live in memory; what the controls leave behind ([`Persisted`]) is
//! written to a JSON file beside the state file when one is given, replaced atomically, so a
//! pause survives a restart. One process owns the state file (its lock is leadership), so
//! there is no token to check.

use super::{ControlStore, Doorbell, Persisted, Reply, Request, Update};
use crate::leader::Lease;
use crate::store::{self, Fault};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// Local controls errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on the controls file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a controls file this version understands.
    #[error("controls file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// An in-process [`ControlStore`].
#[derive(Debug)]
pub struct LocalControls {
    /// Where [`Persisted`] is kept; `None`: memory only.
    path: Option<PathBuf>,
    /// Requests not yet answered, oldest first.
    pending: Mutex<Vec<Request>>,
    /// Replies by request id, until the asker takes them.
    replies: Mutex<HashMap<String, Reply>>,
    /// Woken when a reply is filed.
    answered: Notify,
    /// What the controls left behind, as last written.
    persisted: Mutex<Persisted>,
    /// Makes the store fail in tests.
    fault: Fault,
    /// Rung by each submit, in the same process.
    bell: Arc<Doorbell>,
}

impl Default for LocalControls {
    fn default() -> Self {
        Self {
            path: None,
            pending: Mutex::default(),
            replies: Mutex::default(),
            answered: Notify::new(),
            persisted: Mutex::default(),
            fault: Fault::default(),
            bell: Arc::new(Doorbell::listening()),
        }
    }
}

/// The controls file beside `state_file`: `beatd-state.json` → `beatd-state.controls.json`.
#[must_use]
pub fn path_beside(state_file: &Path) -> PathBuf {
    let stem = state_file.file_stem().map_or_else(
        || "beatd-state".into(),
        |s| s.to_string_lossy().into_owned(),
    );
    state_file.with_file_name(format!("{stem}.controls.json"))
}

/// Reads a controls file; a missing one is empty.
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub fn read_file(path: &Path) -> Result<Persisted, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
            path: path.into(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(source) => Err(Error::Io {
            op: "read",
            path: path.into(),
            source,
        }),
    }
}

fn write_file(path: &Path, p: &Persisted) -> Result<(), Error> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: path.into(),
            source,
        }
    };
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(p).expect("controls serialize");
    std::fs::write(&tmp, bytes).map_err(io("write"))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync"))?;
    std::fs::rename(&tmp, path).map_err(io("rename"))
}

impl LocalControls {
    /// Controls in memory only.
    #[must_use]
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Controls kept in `path` (loaded now; missing = none).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            persisted: Mutex::new(read_file(path)?),
            path: Some(path.into()),
            ..Self::default()
        })
    }

    /// Fails (or hangs) every leader-side call as `fault` says.
    #[must_use]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn take_reply(&self, id: &str) -> Option<Reply> {
        self.replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }
}

#[async_trait]
impl ControlStore for LocalControls {
    async fn submit(
        &self,
        request: &Request,
        wait: Duration,
    ) -> Result<Option<Reply>, store::Error> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.clone());
        self.bell.ring();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.answered.notified();
            if let Some(reply) = self.take_reply(&request.id) {
                return Ok(Some(reply));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(self.take_reply(&request.id));
            }
        }
    }

    async fn pending(&self) -> Result<Vec<Request>, store::Error> {
        self.fault.enter().await?;
        let p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(p.iter().take(100).cloned().collect())
    }

    async fn answer(&self, request: &Request, reply: &Reply) -> Result<(), store::Error> {
        self.fault.enter().await?;
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|r| r.id != request.id);
        self.replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request.id.clone(), reply.clone());
        self.answered.notify_waiters();
        Ok(())
    }

    async fn read(&self) -> Result<Persisted, store::Error> {
        self.fault.enter().await?;
        Ok(self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }

    async fn missed(
        &self,
        entry: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<i64>, store::Error> {
        self.fault.enter().await?;
        let p = self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(p.missed
            .get(entry)
            .map(|s| s.range(from_ms..=to_ms).copied().collect())
            .unwrap_or_default())
    }

    async fn write(&self, _lease: &Lease, update: &Update) -> Result<(), store::Error> {
        self.fault.enter().await?;
        if update.is_empty() {
            return Ok(());
        }
        let mut p = self
            .persisted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = p.clone();
        update.apply(&mut next);
        update.apply_missed(&mut next);
        if let Some(path) = &self.path {
            write_file(path, &next).map_err(|e| store::Error::Unavailable(Box::new(e)))?;
        }
        *p = next;
        Ok(())
    }

    fn doorbell(&self) -> Option<Arc<Doorbell>> {
        Some(self.bell.clone())
    }
}
