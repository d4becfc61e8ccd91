//! Celery's remote control ("pidbox") on kombu's Redis transport, as `celery inspect` and
//! `celery control` use it. A request is a kombu message PUBLISHed on the fanout channel
//! `/<db>.celery.pidbox` (kombu's `keyprefix_fanout` + exchange `celery.pidbox`), which every
//! node PSUBSCRIBEs; its body names the `method`, its `arguments`, an optional `destination`
//! list, a `ticket` and `reply_to` (exchange `reply.celery.pidbox` + a routing key). A reply
//! `{<node>: <answer>}` goes to the direct exchange: to each queue bound in
//! `_kombu.binding.reply.celery.pidbox` (`rk \x06\x16 pattern \x06\x16 queue`) with that routing
//! key, LPUSHed with the `ticket` header. Formats as captured from Celery 5 / kombu 5 (`celery
//! inspect ping` against a stock worker). Owns the transport and the [`Control`] contract;
//! what the worker answers is `control`'s.

use crate::clock::SharedClock;
use crate::protocol::{dumps, new_uuid};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// kombu's separator inside a binding-set member.
const BINDING_SEP: &str = "\x06\x16";
/// Largest request accepted (kombu has none; a control request is a few hundred bytes).
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Answers remote-control commands.
pub trait Control: Send + Sync + 'static {
    /// The answer to `method` with `args`, or `None` to stay silent (commands this node
    /// ignores, such as another worker's `hello`).
    fn handle(&self, method: &str, args: &Map<String, Value>) -> Option<Value>;
}

/// Answers `ping` only: `beatd beat`'s health check, as Celery users ask of celery beat.
#[derive(Debug, Clone, Copy, Default)]
pub struct PingOnly;

impl Control for PingOnly {
    fn handle(&self, method: &str, _: &Map<String, Value>) -> Option<Value> {
        (method == "ping").then(|| json!({"ok": "pong"}))
    }
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Command name.
    pub method: String,
    /// Its arguments.
    pub arguments: Map<String, Value>,
    /// Nodes it is for; every node when `None`.
    pub destination: Option<Vec<String>>,
    /// A node-name pattern it is for, with its matcher (`glob` unless given).
    pub pattern: Option<(String, String)>,
    /// Matched against the reply's `ticket` header by the caller.
    pub ticket: String,
    /// Reply exchange and routing key, when a reply is wanted.
    pub reply_to: Option<(String, String)>,
    /// `headers.expires` (unix seconds): ignore it after this.
    pub expires: Option<f64>,
}

/// Why a published message is not a request (logged at debug: anyone may publish there).
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// Over [`MAX_REQUEST_BYTES`].
    #[error("request of {0} bytes is too large")]
    TooLarge(usize),
    /// Not a kombu envelope with a JSON body naming a method.
    #[error("not a remote-control request: {0}")]
    Shape(&'static str),
}

impl Request {
    /// Decodes a kombu envelope published on the pidbox channel.
    ///
    /// # Errors
    /// [`BadRequest`] for anything but a well-formed request.
    pub fn decode(raw: &[u8]) -> Result<Self, BadRequest> {
        if raw.len() > MAX_REQUEST_BYTES {
            return Err(BadRequest::TooLarge(raw.len()));
        }
        let env: Value =
            serde_json::from_slice(raw).map_err(|_| BadRequest::Shape("envelope not json"))?;
        let body = env
            .get("body")
            .and_then(Value::as_str)
            .ok_or(BadRequest::Shape("no body"))?;
        let base64 = env
            .pointer("/properties/body_encoding")
            .and_then(Value::as_str)
            .is_some_and(|e| e.eq_ignore_ascii_case("base64"));
        let bytes = if base64 {
            base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|_| BadRequest::Shape("body not base64"))?
        } else {
            body.as_bytes().to_vec()
        };
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|_| BadRequest::Shape("body not json"))?;
        let method = body
            .get("method")
            .and_then(Value::as_str)
            .ok_or(BadRequest::Shape("no method"))?
            .to_owned();
        let arguments = body
            .get("arguments")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let destination = body.get("destination").and_then(Value::as_array).map(|d| {
            d.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });
        let pattern = body.get("pattern").and_then(Value::as_str).map(|p| {
            let matcher = body
                .get("matcher")
                .and_then(Value::as_str)
                .unwrap_or("glob");
            (p.to_owned(), matcher.to_owned())
        });
        let reply_to = body.get("reply_to").and_then(|r| {
            Some((
                r.get("exchange")?.as_str()?.to_owned(),
                r.get("routing_key")?.as_str()?.to_owned(),
            ))
        });
        Ok(Self {
            method,
            arguments,
            destination,
            pattern,
            ticket: body
                .get("ticket")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            reply_to,
            expires: env.pointer("/headers/expires").and_then(Value::as_f64),
        })
    }

    /// Whether `node` should act on it at `now` (unix seconds).
    #[must_use]
    pub fn is_for(&self, node: &str, now: f64) -> bool {
        let addressed = self
            .destination
            .as_ref()
            .is_none_or(|d| d.is_empty() || d.iter().any(|n| n == node));
        // kombu's matchers are `glob` and `pcre`; without a regex engine a pcre pattern
        // matches only the exact name.
        let matched = self.pattern.as_ref().is_none_or(|(p, m)| match m.as_str() {
            "glob" => glob(p.as_bytes(), node.as_bytes()),
            _ => p == node,
        });
        addressed && matched && self.expires.is_none_or(|e| e >= now)
    }
}

/// fnmatch's `*` and `?` (kombu's default matcher); other characters match themselves.
/// Backtracks only to the last `*`, so a hostile pattern costs at most pattern × name steps.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// The reply envelope kombu's `Mailbox._publish_reply` sends: `{node: answer}` with the
/// request's ticket.
#[must_use]
pub fn reply_envelope(node: &str, answer: Value, ticket: &str, exchange: &str, rk: &str) -> String {
    let mut body = Map::new();
    body.insert(node.to_owned(), answer);
    let body = base64::engine::general_purpose::STANDARD.encode(dumps(&Value::Object(body)));
    let env = json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"ticket": ticket, "clock": 1},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": exchange, "routing_key": rk},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": new_uuid(),
        },
    });
    dumps(&env)
}

/// Answers remote control as `node` until `stop`, re-subscribing after connection losses.
pub async fn serve(
    conn: crate::redis::RedisConn,
    node: String,
    control: Arc<dyn Control>,
    clock: SharedClock,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;
    let channel = format!("/{}.celery.pidbox", conn.db());
    let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(10));
    let mut replies: Option<crate::redis::DedicatedConn> = None;
    loop {
        let subscribed = async {
            let mut ps = conn.pubsub().await.map_err(|e| e.to_string())?;
            ps.psubscribe(&channel).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(ps)
        };
        let sub = tokio::select! {
            s = subscribed => s,
            () = stop.cancelled() => return,
        };
        match sub {
            Ok(mut ps) => {
                tracing::info!(node = %node, channel = %channel, "answering remote control");
                backoff.reset();
                let mut messages = ps.on_message();
                loop {
                    let msg = tokio::select! {
                        m = messages.next() => m,
                        () = stop.cancelled() => return,
                    };
                    let Some(msg) = msg else { break };
                    let req = match Request::decode(msg.get_payload_bytes()) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(error = %e, "ignored a message on the pidbox channel");
                            continue;
                        }
                    };
                    #[allow(clippy::cast_precision_loss)]
                    let now = clock.now().timestamp_micros() as f64 / 1e6;
                    if !req.is_for(&node, now) {
                        continue;
                    }
                    tracing::debug!(method = %req.method, ticket = %req.ticket, "remote control");
                    let Some(answer) = control.handle(&req.method, &req.arguments) else {
                        continue;
                    };
                    let Some((exchange, rk)) = &req.reply_to else {
                        continue;
                    };
                    let payload = reply_envelope(&node, answer, &req.ticket, exchange, rk);
                    if replies.is_none() {
                        replies = conn.dedicated(Duration::from_secs(5)).await.ok();
                    }
                    if let Some(c) = replies.as_mut() {
                        if let Err(e) = reply(c, exchange, rk, &payload).await {
                            tracing::warn!(error = %e, method = %req.method,
                                "cannot send a remote-control reply");
                        }
                    }
                }
                tracing::warn!("remote-control subscription lost; re-subscribing");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to remote control"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_wait()) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// kombu's direct-exchange publish: LPUSH onto every queue bound with routing key `rk`.
async fn reply(
    conn: &mut crate::redis::DedicatedConn,
    exchange: &str,
    rk: &str,
    payload: &str,
) -> redis::RedisResult<()> {
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("_kombu.binding.{exchange}"))
        .query_async(conn)
        .await?;
    for m in members {
        let mut parts = m.split(BINDING_SEP);
        let (Some(key), Some(_pattern), Some(queue)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if key == rk {
            redis::cmd("LPUSH")
                .arg(queue)
                .arg(payload)
                .query_async::<()>(conn)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `celery inspect ping` as captured from Celery 5.x on Redis.
    const PING: &str = r#"{"body": "eyJtZXRob2QiOiAicGluZyIsICJhcmd1bWVudHMiOiB7fSwgImRlc3RpbmF0aW9uIjogbnVsbCwgInBhdHRlcm4iOiBudWxsLCAibWF0Y2hlciI6IG51bGwsICJ0aWNrZXQiOiAiNTQxOTIxYjAtNWYwZC00YTQ2LWJjZDQtZDg0NTE3ZmE3ZmM2IiwgInJlcGx5X3RvIjogeyJleGNoYW5nZSI6ICJyZXBseS5jZWxlcnkucGlkYm94IiwgInJvdXRpbmdfa2V5IjogIjNlNTNkNWRkLTYyMjgtM2E1Mi1hYTQwLWI2MTc3MzhiYTdhNCJ9fQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"clock": 1, "expires": 1796156796.7915926}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""}, "priority": 0, "body_encoding": "base64", "delivery_tag": "0b965923-79b2-4711-ad82-f0f457c64177"}}"#;

    #[test]
    fn decodes_celerys_ping() {
        let r = Request::decode(PING.as_bytes()).unwrap();
        assert_eq!(r.method, "ping");
        assert_eq!(r.ticket, "541921b0-5f0d-4a46-bcd4-d84517fa7fc6");
        assert_eq!(
            r.reply_to,
            Some((
                "reply.celery.pidbox".into(),
                "3e53d5dd-6228-3a52-aa40-b617738ba7a4".into()
            ))
        );
        assert!(r.is_for("beatd@h", 1_796_156_795.0));
        assert!(!r.is_for("beatd@h", 1_796_156_797.0), "expired");
        let mut d = r.clone();
        d.destination = Some(vec!["celery@other".into()]);
        assert!(!d.is_for("beatd@h", 1_796_156_795.0));
        let mut p = r.clone();
        p.pattern = Some(("beatd@*".into(), "glob".into()));
        assert!(p.is_for("beatd@h", 1_796_156_795.0));
        assert!(!p.is_for("celery@h", 1_796_156_795.0));
        assert!(glob(b"*@w?b*", b"beatd@web1") && !glob(b"*@w?b", b"beatd@web1"));
        assert!(glob(b"*", b"") && !glob(b"a*b", b"a"));
    }

    #[test]
    fn reply_is_kombus_envelope() {
        let env = reply_envelope(
            "beatd@h",
            json!({"ok": "pong"}),
            "t-1",
            "reply.celery.pidbox",
            "rk",
        );
        let v: Value = serde_json::from_str(&env).unwrap();
        assert_eq!(v["headers"]["ticket"], "t-1");
        assert_eq!(v["properties"]["delivery_info"]["routing_key"], "rk");
        let body = base64::engine::general_purpose::STANDARD
            .decode(v["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"beatd@h": {"ok": "pong"}})
        );
    }
}
