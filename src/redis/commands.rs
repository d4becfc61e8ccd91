//! The CLI's one-shot operations on Redis: `beatd send` ([`send_one`]) and `beatd status`
//! ([`status`]).

use super::{Error, Keys, RedisConn};
use crate::leader::{LeaderInfo, RedisLeader, DEFAULT_TTL};
use crate::state::{LastRun, RedisState};
use std::collections::HashMap;

/// `LPUSH`es one message now (`beatd send`): no lock, no state, like Celery's `send_task`.
/// Returns the list's length after the push.
///
/// # Errors
/// As the connection's.
pub async fn send_one(conn: &RedisConn, list_key: &str, payload: &[u8]) -> Result<u64, Error> {
    conn.run(|mut c| async move {
        ::redis::cmd("LPUSH")
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
    let leader = RedisLeader::new(conn.clone(), keys.clone(), DEFAULT_TTL);
    let leader = leader.holder().await?;
    let last_runs = RedisState::new(conn.clone(), keys.clone()).read().await?;
    Ok(Status { leader, last_runs })
}
