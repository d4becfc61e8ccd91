//! Emission on RabbitMQ, with the lock and last runs in Redis. Redis and RabbitMQ cannot be
//! written in one atomic step, so "exactly once" becomes (DESIGN.md, "Brokers"):
//!
//! 1. **intent**: `scripts/amqp_intent.lua` records each due fire's message (with its task
//!    id) in `{ns}:amqp_intents`, only while the lease's token holds the lock and only when
//!    the entry's recorded last run is older;
//! 2. **publish** with publisher confirms and `mandatory`, only while the lease has
//!    [`AmqpOptions::margin`] left by this replica's monotonic clock; an unroutable return or
//!    a nack is an error (logged, counted in `beatd_amqp_returns_total`), never a silent loss;
//! 3. **sent**: on the confirm, `scripts/amqp_sent.lua` records the last runs and forgets the
//!    intents, again only while the token holds.
//!
//! A leader that dies (or loses its lease) between 2 and 3 leaves intents behind; the next
//! leader's [`Emitter::resume`] publishes them again with the *same* task id before anything
//! else. So every fire time is delivered at least once, and more than once only as that
//! same-id republish (counted in `beatd_amqp_republishes_total`), which `beatd worker` runs
//! once.
//!
//! Owns the AMQP link (one connection, a channel for declarations and a confirm channel,
//! reopened after any error) and the order of the three steps. Messages are built as for
//! Redis (`protocol`) and mapped onto AMQP by `amqp::wire`.

use super::{EmitOutcome, Emitter, Fire};
use crate::amqp::{self, wire, AmqpUrl, QueueArgs};
use crate::leader::Lease;
use crate::ops::metrics::Metrics;
use crate::redis::{Keys, RedisConn};
use crate::store;
use ::redis::{Script, Value};
use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Mutex;

static INTENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/listpack.lua"),
        include_str!("scripts/amqp_intent.lua")
    ))
});
static SENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/listpack.lua"),
        include_str!("scripts/amqp_sent.lua")
    ))
});

/// How the AMQP emitter declares and publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpOptions {
    /// Arguments for queues beatd creates (never for queues that exist).
    pub queue_args: QueueArgs,
    /// Publish only while at least this much of the lease is left on the local monotonic
    /// clock; `None`: a third of the lease's TTL. Bounds how long after its own deadline a
    /// stalled publish of an ex-leader can land.
    pub margin: Option<Duration>,
    /// At most this many fires per intent / publish / sent round.
    pub max_fires_per_call: usize,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            queue_args: QueueArgs::default(),
            margin: None,
            max_fires_per_call: 2_000,
        }
    }
}

/// One intent, as stored in `{ns}:amqp_intents`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Intent {
    entry: String,
    at: i64,
    fp: String,
    id: String,
    msg: String,
}

impl Intent {
    fn field(entry: &str, at: i64) -> String {
        format!("{entry}\0{at}")
    }
}

struct Link {
    conn: Connection,
    declare: Channel,
    publish: Channel,
    declared: HashSet<String>,
}

/// Publishes kombu envelopes to RabbitMQ with confirms and `mandatory`, declaring each
/// queue as Celery does before its first publish; one link, reopened after any error.
pub struct AmqpPublisher {
    url: AmqpUrl,
    queue_args: QueueArgs,
    metrics: Arc<Metrics>,
    link: Mutex<Option<Link>>,
    connected_once: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// An [`Emitter`] publishing to RabbitMQ, fenced by the lease through Redis.
pub struct AmqpEmitter {
    publisher: AmqpPublisher,
    redis: RedisConn,
    keys: Keys,
    opts: AmqpOptions,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AmqpEmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpEmitter")
            .field("publisher", &self.publisher)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> store::Error {
    store::Error::Unavailable(Box::new(e))
}

impl AmqpPublisher {
    /// A publisher to `url`; queues it creates get `queue_args`.
    #[must_use]
    pub fn new(url: AmqpUrl, queue_args: QueueArgs, metrics: Arc<Metrics>) -> Self {
        Self {
            url,
            queue_args,
            metrics,
            link: Mutex::new(None),
            connected_once: std::sync::atomic::AtomicBool::new(false),
        }
    }

    async fn open(&self) -> Result<Link, amqp::Error> {
        let broker = |what, e| amqp::Error::Broker {
            url: self.url.redacted().clone(),
            what,
            source: Arc::new(e),
        };
        let conn =
            amqp::connect(&self.url, &format!("beatd beat {}", crate::host::origin())).await?;
        let declare = conn
            .create_channel()
            .await
            .map_err(|e| broker("open a channel", e))?;
        let publish = conn
            .create_channel()
            .await
            .map_err(|e| broker("open a channel", e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker("turn on publisher confirms", e))?;
        if self
            .connected_once
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.metrics.amqp_reconnects.inc();
        }
        tracing::info!(broker = %self.url.redacted(), "rabbitmq connected");
        Ok(Link {
            conn,
            declare,
            publish,
            declared: HashSet::new(),
        })
    }

    /// Publishes `envelopes` (kombu envelopes) and waits for every confirm. Drops the link after any error, so
    /// the next call reconnects.
    pub async fn publish(&self, envelopes: &[&[u8]]) -> Result<(), amqp::Error> {
        let mut guard = self.link.lock().await;
        let result = async {
            if guard
                .as_ref()
                .is_none_or(|l| !l.conn.status().connected() || !l.publish.status().connected())
            {
                *guard = Some(self.open().await?);
            }
            let link = guard.as_mut().expect("just opened");
            self.publish_on(link, envelopes).await
        }
        .await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    async fn publish_on(&self, link: &mut Link, envelopes: &[&[u8]]) -> Result<(), amqp::Error> {
        let broker = |what, e| amqp::Error::Broker {
            url: self.url.redacted().clone(),
            what,
            source: Arc::new(e),
        };
        let msgs = envelopes
            .iter()
            .map(|e| wire::publish(e).map_err(amqp::Error::Message))
            .collect::<Result<Vec<_>, _>>()?;
        for m in &msgs {
            if !link.declared.contains(&m.routing_key) {
                link.declare = amqp::declare_queue(
                    &link.conn,
                    link.declare.clone(),
                    &self.url,
                    &m.routing_key,
                    &self.queue_args,
                )
                .await?;
                link.declared.insert(m.routing_key.clone());
            }
        }
        let mut confirms = Vec::with_capacity(msgs.len());
        for m in &msgs {
            let c = link
                .publish
                .basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.body,
                    m.properties.clone(),
                )
                .await
                .map_err(|e| broker("publish", e))?;
            self.metrics.amqp_publishes.inc();
            confirms.push(c);
        }
        let mut first_error = None;
        for (m, c) in msgs.iter().zip(confirms) {
            let failure = match c.await.map_err(|e| broker("wait for the confirm", e))? {
                Confirmation::Ack(None) => {
                    self.metrics.amqp_confirms.inc();
                    None
                }
                Confirmation::Ack(Some(ret)) => Some(amqp::Error::Unroutable {
                    exchange: m.exchange.clone(),
                    routing_key: m.routing_key.clone(),
                    reply: format!("{} {}", ret.reply_code, ret.reply_text.as_str()),
                }),
                Confirmation::Nack(_) | Confirmation::NotRequested => Some(amqp::Error::Nacked {
                    routing_key: m.routing_key.clone(),
                }),
            };
            if let Some(e) = failure {
                self.metrics.amqp_returns.inc();
                tracing::error!(error = %e, "publish not taken by rabbitmq; the fire stays pending");
                // Declared again on the next try: someone may have deleted the queue.
                link.declared.remove(&m.routing_key);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl AmqpEmitter {
    /// An emitter publishing to `url`, recording under `keys` in `redis`.
    #[must_use]
    pub fn new(
        url: AmqpUrl,
        redis: RedisConn,
        keys: Keys,
        opts: AmqpOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            publisher: AmqpPublisher::new(url, opts.queue_args.clone(), metrics.clone()),
            redis,
            keys,
            opts,
            metrics,
        }
    }

    fn margin(&self, lease: &Lease) -> Duration {
        self.opts.margin.unwrap_or(lease.ttl / 3)
    }

    /// `LeaseLost` unless the lease has the margin left on the monotonic clock.
    fn check_margin(&self, lease: &Lease) -> Result<(), store::Error> {
        if tokio::time::Instant::now() + self.margin(lease) >= lease.deadline() {
            tracing::warn!(
                epoch = lease.epoch,
                "lease too close to its end to publish; leaving it to the next leader"
            );
            return Err(store::Error::LeaseLost);
        }
        Ok(())
    }

    /// Records the intents of `fires`; returns what to publish, one per fire (`None`:
    /// already sent), the stored message when an intent was pending already.
    async fn record_intents(
        &self,
        token: &str,
        fires: &[Fire],
    ) -> Result<Vec<Option<Intent>>, store::Error> {
        let intents: Vec<Intent> = fires
            .iter()
            .map(|f| Intent {
                entry: f.entry.clone(),
                at: f.fire_at_ms,
                fp: f.schedule_fingerprint.clone(),
                id: f.task_id.clone(),
                msg: String::from_utf8_lossy(&f.payload).into_owned(),
            })
            .collect();
        // The script may take only the first fires (small listpacks): send the rest again.
        let mut outcomes: Vec<u8> = Vec::with_capacity(intents.len());
        while outcomes.len() < intents.len() {
            let rest = &intents[outcomes.len()..];
            let mut inv = INTENT.prepare_invoke();
            inv.key(&self.keys.leader)
                .key(&self.keys.last_run)
                .key(&self.keys.amqp_intents)
                .arg(token);
            for i in rest {
                inv.arg(&i.entry)
                    .arg(i.at)
                    .arg(Intent::field(&i.entry, i.at))
                    .arg(serde_json::to_string(i).unwrap_or_default());
            }
            let reply: Vec<Value> = self
                .redis
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            match reply.as_slice() {
                [Value::Int(0)] => return Err(store::Error::LeaseLost),
                [Value::Int(1), Value::BulkString(o)] if (1..=rest.len()).contains(&o.len()) => {
                    outcomes.extend_from_slice(o);
                }
                _ => {
                    return Err(store::Error::Unavailable(
                        format!("unexpected reply from amqp_intent.lua: {reply:?}").into(),
                    ))
                }
            }
        }
        // A pending intent keeps its first message (and task id): read those back.
        let fields: Vec<String> = intents
            .iter()
            .map(|i| Intent::field(&i.entry, i.at))
            .collect();
        let key = self.keys.amqp_intents.clone();
        let stored: Vec<Option<String>> = self
            .redis
            .run(|mut c| {
                let (key, fields) = (key.clone(), fields.clone());
                async move {
                    ::redis::cmd("HMGET")
                        .arg(key)
                        .arg(fields)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(intents
            .into_iter()
            .zip(outcomes)
            .zip(stored)
            .map(|((mine, o), stored)| {
                (o == b'S').then(|| {
                    stored
                        .and_then(|s| serde_json::from_str::<Intent>(&s).ok())
                        .unwrap_or(mine)
                })
            })
            .collect())
    }

    async fn mark_sent(&self, token: &str, sent: &[Intent]) -> Result<(), store::Error> {
        // The script may take only the first fires (small listpacks): send the rest again.
        let mut rest = sent;
        while !rest.is_empty() {
            let mut inv = SENT.prepare_invoke();
            inv.key(&self.keys.leader)
                .key(&self.keys.last_run)
                .key(&self.keys.run_count)
                .key(&self.keys.fingerprint)
                .key(&self.keys.amqp_intents)
                .arg(token);
            for i in rest {
                inv.arg(&i.entry)
                    .arg(i.at)
                    .arg(&i.fp)
                    .arg(Intent::field(&i.entry, i.at));
            }
            let reply: Vec<Value> = self
                .redis
                .run(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            match reply.as_slice() {
                [Value::Int(1), Value::Int(n)]
                    if usize::try_from(*n).is_ok_and(|n| (1..=rest.len()).contains(&n)) =>
                {
                    rest = &rest[usize::try_from(*n).unwrap_or(rest.len())..];
                }
                [Value::Int(0)] => return Err(store::Error::LeaseLost),
                _ => {
                    return Err(store::Error::Unavailable(
                        format!("unexpected reply from amqp_sent.lua: {reply:?}").into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Publishes `intents` under `lease` (margin first) and records them as sent.
    async fn publish_and_settle(
        &self,
        lease: &Lease,
        intents: &[Intent],
    ) -> Result<(), store::Error> {
        if intents.is_empty() {
            return Ok(());
        }
        self.check_margin(lease)?;
        let envelopes: Vec<&[u8]> = intents.iter().map(|i| i.msg.as_bytes()).collect();
        self.publisher
            .publish(&envelopes)
            .await
            .map_err(unavailable)?;
        self.mark_sent(&lease.token, intents).await
    }
}

#[async_trait]
impl Emitter for AmqpEmitter {
    async fn emit(&self, lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, store::Error> {
        let mut outcomes = Vec::with_capacity(fires.len());
        for chunk in fires.chunks(self.opts.max_fires_per_call.max(1)) {
            let planned = self.record_intents(&lease.token, chunk).await?;
            let to_send: Vec<Intent> = planned.iter().flatten().cloned().collect();
            self.publish_and_settle(lease, &to_send).await?;
            outcomes.extend(planned.iter().map(|p| {
                if p.is_some() {
                    EmitOutcome::Sent
                } else {
                    EmitOutcome::AlreadySent
                }
            }));
        }
        Ok(outcomes)
    }

    async fn resume(&self, lease: &Lease) -> Result<(), store::Error> {
        let key = self.keys.amqp_intents.clone();
        let pending: HashMap<String, String> = self
            .redis
            .run(|mut c| {
                let key = key.clone();
                async move { ::redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
            })
            .await?;
        if pending.is_empty() {
            return Ok(());
        }
        let mut intents: Vec<Intent> = Vec::with_capacity(pending.len());
        for (field, value) in pending {
            match serde_json::from_str::<Intent>(&value) {
                Ok(i) => intents.push(i),
                Err(e) => {
                    tracing::error!(field = %field.replace('\0', " "), error = %e, "unreadable amqp intent dropped");
                    let key = self.keys.amqp_intents.clone();
                    self.redis
                        .run(|mut c| {
                            let (key, field) = (key.clone(), field.clone());
                            async move {
                                ::redis::cmd("HDEL")
                                    .arg(key)
                                    .arg(field)
                                    .query_async::<i64>(&mut c)
                                    .await
                            }
                        })
                        .await?;
                }
            }
        }
        // Oldest first, as the fires were planned.
        intents.sort_by(|a, b| (a.at, &a.entry).cmp(&(b.at, &b.entry)));
        tracing::info!(
            epoch = lease.epoch,
            count = intents.len(),
            "publishing again the unconfirmed fires of an earlier term, with their task ids"
        );
        for chunk in intents.chunks(self.opts.max_fires_per_call.max(1)) {
            self.publish_and_settle(lease, chunk).await?;
            self.metrics.amqp_republishes.inc_by(chunk.len() as u64);
        }
        Ok(())
    }
}

/// The single-instance mode's emission: RabbitMQ with no Redis, last runs in the state file.
/// The lock is an exclusive queue (`leader::AmqpLeader`): only its holder publishes.
///
/// A fire is published (confirmed) first, then recorded in the file: a crash between the
/// two sends that fire time again at the next start, with a new task id. Nothing is lost.
#[derive(Debug)]
pub struct AmqpFileEmitter {
    publisher: AmqpPublisher,
    state: Arc<crate::state::FileState>,
}

impl AmqpFileEmitter {
    /// Publishes with `publisher`, records into `state`.
    #[must_use]
    pub fn new(publisher: AmqpPublisher, state: Arc<crate::state::FileState>) -> Self {
        Self { publisher, state }
    }
}

#[async_trait]
impl Emitter for AmqpFileEmitter {
    async fn emit(&self, _lease: &Lease, fires: &[Fire]) -> Result<Vec<EmitOutcome>, store::Error> {
        // Which fires are due: decided on a copy of the state, as the recording will.
        let mut last: HashMap<String, i64> =
            crate::state::StateStore::last_runs(self.state.as_ref())
                .await?
                .into_iter()
                .map(|(k, v)| (k, v.fire_at_ms))
                .collect();
        let send: Vec<bool> = fires
            .iter()
            .map(|f| {
                let newer = last.get(&f.entry).is_none_or(|at| *at < f.fire_at_ms);
                if newer {
                    last.insert(f.entry.clone(), f.fire_at_ms);
                }
                newer
            })
            .collect();
        let envelopes: Vec<&[u8]> = fires
            .iter()
            .zip(&send)
            .filter(|(_, s)| **s)
            .map(|(f, _)| f.payload.as_slice())
            .collect();
        if !envelopes.is_empty() {
            self.publisher
                .publish(&envelopes)
                .await
                .map_err(unavailable)?;
        }
        self.state
            .update(|next| {
                let mut changed = false;
                for (f, s) in fires.iter().zip(&send) {
                    if *s {
                        changed |= crate::state::record(
                            next,
                            &f.entry,
                            f.fire_at_ms,
                            &f.schedule_fingerprint,
                        );
                    }
                }
                ((), changed)
            })
            .map_err(|e| store::Error::Unavailable(Box::new(e)))?;
        Ok(send
            .into_iter()
            .map(|s| {
                if s {
                    EmitOutcome::Sent
                } else {
                    EmitOutcome::AlreadySent
                }
            })
            .collect())
    }

    async fn resume(&self, _lease: &Lease) -> Result<(), store::Error> {
        // A standby that takes over reads what the previous holder recorded.
        self.state
            .reload()
            .map_err(|e| store::Error::Unavailable(Box::new(e)))
    }
}
