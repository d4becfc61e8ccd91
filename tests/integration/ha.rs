//! High availability, end to end: `beatd beat` replicas as real processes on a real
//! `redis-server`, failed and restarted the ways production fails them. Every test ends by
//! reading the whole queue and checking each (`beatd_entry`, `beatd_scheduled_at`) appears
//! exactly once, and that no fire time the catch-up policy promises is missing.
//!
//! Timings are bounded generously (slow CI): the tests wait on conditions with deadlines and
//! assert what must never happen (a duplicate, a missing fire time, a stale send), not speed.
//! Figures (failover gaps, lateness) are printed; run with `--nocapture` to see them.

use crate::ha_util::{
    assert_exactly_once, dump_logs, http_status, last_run, leader_pid, missing, now, queue,
    senders, sleep_to_fraction, state_gone, times, try_queue, wait_leader, wait_until, Beat,
    BeatOpts, Msg, QueueWatch, Schedules,
};
use beatd::testkit::RedisServer;
use chrono::{DateTime, TimeDelta, Utc};
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);
/// No fire times.
const NONE: Vec<DateTime<Utc>> = Vec::new();
/// Deadline for anything that should take a few seconds.
const WAIT: Duration = Duration::from_secs(30);

/// One `every = "1s"` entry named `tick` with the given catch-up policy.
fn tick(catch_up: &str, window: Option<&str>) -> String {
    let window = window.map_or(String::new(), |w| format!("catch_up_window = \"{w}\"\n"));
    format!(
        "[[entry]]\nname = \"tick\"\ntask = \"ha.tick\"\nevery = \"1s\"\n\
         catch_up = \"{catch_up}\"\n{window}"
    )
}

fn ttl3() -> BeatOpts {
    BeatOpts {
        lock_ttl: Some("3s"),
        ..BeatOpts::default()
    }
}

fn spawn(url: &str, s: &Schedules, opts: &BeatOpts, n: usize) -> Vec<Beat> {
    (0..n).map(|_| Beat::spawn(url, s, opts)).collect()
}

fn pids(beats: &[Beat]) -> Vec<u32> {
    beats.iter().map(|b| b.pid).collect()
}

/// Messages of `entry` matching `pred`; 0 while Redis does not answer.
fn count(url: &str, entry: &str, pred: impl Fn(&Msg) -> bool) -> usize {
    try_queue(url)
        .unwrap_or_default()
        .iter()
        .filter(|m| m.entry == entry && pred(m))
        .count()
}

/// Waits until `n` messages of `entry` match `pred`.
fn wait_msgs(url: &str, entry: &str, n: usize, what: &str, pred: impl Fn(&Msg) -> bool) {
    wait_until(&format!("{n} messages: {what}"), WAIT, || {
        count(url, entry, &pred) >= n
    });
}

fn logs(beats: &[Beat]) -> String {
    dump_logs(&beats.iter().collect::<Vec<_>>())
}

fn stop_all(beats: &mut [Beat]) {
    for b in beats.iter_mut() {
        if b.running() {
            let status = b.terminate(Duration::from_secs(15));
            assert!(status.success(), "beatd {} exited with {status}", b.pid);
        }
    }
}

fn secs(d: TimeDelta) -> f64 {
    d.as_seconds_f64()
}

/// N replicas, no failure: one sender at a time, every fire time once, none missing.
fn replicas_exactly_once(n: usize) {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let s = Schedules::new(&tick("all", Some("1m")));
    let mut beats = spawn(&url, &s, &ttl3(), n);
    wait_leader(&url, &pids(&beats), WAIT);
    wait_msgs(&url, "tick", 20, "20 fire times", |_| true);
    for b in &mut beats {
        assert!(b.running(), "a replica exited:\n{}", logs(&beats));
    }
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "{ctx}");
    assert!(msgs.len() >= 20);
    // Every message came from one of ours, all in the same leadership term unless the lock
    // changed hands, which this test does not provoke: then the epochs would differ.
    let by = senders(&msgs);
    assert!(by.keys().all(|p| pids(&beats).contains(p)), "{by:?}");
    eprintln!("{n} replicas: {} messages, senders {by:?}", msgs.len());
}

#[test]
fn two_replicas_every_second_each_fire_time_exactly_once() {
    replicas_exactly_once(2);
}

#[test]
fn three_replicas_every_second_each_fire_time_exactly_once() {
    replicas_exactly_once(3);
}

/// Kills the leader with SIGKILL between two fires; returns (replicas, killed pid, survivor pid,
/// kill instant, takeover seconds after the kill).
fn kill9_leader(
    url: &str,
    s: &Schedules,
    ttl_secs: u64,
) -> (Vec<Beat>, u32, u32, DateTime<Utc>, f64) {
    let ttl: &'static str = Box::leak(format!("{ttl_secs}s").into_boxed_str());
    let opts = BeatOpts {
        lock_ttl: Some(ttl),
        ..BeatOpts::default()
    };
    let mut beats = spawn(url, s, &opts, 2);
    let leader = wait_leader(url, &pids(&beats), WAIT);
    wait_msgs(url, "tick", 3, "3 fires before the kill", |_| true);
    sleep_to_fraction(Duration::from_millis(300));
    let killed_at = now();
    let t = Instant::now();
    beats
        .iter_mut()
        .find(|b| b.pid == leader)
        .expect("leader is ours")
        .kill9();
    let survivor = *pids(&beats).iter().find(|p| **p != leader).expect("two");
    wait_leader(url, &[survivor], Duration::from_secs(15));
    let takeover = t.elapsed().as_secs_f64();
    // TTL + standby retry 1 s; the rest is slack for a slow machine.
    let bound = ttl_secs as f64 + 4.0;
    assert!(
        takeover < bound,
        "standby took {takeover:.1}s to take over after kill -9 (ttl {ttl})"
    );
    (beats, leader, survivor, killed_at, takeover)
}

#[test]
fn kill9_leader_standby_takes_over_and_catch_up_all_misses_nothing() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let s = Schedules::new(&tick("all", Some("1m")));
    let watch = QueueWatch::start(&url);
    let (mut beats, killed, survivor, killed_at, takeover) = kill9_leader(&url, &s, 3);
    wait_msgs(&url, "tick", 4, "4 regular fires of the new leader", |m| {
        m.pid == survivor && m.at > killed_at + TimeDelta::seconds(5)
    });
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(
        missing(&msgs, "tick", SECOND),
        NONE,
        "catch_up = all sends every missed fire time\n{ctx}"
    );
    let first_new = msgs
        .iter()
        .find(|m| m.pid == survivor)
        .expect("survivor sent");
    let last_old = msgs
        .iter()
        .rev()
        .find(|m| m.pid == killed)
        .expect("leader sent");
    assert!(first_new.at > last_old.at, "{msgs:#?}");
    assert!(first_new.epoch > last_old.epoch, "new term, new epoch");
    let resumed = watch.seen_at("tick", first_new.at).expect("seen");
    let caught_up = beats
        .iter()
        .find(|b| b.pid == survivor)
        .expect("ours")
        .log_events("fire")
        .into_iter()
        .filter(|f| f["catch_up"] == true)
        .count();
    assert!(caught_up >= 1, "the lock expiry missed fire times\n{ctx}");
    eprintln!(
        "kill -9: takeover {takeover:.2}s after the kill; first message of the new leader \
         {:.2}s after the kill ({caught_up} fire times caught up)",
        secs(resumed - killed_at),
    );
}

#[test]
fn kill9_leader_catch_up_latest_sends_only_the_newest_missed_fire_time() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    // The same window as the `all` test, so the difference is the policy alone.
    let s = Schedules::new(&tick("latest", Some("1m")));
    // TTL 3 s, renewed every second: the lock outlives the kill (300 ms after a fire) by at
    // least 2 s, so at least two fire times fall due before the standby leads: the newest is
    // caught up, the others skipped, whatever the phase of the renewal.
    let (mut beats, killed, survivor, _, _) = kill9_leader(&url, &s, 3);
    wait_msgs(&url, "tick", 3, "3 fires of the new leader", |m| {
        m.pid == survivor
    });
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    let gap = missing(&msgs, "tick", SECOND);
    let last_old = msgs.iter().rev().find(|m| m.pid == killed).expect("old");
    let first_new = msgs.iter().find(|m| m.pid == survivor).expect("new");
    // The lock outlives the killed leader by up to the TTL: fire times are missed, and
    // `latest` sends only the newest of them, so the rest form one run right after the last
    // fire of the killed leader.
    assert!(
        !gap.is_empty(),
        "a 3 s lock expiry misses fire times\n{ctx}"
    );
    let expected: Vec<_> = std::iter::successors(Some(last_old.at + TimeDelta::seconds(1)), |t| {
        Some(*t + TimeDelta::seconds(1))
    })
    .take_while(|t| *t < first_new.at)
    .collect();
    assert_eq!(gap, expected, "one gap between the two leaders\n{ctx}");
    let survivor_beat = beats.iter().find(|b| b.pid == survivor).expect("ours");
    let catch_ups: Vec<_> = survivor_beat
        .log_events("fire")
        .into_iter()
        .filter(|f| f["catch_up"] == true)
        .collect();
    assert_eq!(catch_ups.len(), 1, "{catch_ups:?}\n{ctx}");
    eprintln!(
        "kill -9 with catch_up = latest: {} fire times skipped, newest missed sent as catch-up",
        gap.len()
    );
}

#[test]
fn sigstop_leader_past_ttl_then_sigcont_sends_nothing_stale_and_steps_down() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let s = Schedules::new(&tick("all", Some("1m")));
    let mut beats = spawn(&url, &s, &ttl3(), 2);
    let paused = wait_leader(&url, &pids(&beats), WAIT);
    let other = *pids(&beats).iter().find(|p| **p != paused).expect("two");
    wait_msgs(&url, "tick", 3, "3 fires before SIGSTOP", |_| true);
    sleep_to_fraction(Duration::from_millis(300));
    let p = beats.iter().find(|b| b.pid == paused).expect("ours");
    p.signal("STOP");
    let stopped = Instant::now();
    wait_leader(&url, &[other], Duration::from_secs(15));
    wait_msgs(&url, "tick", 2, "2 fires of the new leader", |m| {
        m.pid == other
    });
    // Well past the TTL, with fires of its own plan long due.
    wait_until("paused 5 s", WAIT, || {
        stopped.elapsed() > Duration::from_secs(5)
    });
    p.signal("CONT");
    wait_until("the resumed leader steps down", WAIT, || {
        !p.log_events("leadership lost; now standby").is_empty()
    });
    let resumed_with = count(&url, "tick", |_| true);
    wait_msgs(&url, "tick", resumed_with + 3, "3 more fires", |_| true);
    assert_eq!(
        leader_pid(&url),
        Some(other),
        "the new leader keeps the lock"
    );
    for b in &mut beats {
        assert!(b.running(), "a replica exited:\n{}", logs(&beats));
    }
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "{ctx}");
    // Nothing stale: in send order, every message of the paused leader precedes every
    // message of its successor, and epochs never go back.
    let last_paused = msgs.iter().rposition(|m| m.pid == paused).expect("sent");
    let first_other = msgs.iter().position(|m| m.pid == other).expect("sent");
    assert!(last_paused < first_other, "{msgs:#?}");
    assert!(
        msgs.windows(2).all(|w| w[0].epoch <= w[1].epoch),
        "{msgs:#?}"
    );
    // Its log agrees: each "fire" line is a message in the queue.
    let p = beats.iter().find(|b| b.pid == paused).expect("ours");
    assert_eq!(
        p.log_events("fire").len(),
        msgs.iter().filter(|m| m.pid == paused).count()
    );
}

#[test]
fn sigterm_leader_releases_and_standby_sends_the_next_fire_time_without_gap() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    // Default TTL (10 s) and no catch-up at all: had the leader not released the lock, the
    // standby would wait out the TTL and fire times would be missing; and the fire time that
    // falls due while the standby polls the lock (every second) must be sent late, not
    // counted as missed. The signal lands 800 ms into a second, so the next fire time almost
    // always falls due before the standby notices the release.
    let s = Schedules::new(&tick("none", None));
    let watch = QueueWatch::start(&url);
    let mut beats = spawn(&url, &s, &BeatOpts::default(), 2);
    let leader = wait_leader(&url, &pids(&beats), WAIT);
    let standby = *pids(&beats).iter().find(|p| **p != leader).expect("two");
    wait_msgs(&url, "tick", 3, "3 fires before SIGTERM", |_| true);
    sleep_to_fraction(Duration::from_millis(800));
    let t = Instant::now();
    let termed_at = now();
    let b = beats.iter_mut().find(|b| b.pid == leader).expect("ours");
    let status = b.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert_eq!(b.log_events("leadership released").len(), 1);
    let exit = t.elapsed().as_secs_f64();
    wait_leader(&url, &[standby], Duration::from_secs(5));
    let takeover = t.elapsed().as_secs_f64();
    wait_msgs(&url, "tick", 3, "3 fires of the standby", |m| {
        m.pid == standby
    });
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "no gap\n{ctx}");
    let first = msgs.iter().find(|m| m.pid == standby).expect("sent");
    let last_old = msgs.iter().rev().find(|m| m.pid == leader).expect("sent");
    assert_eq!(first.at, last_old.at + TimeDelta::seconds(1), "{ctx}");
    let seen = watch.seen_at("tick", first.at).expect("seen");
    let late = secs(seen - first.at);
    eprintln!(
        "SIGTERM: leader exited {exit:.2}s after the signal, standby leads {takeover:.2}s after; \
         its first fire ({}) in the queue {late:.2}s after its scheduled time, {:.2}s after \
         the signal",
        first.at,
        secs(seen - termed_at)
    );
    // Far below the 10 s TTL a missing release would cost; the rest is slack for CI.
    assert!(late < 5.0, "first fire of the standby {late:.2}s late");
}

/// Kills redis-server mid-run and restarts it on the same port; checks no replica exits,
/// `/readyz` reports the outage and the recovery. Returns (replicas, kill instant, restart
/// instant).
fn redis_outage(
    redis: &mut RedisServer,
    s: &Schedules,
) -> (Vec<Beat>, DateTime<Utc>, DateTime<Utc>) {
    let url = redis.url();
    let opts = BeatOpts {
        http: true,
        ..ttl3()
    };
    let mut beats = spawn(&url, s, &opts, 2);
    wait_leader(&url, &pids(&beats), WAIT);
    wait_until("both ready", WAIT, || {
        beats.iter().all(|b| b.readyz() == Some(200))
    });
    wait_msgs(&url, "tick", 3, "3 fires before the outage", |_| true);
    sleep_to_fraction(Duration::from_millis(300));
    let killed_at = now();
    redis.kill();
    wait_until("both report the outage on /readyz", WAIT, || {
        beats.iter().all(|b| b.readyz() == Some(503))
    });
    // Down for a few fire times.
    std::thread::sleep(Duration::from_secs(4));
    for b in &mut beats {
        assert!(
            b.running(),
            "a replica exited during the outage:\n{}",
            logs(&beats)
        );
        assert_eq!(b.readyz(), Some(503), "still down");
        assert_eq!(
            http_status(b.http_port.unwrap(), "/healthz"),
            Some(200),
            "alive"
        );
    }
    let restarted_at = now();
    redis.restart().expect("redis restarts");
    wait_until("both ready again", WAIT, || {
        beats.iter().all(|b| b.readyz() == Some(200))
    });
    (beats, killed_at, restarted_at)
}

#[test]
fn redis_restart_durable_aof_no_replica_exits_and_catch_up_fills_the_outage() {
    // A durable Redis (AOF, fsync on every write) keeps the queue, the lock and the last runs
    // across the restart: catch_up = all then sends every fire time of the outage, once.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        .expect("redis-server");
    let url = redis.url();
    let s = Schedules::new(&tick("all", Some("1m")));
    let (mut beats, killed_at, restarted_at) = redis_outage(&mut redis, &s);
    let after = restarted_at + TimeDelta::seconds(3);
    wait_msgs(&url, "tick", 3, "3 regular fires after the restart", |m| {
        m.at > after
    });
    for b in &mut beats {
        assert!(b.running(), "a replica exited:\n{}", logs(&beats));
    }
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "{ctx}");
    let t = times(&msgs, "tick");
    assert!(t[0] < killed_at, "messages from before the outage survived");
    let outage = t
        .iter()
        .filter(|a| **a > killed_at && **a < restarted_at)
        .count();
    assert!(
        outage >= 3,
        "fire times of the outage caught up: {outage}\n{ctx}"
    );
}

#[test]
fn redis_restart_without_persistence_starts_entries_afresh_without_duplicates() {
    // A Redis that loses its data loses the queue, the lock, the epoch and the last runs
    // together. beatd then sees every entry as new: it starts from the next fire time after
    // it takes the lock, so nothing from before or during the outage is sent again (there is
    // no record of it), and nothing after the restart twice. (DESIGN.md: the guarantee holds
    // while Redis keeps its writes.)
    let mut redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let s = Schedules::new(&tick("all", Some("1m")));
    let (mut beats, _killed_at, restarted_at) = redis_outage(&mut redis, &s);
    wait_msgs(&url, "tick", 4, "4 fires after the restart", |_| true);
    for b in &mut beats {
        assert!(b.running(), "a replica exited:\n{}", logs(&beats));
    }
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "{ctx}");
    assert!(
        msgs.iter().all(|m| m.at > restarted_at),
        "state lost: no catch-up of fire times before the restart\n{msgs:#?}"
    );
    assert_eq!(
        msgs.first().map(|m| m.epoch),
        Some(1),
        "the epoch restarted with the data"
    );
}

#[test]
fn restart_every_replica_changed_schedule_no_duplicate_no_spurious_fire_removed_entry_forgotten() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let before = "[[entry]]\nname = \"tick\"\ntask = \"ha.tick\"\nevery = \"1s\"\n\
                  catch_up = \"all\"\ncatch_up_window = \"1m\"\n\
                  [[entry]]\nname = \"changing\"\ntask = \"ha.changing\"\nevery = \"2s\"\n\
                  [[entry]]\nname = \"doomed\"\ntask = \"ha.doomed\"\nevery = \"1s\"\n";
    let s = Schedules::new(before);
    let mut first = spawn(&url, &s, &ttl3(), 2);
    wait_leader(&url, &pids(&first), WAIT);
    wait_msgs(&url, "changing", 2, "2 fires of `changing`", |_| true);
    wait_msgs(&url, "doomed", 2, "2 fires of `doomed`", |_| true);
    stop_all(&mut first);
    let phase1 = queue(&url);
    let changing_last = last_run(&url, "changing").expect("recorded");
    assert!(last_run(&url, "doomed").is_some());
    // `changing` becomes hourly with its anchor just after its last run: the anchor is a past
    // fire time of the new schedule newer than the last run, so a beat that compared the old
    // last run with the new schedule would "catch it up" at once — spurious. The schedule
    // changed, so the entry starts afresh: next fire in an hour.
    let anchor = DateTime::from_timestamp_millis(changing_last + 500).expect("ms");
    let after = format!(
        "[[entry]]\nname = \"tick\"\ntask = \"ha.tick\"\nevery = \"1s\"\n\
         catch_up = \"all\"\ncatch_up_window = \"1m\"\n\
         [[entry]]\nname = \"changing\"\ntask = \"ha.changing\"\nevery = \"1h\"\n\
         anchor = \"{}\"\ncatch_up = \"latest\"\ncatch_up_window = \"2h\"\n",
        anchor.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    s.write(&after);
    wait_until("the anchor is in the past", WAIT, || now() > anchor);
    std::thread::sleep(Duration::from_secs(2)); // a restart takes a moment; fires are missed
    let mut second = spawn(&url, &s, &ttl3(), 2);
    let restarted_at = now();
    wait_leader(&url, &pids(&second), WAIT);
    wait_until("the removed entry's state is deleted", WAIT, || {
        state_gone(&url, "doomed")
    });
    wait_msgs(&url, "tick", 4, "4 regular fires after the restart", |m| {
        m.at > restarted_at + TimeDelta::seconds(1)
    });
    stop_all(&mut second);
    let msgs = queue(&url);
    let mut all: Vec<&Beat> = first.iter().collect();
    all.extend(second.iter());
    let ctx = dump_logs(&all);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(
        missing(&msgs, "tick", SECOND),
        NONE,
        "restart gap caught up\n{ctx}"
    );
    let changing: Vec<_> = times(&msgs, "changing")
        .into_iter()
        .filter(|t| t.timestamp_millis() > changing_last)
        .collect();
    assert_eq!(
        changing, NONE,
        "no spurious fire of the changed entry\n{ctx}"
    );
    assert_eq!(
        times(&msgs, "doomed"),
        times(&phase1, "doomed"),
        "nothing sent for the removed entry after the restart"
    );
    let mut c = crate::ha_util::redis(&url);
    for hash in ["beatd:last_run", "beatd:run_count", "beatd:fingerprint"] {
        let exists: bool = redis::cmd("HEXISTS")
            .arg(hash)
            .arg("doomed")
            .query(&mut c)
            .expect("HEXISTS");
        assert!(!exists, "{hash} still has the removed entry");
    }
}

#[test]
fn live_reload_removes_an_entry_and_changes_a_schedule_on_leader_and_standby() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let before = "[[entry]]\nname = \"tick\"\ntask = \"ha.tick\"\nevery = \"1s\"\n\
                  catch_up = \"all\"\ncatch_up_window = \"1m\"\n\
                  [[entry]]\nname = \"changing\"\ntask = \"ha.changing\"\nevery = \"1s\"\n\
                  [[entry]]\nname = \"doomed\"\ntask = \"ha.doomed\"\nevery = \"1s\"\n";
    let s = Schedules::new(before);
    let mut beats = spawn(&url, &s, &ttl3(), 2);
    let leader = wait_leader(&url, &pids(&beats), WAIT);
    wait_msgs(&url, "doomed", 2, "2 fires of `doomed`", |_| true);
    wait_msgs(&url, "changing", 2, "2 fires of `changing`", |_| true);
    let changing_last = last_run(&url, "changing").expect("recorded");
    let anchor = DateTime::from_timestamp_millis(changing_last + 300).expect("ms");
    s.write(&format!(
        "[[entry]]\nname = \"tick\"\ntask = \"ha.tick\"\nevery = \"1s\"\n\
         catch_up = \"all\"\ncatch_up_window = \"1m\"\n\
         [[entry]]\nname = \"changing\"\ntask = \"ha.changing\"\nevery = \"1h\"\n\
         anchor = \"{}\"\ncatch_up = \"latest\"\ncatch_up_window = \"2h\"\n",
        anchor.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    ));
    let edited = now();
    wait_until("the removed entry's state is deleted", WAIT, || {
        state_gone(&url, "doomed")
    });
    let doomed_sent = count(&url, "doomed", |_| true);
    wait_msgs(&url, "tick", 2, "2 fires after the reload", |m| {
        m.at > edited + TimeDelta::seconds(2)
    });
    // Hand over to the standby, which reloaded the same files on its own.
    let b = beats.iter_mut().find(|b| b.pid == leader).expect("ours");
    assert!(b.terminate(Duration::from_secs(10)).success());
    let standby = *pids(&beats).iter().find(|p| **p != leader).expect("two");
    wait_leader(&url, &[standby], Duration::from_secs(5));
    wait_msgs(&url, "tick", 3, "3 fires of the standby", |m| {
        m.pid == standby
    });
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "{ctx}");
    assert_eq!(count(&url, "doomed", |_| true), doomed_sent, "{ctx}");
    assert!(last_run(&url, "doomed").is_none(), "{ctx}");
    // The old schedule may fire once more between the edit and the reload (a fire time of the
    // old schedule, sent before the reload); nothing of the new schedule fires within the hour.
    let late: Vec<_> = times(&msgs, "changing")
        .into_iter()
        .filter(|t| *t > edited + TimeDelta::seconds(2))
        .collect();
    assert_eq!(late, NONE, "no spurious fire\n{ctx}");
    assert!(!times(&msgs, "changing").contains(&anchor), "{ctx}");
}

#[test]
fn redis_blip_shorter_than_the_ttl_leader_keeps_its_lease_and_misses_nothing() {
    // A durable Redis restarted within the lock TTL (10 s) still holds the leader's lock: the
    // leader must ride the blip out — retry within its lease, catch up the fire times due
    // during the blip once Redis is back, and report ready again — rather than drop
    // leadership and leave its own unreleasable lock to block every replica until the TTL
    // runs out (which would show as a second leadership term, a new epoch).
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        .expect("redis-server");
    let url = redis.url();
    let s = Schedules::new(&tick("all", Some("1m")));
    let opts = BeatOpts {
        http: true,
        ..BeatOpts::default()
    };
    let mut beats = spawn(&url, &s, &opts, 2);
    let leader = wait_leader(&url, &pids(&beats), WAIT);
    wait_until("both ready", WAIT, || {
        beats.iter().all(|b| b.readyz() == Some(200))
    });
    wait_msgs(&url, "tick", 3, "3 fires before the blip", |_| true);
    sleep_to_fraction(Duration::from_millis(300));
    let killed_at = now();
    redis.kill();
    // At least one fire time falls in the blip (0.7 s after the kill).
    std::thread::sleep(Duration::from_millis(1500));
    let l = beats.iter().find(|b| b.pid == leader).expect("ours");
    assert_eq!(l.readyz(), Some(503), "the leader reports the outage");
    redis.restart().expect("redis restarts");
    wait_msgs(&url, "tick", 3, "3 fires after the blip", |m| {
        m.at > killed_at + TimeDelta::seconds(3)
    });
    wait_until("both ready again", WAIT, || {
        beats.iter().all(|b| b.readyz() == Some(200))
    });
    assert_eq!(leader_pid(&url), Some(leader), "the leader kept its lock");
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "{ctx}");
    assert!(
        msgs.iter()
            .all(|m| m.pid == leader && m.epoch == msgs[0].epoch),
        "one term throughout\n{ctx}"
    );
}

#[test]
fn schedule_reload_during_a_redis_blip_is_retried_and_the_leader_keeps_its_lease() {
    // A config deploy that lands while Redis is briefly away: the leader cannot plan the new
    // schedule (it must read the last runs and forget removed entries). It keeps its lease
    // and old plan, retries, and plans the new schedule once Redis is back: one term
    // throughout, nothing missing, the removed entry forgotten.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        .expect("redis-server");
    let url = redis.url();
    let both = format!(
        "{}[[entry]]\nname = \"doomed\"\ntask = \"ha.doomed\"\nevery = \"1s\"\n",
        tick("all", Some("1m"))
    );
    let s = Schedules::new(&both);
    let mut beats = spawn(&url, &s, &BeatOpts::default(), 2);
    let leader = wait_leader(&url, &pids(&beats), WAIT);
    wait_msgs(&url, "doomed", 3, "3 fires of `doomed`", |_| true);
    sleep_to_fraction(Duration::from_millis(300));
    let killed_at = now();
    redis.kill();
    let down = Instant::now();
    s.write(&tick("all", Some("1m")));
    // The reload and a fire time both fall in the blip.
    let l = beats.iter().find(|b| b.pid == leader).expect("ours");
    wait_until("the leader reloads while redis is down", WAIT, || {
        !l.log_events("schedules reloaded").is_empty()
    });
    wait_until("a fire time passes", WAIT, || {
        down.elapsed() > Duration::from_millis(1500)
    });
    assert!(!redis.is_running());
    redis.restart().expect("redis restarts");
    wait_until("the removed entry's state is deleted", WAIT, || {
        state_gone(&url, "doomed")
    });
    wait_msgs(&url, "tick", 3, "3 fires after the blip", |m| {
        m.at > killed_at + TimeDelta::seconds(3)
    });
    assert_eq!(leader_pid(&url), Some(leader), "the leader kept its lock");
    stop_all(&mut beats);
    let msgs = queue(&url);
    let ctx = logs(&beats);
    assert_exactly_once(&msgs, &ctx);
    assert_eq!(missing(&msgs, "tick", SECOND), NONE, "{ctx}");
    assert!(
        times(&msgs, "doomed").iter().all(|t| *t < killed_at),
        "the removed entry stops\n{ctx}"
    );
    assert!(
        msgs.iter()
            .all(|m| m.pid == leader && m.epoch == msgs[0].epoch),
        "one term throughout\n{ctx}"
    );
}
