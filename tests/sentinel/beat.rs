use crate::ha_util::{
    assert_exactly_once, dump_logs, missing, now, sleep_to_fraction, times, try_queue, wait_until,
    Beat, BeatOpts, Msg, Schedules,
};
use beatd::clock::SystemClock;
use beatd::redis::{BrokerUrl, ConnectOptions, RedisConn};
use beatd::testkit::sentinel::SentinelSet;
use beatd::worker::{self, Registry, Shutdown, WorkerOptions};
use chrono::{DateTime, Utc};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(40);

fn tick() -> String {
    "[[entry]]\nname = \"tick\"\ntask = \"ha.tick\"\nevery = \"1s\"\n\
     catch_up = \"all\"\ncatch_up_window = \"1m\"\n"
        .to_owned()
}

/// The queue on whichever node is the master now; empty while there is none.
fn queue_now(set: &SentinelSet) -> Vec<Msg> {
    set.master_url()
        .ok()
        .and_then(|u| try_queue(&u).ok())
        .unwrap_or_default()
}

/// Waits until a fire time later than `after` is in the master's queue; returns when it was
/// first seen.
fn wait_fire_after(set: &SentinelSet, after: DateTime<Utc>, beats: &[&Beat]) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        if queue_now(set)
            .iter()
            .any(|m| m.entry == "tick" && m.at > after)
        {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no fire after {after} on the new master\n{}",
            dump_logs(beats)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three beats, an entry every second; the primary is `kill -9`ed three times and once paused
/// (SIGSTOP) past the failover, each time 300 ms after a fire. Every fire time from the first
/// to the last is in the queue exactly once: nothing lost to a promotion, nothing sent twice.
#[test]
fn three_beats_follow_three_kills_and_a_pause_of_the_primary_each_fire_time_exactly_once() {
    // Two replicas: the promoted primary keeps one for WAIT while the killed one is down.
    let mut set = SentinelSet::start_with_replicas(2).expect("sentinel set");
    let s = Schedules::new(&tick());
    let opts = BeatOpts {
        lock_ttl: Some("3s"),
        ..BeatOpts::default()
    };
    let beats: Vec<Beat> = (0..3).map(|_| Beat::spawn(&set.url(), &s, &opts)).collect();
    let all: Vec<&Beat> = beats.iter().collect();
    wait_until("a few fires before any failure", WAIT, || {
        queue_now(&set).len() >= 3
    });
    let mut gaps = Vec::new();
    for round in 0..4 {
        sleep_to_fraction(Duration::from_millis(300));
        let last = times(&queue_now(&set), "tick")
            .last()
            .copied()
            .expect("fires");
        let started = Instant::now();
        let old = if round == 1 {
            // Paused, not dead: it comes back after the promotion as a stale primary that
            // Sentinel turns into a replica; beatd must not keep writing to it.
            let old = set.master_port().unwrap();
            set.signal_node(old, "STOP").unwrap();
            set.wait_new_master(old, WAIT).expect("promotion");
            set.signal_node(old, "CONT").unwrap();
            old
        } else {
            set.kill_master().unwrap()
        };
        let first = wait_fire_after(&set, last, &all);
        gaps.push(first - started);
        if round != 1 {
            set.rejoin(old).expect("old primary rejoins as a replica");
        } else {
            set.wait_synced(WAIT).expect("demoted primary resynced");
        }
        // A few fires on the new master before the next failure.
        let after = times(&queue_now(&set), "tick").last().copied().unwrap();
        wait_until("three more fires", WAIT, || {
            times(&queue_now(&set), "tick")
                .last()
                .is_some_and(|t| (*t - after).num_seconds() >= 3)
        });
    }
    let msgs = queue_now(&set);
    let ctx = dump_logs(&all);
    assert_exactly_once(&msgs, &ctx);
    let gone = missing(&msgs, "tick", SECOND);
    assert!(gone.is_empty(), "fire times missing: {gone:?}\n{ctx}");
    let t = times(&msgs, "tick");
    println!(
        "sentinel failover: {} fire times {}..{}, 0 duplicated, 0 missing; time from the \
         primary's kill/pause to the first new fire on the new primary: {:?}",
        t.len(),
        t.first().unwrap(),
        t.last().unwrap(),
        gaps
    );
    assert!(now() > *t.last().unwrap());
}

/// What the workers ran: (task id, scheduled_at) per execution.
type Runs = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

fn tick_worker(set: &SentinelSet, runs: &Runs) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let mut reg = Registry::new();
    let r = runs.clone();
    reg.register("ha.tick", move |req| {
        let r = r.clone();
        async move {
            let at = req
                .scheduled_at
                .as_deref()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .expect("beatd sets scheduled_at")
                .to_utc();
            r.lock().unwrap().push((req.id.clone(), at));
            Ok(serde_json::Value::Null)
        }
    });
    let opts = WorkerOptions {
        concurrency: 2,
        poll_timeout: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(5),
        // A message whose ack a promotion lost comes back soon.
        visibility_timeout: Duration::from_secs(3),
        restore_interval: Duration::from_millis(500),
        ..WorkerOptions::default()
    };
    let url = BrokerUrl::parse(&set.url()).unwrap();
    let conn = RedisConn::new(&url, ConnectOptions::default()).unwrap();
    let shutdown = Shutdown::default();
    let s = shutdown.clone();
    let handle = tokio::spawn(async move {
        worker::run(opts, reg, conn, Arc::new(SystemClock), s)
            .await
            .expect("worker runs");
    });
    (shutdown, handle)
}

fn master_len(set: &SentinelSet, cmd: &str, key: &str) -> Option<usize> {
    let url = set.master_url().ok()?;
    let mut c = redis::Client::open(url)
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    redis::cmd(cmd).arg(key).query(&mut c).ok()
}

/// Three beats and two workers, an entry every second, the primary killed twice and paused
/// once: every fire time between the first and the last is executed, each sent once (one
/// task id per fire time; a redelivery runs the same id again), and the queue and the unacked
/// set end empty on the last primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_beats_two_workers_every_fire_executed_across_failovers() {
    let set = SentinelSet::start_with_replicas(2).expect("sentinel set");
    let runs: Runs = Arc::default();
    let workers = [tick_worker(&set, &runs), tick_worker(&set, &runs)];
    let r = runs.clone();
    let set = tokio::task::spawn_blocking(move || {
        let mut set = set;
        let s = Schedules::new(&tick());
        let opts = BeatOpts {
            lock_ttl: Some("3s"),
            ..BeatOpts::default()
        };
        let mut beats: Vec<Beat> = (0..3).map(|_| Beat::spawn(&set.url(), &s, &opts)).collect();
        let executed = |r: &Runs| {
            let mut t: Vec<DateTime<Utc>> = r.lock().unwrap().iter().map(|(_, at)| *at).collect();
            t.sort();
            t.dedup();
            t
        };
        wait_until("three fires executed", WAIT, || executed(&r).len() >= 3);
        for round in 0..3 {
            sleep_to_fraction(Duration::from_millis(300));
            let last = *executed(&r).last().unwrap();
            let old = if round == 1 {
                let old = set.master_port().unwrap();
                set.signal_node(old, "STOP").unwrap();
                set.wait_new_master(old, WAIT).expect("promotion");
                set.signal_node(old, "CONT").unwrap();
                old
            } else {
                set.kill_master().unwrap()
            };
            wait_until("a fire executed after the failover", WAIT, || {
                executed(&r)
                    .last()
                    .is_some_and(|t| (*t - last).num_seconds() >= 3)
            });
            if round == 1 {
                set.wait_synced(WAIT).expect("demoted primary resynced");
            } else {
                set.rejoin(old).expect("old primary rejoins");
            }
        }
        for b in &mut beats {
            b.terminate(Duration::from_secs(20));
        }
        wait_until("queue and unacked drained on the master", WAIT, || {
            master_len(&set, "LLEN", "celery") == Some(0)
                && master_len(&set, "HLEN", "unacked") == Some(0)
                && master_len(&set, "ZCARD", "unacked_index") == Some(0)
        });
        let all: Vec<&Beat> = beats.iter().collect();
        let ctx = dump_logs(&all);
        let t = executed(&r);
        let gaps: Vec<_> = t
            .windows(2)
            .filter(|w| (w[1] - w[0]).num_milliseconds() != 1000)
            .collect();
        assert!(
            gaps.is_empty(),
            "fire times not executed between: {gaps:?}\n{ctx}"
        );
        let mut ids: std::collections::BTreeMap<DateTime<Utc>, Vec<String>> = Default::default();
        for (id, at) in r.lock().unwrap().iter() {
            let v = ids.entry(*at).or_default();
            if !v.contains(id) {
                v.push(id.clone());
            }
        }
        let doubled: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
        assert!(
            doubled.is_empty(),
            "fire times sent twice: {doubled:?}\n{ctx}"
        );
        let runs = r.lock().unwrap().len();
        println!(
            "sentinel with workers: {} fire times executed ({runs} runs, {} redelivered), \
             0 missing, 0 sent twice",
            t.len(),
            runs - t.len()
        );
        set
    })
    .await
    .unwrap();
    for (s, h) in workers {
        s.graceful.cancel();
        tokio::time::timeout(WAIT, h)
            .await
            .expect("worker stops")
            .unwrap();
    }
    drop(set);
}
