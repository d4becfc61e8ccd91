//! kombu's visibility-timeout restore (`QoS.restore_visible`, celery-wire §8): messages left
//! unacknowledged longer than the timeout by a worker that died — ours or a Python one — go
//! back to the front of their list, marked `redelivered`. Guarded by `unacked_mutex`
//! (`SET NX PX 300000`, released by compare-and-delete). Each message moves with a
//! compare-and-swap script that does what kombu's `WATCH unacked; HGET; MULTI ZREM HDEL
//! RPUSH; EXEC` does, without tying up a connection with WATCH state.

use super::broker::{UNACKED, UNACKED_INDEX, UNACKED_MUTEX};
use crate::protocol::{dumps, new_uuid, priority_list_key, PRIORITY_SEP};
use crate::redis::DedicatedConn;
use chrono::{DateTime, Utc};
use redis::RedisResult;
use serde_json::Value;
use std::time::Duration;

/// Most messages restored per pass (kombu does 10 per call, repeatedly).
const MAX_PER_PASS: isize = 1000;

const MOVE_SCRIPT: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[3]) end
return 1
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Restores every message unacknowledged for longer than `visibility_timeout` at `now`.
/// Returns how many went back to a queue; 0 when another consumer holds the mutex.
///
/// # Errors
/// Redis errors.
pub(crate) async fn restore_visible(
    conn: &mut DedicatedConn,
    now: DateTime<Utc>,
    visibility_timeout: Duration,
) -> RedisResult<usize> {
    let token = new_uuid();
    let locked: Option<String> = redis::cmd("SET")
        .arg(UNACKED_MUTEX)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(300_000)
        .query_async(conn)
        .await?;
    if locked.is_none() {
        return Ok(0);
    }
    let result = restore_locked(conn, now, visibility_timeout).await;
    let released: RedisResult<i64> = redis::Script::new(RELEASE_SCRIPT)
        .key(UNACKED_MUTEX)
        .arg(&token)
        .invoke_async(conn)
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "cannot release unacked_mutex; it expires in 5 min");
    }
    result
}

async fn restore_locked(
    conn: &mut DedicatedConn,
    now: DateTime<Utc>,
    visibility_timeout: Duration,
) -> RedisResult<usize> {
    #[allow(clippy::cast_precision_loss)]
    let ceil = now.timestamp_micros() as f64 / 1e6 - visibility_timeout.as_secs_f64();
    let tags: Vec<String> = redis::cmd("ZRANGE")
        .arg(UNACKED_INDEX)
        .arg(ceil)
        .arg(0)
        .arg("BYSCORE")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(MAX_PER_PASS)
        .query_async(conn)
        .await?;
    let script = redis::Script::new(MOVE_SCRIPT);
    let mut restored = 0;
    for tag in tags {
        let stored: Option<String> = redis::cmd("HGET")
            .arg(UNACKED)
            .arg(&tag)
            .query_async(conn)
            .await?;
        let (key, payload) = match stored.as_deref().map(redelivered) {
            Some(Some(r)) => {
                let queue = route(conn, &r.exchange, &r.routing_key).await?;
                (priority_list_key(&queue, r.priority), r.payload)
            }
            Some(None) => {
                tracing::error!(tag, "unreadable entry in unacked; dropped");
                (String::new(), String::new())
            }
            None => (String::new(), String::new()), // index without hash entry: tidy up
        };
        let key = if key.is_empty() {
            UNACKED.to_string()
        } else {
            key
        };
        let moved: i64 = script
            .key(UNACKED)
            .key(UNACKED_INDEX)
            .key(&key)
            .arg(&tag)
            .arg(stored.clone().unwrap_or_default())
            .arg(&payload)
            .invoke_async(conn)
            .await?;
        if moved == 1 && !payload.is_empty() {
            restored += 1;
            tracing::warn!(tag, queue = %key, "restored unacknowledged message");
        }
    }
    Ok(restored)
}

/// The queue a message published to `exchange` with `routing_key` belongs to. The default
/// exchange `""` routes by queue name; a named one through kombu's binding set, read as a
/// direct exchange. kombu drops a message whose binding is missing; beatd falls back to the
/// routing key as the queue name rather than lose it.
async fn route(conn: &mut DedicatedConn, exchange: &str, routing_key: &str) -> RedisResult<String> {
    if exchange.is_empty() {
        return Ok(routing_key.to_string());
    }
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("_kombu.binding.{exchange}"))
        .query_async(conn)
        .await?;
    let bound = members.iter().find_map(|m| {
        let mut parts = m.split(PRIORITY_SEP);
        let (rk, _pattern, queue) = (parts.next()?, parts.next()?, parts.next()?);
        (rk == routing_key).then(|| queue.to_string())
    });
    Ok(bound.unwrap_or_else(|| {
        tracing::warn!(
            exchange,
            routing_key,
            "no kombu binding; restoring to the routing key"
        );
        routing_key.to_string()
    }))
}

/// A stored unacked entry, ready to go back.
struct Restored {
    /// `delivery_info.exchange` as stored.
    exchange: String,
    /// `delivery_info.routing_key` as stored.
    routing_key: String,
    /// `properties.priority`.
    priority: Option<u8>,
    /// The envelope marked redelivered.
    payload: String,
}

/// From a stored `[envelope, exchange, routing_key]`: where it goes and the envelope marked
/// redelivered (appended keys, as kombu does).
fn redelivered(stored: &str) -> Option<Restored> {
    let Value::Array(mut triple) = serde_json::from_str::<Value>(stored).ok()? else {
        return None;
    };
    if triple.len() != 3 {
        return None;
    }
    let routing_key = triple.pop()?.as_str()?.to_string();
    let exchange = triple.pop()?.as_str()?.to_string();
    let mut env = triple.pop()?;
    env.get_mut("headers")?
        .as_object_mut()?
        .insert("redelivered".into(), true.into());
    let props = env.get_mut("properties")?.as_object_mut()?;
    let priority = props
        .get("priority")
        .and_then(Value::as_u64)
        .map(|p| p.min(9) as u8);
    props
        .get_mut("delivery_info")?
        .as_object_mut()?
        .insert("redelivered".into(), true.into());
    Some(Restored {
        exchange,
        routing_key,
        priority,
        payload: dumps(&env),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivered_marks_like_kombu() {
        let env = r#"{"headers": {"id": "x"}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "priority": 6}}"#;
        let stored = format!("[{env}, \"\", \"q\"]");
        let r = redelivered(&stored).unwrap();
        assert_eq!(
            (r.exchange.as_str(), r.routing_key.as_str(), r.priority),
            ("", "q", Some(6))
        );
        let payload = r.payload;
        assert_eq!(
            payload,
            r#"{"headers": {"id": "x", "redelivered": true}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q", "redelivered": true}, "priority": 6}}"#
        );
        assert!(redelivered("not json").is_none());
        assert!(redelivered("[1, 2]").is_none());
    }
}
