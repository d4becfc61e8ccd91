//! Leadership without Redis, for the single-instance mode on RabbitMQ: an exclusive queue is
//! the lock. RabbitMQ lets one connection declare an exclusive queue and deletes it when that
//! connection closes (or misses its heartbeats), so the holder is whoever declared it and
//! keeps its connection; a second beat's declare fails with `RESOURCE_LOCKED` and it stands
//! by, polling, until the first goes away.
//!
//! The epoch counts this process's acquisitions only (no shared store to count in).

use super::{Error, LeaderLock, Lease};
use crate::amqp::{self, AmqpUrl};
use async_trait::async_trait;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// The exclusive-queue lock on `url`.
pub struct AmqpLeader {
    url: AmqpUrl,
    queue: String,
    ttl: Duration,
    held: Mutex<Option<(String, Connection)>>,
    epoch: AtomicU64,
}

impl std::fmt::Debug for AmqpLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpLeader")
            .field("url", &self.url)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl AmqpLeader {
    /// The lock `beatd.<namespace>.leader` on `url`, with leases of `ttl`.
    #[must_use]
    pub fn new(url: AmqpUrl, namespace: &str, ttl: Duration) -> Self {
        Self {
            url,
            queue: format!("beatd.{namespace}.leader"),
            ttl,
            held: Mutex::new(None),
            epoch: AtomicU64::new(0),
        }
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Unavailable(Box::new(e))
}

#[async_trait]
impl LeaderLock for AmqpLeader {
    async fn try_acquire(&self) -> Result<Option<Lease>, Error> {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|(_, c)| c.status().connected()) {
            return Ok(None);
        }
        let sent = tokio::time::Instant::now();
        let conn = amqp::connect(
            &self.url,
            &format!("beatd beat lock {}", crate::host::origin()),
        )
        .await
        .map_err(unavailable)?;
        let ch = conn.create_channel().await.map_err(unavailable)?;
        let declared = ch
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        if declared.is_err() {
            // RESOURCE_LOCKED: another beat's connection holds it.
            let _ = conn.close(200, "standing by".into()).await;
            return Ok(None);
        }
        let token = uuid::Uuid::new_v4().to_string();
        *held = Some((token.clone(), conn));
        Ok(Some(Lease {
            token,
            epoch: self.epoch.fetch_add(1, Ordering::Relaxed) + 1,
            acquired_at: sent,
            ttl: self.ttl,
        }))
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, Error> {
        let held = self.held.lock().await;
        Ok(held
            .as_ref()
            .is_some_and(|(t, c)| *t == lease.token && c.status().connected()))
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|(t, _)| *t == lease.token) {
            if let Some((_, c)) = held.take() {
                let _ = c.close(200, "released".into()).await;
            }
        }
        Ok(())
    }
}
