//! The embedded, in-process queue of `beatd run` without Redis: envelopes arrive on a tokio
//! mpsc channel and go through the same [`Pipeline`] as Redis messages, with bounded
//! concurrency; retries are held in memory until their ETA. Nothing here survives a restart
//! (the embedded mode's state file covers the schedule, not queued messages).

use super::pipeline::{Disposition, Pipeline};
use super::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// Runs envelopes from `rx` until the channel closes or `shutdown` fires; in-flight tasks get
/// `grace` to finish after a graceful stop.
pub async fn run_local(
    pipeline: Pipeline,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    concurrency: usize,
    grace: Duration,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let abort = shutdown.immediate.child_token();
    let mut jobs = JoinSet::new();
    loop {
        while jobs.try_join_next().is_some() {}
        let msg = tokio::select! {
            () = shutdown.graceful.cancelled() => break,
            () = abort.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        let pipeline = pipeline.clone();
        let slots = slots.clone();
        let abort = abort.clone();
        jobs.spawn(async move {
            let mut raw = msg;
            loop {
                let task = match pipeline.receive(&raw) {
                    Ok(task) => task,
                    Err(rejected) => {
                        pipeline.store_finished(*rejected).await;
                        return;
                    }
                };
                if let Some(eta) = task.eta {
                    crate::clock::sleep_until(pipeline.clock().as_ref(), eta).await;
                }
                let Ok(_slot) = slots.acquire().await else {
                    return;
                };
                let outcome = tokio::select! {
                    () = abort.cancelled() => return,
                    d = pipeline.execute(&task) => d,
                };
                match outcome {
                    Disposition::Done => return,
                    Disposition::Retry { payload, .. } => raw = payload.into_bytes(),
                }
            }
        });
    }
    if jobs.is_empty() {
        return;
    }
    let all = async { while jobs.join_next().await.is_some() {} };
    tokio::select! {
        () = all => return,
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace elapsed; abandoning tasks"),
        () = abort.cancelled() => {}
    }
    jobs.abort_all();
    while jobs.join_next().await.is_some() {}
}
