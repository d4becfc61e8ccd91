//! kombu's Redis transport as a consumer sees it (celery-wire §5, §8): the BRPOP key order
//! over priority sub-queues, the `unacked` hash and `unacked_index` sorted set written in
//! one MULTI per batch, ack as `MULTI ZREM HDEL`, and returning a message to its list. Owns
//! the key names and byte layout; when to call these is the consumer's business.

use crate::protocol::{priority_list_key, PRIORITY_STEPS};
use redis::aio::ConnectionManager;
use redis::RedisResult;

/// kombu's hash of delivered, unacknowledged messages: tag → `[envelope, exchange, rk]`.
pub(crate) const UNACKED: &str = "unacked";
/// kombu's index of `unacked`: tag scored by delivery time (unix seconds, float).
pub(crate) const UNACKED_INDEX: &str = "unacked_index";
/// kombu's lock around restores.
pub(crate) const UNACKED_MUTEX: &str = "unacked_mutex";

/// BRPOP keys in kombu's order: by priority step, the queues interleaved within a step
/// (`a b a\x06\x163 b\x06\x163 …`), so lower numbers are served first.
pub(crate) fn brpop_keys(queues: &[String]) -> Vec<String> {
    let mut keys = Vec::with_capacity(queues.len() * PRIORITY_STEPS.len());
    for step in PRIORITY_STEPS {
        for q in queues {
            keys.push(priority_list_key(q, Some(step)));
        }
    }
    keys
}

/// One message taken off a list and decoded far enough to be tracked.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The list it was popped from (where it goes back to).
    pub(crate) list_key: String,
    /// Its exact bytes.
    pub(crate) raw: Vec<u8>,
    /// kombu delivery tag.
    pub(crate) tag: String,
    /// `delivery_info.exchange`.
    pub(crate) exchange: String,
    /// `delivery_info.routing_key`.
    pub(crate) routing_key: String,
}

impl Delivery {
    /// kombu's `unacked` value: `[envelope, exchange, routing_key]` as JSON text. The
    /// envelope is embedded verbatim: it was parsed as a JSON object already.
    fn unacked_value(&self) -> String {
        let env = String::from_utf8_lossy(&self.raw);
        let ex = serde_json::Value::from(self.exchange.as_str());
        let rk = serde_json::Value::from(self.routing_key.as_str());
        format!("[{env}, {ex}, {rk}]")
    }
}

/// Blocks up to `timeout_secs` for a message on `keys`, then takes up to `extra` more
/// from the same list without blocking. Returns the list and the messages, oldest first.
pub(crate) async fn pop_batch(
    conn: &mut ConnectionManager,
    keys: &[String],
    timeout_secs: f64,
    extra: usize,
) -> RedisResult<Option<(String, Vec<Vec<u8>>)>> {
    let first: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
        .arg(keys)
        .arg(brpop_timeout(timeout_secs))
        .query_async(conn)
        .await?;
    let Some((key, msg)) = first else {
        return Ok(None);
    };
    let mut batch = vec![msg];
    if extra > 0 {
        // The first message is already off the list: an error here (Redis before 6.2 has no
        // RPOP count, or the connection dropped) must not lose it.
        let more: RedisResult<Option<Vec<Vec<u8>>>> = redis::cmd("RPOP")
            .arg(&key)
            .arg(extra)
            .query_async(conn)
            .await;
        match more {
            Ok(more) => batch.extend(more.unwrap_or_default()),
            Err(e) => tracing::debug!(error = %e, "batch pop failed; taking one message"),
        }
    }
    Ok(Some((key, batch)))
}

/// Redis before 6.0 takes only whole seconds: send `1`, as kombu does, unless a fraction is
/// really wanted.
fn brpop_timeout(secs: f64) -> String {
    if secs.fract() == 0.0 {
        format!("{secs:.0}")
    } else {
        format!("{secs:.3}")
    }
}

/// Records deliveries as unacknowledged, all in one MULTI (`ZADD` + `HSET` each, as kombu).
pub(crate) async fn mark_unacked(
    conn: &mut ConnectionManager,
    deliveries: &[&Delivery],
    now_unix: f64,
) -> RedisResult<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for d in deliveries {
        pipe.cmd("ZADD")
            .arg(UNACKED_INDEX)
            .arg(now_unix)
            .arg(&d.tag)
            .ignore();
        pipe.cmd("HSET")
            .arg(UNACKED)
            .arg(&d.tag)
            .arg(d.unacked_value())
            .ignore();
    }
    pipe.query_async(conn).await
}

/// Stores the result (unless a SUCCESS is already there, as Celery checks), publishes it,
/// acknowledges, and pushes a follow-up message, atomically in one round trip.
const FINISH_SCRIPT: &str = r"
if ARGV[2] ~= '' then
  local cur = redis.call('GET', KEYS[3])
  local done = false
  if cur then
    local ok, meta = pcall(cjson.decode, cur)
    done = ok and type(meta) == 'table' and meta['status'] == 'SUCCESS'
  end
  if not done then
    redis.call('SETEX', KEYS[3], ARGV[3], ARGV[2])
    redis.call('PUBLISH', KEYS[3], ARGV[2])
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[4] ~= '' then redis.call('LPUSH', KEYS[4], ARGV[4]) end
return 1
";

/// What [`finish`] writes besides the ack.
pub(crate) struct FinishWrites<'a> {
    /// Result key and JSON, when a result is stored.
    pub(crate) result: Option<(String, String)>,
    /// Result TTL in seconds.
    pub(crate) ttl_secs: u64,
    /// A retry message: list key and payload.
    pub(crate) push: Option<(&'a str, &'a str)>,
}

/// Result, ack and retry in one script call (see `FINISH_SCRIPT`).
pub(crate) async fn finish(
    conn: &mut ConnectionManager,
    tag: &str,
    w: &FinishWrites<'_>,
) -> RedisResult<()> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(FINISH_SCRIPT));
    let (key, json) = w.result.clone().unwrap_or_default();
    let (push_key, payload) = w.push.unwrap_or(("", ""));
    // Unused key slots still need names; the script never touches them.
    let key = if key.is_empty() {
        UNACKED.to_string()
    } else {
        key
    };
    let push_key = if push_key.is_empty() {
        UNACKED
    } else {
        push_key
    };
    SCRIPT
        .key(UNACKED)
        .key(UNACKED_INDEX)
        .key(key)
        .key(push_key)
        .arg(tag)
        .arg(json)
        .arg(w.ttl_secs)
        .arg(payload)
        .invoke_async(conn)
        .await
}

/// Returns messages popped by [`pop_batch`] but never tracked, in their original order.
pub(crate) async fn push_back(
    conn: &mut ConnectionManager,
    key: &str,
    raws: &[Vec<u8>],
) -> RedisResult<()> {
    // They came off the right end oldest first; RPUSH newest first restores the order.
    let mut cmd = redis::cmd("RPUSH");
    cmd.arg(key);
    for raw in raws.iter().rev() {
        cmd.arg(raw);
    }
    cmd.query_async(conn).await
}

/// Puts unstarted deliveries (oldest first) back at the consuming end of their lists and
/// forgets them as unacknowledged, atomically; the oldest is taken again first.
pub(crate) async fn requeue(
    conn: &mut ConnectionManager,
    deliveries: &[Delivery],
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for d in deliveries.iter().rev() {
        pipe.cmd("RPUSH").arg(&d.list_key).arg(&d.raw).ignore();
    }
    for d in deliveries {
        pipe.cmd("ZREM").arg(UNACKED_INDEX).arg(&d.tag).ignore();
        pipe.cmd("HDEL").arg(UNACKED).arg(&d.tag).ignore();
    }
    pipe.query_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brpop_timeout_whole_seconds_as_integers() {
        assert_eq!(brpop_timeout(1.0), "1");
        assert_eq!(brpop_timeout(0.2), "0.200");
    }

    #[test]
    fn brpop_order_matches_kombu_capture() {
        let keys = brpop_keys(&["celery".into(), "reports".into()]);
        let want = "celery reports celery\x06\x163 reports\x06\x163 celery\x06\x166 \
                    reports\x06\x166 celery\x06\x169 reports\x06\x169";
        assert_eq!(keys.join(" "), want);
    }

    #[test]
    fn unacked_value_is_kombu_triple() {
        let d = Delivery {
            list_key: "celery".into(),
            raw: br#"{"a": 1}"#.to_vec(),
            tag: "t".into(),
            exchange: String::new(),
            routing_key: "celery".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&d.unacked_value()).unwrap();
        assert_eq!(v, serde_json::json!([{"a": 1}, "", "celery"]));
    }
}
