//! The worker on RabbitMQ: consumes kombu's pyamqp transport and feeds each delivery to the
//! same [`Pipeline`] as the Redis transport (a delivery is mapped back onto kombu's envelope
//! by `amqp::wire`).
//!
//! - `basic_qos` prefetch = concurrency × prefetch multiplier, as Celery sets it;
//! - a message is acked only after its task finished and its result was stored, so a
//!   `kill -9` loses nothing: RabbitMQ redelivers what was never acked;
//! - a message with an ETA waits in memory without taking a run slot (Celery's caveat holds:
//!   one held beyond the broker's `consumer_timeout`, 30 min by default, makes RabbitMQ close
//!   the channel, and the message is redelivered);
//! - malformed messages (bad JSON, missing headers, unknown task, huge body) end as any other:
//!   FAILURE stored when the id is known, acked; never a crash or a redelivery loop;
//! - a graceful stop cancels the consumers, lets running tasks finish within the grace and
//!   requeues the unstarted ones;
//! - a broken connection (a RabbitMQ restart) is reopened with backoff; what was unacked
//!   is redelivered by RabbitMQ;
//! - a task id runs at most once: with a Redis result backend a worker claims the id before
//!   running it (`{ns}:claim:<id>`, refreshed while it runs, `done` for a day after), a copy
//!   whose id is claimed elsewhere is held until that run is done (then acked unrun) or its
//!   claim lapses (its worker died: then it runs), and an id already done is acked unrun
//!   (a same-id republish of the beat, a redelivery after a lost ack).

use super::pipeline::{Disposition, Pipeline};
use super::results::ResultSink;
use super::{Registry, Shutdown, WorkerOptions};
use crate::amqp::{self, wire, AmqpUrl, QueueArgs};
use crate::clock::SharedClock;
use crate::ops::liveness::Heartbeat;
use crate::ops::metrics::Metrics;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Which task ids are done or running, so one id runs at most once across workers.
#[async_trait::async_trait]
pub trait Finality: Send + Sync + 'static {
    /// `true` when the id ran to its end (its stored state is SUCCESS, FAILURE or REVOKED, or
    /// a worker marked it done).
    async fn is_final(&self, task_id: &str) -> bool;
    /// Claims the id for `token` for `ttl`; `false` while another worker holds it.
    async fn claim(&self, task_id: &str, token: &str, ttl: Duration) -> bool;
    /// Extends this worker's claim.
    async fn refresh(&self, task_id: &str, token: &str, ttl: Duration);
    /// Marks the id done (kept a day, as results are), whatever became of its result.
    async fn done(&self, task_id: &str);
    /// Gives the claim up without marking the id done (its run was abandoned).
    async fn release(&self, task_id: &str, token: &str);
}

/// No result backend: nothing is shared; the in-process set of running ids is all there is.
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverFinal;

#[async_trait::async_trait]
impl Finality for NeverFinal {
    async fn is_final(&self, _task_id: &str) -> bool {
        false
    }
    async fn claim(&self, _task_id: &str, _token: &str, _ttl: Duration) -> bool {
        true
    }
    async fn refresh(&self, _task_id: &str, _token: &str, _ttl: Duration) {}
    async fn done(&self, _task_id: &str) {}
    async fn release(&self, _task_id: &str, _token: &str) {}
}

/// On the Redis result backend: Celery's `celery-task-meta-<id>` state, and a claim
/// `{ns}:claim:<id>` (the holder's token while it runs, `done` after).
#[derive(Clone)]
pub struct RedisFinality {
    /// The result backend.
    pub conn: crate::redis::DedicatedConn,
    /// beatd's key namespace.
    pub namespace: String,
}

impl RedisFinality {
    fn key(&self, id: &str) -> String {
        format!("{}:claim:{id}", self.namespace)
    }
}

/// Extends or drops a claim only while it is still the caller's.
const IF_MINE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

#[async_trait::async_trait]
impl Finality for RedisFinality {
    async fn is_final(&self, task_id: &str) -> bool {
        let mut c = self.conn.clone();
        let (meta, claim): (Option<String>, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg(format!("celery-task-meta-{task_id}"))
            .cmd("GET")
            .arg(self.key(task_id))
            .query_async(&mut c)
            .await
            .unwrap_or((None, None));
        claim.as_deref() == Some("done")
            || meta
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|m| {
                    matches!(
                        m["status"].as_str(),
                        Some("SUCCESS" | "FAILURE" | "REVOKED")
                    )
                })
    }

    async fn claim(&self, task_id: &str, token: &str, ttl: Duration) -> bool {
        let mut c = self.conn.clone();
        let set: Result<Option<String>, _> = redis::cmd("SET")
            .arg(self.key(task_id))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut c)
            .await;
        // Redis unreachable: run it (at least once beats never).
        set.map_or(true, |r| r.is_some())
    }

    async fn refresh(&self, task_id: &str, token: &str, ttl: Duration) {
        let mut c = self.conn.clone();
        let _: Result<i64, _> = redis::Script::new(IF_MINE)
            .key(self.key(task_id))
            .arg(token)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut c)
            .await;
    }

    async fn done(&self, task_id: &str) {
        let mut c = self.conn.clone();
        let _: Result<(), _> = redis::cmd("SET")
            .arg(self.key(task_id))
            .arg("done")
            .arg("EX")
            .arg(crate::protocol::RESULT_TTL_SECS)
            .query_async(&mut c)
            .await;
    }

    async fn release(&self, task_id: &str, token: &str) {
        let mut c = self.conn.clone();
        let _: Result<i64, _> = redis::Script::new(IF_MINE)
            .key(self.key(task_id))
            .arg(token)
            .arg("")
            .invoke_async(&mut c)
            .await;
    }
}

/// How long a claim lives without its holder refreshing it: a killed worker's claim lapses
/// after this, and the redelivered copy runs.
const CLAIM_TTL: Duration = Duration::from_secs(15);

/// The worker on RabbitMQ, with everything it runs on.
pub struct AmqpWorker {
    /// Settings.
    pub opts: WorkerOptions,
    /// The broker.
    pub url: AmqpUrl,
    /// Arguments for queues it creates (never for queues that exist).
    pub queue_args: QueueArgs,
    /// The tasks it runs.
    pub registry: Registry,
    /// Where results go.
    pub results: Arc<dyn ResultSink>,
    /// Whether a task id is already done.
    pub finality: Arc<dyn Finality>,
    /// Wall time.
    pub clock: SharedClock,
    /// When to stop.
    pub shutdown: Shutdown,
    /// `beatd_worker_*`, `beatd_amqp_reconnects_total`.
    pub metrics: Arc<Metrics>,
    /// Beaten every turn of the consume loop.
    pub heartbeat: Option<Heartbeat>,
    /// Set while connected and consuming (readiness).
    pub connected: Arc<std::sync::atomic::AtomicBool>,
}

/// One connection's consumers ended: why.
enum Ended {
    Stopped,
    Broken(String),
}

impl AmqpWorker {
    /// Runs until `shutdown`, reconnecting with backoff after any broker failure.
    pub async fn run(self) {
        let pipeline = Pipeline::new(
            Arc::new(self.registry.clone()),
            self.results.clone(),
            self.clock.clone(),
        )
        .with_max_message_bytes(self.opts.max_message_bytes)
        .with_metrics(self.metrics.clone());
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut backoff = crate::backoff::Backoff::new(Duration::from_secs(10));
        let mut first = true;
        loop {
            if let Some(h) = &self.heartbeat {
                h.beat();
            }
            match self.session(&pipeline, &running).await {
                Ok(Ended::Stopped) => return,
                Ok(Ended::Broken(why)) | Err(why) => {
                    self.connected
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %why, "rabbitmq connection lost; reconnecting");
                }
            }
            if !first {
                self.metrics.amqp_reconnects.inc();
            }
            first = false;
            tokio::select! {
                () = self.shutdown.graceful.cancelled() => return,
                () = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    }

    /// One connection: consume until stopped or broken.
    async fn session(
        &self,
        pipeline: &Pipeline,
        running: &Arc<Mutex<HashSet<String>>>,
    ) -> Result<Ended, String> {
        fn err(e: &(dyn std::error::Error + 'static)) -> String {
            crate::error_chain(e)
        }
        let conn = amqp::connect(
            &self.url,
            &format!("beatd worker {}", crate::host::origin()),
        )
        .await
        .map_err(|e| err(&e))?;
        let mut ch = conn.create_channel().await.map_err(|e| err(&e))?;
        let prefetch = self.opts.concurrency.max(1) * self.opts.prefetch_multiplier.max(1);
        ch.basic_qos(
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await
        .map_err(|e| err(&e))?;
        let mut consumers = Vec::new();
        for q in &self.opts.queues {
            ch = amqp::declare_queue(&conn, ch, &self.url, q, &self.queue_args)
                .await
                .map_err(|e| err(&e))?;
        }
        // The declaring channel may have been replaced: set the prefetch on the one consumed.
        ch.basic_qos(
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await
        .map_err(|e| err(&e))?;
        for q in &self.opts.queues {
            let c = ch
                .basic_consume(
                    q.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| err(&e))?;
            consumers.push(c);
        }
        self.connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            broker = %self.url.redacted(),
            queues = ?self.opts.queues,
            prefetch,
            "consuming from rabbitmq"
        );
        let tags: Vec<_> = consumers.iter().map(|c| c.tag()).collect();
        let mut stream = futures_util::stream::select_all(consumers);
        let slots = Arc::new(Semaphore::new(self.opts.concurrency.max(1)));
        // Unstarted messages give up on this token (requeued); running ones on `abort`.
        let stop = CancellationToken::new();
        let abort = self.shutdown.immediate.child_token();
        let mut jobs = JoinSet::new();
        let ended = loop {
            if let Some(h) = &self.heartbeat {
                h.beat();
            }
            while jobs.try_join_next().is_some() {}
            let next = tokio::select! {
                () = self.shutdown.graceful.cancelled() => break Ended::Stopped,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                n = stream.next() => n,
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Ended::Broken(err(&e)),
                None => break Ended::Broken("the broker cancelled the consumers".into()),
            };
            jobs.spawn(handle(
                delivery,
                pipeline.clone(),
                ch.clone(),
                slots.clone(),
                stop.clone(),
                abort.clone(),
                self.finality.clone(),
                running.clone(),
            ));
        };
        for tag in tags {
            let _ = ch
                .basic_cancel(tag, lapin::options::BasicCancelOptions::default())
                .await;
        }
        stop.cancel();
        if matches!(ended, Ended::Stopped) && !jobs.is_empty() {
            let all = async { while jobs.join_next().await.is_some() {} };
            tokio::select! {
                () = all => {}
                () = tokio::time::sleep(self.opts.shutdown_grace) => {
                    tracing::warn!("shutdown grace elapsed; unfinished tasks go back to rabbitmq");
                }
                () = abort.cancelled() => {}
            }
        }
        jobs.abort_all();
        while jobs.join_next().await.is_some() {}
        // Whatever is still unacked is requeued by RabbitMQ when the connection closes.
        let _ = conn.close(200, "bye".into()).await;
        Ok(ended)
    }
}

/// One delivery, start to finish.
#[allow(clippy::too_many_arguments)]
async fn handle(
    d: lapin::message::Delivery,
    pipeline: Pipeline,
    ch: Channel,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
    abort: CancellationToken,
    finality: Arc<dyn Finality>,
    running: Arc<Mutex<HashSet<String>>>,
) {
    let ack = |d: &lapin::message::Delivery| {
        let acker = d.acker.clone();
        async move {
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "ack failed; rabbitmq will redeliver");
            }
        }
    };
    let requeue = |d: &lapin::message::Delivery| {
        let acker = d.acker.clone();
        async move {
            let _ = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    };
    let raw = wire::envelope(
        d.exchange.as_str(),
        d.routing_key.as_str(),
        d.redelivered,
        &d.properties,
        &d.data,
    );
    let task = match pipeline.receive(&raw) {
        Ok(task) => task,
        Err(rejected) => {
            pipeline.store_finished(*rejected).await;
            ack(&d).await;
            return;
        }
    };
    if finality.is_final(&task.id).await {
        tracing::info!(task_id = %task.id, task = %task.task, "task id already done; delivery acked, not run again");
        ack(&d).await;
        return;
    }
    if let Some(eta) = task.eta {
        tokio::select! {
            () = crate::clock::sleep_until(pipeline.clock().as_ref(), eta) => {}
            () = stop.cancelled() => return requeue(&d).await,
        }
    }
    let slot = tokio::select! {
        s = slots.acquire_owned() => s,
        () = stop.cancelled() => return requeue(&d).await,
    };
    let Ok(_slot) = slot else { return };
    if !running
        .lock()
        .map(|mut r| r.insert(task.id.clone()))
        .unwrap_or(false)
    {
        // The same id runs here now: its outcome will be stored; this copy goes.
        tracing::info!(task_id = %task.id, "task id already running here; duplicate delivery acked");
        ack(&d).await;
        return;
    }
    let token = uuid::Uuid::new_v4().to_string();
    // Another worker runs this id: hold the copy until it is done (then drop it) or its
    // claim lapses (its worker died: then this copy runs).
    let mut waiting_logged = false;
    loop {
        if finality.claim(&task.id, &token, CLAIM_TTL).await {
            break;
        }
        if !waiting_logged {
            tracing::info!(task_id = %task.id, "task id running on another worker; holding this copy");
            waiting_logged = true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => {
                if let Ok(mut r) = running.lock() { r.remove(&task.id); }
                return requeue(&d).await;
            }
        }
        if finality.is_final(&task.id).await {
            tracing::info!(task_id = %task.id, "task id done by another worker; duplicate delivery acked");
            if let Ok(mut r) = running.lock() {
                r.remove(&task.id);
            }
            return ack(&d).await;
        }
    }
    let refresher = {
        let (finality, id, token) = (finality.clone(), task.id.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CLAIM_TTL / 3).await;
                finality.refresh(&id, &token, CLAIM_TTL).await;
            }
        })
    };
    let outcome = tokio::select! {
        o = pipeline.execute(&task) => Some(o),
        () = abort.cancelled() => None,
    };
    refresher.abort();
    if outcome.is_some() {
        finality.done(&task.id).await;
    } else {
        finality.release(&task.id, &token).await;
    }
    if let Ok(mut r) = running.lock() {
        r.remove(&task.id);
    }
    match outcome {
        None => {}
        Some(Disposition::Done) => ack(&d).await,
        Some(Disposition::Retry { payload, .. }) => {
            match wire::publish(payload.as_bytes()) {
                Ok(p) => {
                    if let Err(e) = ch
                        .basic_publish(
                            p.exchange.as_str().into(),
                            p.routing_key.as_str().into(),
                            BasicPublishOptions::default(),
                            &p.body,
                            p.properties,
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "retry not published; the message is redelivered");
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e, "retry message cannot be mapped; dropped"),
            }
            ack(&d).await;
        }
    }
}
