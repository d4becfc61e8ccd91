//! Last-run state on Redis (`{ns}:last_run`, `{ns}:run_count`, `{ns}:fingerprint`, written by
//! the emission script) and the CLI's one-shot operations: `beatd send` ([`send_one`]) and
//! `beatd status` ([`status`]).
//!
//! Owns reading and pruning that state. Writing it belongs to emission alone, atomically with
//! the push, so state and queue never disagree.

use super::{Error, Keys, RedisConn, RedisLeader};
use crate::beat_io::{self, LastRun, LeaderInfo, StateStore};
use async_trait::async_trait;
use std::collections::HashMap;

/// A [`StateStore`] on Redis.
#[derive(Debug, Clone)]
pub struct RedisState {
    /// Shared connection.
    conn: RedisConn,
    /// Key names.
    keys: Keys,
}

type Hashes = (
    HashMap<String, i64>,
    HashMap<String, u64>,
    HashMap<String, String>,
);

impl RedisState {
    /// The state under `keys`.
    #[must_use]
    pub fn new(conn: RedisConn, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// Like [`StateStore::last_runs`], with the Redis error.
    ///
    /// # Errors
    /// As the connection's; [`Error::Command`] if a hash holds a non-number.
    pub async fn read(&self) -> Result<HashMap<String, LastRun>, Error> {
        let k = &self.keys;
        // One MULTI so the three hashes come from the same instant (an emission in between
        // would otherwise pair a new last run with an old count).
        let (last, counts, fps): Hashes = self
            .conn
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .hgetall(&k.last_run)
                    .hgetall(&k.run_count)
                    .hgetall(&k.fingerprint)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(merge(last, &counts, fps))
    }

    /// Like [`StateStore::forget`], with the Redis error.
    ///
    /// # Errors
    /// As the connection's.
    pub async fn remove(&self, entries: &[String]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let k = &self.keys;
        self.conn
            .run(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .hdel(&k.last_run, entries)
                    .hdel(&k.run_count, entries)
                    .hdel(&k.fingerprint, entries)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }
}

/// Joins the three hashes; an entry without a last run has no state worth reporting.
fn merge(
    last: HashMap<String, i64>,
    counts: &HashMap<String, u64>,
    mut fps: HashMap<String, String>,
) -> HashMap<String, LastRun> {
    last.into_iter()
        .map(|(entry, fire_at_ms)| {
            let run = LastRun {
                fire_at_ms,
                count: counts.get(&entry).copied().unwrap_or(0),
                fingerprint: fps.remove(&entry),
            };
            (entry, run)
        })
        .collect()
}

#[async_trait]
impl StateStore for RedisState {
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, beat_io::Error> {
        Ok(self.read().await?)
    }

    async fn forget(&self, entries: &[String]) -> Result<(), beat_io::Error> {
        Ok(self.remove(entries).await?)
    }
}

/// `LPUSH`es one message now (`beatd send`): no lock, no state, like Celery's `send_task`.
/// Returns the list's length after the push.
///
/// # Errors
/// As the connection's.
pub async fn send_one(conn: &RedisConn, list_key: &str, payload: &[u8]) -> Result<u64, Error> {
    conn.run(|mut c| async move {
        redis::cmd("LPUSH")
            .arg(list_key.as_bytes())
            .arg(payload)
            .query_async(&mut c)
            .await
    })
    .await
}

/// What `beatd status` shows from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The lock holder, `None` when no replica leads.
    pub leader: Option<LeaderInfo>,
    /// Last run per entry, including entries no longer in the files until the beat forgets
    /// them.
    pub last_runs: HashMap<String, LastRun>,
}

/// Reads the leader and the last runs under `keys`.
///
/// # Errors
/// As the connection's.
pub async fn status(conn: &RedisConn, keys: &Keys) -> Result<Status, Error> {
    let leader = RedisLeader::new(conn.clone(), keys.clone(), super::leader::DEFAULT_TTL);
    let leader = leader.current_holder().await?;
    let last_runs = RedisState::new(conn.clone(), keys.clone()).read().await?;
    Ok(Status { leader, last_runs })
}
