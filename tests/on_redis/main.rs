//! The Redis edge against real `redis-server` processes the tests start on free ports:
//! leader lock and fencing, exactly-once emission, state, outages, passwords.
//!
//! One test binary; each module covers one concern.

/// Connection: outages and reconnection, timeouts, passwords, server config warnings.
mod conn;
/// The controls' doorbell: a submit rings the leader, across a server restart.
mod controls;
/// Emission and state: exactly once per (entry, fire time), queues, bytes, namespaces.
mod emit;
/// Two replicas racing, one paused past its TTL: exactly once, no gap.
mod failover;
/// Leader lock: acquire, renew, release, expiry, contenders, fencing.
mod lock;
/// Commits onto busy queues prepared before the instant: order, fencing, partial states.
mod prepared;
/// RQ jobs through the same scripts, direct and staged.
mod rq;
/// Two-phase emission: stage, commit, settle, recovery, fencing.
mod stage;
/// How long 10,000 fires take (prints; asserts no time).
mod timing;
/// TLS with a private CA, a wrong CA, a wrong name, and client certificates.
mod tls;

use beatd::emit::{EmitOptions, Fire, RedisEmitter};
use beatd::leader::{LeaderLock, Lease, RedisLeader};
use beatd::redis::{connect, BrokerUrl, ConnectOptions, Keys, RedisConn};
use beatd::testkit::RedisServer;
use std::time::Duration;

pub(crate) async fn server() -> (RedisServer, RedisConn) {
    let server = RedisServer::start().expect("redis-server");
    let conn = connect(&url(&server.url()), ConnectOptions::default())
        .await
        .expect("connect");
    (server, conn)
}

pub(crate) fn url(s: &str) -> BrokerUrl {
    BrokerUrl::parse(s).expect("valid url")
}

pub(crate) fn leader(conn: &RedisConn, ttl_ms: u64) -> RedisLeader {
    RedisLeader::new(conn.clone(), Keys::default(), Duration::from_millis(ttl_ms))
}

pub(crate) fn emitter(conn: &RedisConn) -> RedisEmitter {
    RedisEmitter::new(conn.clone(), Keys::default(), EmitOptions::default())
}

pub(crate) fn fire(entry: &str, at: i64, list: &str) -> Fire {
    Fire {
        entry: entry.into(),
        fire_at_ms: at,
        task_id: format!("{entry}@{at}"),
        rq: None,
        list_key: list.into(),
        payload: format!("{{\"entry\":\"{entry}\",\"at\":{at}}}").into_bytes(),
        schedule_fingerprint: format!("fp-{entry}"),
    }
}

pub(crate) async fn list(conn: &RedisConn, key: &str) -> Vec<String> {
    let raw = redis::Client::open(conn_url(conn)).unwrap();
    let mut c = raw.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("LRANGE")
        .arg(key.as_bytes())
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Tests run without passwords, so the redacted URL is the real one.
pub(crate) fn conn_url(conn: &RedisConn) -> String {
    conn.url().to_string()
}

pub(crate) async fn acquire(lock: &RedisLeader) -> Lease {
    lock.try_acquire()
        .await
        .expect("redis answers")
        .expect("lock is free")
}
