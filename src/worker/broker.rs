//! kombu's Redis transport as a consumer sees it (celery-wire §5, §8): the BRPOP key order
//! over priority sub-queues, the `unacked` hash and `unacked_index` sorted set (written in the
//! same script that takes the messages, where kombu uses a later MULTI), ack as `MULTI ZREM HDEL`, and returning a message to its list. Owns
//! the key names and byte layout; when to call these is the consumer's business.

use crate::protocol::{priority_list_key, PRIORITY_STEPS};
use crate::redis::DedicatedConn;
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

/// Takes up to `max` messages from the first non-empty list of `keys` and records each as
/// unacknowledged, in one script, so no message is ever off its list without being in
/// `unacked`: kombu's `BRPOP` followed by a separate `MULTI` loses the message when the worker
/// dies, or Redis restarts, or the reply is lost, between the two (found by the chaos run: a
/// worker paused with a `BRPOP` reply in its socket while Redis restarted). The value stored is
/// kombu's `[envelope, exchange, routing_key]`. Messages that are not JSON objects with a
/// `properties.delivery_tag`, or larger than `max_bytes` (never decoded inside Redis), are
/// taken without being recorded: the worker rejects them and has nothing to acknowledge.
const POP_SCRIPT: &str = r"
local n, now, max_bytes = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 3, #KEYS do
  local msgs = redis.call('RPOP', KEYS[i], n)
  if msgs then
    local out = {KEYS[i]}
    for _, m in ipairs(msgs) do
      local tag = ''
      if #m <= max_bytes then
        local ok, env = pcall(cjson.decode, m)
        if ok and type(env) == 'table' and type(env.properties) == 'table' then
          local p = env.properties
          local info = type(p.delivery_info) == 'table' and p.delivery_info or {}
          if type(p.delivery_tag) == 'string' then
            tag = p.delivery_tag
            local ex = type(info.exchange) == 'string' and info.exchange or ''
            local rk = type(info.routing_key) == 'string' and info.routing_key or ''
            redis.call('ZADD', KEYS[2], now, tag)
            redis.call('HSET', KEYS[1], tag,
              '[' .. m .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
          end
        end
      end
      out[#out + 1] = tag
      out[#out + 1] = m
    end
    return out
  end
end
return false
";

/// One message taken by [`pop_marked`]: its bytes and the delivery tag it was recorded under
/// in `unacked` (empty when it was not recorded).
pub(crate) type Popped = (String, Vec<u8>);

/// Takes up to `max` messages from the first non-empty list of `keys`, recording them as
/// unacknowledged atomically (see [`POP_SCRIPT`]). Returns the list and the messages, oldest
/// first, or `None` when every list is empty.
pub(crate) async fn pop_marked(
    conn: &mut DedicatedConn,
    keys: &[String],
    max: usize,
    now_unix: f64,
    max_bytes: usize,
) -> RedisResult<Option<(String, Vec<Popped>)>> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(POP_SCRIPT));
    let mut inv = SCRIPT.key(UNACKED);
    inv.key(UNACKED_INDEX);
    for k in keys {
        inv.key(k);
    }
    inv.arg(max.max(1)).arg(now_unix).arg(max_bytes);
    let reply: Option<Vec<redis::Value>> = inv.invoke_async(conn).await?;
    let Some(mut reply) = reply.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    // Moved out, not converted: a message may be many megabytes.
    let bytes = |v: redis::Value| -> RedisResult<Vec<u8>> {
        match v {
            redis::Value::BulkString(b) => Ok(b),
            other => redis::from_redis_value(&other),
        }
    };
    let rest = reply.split_off(1);
    let key = String::from_utf8_lossy(&bytes(reply.remove(0))?).into_owned();
    let mut out = Vec::with_capacity(rest.len() / 2);
    let mut it = rest.into_iter();
    while let (Some(tag), Some(msg)) = (it.next(), it.next()) {
        out.push((
            String::from_utf8_lossy(&bytes(tag)?).into_owned(),
            bytes(msg)?,
        ));
    }
    Ok(Some((key, out)))
}

/// Blocks up to `timeout_secs` until one of `keys` has a message, without taking it
/// (`BLMOVE key key RIGHT RIGHT` moves the oldest message onto itself). One connection per
/// key, since a blocking command holds its connection. Cancelling it is safe: nothing moves.
pub(crate) async fn wait_any(
    conns: &[DedicatedConn],
    keys: &[String],
    timeout_secs: f64,
) -> RedisResult<bool> {
    let mut set = tokio::task::JoinSet::new();
    for (conn, key) in conns.iter().zip(keys) {
        let (mut conn, key) = (conn.clone(), key.clone());
        set.spawn(async move {
            redis::cmd("BLMOVE")
                .arg(&key)
                .arg(&key)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(brpop_timeout(timeout_secs))
                .query_async::<Option<redis::Value>>(&mut conn)
                .await
                .map(|v| v.is_some())
        });
    }
    let mut result = Ok(false);
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(true)) => {
                result = Ok(true);
                break;
            }
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
        }
    }
    // The others end within the timeout; their replies are read and dropped by their
    // connections' drivers.
    set.detach_all();
    result
}

/// Whole seconds print as integers (`1`, as kombu sends), fractions with millisecond precision.
fn brpop_timeout(secs: f64) -> String {
    if secs.fract() == 0.0 {
        format!("{secs:.0}")
    } else {
        format!("{secs:.3}")
    }
}

/// Records deliveries as unacknowledged, all in one MULTI (`ZADD` + `HSET` each, as kombu).
pub(crate) async fn mark_unacked(
    conn: &mut DedicatedConn,
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
/// acknowledges, and pushes the follow-up messages (a retry, a chain's next task, callbacks:
/// `KEYS[4..]` with `ARGV[4..]`), atomically in one round trip.
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
for i = 4, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[i]) end
return 1
";

/// What [`finish`] writes besides the ack.
pub(crate) struct FinishWrites<'a> {
    /// Result key and JSON, when a result is stored.
    pub(crate) result: Option<(String, String)>,
    /// Result TTL in seconds.
    pub(crate) ttl_secs: u64,
    /// Messages to push: list key and payload each.
    pub(crate) pushes: Vec<(&'a str, &'a str)>,
}

/// Result, ack and retry in one script call (see `FINISH_SCRIPT`).
pub(crate) async fn finish(
    conn: &mut DedicatedConn,
    tag: &str,
    w: &FinishWrites<'_>,
) -> RedisResult<()> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(FINISH_SCRIPT));
    let (key, json) = w.result.clone().unwrap_or_default();
    // An unused key slot still needs a name; the script never touches it.
    let key = if key.is_empty() {
        UNACKED.to_string()
    } else {
        key
    };
    let mut inv = SCRIPT.key(UNACKED);
    inv.key(UNACKED_INDEX)
        .key(key)
        .arg(tag)
        .arg(json)
        .arg(w.ttl_secs);
    for (list, payload) in &w.pushes {
        inv.key(*list).arg(*payload);
    }
    inv.invoke_async(conn).await
}

/// Puts unstarted deliveries (oldest first) back at the consuming end of their lists and
/// forgets them as unacknowledged, atomically; the oldest is taken again first.
pub(crate) async fn requeue(conn: &mut DedicatedConn, deliveries: &[Delivery]) -> RedisResult<()> {
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
