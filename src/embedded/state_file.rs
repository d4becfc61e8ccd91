//! The embedded mode's last-run state: a JSON file replaced atomically (temp file, fsync,
//! rename, fsync of the directory) so `kill -9` at any instant leaves either the old or the
//! new state, never a torn one; plus the exclusive lock that keeps a second `beatd run` off
//! the same file.

use crate::beat_io::LastRun;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// State-file errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// I/O on the state or lock file.
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
    /// [`Error::Locked`] when held elsewhere, [`Error::Io`] when the file cannot be opened.
    pub fn acquire(state: &Path) -> Result<Self, Error> {
        let lock = lock_path(state);
        if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
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
            .map_err(|source| Error::Io {
                op: "open",
                path: lock.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
                path: state.into(),
                lock,
            }),
            Err(fs::TryLockError::Error(source)) => Err(Error::Io {
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
    fn a_second_lock_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let _first = StateLock::acquire(&path).unwrap();
        let err = StateLock::acquire(&path).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another beatd"), "{err}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(read(&path), Err(Error::Corrupt { .. })));
    }
}
