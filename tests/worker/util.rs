//! Shared helpers for the worker tests: a private redis-server, a worker running on it, and
//! polling helpers (results, lists, unacked) with generous deadlines.

#![allow(dead_code)]

use beatd::clock::{Clock, SystemClock};
use beatd::protocol::{result_key, TaskMessage};
use beatd::testkit::RedisServer;
use beatd::worker::{self, Registry, Shutdown, WorkerOptions};
use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Deadline for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn now() -> DateTime<Utc> {
    SystemClock.now()
}

pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/celery/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Fast settings for tests.
pub fn opts() -> WorkerOptions {
    WorkerOptions {
        concurrency: 4,
        poll_timeout: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        restore_interval: Duration::from_millis(300),
        ..WorkerOptions::default()
    }
}

/// beatd's own handle on the server at `url`, for the worker.
pub fn beatd_conn(url: &str) -> beatd::redis::RedisConn {
    beatd::redis::RedisConn::new(
        &beatd::redis::BrokerUrl::parse(url).unwrap(),
        beatd::redis::ConnectOptions::default(),
    )
    .unwrap()
}

pub async fn connect(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// A worker running on its own redis-server.
pub struct Harness {
    pub server: RedisServer,
    pub shutdown: Shutdown,
    pub handle: JoinHandle<Result<(), worker::Error>>,
}

impl Harness {
    pub async fn start(reg: Registry, opts: WorkerOptions) -> Self {
        Self::start_on(RedisServer::start().unwrap(), reg, opts).await
    }

    pub async fn start_on(server: RedisServer, reg: Registry, opts: WorkerOptions) -> Self {
        let shutdown = Shutdown::default();
        let handle = tokio::spawn(worker::run(
            opts,
            reg,
            beatd_conn(&server.url()),
            Arc::new(SystemClock),
            shutdown.clone(),
        ));
        Self {
            server,
            shutdown,
            handle,
        }
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        connect(&self.server.url()).await
    }

    /// LPUSHes the message as a producer would; returns its id.
    pub async fn send(&self, msg: TaskMessage) -> String {
        let enc = msg.encode(now());
        self.push_raw(&enc.list_key, enc.payload.as_bytes()).await;
        enc.id
    }

    pub async fn push_raw(&self, key: &str, bytes: &[u8]) {
        let mut c = self.conn().await;
        let _: () = redis::cmd("LPUSH")
            .arg(key)
            .arg(bytes)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    pub async fn try_result(&self, id: &str) -> Option<Value> {
        let mut c = self.conn().await;
        let s: Option<String> = redis::cmd("GET")
            .arg(result_key(id))
            .query_async(&mut c)
            .await
            .unwrap();
        s.map(|s| serde_json::from_str(&s).unwrap())
    }

    /// Waits for any stored result.
    pub async fn result(&self, id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.try_result(id).await {
                return v;
            }
            assert!(Instant::now() < deadline, "no result for {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a result with this status.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.try_result(id).await.filter(|v| v["status"] == status) {
                return v;
            }
            assert!(Instant::now() < deadline, "no {status} result for {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn unacked_count(&self) -> (usize, usize) {
        let mut c = self.conn().await;
        let h: usize = redis::cmd("HLEN")
            .arg("unacked")
            .query_async(&mut c)
            .await
            .unwrap();
        let z: usize = redis::cmd("ZCARD")
            .arg("unacked_index")
            .query_async(&mut c)
            .await
            .unwrap();
        (h, z)
    }

    /// Waits until `unacked` and `unacked_index` are empty.
    pub async fn assert_no_unacked(&self) {
        let deadline = Instant::now() + WAIT;
        while self.unacked_count().await != (0, 0) {
            assert!(
                Instant::now() < deadline,
                "unacked not empty: {:?}",
                self.unacked_count().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn list(&self, key: &str) -> Vec<String> {
        let mut c = self.conn().await;
        redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    /// Waits until the list is non-empty and returns it.
    pub async fn wait_list(&self, key: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let l = self.list(key).await;
            if !l.is_empty() {
                return l;
            }
            assert!(Instant::now() < deadline, "list {key:?} stayed empty");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop; the worker must return within its grace.
    pub async fn stop(self) {
        self.shutdown.graceful.cancel();
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("worker did not stop")
            .unwrap()
            .unwrap();
    }
}
