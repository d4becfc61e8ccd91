//! Last-run state on Redis: `{ns}:last_run`, `{ns}:run_count` and `{ns}:fingerprint`, written
//! by the emission scripts (`crate::emit::redis`). Owns reading and pruning them.

use super::{LastRun, StateStore};
use crate::leader::{LeaderInfo, RedisLeader, DEFAULT_TTL};
use crate::redis::{scan, Error, Keys, RedisConn};
use crate::store;
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

/// One step's fields, name by name: last run, count, fingerprint.
type Step = (Vec<Option<i64>>, Vec<Option<u64>>, Vec<Option<String>>);

impl RedisState {
    /// The state under `keys`.
    #[must_use]
    pub fn new(conn: RedisConn, keys: Keys) -> Self {
        Self { conn, keys }
    }

    /// Every recorded last run, with the Redis error (`beatd status`).
    ///
    /// # Errors
    /// As the connection's; [`Error::Command`] if a hash holds a non-number.
    pub async fn read(&self) -> Result<HashMap<String, LastRun>, Error> {
        let k = &self.keys;
        // The names in steps (crate::redis::scan), then each step's three fields of every
        // name in one MULTI, so an entry's last run, count and fingerprint come from the
        // same instant (an emission in between would otherwise pair a new last run with an
        // old count) without one reply of every entry at once.
        let (mut last, mut counts, mut fps): Hashes = Hashes::default();
        for names in scan::hash_fields(&self.conn, &k.last_run).await? {
            if names.is_empty() {
                continue;
            }
            let names = &names;
            let (l, c, f): Step = self
                .conn
                .run(|mut c| async move {
                    ::redis::pipe()
                        .atomic()
                        .cmd("HMGET")
                        .arg(&k.last_run)
                        .arg(names)
                        .cmd("HMGET")
                        .arg(&k.run_count)
                        .arg(names)
                        .cmd("HMGET")
                        .arg(&k.fingerprint)
                        .arg(names)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            for (i, name) in names.iter().enumerate() {
                if let Some(Some(at)) = l.get(i) {
                    last.insert(name.clone(), *at);
                    if let Some(Some(n)) = c.get(i) {
                        counts.insert(name.clone(), *n);
                    }
                    if let Some(Some(fp)) = f.get(i) {
                        fps.insert(name.clone(), fp.clone());
                    }
                }
            }
        }
        Ok(merge(last, &counts, fps))
    }

    async fn remove(&self, entries: &[String]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let k = &self.keys;
        self.conn
            .run(|mut c| async move {
                ::redis::pipe()
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
    async fn last_runs(&self) -> Result<HashMap<String, LastRun>, store::Error> {
        Ok(self.read().await?)
    }

    async fn forget(&self, entries: &[String]) -> Result<(), store::Error> {
        Ok(self.remove(entries).await?)
    }
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
    let leader = RedisLeader::new(conn.clone(), keys.clone(), DEFAULT_TTL);
    let leader = leader.holder().await?;
    let last_runs = RedisState::new(conn.clone(), keys.clone()).read().await?;
    Ok(Status { leader, last_runs })
}
