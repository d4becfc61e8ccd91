//! Building Celery protocol v2 task messages for kombu's Redis transport, field for field
//! what Celery 5.7 writes (celery-wire §2–§6, §10). Pure: ids and "now" are inputs, so the
//! output is byte-stable and golden-tested. Owns no I/O; the caller LPUSHes
//! [`Encoded::payload`] onto [`Encoded::list_key`].

use super::isotime::{isoformat, rfc3339_millis};
use super::pyjson::dumps;
use super::pyrepr::pyrepr;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// kombu's separator between a queue name and its priority step.
pub const PRIORITY_SEP: &str = "\x06\x16";
/// kombu's default priority steps for the Redis transport.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The Redis list a message of `priority` for `queue` goes to: `queue` for 0–2 (and none),
/// `queue\x06\x163` for 3–5, `\x06\x166` for 6–8, `\x06\x169` for 9 (clamped).
#[must_use]
pub fn priority_list_key(queue: &str, priority: Option<u8>) -> String {
    let p = priority.unwrap_or(0).min(9);
    let step = PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|s| *s <= p)
        .unwrap_or(0);
    if step == 0 {
        queue.to_string()
    } else {
        format!("{queue}{PRIORITY_SEP}{step}")
    }
}

/// A fresh uuid4 string, as Celery uses for task ids and delivery tags.
#[must_use]
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The three headers beatd adds to every scheduled message: entry name, scheduled fire time
/// (RFC 3339 UTC, milliseconds) and the leader's fencing epoch.
#[must_use]
pub fn beatd_headers(entry: &str, scheduled_at: DateTime<Utc>, epoch: u64) -> Map<String, Value> {
    let mut h = Map::new();
    h.insert("beatd_entry".into(), Value::from(entry));
    h.insert(
        "beatd_scheduled_at".into(),
        Value::from(rfc3339_millis(scheduled_at)),
    );
    h.insert("beatd_epoch".into(), Value::from(epoch));
    h
}

/// One task message to send. Build with [`TaskMessage::new`] and the setters, then
/// [`TaskMessage::encode`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Celery task name (`headers.task`).
    pub task: String,
    /// Task id (`headers.id`, `root_id`, `correlation_id`); a uuid4 unless injected.
    pub id: String,
    /// kombu delivery tag (the `unacked` key of whoever consumes it); a uuid4 unless injected.
    pub delivery_tag: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Destination queue; also the list key (with the priority suffix).
    pub queue: String,
    /// `delivery_info.routing_key`; the queue name when `None`.
    pub routing_key: Option<String>,
    /// `delivery_info.exchange`; `""` (direct), which is what makes restores safe (§1).
    pub exchange: String,
    /// kombu Redis priority 0–9, 0 first.
    pub priority: Option<u8>,
    /// Do not run before this instant.
    pub eta: Option<DateTime<Utc>>,
    /// Revoke when not started by this instant.
    pub expires: Option<DateTime<Utc>>,
    /// `headers.retries`.
    pub retries: u32,
    /// `headers.timelimit` as `[hard, soft]` seconds.
    pub timelimit: (Option<f64>, Option<f64>),
    /// `headers.ignore_result`: `None` is send_task's null, beat's apply_async writes `false`.
    pub ignore_result: Option<bool>,
    /// Producer node name, `gen<pid>@<host>` in Celery.
    pub origin: String,
    /// `properties.reply_to`; Celery puts its app oid here, `""` works.
    pub reply_to: String,
    /// Adds `celery_beat_task: true`, as celery beat does.
    pub beat: bool,
    /// `headers.parent_id`.
    pub parent_id: Option<String>,
    /// `headers.root_id`; the task id when `None`.
    pub root_id: Option<String>,
    /// Headers merged last (a name that already exists is overwritten in place).
    pub extra_headers: Map<String, Value>,
    /// The body's embed: `callbacks`, `errbacks`, `chain`, `chord` (each `null` when unset).
    pub embed: Map<String, Value>,
}

/// An encoded message: the envelope text and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The task id.
    pub id: String,
    /// Redis list to LPUSH onto.
    pub list_key: String,
    /// The envelope, as Python's `json.dumps` writes it.
    pub payload: String,
}

impl TaskMessage {
    /// A message for `task` with fresh ids, no arguments, queue `celery`.
    #[must_use]
    pub fn new(task: impl Into<String>) -> Self {
        Self {
            task: task.into(),
            id: new_uuid(),
            delivery_tag: new_uuid(),
            args: Vec::new(),
            kwargs: Map::new(),
            queue: "celery".into(),
            routing_key: None,
            exchange: String::new(),
            priority: None,
            eta: None,
            expires: None,
            retries: 0,
            timelimit: (None, None),
            ignore_result: None,
            origin: DEFAULT_ORIGIN.into(),
            reply_to: String::new(),
            beat: false,
            parent_id: None,
            root_id: None,
            extra_headers: Map::new(),
            embed: Map::new(),
        }
    }

    /// Sets the task id.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
    /// Sets the delivery tag.
    #[must_use]
    pub fn delivery_tag(mut self, tag: impl Into<String>) -> Self {
        self.delivery_tag = tag.into();
        self
    }
    /// Sets the positional arguments.
    #[must_use]
    pub fn args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }
    /// Sets the keyword arguments.
    #[must_use]
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Self {
        self.kwargs = kwargs;
        self
    }
    /// Sets the queue.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
    /// Sets the routing key written in `delivery_info`.
    #[must_use]
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }
    /// Sets the exchange written in `delivery_info`.
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }
    /// Sets the priority (0–9, 0 first).
    #[must_use]
    pub fn priority(mut self, p: Option<u8>) -> Self {
        self.priority = p;
        self
    }
    /// Sets the ETA.
    #[must_use]
    pub fn eta(mut self, eta: Option<DateTime<Utc>>) -> Self {
        self.eta = eta;
        self
    }
    /// Sets the absolute expiry.
    #[must_use]
    pub fn expires(mut self, expires: Option<DateTime<Utc>>) -> Self {
        self.expires = expires;
        self
    }
    /// Sets the retry count.
    #[must_use]
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
    /// Sets `[hard, soft]` time limits in seconds.
    #[must_use]
    pub fn timelimit(mut self, hard: Option<f64>, soft: Option<f64>) -> Self {
        self.timelimit = (hard, soft);
        self
    }
    /// Sets `ignore_result`.
    #[must_use]
    pub fn ignore_result(mut self, v: Option<bool>) -> Self {
        self.ignore_result = v;
        self
    }
    /// Sets the origin node name.
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }
    /// Sets `reply_to`.
    #[must_use]
    pub fn reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = reply_to.into();
        self
    }
    /// Marks the message as sent by a beat (`celery_beat_task: true`).
    #[must_use]
    pub fn beat(mut self, beat: bool) -> Self {
        self.beat = beat;
        self
    }
    /// Sets the parent task id (and keeps `root_id` unless set).
    #[must_use]
    pub fn parent_id(mut self, parent: Option<String>) -> Self {
        self.parent_id = parent;
        self
    }
    /// Sets the workflow root id.
    #[must_use]
    pub fn root_id(mut self, root: Option<String>) -> Self {
        self.root_id = root;
        self
    }
    /// Merges extra headers (e.g. [`beatd_headers`]).
    #[must_use]
    pub fn headers(mut self, extra: Map<String, Value>) -> Self {
        self.extra_headers.extend(extra);
        self
    }

    /// The Redis list this message goes to.
    #[must_use]
    pub fn list_key(&self) -> String {
        priority_list_key(&self.queue, self.priority)
    }

    /// The base64 body `[args, kwargs, embed]`.
    #[must_use]
    pub fn body(&self) -> String {
        let mut embed = Map::new();
        for key in ["callbacks", "errbacks", "chain", "chord"] {
            embed.insert(
                key.into(),
                self.embed.get(key).cloned().unwrap_or(Value::Null),
            );
        }
        let embed = Value::Object(embed);
        let body = Value::Array(vec![
            Value::Array(self.args.clone()),
            Value::Object(self.kwargs.clone()),
            embed,
        ]);
        base64::engine::general_purpose::STANDARD.encode(dumps(&body))
    }

    /// Encodes the envelope; `now` is only used for `properties.expiration` (time left until
    /// `expires`, in ms, never negative, as Celery's `send_task` computes it).
    #[must_use]
    pub fn encode(&self, now: DateTime<Utc>) -> Encoded {
        let args = Value::Array(self.args.clone());
        let kwargs = Value::Object(self.kwargs.clone());
        let mut h = Map::new();
        h.insert("lang".into(), "py".into());
        h.insert("task".into(), self.task.clone().into());
        h.insert("id".into(), self.id.clone().into());
        h.insert("shadow".into(), Value::Null);
        h.insert("eta".into(), self.eta.map(isoformat).into());
        h.insert("expires".into(), self.expires.map(isoformat).into());
        h.insert("group".into(), Value::Null);
        h.insert("group_index".into(), Value::Null);
        h.insert("retries".into(), self.retries.into());
        h.insert(
            "timelimit".into(),
            json!([seconds(self.timelimit.0), seconds(self.timelimit.1)]),
        );
        h.insert(
            "root_id".into(),
            self.root_id
                .clone()
                .unwrap_or_else(|| self.id.clone())
                .into(),
        );
        h.insert("parent_id".into(), self.parent_id.clone().into());
        h.insert("argsrepr".into(), pyrepr(&args).into());
        h.insert("kwargsrepr".into(), pyrepr(&kwargs).into());
        h.insert("origin".into(), self.origin.clone().into());
        h.insert("ignore_result".into(), self.ignore_result.into());
        h.insert("replaced_task_nesting".into(), 0.into());
        h.insert("stamped_headers".into(), Value::Null);
        h.insert("stamps".into(), Value::Object(Map::new()));
        if self.beat {
            h.insert("celery_beat_task".into(), true.into());
        }
        for (k, v) in &self.extra_headers {
            h.insert(k.clone(), v.clone());
        }

        let mut p = Map::new();
        p.insert("correlation_id".into(), self.id.clone().into());
        p.insert("reply_to".into(), self.reply_to.clone().into());
        p.insert("delivery_mode".into(), 2.into());
        if let Some(expires) = self.expires {
            let left = (expires - now).num_milliseconds().max(0);
            p.insert("expiration".into(), left.to_string().into());
        }
        let routing_key = self
            .routing_key
            .clone()
            .unwrap_or_else(|| self.queue.clone());
        p.insert(
            "delivery_info".into(),
            json!({"exchange": self.exchange, "routing_key": routing_key}),
        );
        p.insert("priority".into(), self.priority.unwrap_or(0).min(9).into());
        p.insert("body_encoding".into(), "base64".into());
        p.insert("delivery_tag".into(), self.delivery_tag.clone().into());

        let mut env = Map::new();
        env.insert("body".into(), self.body().into());
        env.insert("content-encoding".into(), "utf-8".into());
        env.insert("content-type".into(), "application/json".into());
        env.insert("headers".into(), Value::Object(h));
        env.insert("properties".into(), Value::Object(p));
        Encoded {
            id: self.id.clone(),
            list_key: self.list_key(),
            payload: dumps(&Value::Object(env)),
        }
    }
}

/// Celery writes whole-second limits as ints (`[30, 20]`); keep fractions when given.
fn seconds(s: Option<f64>) -> Value {
    match s {
        #[allow(clippy::cast_possible_truncation)]
        Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Value::from(x as i64),
        Some(x) => Value::from(x),
        None => Value::Null,
    }
}

/// `headers.origin` until [`TaskMessage::origin`] sets the producer's own name (the daemon
/// passes `beatd<pid>@<host>`, see `crate::host::origin`): `protocol` reads no environment.
pub const DEFAULT_ORIGIN: &str = "beatd";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keys_like_kombu() {
        let want = [
            "celery",
            "celery",
            "celery",
            "celery\x06\x163",
            "celery\x06\x163",
        ];
        for (p, w) in want.iter().enumerate() {
            assert_eq!(priority_list_key("celery", Some(p as u8)), *w);
        }
        assert_eq!(priority_list_key("q", Some(5)), "q\x06\x163");
        assert_eq!(priority_list_key("q", Some(6)), "q\x06\x166");
        assert_eq!(priority_list_key("q", Some(8)), "q\x06\x166");
        assert_eq!(priority_list_key("q", Some(9)), "q\x06\x169");
        assert_eq!(priority_list_key("q", Some(200)), "q\x06\x169");
        assert_eq!(priority_list_key("q", None), "q");
    }

    #[test]
    fn beatd_headers_shape() {
        let at = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .to_utc();
        let h = beatd_headers("nightly", at, 7);
        assert_eq!(
            Value::Object(h),
            json!({"beatd_entry": "nightly", "beatd_scheduled_at": "2026-11-23T10:00:00.000Z",
                   "beatd_epoch": 7})
        );
    }
}
