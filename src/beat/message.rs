//! What a fire sends: the Celery message of an entry for one scheduled fire time, as
//! `celery beat` would send it, plus beatd's three headers (entry, scheduled time, epoch);
//! or, for an RQ entry, the RQ job `Queue.enqueue` would write, with the same three facts in
//! its `meta`.

use crate::beat::FireEncoder;
use crate::clock::SharedClock;
use crate::emit::{Fire, RqJobHash};
use crate::entry::Entry;
use crate::entry::{RqSerializer, RqTarget};
use crate::protocol::RqJob;
use crate::protocol::{beatd_headers, TaskMessage};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Encodes fires with the Celery protocol.
pub struct CeleryEncoder {
    /// Used for `properties.expiration` (time left at send).
    clock: SharedClock,
    /// Producer name written in `headers.origin`.
    origin: String,
}

impl CeleryEncoder {
    /// An encoder that stamps messages with `origin` (e.g. `beatd<pid>@<host>`).
    #[must_use]
    pub fn new(clock: SharedClock, origin: String) -> Self {
        Self { clock, origin }
    }
}

/// The message of `entry` for fire time `at` under fencing `epoch`.
#[must_use]
pub fn task_message(entry: &Entry, at: DateTime<Utc>, epoch: u64, origin: &str) -> TaskMessage {
    let mut headers = (*entry.headers).clone();
    headers.extend(beatd_headers(&entry.name, at, epoch));
    let expires = entry
        .expires()
        .and_then(|e| chrono::Duration::from_std(e).ok())
        .map(|e| at + e);
    let mut msg = TaskMessage::new(&*entry.task)
        .args(entry.args.to_vec())
        .kwargs((*entry.kwargs).clone())
        .queue(&*entry.queue)
        .priority(entry.priority())
        .expires(expires)
        // celery beat sends through apply_async for registered tasks: ignore_result false.
        .ignore_result(Some(false))
        .origin(origin)
        .beat(true)
        .headers(headers);
    if let Some(key) = entry.routing_key() {
        msg = msg.routing_key(key);
    }
    if let Some(exchange) = entry.exchange() {
        msg = msg.exchange(exchange);
    }
    msg
}

/// The RQ job of an RQ `entry` for fire time `at`: `meta` carries the fire time
/// (`beatd_scheduled_at`), the entry and the epoch, so catch-up runs can be told apart.
#[must_use]
pub fn rq_job(entry: &Entry, rq: &RqTarget, at: DateTime<Utc>, epoch: u64) -> RqJob {
    let mut meta = rq.meta.clone();
    meta.insert(
        "beatd_scheduled_at".into(),
        crate::protocol::rfc3339_millis(at).into(),
    );
    meta.insert("beatd_entry".into(), Value::from(&*entry.name));
    meta.insert("beatd_epoch".into(), epoch.into());
    let mut job = RqJob::new(crate::protocol::new_uuid(), &*entry.task, &*entry.queue);
    job.args = entry.args.to_vec();
    job.kwargs = (*entry.kwargs).clone();
    job.timeout = rq.timeout;
    job.result_ttl = rq.result_ttl;
    job.ttl = rq.ttl;
    job.failure_ttl = rq.failure_ttl;
    job.description = entry.description().map(str::to_owned);
    job.meta = meta;
    job.serializer = match rq.serializer {
        RqSerializer::Pickle => crate::protocol::RqSerializer::Pickle,
        RqSerializer::Json => crate::protocol::RqSerializer::Json,
    };
    job
}

impl CeleryEncoder {
    fn encode_rq(&self, entry: &Entry, rq: &RqTarget, at: DateTime<Utc>, epoch: u64) -> Fire {
        let job = rq_job(entry, rq, at, epoch);
        // Every refusal of `encode` (an id that is not a uuid, an empty function or queue, a
        // zero timeout or ttl) is ruled out when the schedule is loaded.
        let encoded = job
            .encode(self.clock.now())
            .expect("an RQ entry is validated when its schedule is loaded");
        Fire {
            entry: entry.name.to_string(),
            fire_at_ms: at.timestamp_millis(),
            task_id: encoded.id.clone(),
            list_key: encoded.queue_key,
            payload: encoded.id.into_bytes(),
            rq: Some(Box::new(RqJobHash {
                fields: encoded.fields,
                expire: encoded.expire,
            })),
            schedule_fingerprint: entry.fingerprint(),
        }
    }
}

impl FireEncoder for CeleryEncoder {
    fn encode(&self, entry: &Entry, at: DateTime<Utc>, epoch: u64) -> Fire {
        if let Some(rq) = &entry.rq {
            return self.encode_rq(entry, rq, at, epoch);
        }
        let encoded = task_message(entry, at, epoch, &self.origin).encode(self.clock.now());
        Fire {
            entry: entry.name.to_string(),
            fire_at_ms: at.timestamp_millis(),
            task_id: encoded.id,
            rq: None,
            list_key: encoded.list_key,
            payload: encoded.payload.into_bytes(),
            schedule_fingerprint: entry.fingerprint(),
        }
    }
}
