//! `beatd worker` with one Rust no-op task, `bench.noop`, for bench/run.sh: the library's
//! worker with default options (concurrency = CPUs, prefetch ×4, results stored in the Redis
//! result backend), so it measures the consumer, not a process spawn per task.
//!
//! On Redis (`BEATD_REDIS_URL` is broker and result backend): [`worker::run`]. On RabbitMQ
//! (`BEATD_BROKER_URL=amqp://...`, results in `BEATD_REDIS_URL`): the same
//! [`AmqpWorker`](beatd::worker::amqp::AmqpWorker) as `beatd worker --broker-url amqp://...
//! --result-backend redis://...`, with the same at-most-once claims in Redis.
//!
//! ```text
//! BEATD_REDIS_URL=redis://127.0.0.1:6379/0 cargo run --release --example bench_noop_worker
//! ```

use beatd::clock::SystemClock;
use beatd::worker::{self, Registry, Shutdown, WorkerOptions};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = Registry::new();
    registry.register(
        "bench.noop",
        |_req| async move { Ok(serde_json::Value::Null) },
    );
    let url =
        std::env::var("BEATD_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let beatd_conn = beatd::redis::RedisConn::new(
        &beatd::redis::BrokerUrl::parse(&url)?,
        beatd::redis::ConnectOptions::default(),
    )?;
    let shutdown = Shutdown::default();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        signals.graceful.cancel();
    });
    if let Some(broker) = std::env::var("BEATD_BROKER_URL")
        .ok()
        .filter(|u| u.starts_with("amqp"))
    {
        let results = beatd_conn
            .dedicated(std::time::Duration::from_secs(10))
            .await?;
        worker::amqp::AmqpWorker {
            opts: WorkerOptions::default(),
            url: beatd::amqp::AmqpUrl::parse(&broker)?,
            queue_args: beatd::amqp::QueueArgs::default(),
            registry,
            results: Arc::new(worker::RedisResults::new(results.clone())),
            finality: Arc::new(worker::amqp::RedisFinality {
                conn: results,
                namespace: "beatd".into(),
            }),
            clock: Arc::new(SystemClock),
            shutdown,
            metrics: Arc::new(beatd::ops::metrics::Metrics::default()),
            heartbeat: None,
            connected: Arc::default(),
        }
        .run()
        .await;
        return Ok(());
    }
    worker::run(
        WorkerOptions::default(),
        registry,
        beatd_conn,
        Arc::new(SystemClock),
        shutdown,
    )
    .await?;
    Ok(())
}
