//! The delivery tags this worker holds (taken, not yet acked or returned), and the
//! heartbeat that keeps their `unacked_index` scores fresh.
//!
//! kombu scores a delivery once, so a task that runs (or waits for its ETA) longer than the
//! visibility timeout is restored by some consumer while it still runs, and runs twice.
//! Refreshing our own scores (`ZADD XX`) means only messages of a worker that stopped
//! heartbeating — one that died — age past the timeout. Python workers read only the scores,
//! so this stays compatible with them.

use super::broker::UNACKED_INDEX;
use crate::redis::DedicatedConn;
use redis::RedisResult;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Most members per `ZADD`.
const CHUNK: usize = 1000;

/// Tags held by this worker.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The tags.
    tags: Mutex<HashSet<String>>,
}

impl Held {
    /// Starts holding `tag` until the returned guard is dropped.
    pub(crate) fn hold(self: &Arc<Self>, tag: &str) -> HeldGuard {
        if let Ok(mut t) = self.tags.lock() {
            t.insert(tag.to_string());
        }
        HeldGuard {
            held: self.clone(),
            tag: tag.to_string(),
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.tags
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Re-scores every held tag at `now_unix` (only tags still in the index).
    pub(crate) async fn touch(&self, conn: &mut DedicatedConn, now_unix: f64) -> RedisResult<()> {
        let tags = self.snapshot();
        for chunk in tags.chunks(CHUNK) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(UNACKED_INDEX).arg("XX");
            for tag in chunk {
                cmd.arg(now_unix).arg(tag);
            }
            cmd.query_async::<()>(conn).await?;
        }
        Ok(())
    }
}

/// Holds one tag; dropping it (ack, return, abort) stops the heartbeat for it.
#[derive(Debug)]
pub(crate) struct HeldGuard {
    /// The set it is in.
    held: Arc<Held>,
    /// The tag.
    tag: String,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.held.tags.lock() {
            t.remove(&self.tag);
        }
    }
}
