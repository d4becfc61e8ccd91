use beatd::clock::SystemClock;
use beatd::protocol::{result_key, TaskMessage};
use beatd::redis::{BrokerUrl, ConnectOptions, RedisConn};
use beatd::testkit::sentinel::SentinelSet;
use beatd::worker::{self, Registry, Shutdown, WorkerOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(40);

fn conn(url: &str) -> redis::Connection {
    let c = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c
}

/// Pushes `n` `tasks.add` messages onto the master; returns their ids and expected sums.
fn send(set: &SentinelSet, from: i64, n: i64) -> Vec<(String, i64)> {
    let mut c = conn(&set.master_url().unwrap());
    (from..from + n)
        .map(|i| {
            let enc = TaskMessage::new("tasks.add")
                .args(vec![json!(i), json!(1000)])
                .encode(beatd::clock::Clock::now(&SystemClock));
            let _: () = redis::cmd("LPUSH")
                .arg(&enc.list_key)
                .arg(enc.payload.as_bytes())
                .query(&mut c)
                .unwrap();
            (enc.id, i + 1000)
        })
        .collect()
}

fn result(url: &str, id: &str) -> Option<Value> {
    let mut c = redis::Client::open(url)
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let s: Option<String> = redis::cmd("GET").arg(result_key(id)).query(&mut c).ok()?;
    s.map(|s| serde_json::from_str(&s).unwrap())
}

/// Waits until every message has its SUCCESS result with the right sum on the master.
fn wait_results(set: &SentinelSet, sent: &[(String, i64)], what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = set.master_url().unwrap();
        let missing: Vec<&String> = sent
            .iter()
            .filter(|(id, sum)| {
                result(&url, id).is_none_or(|r| r["status"] != "SUCCESS" || r["result"] != *sum)
            })
            .map(|(id, _)| id)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {} without their result: {missing:?}",
            missing.len(),
            sent.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unacked(set: &SentinelSet) -> (usize, usize) {
    let mut c = conn(&set.master_url().unwrap());
    let h: usize = redis::cmd("HLEN").arg("unacked").query(&mut c).unwrap();
    let z: usize = redis::cmd("ZCARD")
        .arg("unacked_index")
        .query(&mut c)
        .unwrap();
    (h, z)
}

/// The worker's consume loop, its unacked bookkeeping and the result backend all follow a
/// `kill -9` of the primary: messages sent before, during and after the failover are each
/// executed and their results stored on the new master, and nothing stays unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_consumes_and_stores_results_across_a_failover() {
    let mut set = SentinelSet::start().expect("sentinel set");
    let mut reg = Registry::new();
    reg.register("tasks.add", |req| async move {
        Ok(json!(req
            .args
            .iter()
            .filter_map(Value::as_i64)
            .sum::<i64>()))
    });
    let opts = WorkerOptions {
        concurrency: 4,
        poll_timeout: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        restore_interval: Duration::from_millis(300),
        ..WorkerOptions::default()
    };
    let url = BrokerUrl::parse(&set.url()).unwrap();
    let shutdown = Shutdown::default();
    let handle = tokio::spawn(worker::run(
        opts,
        reg,
        RedisConn::new(&url, ConnectOptions::default()).unwrap(),
        Arc::new(SystemClock),
        shutdown.clone(),
    ));
    // The checks block on their own connections: off the runtime the worker runs on.
    let set = tokio::task::spawn_blocking(move || {
        let before = send(&set, 0, 20);
        wait_results(&set, &before, "before the failover");
        // What the worker stored is on the replica before the kill (the worker's writes do not
        // WAIT; this test is about following the master, not about replication lag).
        set.wait_synced(WAIT).unwrap();
        let killed = set.kill_master().unwrap();
        let during = send_when_promoted(&mut set, killed);
        let after = send(&set, 100, 20);
        wait_results(&set, &during, "sent right after the promotion");
        wait_results(&set, &after, "after the failover");
        wait_results(&set, &before, "before the failover, read on the new master");
        let deadline = Instant::now() + WAIT;
        while unacked(&set) != (0, 0) {
            assert!(Instant::now() < deadline, "unacked: {:?}", unacked(&set));
            std::thread::sleep(Duration::from_millis(50));
        }
        set
    })
    .await
    .unwrap();
    drop(set);
    shutdown.graceful.cancel();
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("worker stops")
        .unwrap()
        .unwrap();
}

fn send_when_promoted(set: &mut SentinelSet, killed: u16) -> Vec<(String, i64)> {
    set.wait_new_master(killed, WAIT).expect("promotion");
    send(set, 50, 20)
}
