use crate::ha_util::{
    assert_exactly_once, dump_logs, missing, now, sleep_to_fraction, times, try_queue, wait_until,
    Beat, BeatOpts, Msg, Schedules,
};
use beatd::testkit::sentinel::SentinelSet;
use chrono::{DateTime, Utc};
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

/// Three beats, an entry every second; the primary is `kill -9`ed twice and once paused
/// (SIGSTOP) past the failover, each time 300 ms after a fire. Every fire time from the first
/// to the last is in the queue exactly once: nothing lost to a promotion, nothing sent twice.
#[test]
fn three_beats_follow_kills_and_a_pause_of_the_primary_each_fire_time_exactly_once() {
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
    for round in 0..3 {
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
