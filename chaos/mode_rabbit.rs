//! `--mode rabbitmq`: a private RabbitMQ node ([`RabbitServer`], vhost `chaos`) is the broker;
//! a durable redis-server ([`FlakyRedis`], beat-0 behind the proxy) holds the lock, the last
//! runs and the publish intents, and is the workers' result backend, where they claim task
//! ids (`{ns}:claim:<id>`) so that one id runs once. Faults: the RabbitMQ node `kill -9`ed and
//! restarted 0–3 s later (it recovers its durable queue and persistent messages; confirmed
//! publishes are on disk), and the Redis faults of `--mode redis`.
//!
//! AMQP delivery is at-least-once and a leader that dies between a publish and its confirm
//! leaves an intent the next leader republishes with the same task id, so a task id may run
//! twice (counted as re-executed); two task ids for one fire time, or none, fail the run.

use super::mode_redis::{conn, FlakyRedis};
use super::procs::between;
use super::runner::{Backend, Pending, NS, QUEUE};
use beatd::testkit::RabbitServer;
use rand::rngs::StdRng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The fault kinds: the node's, then the Redis ones.
pub const KINDS: &[&str] = &["rabbit_kill", "redis_kill", "proxy_drop", "proxy_stall"];

/// The vhost of the run.
const VHOST: &str = "chaos";

/// `--mode rabbitmq`.
pub struct Rabbit {
    /// Locked by a kill-and-restart in progress (and to read queue depths at the end).
    node: Arc<Mutex<RabbitServer>>,
    amqp: String,
    redis: FlakyRedis,
    /// The node's kill-and-restart in progress: how long the node took to boot.
    busy: Option<JoinHandle<Result<Duration, String>>>,
    boots: Vec<Duration>,
}

/// Runs `f` (rabbitmqctl, a node boot) off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}

impl Rabbit {
    /// Starts the node (with its vhost) and the Redis.
    ///
    /// # Errors
    /// When rabbitmq-server or redis-server cannot start.
    pub async fn start() -> Result<Self, String> {
        let (node, amqp) = blocking(|| {
            let node = RabbitServer::start().map_err(|e| format!("rabbitmq-server: {e}"))?;
            let amqp = node.vhost(VHOST).map_err(|e| e.to_string())?;
            Ok((node, amqp))
        })
        .await?;
        Ok(Self {
            node: Arc::new(Mutex::new(node)),
            amqp,
            redis: FlakyRedis::start().await?,
            busy: None,
            boots: Vec::new(),
        })
    }

    async fn reap(&mut self, wait: bool) -> Result<Vec<String>, String> {
        let finished = self.busy.as_ref().is_some_and(JoinHandle::is_finished);
        if !(finished || wait && self.busy.is_some()) {
            return Ok(Vec::new());
        }
        let boot = self
            .busy
            .take()
            .expect("checked")
            .await
            .map_err(|e| e.to_string())??;
        self.boots.push(boot);
        Ok(vec![format!("rabbitmq restarted (boot {boot:?})")])
    }
}

impl Backend for Rabbit {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn beat_args(&self, i: usize) -> Vec<String> {
        let redis = if i == 0 {
            self.redis.proxied_url()
        } else {
            self.redis.url()
        };
        vec![
            "--broker-url".into(),
            self.amqp.clone(),
            "--redis-url".into(),
            redis,
        ]
    }

    fn worker_args(&self) -> Vec<String> {
        vec![
            "--broker-url".into(),
            self.amqp.clone(),
            "--result-backend".into(),
            self.redis.url(),
            "--namespace".into(),
            NS.into(),
        ]
    }

    fn describe(&self) -> String {
        format!(
            "rabbitmq {} redis {} proxy {}",
            self.amqp.replace("guest:guest@", ""),
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
        if kind != "rabbit_kill" {
            return Ok(self.redis.inject(kind, rng, now));
        }
        if self.busy.is_some() {
            return Ok(None);
        }
        let down = between(rng, 0, 3000);
        let node = self.node.clone();
        self.busy = Some(tokio::task::spawn_blocking(move || {
            let mut node = node.lock().map_err(|e| e.to_string())?;
            node.kill().map_err(|e| format!("kill rabbitmq: {e}"))?;
            std::thread::sleep(down);
            let booting = std::time::Instant::now();
            node.restart()
                .map_err(|e| format!("restart rabbitmq: {e}"))?;
            Ok(booting.elapsed())
        }));
        Ok(Some(format!("rabbitmq kill -9, restart in {down:?}")))
    }

    async fn undo_due(&mut self, now: Instant, ending: bool) -> Result<Vec<String>, String> {
        let mut said = self.reap(false).await?;
        said.extend(self.redis.undo_due(now, ending)?);
        Ok(said)
    }

    async fn settle(&mut self) -> Result<Vec<String>, String> {
        let mut said = self.reap(true).await?;
        said.extend(self.redis.undo_due(Instant::now(), true)?);
        Ok(said)
    }

    async fn state_url(&self) -> Option<String> {
        Some(self.redis.url())
    }

    /// Queue depth from `rabbitmqctl list_queues` (ready and unacknowledged), and intents
    /// recorded but not yet confirmed (they are published again by a leader), as queued.
    async fn pending(&self) -> Result<Pending, String> {
        let node = self.node.clone();
        let (ready, unacked) = blocking(move || {
            let out = node
                .lock()
                .map_err(|e| e.to_string())?
                .ctl(&[
                    "list_queues",
                    "-p",
                    VHOST,
                    "name",
                    "messages_ready",
                    "messages_unacknowledged",
                    "--formatter",
                    "json",
                ])
                .map_err(|e| e.to_string())?;
            let queues: Vec<serde_json::Value> =
                serde_json::from_str(&out).map_err(|e| format!("list_queues: {e}: {out}"))?;
            let q = queues
                .iter()
                .find(|q| q["name"] == QUEUE)
                .ok_or_else(|| format!("no queue {QUEUE}: {out}"))?;
            let n = |k: &str| q[k].as_u64().unwrap_or(0);
            Ok((n("messages_ready"), n("messages_unacknowledged")))
        })
        .await?;
        let mut c = conn(&self.redis.url()).await.map_err(|e| e.to_string())?;
        let intents: u64 = redis::cmd("HLEN")
            .arg(format!("{NS}:amqp_intents"))
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Pending {
            queued: ready + intents,
            unacked,
        })
    }

    fn restores_unacked(&self) -> bool {
        false // RabbitMQ redelivers what a dead consumer left unacked
    }

    fn notes(&self) -> Vec<String> {
        let mut b = self.boots.clone();
        b.sort();
        let ms = |d: Option<&Duration>| d.map_or(0, Duration::as_millis);
        vec![format!(
            "rabbitmq kill -9 and restart: {} (boot min {} ms, median {} ms, max {} ms)",
            b.len(),
            ms(b.first()),
            ms(b.get(b.len() / 2)),
            ms(b.last())
        )]
    }
}
