//! What a fire sends: the Celery message of an entry for one scheduled fire time, as
//! `celery beat` would send it, plus beatd's three headers (entry, scheduled time, epoch).

use crate::beat::FireEncoder;
use crate::clock::SharedClock;
use crate::emit::Fire;
use crate::entry::Entry;
use crate::protocol::{beatd_headers, TaskMessage};
use chrono::{DateTime, Utc};

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
        .expires
        .and_then(|e| chrono::Duration::from_std(e).ok())
        .map(|e| at + e);
    let mut msg = TaskMessage::new(&*entry.task)
        .args(entry.args.to_vec())
        .kwargs((*entry.kwargs).clone())
        .queue(&*entry.queue)
        .priority(entry.priority)
        .expires(expires)
        // celery beat sends through apply_async for registered tasks: ignore_result false.
        .ignore_result(Some(false))
        .origin(origin)
        .beat(true)
        .headers(headers);
    if let Some(key) = &entry.routing_key {
        msg = msg.routing_key(key.clone());
    }
    if let Some(exchange) = &entry.exchange {
        msg = msg.exchange(exchange.clone());
    }
    msg
}

impl FireEncoder for CeleryEncoder {
    fn encode(&self, entry: &Entry, at: DateTime<Utc>, epoch: u64) -> Fire {
        let encoded = task_message(entry, at, epoch, &self.origin).encode(self.clock.now());
        Fire {
            entry: entry.name.clone(),
            fire_at_ms: at.timestamp_millis(),
            task_id: encoded.id,
            rq: None,
            list_key: encoded.list_key,
            payload: encoded.payload.into_bytes(),
            schedule_fingerprint: entry.fingerprint(),
        }
    }
}
