//! A worker with a Rust task, consuming Celery messages from Redis.
//!
//! ```text
//! BEATD_REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example rust_task
//! # from Python:  app.send_task("tasks.add", args=[2, 3]).get()  → 5
//! #               r = app.send_task("tasks.count", args=[3]); r.info  → {"current": 1, ...}
//! ```
//!
//! Ctrl-C once stops gracefully (running tasks finish, unstarted ones go back to the queue);
//! twice stops at once (unfinished messages are restored after the visibility timeout).

use beatd::clock::SystemClock;
use beatd::worker::{self, Registry, Shutdown, TaskError, TaskOptions, WorkerOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    let mut registry = Registry::new();
    registry.register("tasks.add", |req| async move {
        let mut sum = 0i64;
        for a in &req.args {
            sum += a
                .as_i64()
                .ok_or_else(|| TaskError::fatal("TypeError", format!("{a} is not an int")))?;
        }
        Ok(json!(sum))
    });
    // A task with a time limit and retries: failures marked retryable are sent again with
    // `retries + 1` and an ETA, as Celery's `self.retry()` does.
    let opts = TaskOptions {
        time_limit: Some(Duration::from_secs(10)),
        max_retries: 3,
        retry_backoff: Duration::from_secs(2),
        ignore_result: false,
        track_started: true,
    };
    registry.register_with("tasks.fetch", opts, |req| async move {
        let url = req
            .kwargs
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if url.is_empty() {
            return Err(TaskError::fatal("ValueError", "url is required"));
        }
        Ok(json!({"would_fetch": url, "attempt": req.retries + 1}))
    });

    // Progress, as Celery's `self.update_state(state="PROGRESS", meta=...)`: Python's
    // `AsyncResult(id).state` is "PROGRESS" and `.info` the meta while it runs.
    registry.register("tasks.count", |req| async move {
        let total = req.args.first().and_then(Value::as_u64).unwrap_or(3);
        for current in 1..=total {
            tokio::time::sleep(Duration::from_secs(1)).await;
            req.update_state("PROGRESS", json!({"current": current, "total": total}))
                .map_err(|e| TaskError::fatal("ValueError", e.to_string()))?;
        }
        Ok(json!(total))
    });

    let url =
        std::env::var("BEATD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let conn = beatd::redis::RedisConn::new(
        &beatd::redis::BrokerUrl::parse(&url)?,
        beatd::redis::ConnectOptions::default(),
    )?;
    let shutdown = Shutdown::default();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signals.graceful.cancel();
        let _ = tokio::signal::ctrl_c().await;
        signals.immediate.cancel();
    });
    worker::run(
        WorkerOptions::default(),
        registry,
        conn,
        Arc::new(SystemClock),
        shutdown,
    )
    .await?;
    Ok(())
}
