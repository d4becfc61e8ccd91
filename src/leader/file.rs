//! Leadership in the embedded mode: the exclusive OS lock on `<state file>.lock`. The process
//! holding it is the only beat on that state file, so its lease never expires; a second
//! `beatd run` on the same file fails at start with a clear message.

use super::{Error, LeaderLock, Lease};
use async_trait::async_trait;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "state file {path} is in use by another beatd (lock {lock} is held); stop it, or give \
         this one its own --state-file"
    )]
    Locked {
        /// The state file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// I/O on the lock file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Exclusive ownership of a state file for the life of the process.
#[derive(Debug)]
pub struct StateLock {
    /// Held open: the OS lock lasts as long as the handle (and dies with the process).
    _file: File,
}

impl StateLock {
    /// Takes the lock on `<state>.lock`, or fails at once if another process holds it.
    ///
    /// # Errors
    /// [`LockError::Locked`] when held elsewhere, [`LockError::Io`] when the file cannot be opened.
    pub fn acquire(state: &Path) -> Result<Self, LockError> {
        let lock = lock_path(state);
        if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| LockError::Io {
                op: "create",
                path: dir.into(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| LockError::Io {
                op: "open",
                path: lock.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(LockError::Locked {
                path: state.into(),
                lock,
            }),
            Err(fs::TryLockError::Error(source)) => Err(LockError::Io {
                op: "lock",
                path: lock,
                source,
            }),
        }
    }
}

fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    state.with_file_name(name)
}

/// The embedded mode's [`LeaderLock`]: always granted to the process that holds the
/// [`StateLock`].
#[derive(Debug)]
pub struct FileLeader {
    /// Proof that this process owns the state file.
    _lock: StateLock,
}

impl FileLeader {
    /// Takes the lock on `state`'s lock file.
    ///
    /// # Errors
    /// As [`StateLock::acquire`].
    pub fn acquire(state: &Path) -> Result<Self, LockError> {
        Ok(Self {
            _lock: StateLock::acquire(state)?,
        })
    }
}

#[async_trait]
impl LeaderLock for FileLeader {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let _first = StateLock::acquire(&path).unwrap();
        let err = StateLock::acquire(&path).unwrap_err();
        assert!(matches!(err, LockError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another beatd"), "{err}");
    }
}
