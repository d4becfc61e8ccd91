//! The RabbitMQ edge against a real `rabbitmq-server` node this binary starts once on free
//! ports (a vhost per test) and real `redis-server`s: the wire format against Celery's
//! capture, the exactly-once scheme (intent, confirm, sent, republish), and real Celery on
//! both sides.
//!
//! One test binary; each module covers one concern.

/// beatd beat → a stock `celery worker` on RabbitMQ.
mod celery;
/// A short chaos run in RabbitMQ mode (`chaos/mode_rabbit.rs`).
mod chaos;
/// Intent, publish with confirm, sent; fencing; republish; unroutable returns.
mod emit;
/// Three beats, kill -9 and SIGSTOP of the leader.
mod ha;
/// RabbitMQ without Redis: one beat sends, a second stands by.
mod single;
/// What beatd publishes, field by field against `tests/fixtures/celery-amqp`.
mod wire;
/// `beatd worker` on RabbitMQ with Python clients.
mod worker;

use beatd::amqp::AmqpUrl;
use beatd::emit::{AmqpEmitter, AmqpOptions};
use beatd::leader::{LeaderLock, Lease, RedisLeader};
use beatd::ops::metrics::Metrics;
use beatd::redis::{connect, BrokerUrl, ConnectOptions, Keys, RedisConn};
use beatd::testkit::{RabbitServer, RedisServer};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The binary's one node, started by the first test that needs it.
pub(crate) fn node() -> &'static RabbitServer {
    static NODE: OnceLock<RabbitServer> = OnceLock::new();
    NODE.get_or_init(|| RabbitServer::start().expect("rabbitmq-server"))
}

/// A fresh vhost on the node, its URL.
pub(crate) fn vhost() -> AmqpUrl {
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    AmqpUrl::parse(&node().vhost(&name).expect("vhost")).expect("valid url")
}

pub(crate) async fn redis() -> (RedisServer, RedisConn) {
    let server = RedisServer::start().expect("redis-server");
    let url = BrokerUrl::parse(&server.url()).expect("url");
    let conn = connect(&url, ConnectOptions::default())
        .await
        .expect("connect");
    (server, conn)
}

pub(crate) async fn lease(conn: &RedisConn, ttl: Duration) -> (RedisLeader, Lease) {
    let leader = RedisLeader::new(conn.clone(), Keys::default(), ttl);
    let lease = leader
        .try_acquire()
        .await
        .expect("redis")
        .expect("free lock");
    (leader, lease)
}

pub(crate) fn emitter(
    url: &AmqpUrl,
    conn: &RedisConn,
    opts: AmqpOptions,
) -> (AmqpEmitter, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let e = AmqpEmitter::new(
        url.clone(),
        conn.clone(),
        Keys::default(),
        opts,
        metrics.clone(),
    );
    (e, metrics)
}

/// A raw lapin channel on `url`, for reading what landed.
pub(crate) async fn channel(url: &AmqpUrl) -> (lapin::Connection, lapin::Channel) {
    let c = beatd::amqp::connect(url, "test reader")
        .await
        .expect("connect");
    let ch = c.create_channel().await.expect("channel");
    (c, ch)
}

/// Takes every message now in `queue` (acked).
pub(crate) async fn drain(
    ch: &lapin::Channel,
    queue: &str,
) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic_get")
    {
        out.push(m);
    }
    out
}
