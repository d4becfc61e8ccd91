//! Reading a big hash without one big reply. `HGETALL` of a hash of 100,000 fields builds
//! its whole reply at once and holds Redis for tens of milliseconds (three of them in one
//! `MULTI` at a term start with 100,000 entries: an unrelated `PING` waited 188 ms);
//! `HSCAN` goes in steps of about [`STEP`] fields, other clients served in between.

use super::{Error, RedisConn};
use std::collections::HashMap;

/// Fields per `HSCAN` step (a hint to Redis; a small hash comes whole in one step).
pub const STEP: usize = 1_000;

/// Every field of the hash at `key` with its value. Not one snapshot: a field written
/// during the scan may be seen with its old or new value, one added or removed during it
/// may be missing; every field there from start to end is returned.
///
/// # Errors
/// As the connection's; [`Error::Command`] when a value is not a `T`.
pub async fn hash<T>(conn: &RedisConn, key: &str) -> Result<HashMap<String, T>, Error>
where
    T: redis::FromRedisValue + Send + 'static,
{
    let mut out = HashMap::new();
    let mut cursor = 0;
    loop {
        let (next, pairs) = step::<T>(conn, key, cursor).await?;
        out.extend(pairs);
        match next {
            0 => return Ok(out),
            n => cursor = n,
        }
    }
}

/// The field names of the hash at `key`, as [`hash`] finds them, one list per step.
///
/// # Errors
/// As the connection's.
pub async fn hash_fields(conn: &RedisConn, key: &str) -> Result<Vec<Vec<String>>, Error> {
    let mut steps = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, pairs) = step::<redis::Value>(conn, key, cursor).await?;
        steps.push(pairs.into_iter().map(|(f, _)| f).collect());
        match next {
            0 => return Ok(steps),
            n => cursor = n,
        }
    }
}

/// One `HSCAN` from `cursor`: the next cursor (0 at the end) and the pairs it returned.
async fn step<T>(conn: &RedisConn, key: &str, cursor: u64) -> Result<(u64, Vec<(String, T)>), Error>
where
    T: redis::FromRedisValue + Send + 'static,
{
    conn.run(|mut c| async move {
        redis::cmd("HSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(STEP)
            .query_async(&mut c)
            .await
    })
    .await
}
