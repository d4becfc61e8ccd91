//! The leader lock on Redis: `{ns}:leader` set with `SET NX PX ttl` to a per-acquisition
//! token, the fencing epoch `{ns}:epoch` incremented in the same script, renewal by
//! compare-and-`PEXPIRE`, release by compare-and-`DEL`.
//!
//! Owns the lock's key protocol only. When to renew, when to stop emitting and when to retry
//! belong to the beat loop; the emission script re-checks the token, so a paused or partitioned
//! ex-leader can never push even if it has not noticed yet.

use super::{Handover, LeaderInfo, LeaderLock, Lease};
use crate::redis::{Error, Keys, RedisConn};
use crate::store;
use ::redis::Script;
use async_trait::async_trait;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));
static HOLDER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/holder.lua")));

/// The default lock TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// A [`LeaderLock`] on Redis.
#[derive(Debug, Clone)]
pub struct RedisLeader {
    /// Shared connection.
    conn: RedisConn,
    /// Key names.
    keys: Keys,
    /// TTL of the lock; renew every third of it.
    ttl: Duration,
    /// `hostname:pid`, the readable part of every token.
    identity: String,
    /// Notified when a release is announced on the lock's channel.
    released: std::sync::Arc<tokio::sync::Notify>,
    /// Set once the subscriber task runs (started on the first wait, inside the runtime).
    listening: std::sync::OnceLock<()>,
}

impl RedisLeader {
    /// A lock under `keys` with leases of `ttl` (at least 1 ms is sent to Redis).
    #[must_use]
    pub fn new(conn: RedisConn, keys: Keys, ttl: Duration) -> Self {
        Self {
            conn,
            keys,
            ttl,
            identity: format!("{}:{}", crate::host::hostname(), std::process::id()),
            released: std::sync::Arc::default(),
            listening: std::sync::OnceLock::new(),
        }
    }

    /// Subscribes to the lock's channel for as long as the process lives; a lost or refused
    /// subscription only means standbys poll as before.
    fn listen(&self) {
        self.listening.get_or_init(|| {
            let released = self.released.clone();
            crate::redis::channel::follow(self.conn.clone(), self.keys.leader.clone(), move |e| {
                if e == crate::redis::channel::Event::Message {
                    released.notify_waiters();
                }
            });
        });
    }

    /// The keys this lock uses.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    async fn acquire(&self) -> Result<Option<Lease>, Error> {
        // Random per acquisition: a replica that lost the lock and re-acquired it must not
        // let its old lease pass for the new one.
        let token = format!("{}:{:016x}", self.identity, rand::random::<u64>());
        let acquired_at = Instant::now();
        let (k, ttl) = (&self.keys, self.ttl_ms());
        // Replicated before it counts: a lock and an epoch lost in a failover would let a
        // second leader start, or the epoch go back.
        let reply = self
            .conn
            .run_replicated(|mut c| {
                let t = token.clone();
                async move {
                    ACQUIRE
                        .key(&k.leader)
                        .key(&k.epoch)
                        .arg(t)
                        .arg(ttl)
                        .invoke_async::<u64>(&mut c)
                        .await
                }
            })
            .await;
        let epoch = match reply {
            Ok(epoch) => epoch,
            Err(e) => {
                // The script may have run with the reply lost; then the lock holds a token
                // nobody knows and stays taken for a whole TTL. Best effort to free it.
                if matches!(
                    e,
                    Error::Timeout { .. } | Error::Unreachable { .. } | Error::NotReplicated { .. }
                ) {
                    let _ = self.compare_and(&RELEASE, &token, false).await;
                }
                return Err(e);
            }
        };
        Ok((epoch > 0).then_some(Lease {
            token,
            epoch,
            acquired_at,
            ttl: self.ttl,
        }))
    }

    async fn compare_and(&self, script: &Script, token: &str, ttl: bool) -> Result<bool, Error> {
        let (k, ttl_ms) = (&self.keys, self.ttl_ms());
        let write = |mut c: ::redis::aio::MultiplexedConnection| async move {
            let mut inv = script.key(&k.leader);
            inv.arg(token);
            if ttl {
                inv.arg(ttl_ms);
            }
            inv.invoke_async::<i64>(&mut c).await
        };
        // A renewal waits for the replicas like the acquisition; a release need not.
        let n = if ttl {
            self.conn.run_replicated(write).await?
        } else {
            self.conn.run(write).await?
        };
        Ok(n == 1)
    }

    /// The current holder, if any (`beatd status`).
    ///
    /// # Errors
    /// As the connection's.
    pub async fn holder(&self) -> Result<Option<LeaderInfo>, Error> {
        let k = &self.keys;
        let (holder, pttl, epoch): (Option<String>, i64, Option<u64>) = self
            .conn
            .run(|mut c| async move {
                HOLDER
                    .key(&k.leader)
                    .key(&k.epoch)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(holder.map(|holder| LeaderInfo {
            holder,
            epoch: epoch.unwrap_or(0),
            // -1 (no expiry) cannot happen for a lock beatd set; show it as 0 rather than lie.
            ttl_left: Duration::from_millis(u64::try_from(pttl).unwrap_or(0)),
        }))
    }
}

#[async_trait]
impl LeaderLock for RedisLeader {
    async fn try_acquire(&self) -> Result<Option<Lease>, store::Error> {
        Ok(self.acquire().await?)
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, store::Error> {
        Ok(self.compare_and(&RENEW, &lease.token, true).await?)
    }

    async fn release(&self, lease: &Lease) -> Result<(), store::Error> {
        self.compare_and(&RELEASE, &lease.token, false).await?;
        Ok(())
    }
}

#[async_trait]
impl Handover for RedisLeader {
    async fn released(&self, max: Duration) {
        self.listen();
        tokio::select! {
            () = self.released.notified() => {}
            () = tokio::time::sleep(max) => {}
        }
    }
}
