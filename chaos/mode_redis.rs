//! `--mode redis` (the default): one durable redis-server (`--appendonly yes --appendfsync
//! always`) that is the broker, the lock and the state; beat-0 reaches it through the flaky
//! [`proxy`](super::proxy). Faults: redis-server killed and restarted, the proxy dropping
//! or stalling connections.
//!
//! [`FlakyRedis`] (the server, the proxy and their faults) is also the lock's and state's
//! Redis of `--mode rabbitmq`.

use super::procs::between;
use super::proxy::{self, Mode};
use super::runner::{Backend, Pending, QUEUE};
use beatd::testkit::RedisServer;
use rand::rngs::StdRng;
use std::time::Duration;
use tokio::time::Instant;

/// The fault kinds of a [`FlakyRedis`].
pub const KINDS: &[&str] = &["redis_kill", "proxy_drop", "proxy_stall"];

/// A durable redis-server and a proxy in front of it, with their faults.
pub struct FlakyRedis {
    server: RedisServer,
    proxy: proxy::Proxy,
    /// Killed: restart at the instant.
    up_at: Option<Instant>,
    /// Dropping or stalling: pass again at the instant.
    pass_at: Option<Instant>,
}

impl FlakyRedis {
    /// Starts the server (every write fsynced before it is acknowledged: a `kill -9` loses
    /// nothing acknowledged, which the checker's 0 lost relies on) and the proxy.
    ///
    /// # Errors
    /// When redis-server cannot start or the proxy cannot bind.
    pub async fn start() -> Result<Self, String> {
        let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
            .map_err(|e| e.to_string())?;
        let proxy = proxy::start(([127, 0, 0, 1], server.port()).into())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            server,
            proxy,
            up_at: None,
            pass_at: None,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The URL through the proxy.
    pub fn proxied_url(&self) -> String {
        format!("redis://{}/0", self.proxy.addr)
    }

    /// Injects one of [`KINDS`]; `None` when that fault is already in progress.
    pub fn inject(&mut self, kind: &str, rng: &mut StdRng, now: Instant) -> Option<String> {
        match kind {
            "redis_kill" => {
                if !self.server.is_running() {
                    return None;
                }
                self.up_at = Some(now + between(rng, 500, 4000));
                self.server.kill();
                Some("redis killed".to_string())
            }
            _ => {
                if *self.proxy.mode.borrow() != Mode::Pass {
                    return None;
                }
                let (mode, until) = if kind == "proxy_drop" {
                    (Mode::Drop, now + between(rng, 0, 3000))
                } else {
                    // Beyond the lock TTL: the beat behind the proxy loses the lock unawares,
                    // and its held requests arrive late.
                    (Mode::Stall, now + between(rng, 2000, 8000))
                };
                let _ = self.proxy.mode.send(mode);
                self.pass_at = Some(until);
                Some(format!("proxy {mode:?}"))
            }
        }
    }

    /// Restarts the server and lets the proxy pass when their time has come.
    ///
    /// # Errors
    /// When redis-server does not start again.
    pub fn undo_due(&mut self, now: Instant, ending: bool) -> Result<Vec<String>, String> {
        let mut said = Vec::new();
        if self.up_at.is_some_and(|at| ending || now >= at) {
            tokio::task::block_in_place(|| self.server.restart()).map_err(|e| e.to_string())?;
            self.up_at = None;
            said.push("redis restarted".to_string());
        }
        if self.pass_at.is_some_and(|at| ending || now >= at) {
            let _ = self.proxy.mode.send(Mode::Pass);
            self.pass_at = None;
            said.push("proxy passes".to_string());
        }
        Ok(said)
    }
}

/// A connection with short timeouts, for reading what the run left.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn conn(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Messages in kombu's queue lists (every priority step) and in `unacked`, on `url`.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn list_pending(url: &str) -> redis::RedisResult<Pending> {
    let mut c = conn(url).await?;
    let mut queued = 0;
    for step in beatd::protocol::PRIORITY_STEPS {
        let key = beatd::protocol::priority_list_key(QUEUE, Some(step));
        let n: u64 = redis::cmd("LLEN").arg(key).query_async(&mut c).await?;
        queued += n;
    }
    let unacked: u64 = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut c)
        .await?;
    Ok(Pending { queued, unacked })
}

/// `--mode redis`.
pub struct Plain {
    redis: FlakyRedis,
}

impl Plain {
    /// Starts the durable server and the proxy.
    ///
    /// # Errors
    /// As [`FlakyRedis::start`].
    pub async fn start() -> Result<Self, String> {
        Ok(Self {
            redis: FlakyRedis::start().await?,
        })
    }
}

impl Backend for Plain {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn beat_args(&self, i: usize) -> Vec<String> {
        let url = if i == 0 {
            self.redis.proxied_url()
        } else {
            self.redis.url()
        };
        vec!["--redis-url".into(), url]
    }

    fn worker_args(&self) -> Vec<String> {
        vec!["--redis-url".into(), self.redis.url()]
    }

    fn describe(&self) -> String {
        format!(
            "redis {} proxy {}",
            self.redis.url(),
            self.redis.proxied_url()
        )
    }

    async fn inject(
        &mut self,
        kind: &'static str,
        rng: &mut StdRng,
        now: Instant,
    ) -> Result<Option<String>, String> {
        Ok(self.redis.inject(kind, rng, now))
    }

    async fn undo_due(&mut self, now: Instant, ending: bool) -> Result<Vec<String>, String> {
        self.redis.undo_due(now, ending)
    }

    async fn settle(&mut self) -> Result<Vec<String>, String> {
        self.redis.undo_due(Instant::now(), true)
    }

    async fn state_url(&self) -> Option<String> {
        Some(self.redis.url())
    }

    async fn pending(&self) -> Result<Pending, String> {
        list_pending(&self.redis.url())
            .await
            .map_err(|e| e.to_string())
    }

    fn restores_unacked(&self) -> bool {
        true
    }
}
