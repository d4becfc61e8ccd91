//! No-op task throughput of the worker: pushes N Celery messages for a Rust no-op task onto
//! a Redis you name, runs the worker until every result is stored, prints tasks per second.
//!
//! ```text
//! cargo run --example worker_bench -- redis://127.0.0.1:6391/0 20000 [concurrency]
//! ```
//! It FLUSHes nothing but leaves results behind: point it at a scratch Redis.

use beatd::clock::{Clock, SystemClock};
use beatd::protocol::TaskMessage;
use beatd::worker::{self, Registry, Shutdown, WorkerOptions};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let url = argv
        .next()
        .ok_or("usage: worker_bench REDIS_URL [N] [CONCURRENCY]")?;
    let n: usize = argv.next().map_or(Ok(20_000), |s| s.parse())?;
    let concurrency: usize = argv.next().map_or(Ok(64), |s| s.parse())?;
    let client = redis::Client::open(url.as_str())?;
    let beatd_conn = beatd::redis::RedisConn::new(
        &beatd::redis::BrokerUrl::parse(&url)?,
        beatd::redis::ConnectOptions::default(),
    )?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let queue = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let now = SystemClock.now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let enc = TaskMessage::new("bench.noop")
                .args(vec![json!(i)])
                .queue(&queue)
                .encode(now);
            pipe.cmd("LPUSH")
                .arg(&enc.list_key)
                .arg(enc.payload)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let d = done.clone();
    registry.register("bench.noop", move |_req| {
        d.fetch_add(1, Ordering::Relaxed);
        async { Ok(json!(null)) }
    });
    let opts = WorkerOptions {
        queues: vec![queue.clone()],
        concurrency,
        ..WorkerOptions::default()
    };
    let shutdown = Shutdown::default();
    let started = Instant::now();
    let w = tokio::spawn(worker::run(
        opts,
        registry,
        beatd_conn,
        Arc::new(SystemClock),
        shutdown.clone(),
    ));
    loop {
        let left: usize = redis::cmd("LLEN")
            .arg(&queue)
            .query_async(&mut conn)
            .await?;
        let unacked: usize = redis::cmd("HLEN")
            .arg("unacked")
            .query_async(&mut conn)
            .await?;
        if left == 0 && unacked == 0 && done.load(Ordering::Relaxed) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.graceful.cancel();
    w.await??;
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / secs;
    println!("{n} no-op tasks in {secs:.3} s = {rate:.0} tasks/s (concurrency {concurrency})");
    Ok(())
}
