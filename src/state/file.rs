//! The embedded mode's last-run state: a JSON file replaced atomically (temp file, fsync,
//! rename, fsync of the directory) so `kill -9` at any instant leaves either the old or the
//! new state, never a torn one. The exclusive lock that keeps a second `beatd run` off the
//! same file is leadership, in `crate::leader::file`.

use super::{Error as StoreError, LastRun, StateStore};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// State-file errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on the state file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a state file this version understands.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// On-disk format.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    /// Format version.
    version: u32,
    /// Entry name → last run.
    entries: BTreeMap<String, Record>,
}

/// One entry's last run on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    fire_at_ms: i64,
    count: u64,
    fingerprint: Option<String>,
}

/// Reads the state file; a missing file is an empty state.
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub fn read(path: &Path) -> Result<HashMap<String, LastRun>, Error> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => {
            return Err(Error::Io {
                op: "read",
                path: path.into(),
                source,
            })
        }
    };
    let disk: OnDisk = serde_json::from_slice(&text).map_err(|source| Error::Corrupt {
        path: path.into(),
        source,
    })?;
    Ok(disk
        .entries
        .into_iter()
        .map(|(name, r)| {
            (
                name,
                LastRun {
                    fire_at_ms: r.fire_at_ms,
                    count: r.count,
                    fingerprint: r.fingerprint,
                },
            )
        })
        .collect())
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces the state file atomically with `state`.
///
/// # Errors
/// When any step of write, fsync or rename fails; the old file is then left intact.
pub fn write(path: &Path, state: &HashMap<String, LastRun>) -> Result<(), Error> {
    let disk = OnDisk {
        version: 1,
        entries: state
            .iter()
            .map(|(k, v)| {
                let r = Record {
                    fire_at_ms: v.fire_at_ms,
                    count: v.count,
                    fingerprint: v.fingerprint.clone(),
                };
                (k.clone(), r)
            })
            .collect(),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let bytes = serde_json::to_vec_pretty(&disk).expect("state serializes");
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    // The rename is durable only once the directory entry is.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(io("fsync", dir))?;
    }
    Ok(())
}

/// The state file as a [`StateStore`], with the one transaction the local emitter records
/// through ([`FileState::update`]).
#[derive(Debug)]
pub struct FileState {
    /// The state file.
    path: PathBuf,
    /// The state as last written.
    state: Mutex<HashMap<String, LastRun>>,
}

impl FileState {
    /// Loads `path` (missing = empty).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            path: path.into(),
            state: Mutex::new(read(path)?),
        })
    }

    /// Reads the file again (another process may have written it: the single-instance
    /// mode's standby taking over).
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed; the state is then unchanged.
    pub fn reload(&self) -> Result<(), Error> {
        let fresh = read(&self.path)?;
        *self.lock() = fresh;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, LastRun>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f` to a copy of the state; when it returns `true` (changed) the copy is
    /// written to the file, and becomes the state only once written.
    ///
    /// # Errors
    /// When the write fails; the state is then unchanged.
    pub fn update<R>(
        &self,
        f: impl FnOnce(&mut HashMap<String, LastRun>) -> (R, bool),
    ) -> Result<R, Error> {
        let mut state = self.lock();
        let mut next = state.clone();
        let (out, changed) = f(&mut next);
        if changed {
            write(&self.path, &next)?;
            *state = next;
        }
        Ok(out)
    }
}

fn unavailable(e: Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

#[async_trait]
impl StateStore for FileState {
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, StoreError> {
        Ok(self.lock().clone())
    }

    async fn forget(&self, entries: &[String]) -> Result<(), StoreError> {
        self.update(|next| {
            for name in entries {
                next.remove(name);
            }
            ((), true)
        })
        .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(read(&path).unwrap().is_empty());
        let mut state = HashMap::new();
        state.insert(
            "a".to_string(),
            LastRun {
                fire_at_ms: 1_000,
                count: 2,
                fingerprint: Some("every:1000ms@0+0ms".into()),
            },
        );
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap(), state);
        state.get_mut("a").unwrap().count = 3;
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap()["a"].count, 3);
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(read(&path), Err(Error::Corrupt { .. })));
    }
}
