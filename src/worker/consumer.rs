//! The Redis consumer loop: takes batches of messages in kombu's priority order, tracks them
//! as unacknowledged, runs each through the [`Pipeline`] with bounded concurrency, acks, and
//! on shutdown puts back what has not started. Restores other workers' abandoned messages
//! at startup and periodically.

use super::broker::{self, Delivery};
use super::held::{Held, HeldGuard};
use super::pipeline::{Disposition, Finished, Pipeline};
use super::restore::restore_visible;
use super::{Shutdown, WorkerOptions};
use crate::backoff::Backoff;
use crate::ops::liveness::Heartbeat;
use crate::protocol::ParsedTask;
use redis::aio::ConnectionManager;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// While every prefetch place is taken, the loop still beats this often.
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// Most messages taken in one round trip after a BRPOP.
const MAX_BATCH: usize = 64;

/// What every job shares.
#[derive(Clone)]
struct Ctx {
    /// The execution pipeline.
    pipeline: Pipeline,
    /// Connection for bookkeeping (acks, requeues).
    conn: ConnectionManager,
    /// At most `concurrency` tasks run at once.
    run_slots: Arc<Semaphore>,
    /// Stop taking and starting; put unstarted messages back.
    graceful: CancellationToken,
    /// Stop everything now; leave unfinished messages unacknowledged.
    abort: CancellationToken,
    /// Tags taken and not yet acked or returned; their scores are kept fresh.
    held: Arc<Held>,
    /// Result key TTL in seconds.
    result_ttl: u64,
    /// Deliveries not started yet, by arrival order: what a graceful stop puts back.
    waiting: Arc<Mutex<BTreeMap<u64, Delivery>>>,
}

/// Runs the consumer until `shutdown`; see `worker::run`.
pub(crate) async fn consume(
    opts: &WorkerOptions,
    pipeline: Pipeline,
    conn: ConnectionManager,
    wait_conns: Vec<ConnectionManager>,
    shutdown: Shutdown,
    heartbeat: Option<Heartbeat>,
) {
    let beat = || {
        if let Some(h) = &heartbeat {
            h.beat();
        }
    };
    let max_bytes = opts.max_message_bytes;
    let wait_keys = broker::brpop_keys(&opts.queues);
    let abort = shutdown.immediate.child_token();
    let ctx = Ctx {
        pipeline,
        conn: conn.clone(),
        run_slots: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        graceful: shutdown.graceful.clone(),
        abort: abort.clone(),
        waiting: Arc::default(),
        held: Arc::default(),
        result_ttl: opts.result_ttl.as_secs().max(1),
    };
    let mut seq: u64 = 0;
    // Messages due now take their run slots in the order they were taken (the runtime polls
    // newly spawned jobs in no particular order): each waits until the one before has its
    // slot, or has ended.
    let mut turn: Option<tokio::sync::oneshot::Receiver<()>> = None;
    let prefetch = Arc::new(Semaphore::new(
        opts.concurrency.max(1) * opts.prefetch_multiplier.max(1),
    ));
    let mut jobs = JoinSet::new();
    // A restore pass is never cut short: it holds `unacked_mutex`, which would otherwise
    // block every consumer's restores for five minutes.
    let stop_restore = CancellationToken::new();
    let restorer = tokio::spawn(restore_loop(
        ctx.clone(),
        opts.visibility_timeout,
        opts.restore_interval,
        stop_restore.clone(),
    ));
    let mut queues = opts.queues.clone();
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let poll = opts.poll_timeout.as_secs_f64().max(0.01);

    while !ctx.graceful.is_cancelled() && !abort.is_cancelled() {
        beat();
        while jobs.try_join_next().is_some() {}
        // Every prefetch place taken by long tasks is a healthy wait: keep beating meanwhile.
        let first = loop {
            tokio::select! {
                _ = ctx.graceful.cancelled() => break None,
                _ = abort.cancelled() => break None,
                p = prefetch.clone().acquire_owned() => break p.ok(),
                () = tokio::time::sleep(IDLE_BEAT) => beat(),
            }
        };
        let Some(first) = first else { break };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match prefetch.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let keys = broker::brpop_keys(&queues);
        let now = ctx.pipeline.clock().now();
        #[allow(clippy::cast_precision_loss)]
        let score = now.timestamp_micros() as f64 / 1e6;
        let mut pop = ctx.conn.clone();
        let popped = broker::pop_marked(&mut pop, &keys, permits.len(), score, max_bytes).await;
        let (list_key, msgs) = match popped {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                // Nothing queued: wait for a message without taking it (safe to cancel).
                let waited = tokio::select! {
                    w = broker::wait_any(&wait_conns, &wait_keys, poll) => w,
                    _ = ctx.graceful.cancelled() => break,
                    _ = abort.cancelled() => break,
                };
                if let Err(e) = waited {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot wait for messages");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = ctx.graceful.cancelled() => break,
                        _ = abort.cancelled() => break,
                    }
                } else {
                    backoff.reset();
                }
                continue;
            }
            Err(e) => {
                ctx.pipeline.redis_error();
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot fetch messages");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.graceful.cancelled() => break,
                    _ = abort.cancelled() => break,
                }
                continue;
            }
        };
        backoff.reset();
        // kombu rotates the queue order after each delivery so no queue starves.
        queues.rotate_left(1);
        if ctx.graceful.is_cancelled() || abort.is_cancelled() {
            give_back(&ctx, &list_key, msgs).await;
            break;
        }
        let mut accepted = Vec::with_capacity(msgs.len());
        let mut unmarked = Vec::new();
        for (tag, raw) in msgs {
            match ctx.pipeline.receive(&raw) {
                Ok(task) => {
                    let marked = !tag.is_empty();
                    let d = Delivery {
                        list_key: list_key.clone(),
                        raw,
                        tag: if marked {
                            tag
                        } else {
                            task.delivery_tag.clone()
                        },
                        exchange: task.exchange.clone(),
                        routing_key: task.routing_key.clone(),
                    };
                    if !marked {
                        unmarked.push(d.clone());
                    }
                    accepted.push((task, d));
                }
                // Rejected: its FAILURE (when its id is known) and its ack go out in one step,
                // as every other message's result does, so it is not restored later.
                Err(finished) => finish(&ctx, &tag, "", &finished).await,
            }
        }
        // Messages the script could not read but the worker can (rare): tracked as kombu does.
        let refs: Vec<&Delivery> = unmarked.iter().collect();
        let mut mark_conn = ctx.conn.clone();
        if let Err(e) = broker::mark_unacked(&mut mark_conn, &refs, score).await {
            ctx.pipeline.redis_error();
            // The messages are in memory only now; run them anyway rather than lose them.
            tracing::error!(error = %e, "cannot record messages as unacked");
        }
        for (task, delivery) in accepted {
            seq += 1;
            let tag = delivery.tag.clone();
            let guard = ctx.held.hold(&tag);
            if let Ok(mut w) = ctx.waiting.lock() {
                w.insert(seq, delivery);
            }
            let due_now = task.eta.is_none_or(|eta| eta <= now);
            let (after, next) = if due_now {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (turn.replace(rx), Some(tx))
            } else {
                (None, None)
            };
            let order = Turn { after, next };
            jobs.spawn(job(
                ctx.clone(),
                task,
                seq,
                tag,
                permits.pop(),
                guard,
                order,
            ));
        }
    }
    if !abort.is_cancelled() {
        return_unstarted(&ctx).await;
    }

    stop_restore.cancel();
    let _ = restorer.await;
    drain(&mut jobs, opts.shutdown_grace, &abort).await;
}

/// Returns messages taken during shutdown to the consuming end of their list, oldest taken
/// first, and forgets those recorded as unacknowledged, in one MULTI.
async fn give_back(ctx: &Ctx, list_key: &str, msgs: Vec<broker::Popped>) {
    let count = msgs.len();
    let deliveries: Vec<Delivery> = msgs
        .into_iter()
        .map(|(tag, raw)| Delivery {
            list_key: list_key.to_owned(),
            raw,
            tag,
            exchange: String::new(),
            routing_key: String::new(),
        })
        .collect();
    if let Err(e) = broker::requeue(&mut ctx.conn.clone(), &deliveries).await {
        tracing::error!(error = %e, count, "cannot return messages taken during shutdown; they are restored after the visibility timeout");
    }
}

/// Waits for jobs: unstarted ones return their message at once, running ones get `grace`.
async fn drain(jobs: &mut JoinSet<()>, grace: Duration, abort: &CancellationToken) {
    if jobs.is_empty() {
        return;
    }
    tracing::info!(jobs = jobs.len(), grace = ?grace, "waiting for tasks in flight");
    let all = async { while jobs.join_next().await.is_some() {} };
    tokio::select! {
        () = all => return,
        () = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace elapsed; abandoning tasks (restored after the visibility timeout)");
        }
        () = abort.cancelled() => {}
    }
    abort.cancel();
    jobs.abort_all();
    while jobs.join_next().await.is_some() {}
}

/// Puts every unstarted delivery back at the consuming end of its list, oldest taken first,
/// in one MULTI. Jobs find their entry gone and end.
async fn return_unstarted(ctx: &Ctx) {
    let taken: Vec<Delivery> = match ctx.waiting.lock() {
        Ok(mut w) => std::mem::take(&mut *w).into_values().collect(),
        Err(_) => return,
    };
    if taken.is_empty() {
        return;
    }
    let mut conn = ctx.conn.clone();
    match broker::requeue(&mut conn, &taken).await {
        Ok(()) => tracing::info!(
            count = taken.len(),
            "returned unstarted messages to their queues"
        ),
        Err(e) => {
            ctx.pipeline.redis_error();
            tracing::warn!(error = %e, count = taken.len(),
                "cannot return unstarted messages; they are restored after the visibility timeout");
        }
    }
}

/// A job's place in the run-slot queue: the turn it waits for, the one it hands on.
struct Turn {
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    next: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn job(
    ctx: Ctx,
    task: ParsedTask,
    seq: u64,
    tag: String,
    prefetch: Option<OwnedSemaphorePermit>,
    _held: HeldGuard,
    order: Turn,
) {
    let clock = ctx.pipeline.clock().clone();
    let mut prefetch = prefetch;
    let Turn { after, mut next } = order;
    let wait = async {
        if let Some(eta) = task.eta.filter(|eta| *eta > clock.now()) {
            // A far-away ETA must not hold a prefetch slot (Celery raises its prefetch for them).
            prefetch.take();
            crate::clock::sleep_until(clock.as_ref(), eta).await;
        }
        if let Some(after) = after {
            // Ok: the previous job has its slot; Err: it ended first. Either way, our turn.
            let _ = after.await;
        }
        let slot = ctx.run_slots.clone().acquire_owned().await;
        // Dropping `next` (any way this job ends) also hands the turn on.
        if let Some(next) = next.take() {
            let _ = next.send(());
        }
        slot
    };
    // On a graceful stop the consumer returns this message (see `return_unstarted`).
    let slot = tokio::select! {
        biased;
        () = ctx.abort.cancelled() => return,
        () = ctx.graceful.cancelled() => return,
        slot = wait => slot,
    };
    let Ok(slot) = slot else { return };
    // Starting means leaving the waiting set; if the consumer already took it back, it is
    // someone else's now.
    let still_ours = ctx
        .waiting
        .lock()
        .map(|mut w| w.remove(&seq).is_some())
        .unwrap_or(false);
    if !still_ours {
        return;
    }
    let finished = tokio::select! {
        biased;
        () = ctx.abort.cancelled() => return,
        f = ctx.pipeline.execute_deferred(&task) => f,
    };
    // The task is over: its slot and prefetch place go to the next message while the
    // result and ack are written.
    drop(slot);
    drop(prefetch);
    finish(&ctx, &tag, &task.id, &finished).await;
}

/// Stores a handled message's result, acknowledges it and sends its retry, in one script
/// (`broker::finish`), retried a few times: the one way every message ends, run or
/// rejected. An empty `tag` (a message that was never recorded as unacked) has nothing to
/// acknowledge, but its result is still stored.
async fn finish(ctx: &Ctx, tag: &str, task_id: &str, finished: &Finished) {
    let mut pushes = Vec::with_capacity(finished.followups.len() + 1);
    if let Disposition::Retry {
        list_key, payload, ..
    } = &finished.disposition
    {
        pushes.push((list_key.as_str(), payload.as_str()));
    }
    for f in &finished.followups {
        pushes.push((f.list_key.as_str(), f.payload.as_str()));
    }
    let writes = broker::FinishWrites {
        result: finished.record.as_ref().map(|r| (r.key(), r.to_json())),
        ttl_secs: ctx.result_ttl,
        pushes,
    };
    let mut conn = ctx.conn.clone();
    let mut delay = Backoff::between(Duration::from_millis(50), Duration::from_millis(800));
    for attempt in 0..5 {
        match broker::finish(&mut conn, tag, &writes).await {
            Ok(()) => return,
            Err(e) if attempt == 4 => {
                ctx.pipeline.redis_error();
                tracing::error!(task_id, tag, error = %e,
                    "cannot store result and ack; the message will be restored and handled again");
            }
            Err(_) => {
                ctx.pipeline.redis_error();
                tokio::time::sleep(delay.next_wait()).await;
            }
        }
    }
}

/// Keeps our own unacked scores fresh (see `held`) and restores other workers' abandoned
/// messages, at startup and then every `interval`.
async fn restore_loop(
    ctx: Ctx,
    visibility_timeout: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut conn = ctx.conn.clone();
    // The heartbeat must beat well within the timeout, whatever the restore interval.
    let tick = interval
        .min(visibility_timeout / 4)
        .max(Duration::from_millis(10));
    let mut last_restore: Option<tokio::time::Instant> = None;
    loop {
        let now = ctx.pipeline.clock().now();
        #[allow(clippy::cast_precision_loss)]
        let score = now.timestamp_micros() as f64 / 1e6;
        if let Err(e) = ctx.held.touch(&mut conn, score).await {
            tracing::warn!(error = %e, "cannot refresh unacked scores");
        }
        if last_restore.is_none_or(|t| t.elapsed() >= interval) {
            last_restore = Some(tokio::time::Instant::now());
            match restore_visible(&mut conn, now, visibility_timeout).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(restored = n, "restored unacknowledged messages"),
                Err(e) => {
                    ctx.pipeline.redis_error();
                    tracing::warn!(error = %e, "restore of unacknowledged messages failed");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = stop.cancelled() => return,
        }
    }
}
