//! Three `beatd beat`s on one Redis lock publishing to RabbitMQ: the leader `kill -9`ed, then
//! the next one `SIGSTOP`ped past the TTL and continued: every fire time delivered, none
//! missing, and a fire time delivered twice only as the same-id republish.

use super::celery::Scene;
use beatd::amqp::AmqpUrl;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn leader_pid(s: &Scene) -> Option<u32> {
    let mut c = redis::Client::open(s.redis.url())
        .ok()?
        .get_connection()
        .ok()?;
    let token: Option<String> = redis::cmd("GET").arg("beatd:leader").query(&mut c).ok()?;
    token?.split(':').nth(1)?.parse().ok()
}

fn queued(vhost: &str) -> u64 {
    queued_on(super::node(), vhost)
}

fn queued_on(server: &beatd::testkit::RabbitServer, vhost: &str) -> u64 {
    server
        .ctl(&[
            "list_queues",
            "-p",
            vhost,
            "name",
            "messages",
            "--formatter",
            "json",
        ])
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<serde_json::Value>>(&o).ok())
        .and_then(|v| {
            v.iter()
                .find(|q| q["name"] == "celery")
                .map(|q| q["messages"].as_u64().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Fire times by `beatd_scheduled_at` → the task ids they were sent with, from `msgs`;
/// panics on a gap or on a fire time sent twice with different ids.
fn check_every_fire_time(msgs: &[lapin::message::BasicGetMessage], logs: &str) -> (usize, usize) {
    let mut by_time: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in msgs {
        let h = m.delivery.properties.headers().as_ref().expect("headers");
        let get = |k: &str| beatd::amqp::wire::json(h.inner().get(k).expect(k));
        by_time
            .entry(get("beatd_scheduled_at").as_str().unwrap().to_owned())
            .or_default()
            .push(get("id").as_str().unwrap().to_owned());
    }
    let times: Vec<chrono::DateTime<chrono::Utc>> = by_time
        .keys()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc())
        .collect();
    let gaps: Vec<_> = times
        .windows(2)
        .filter(|w| w[1] - w[0] != chrono::Duration::seconds(1))
        .collect();
    assert!(gaps.is_empty(), "gaps {gaps:?}\n{logs}");
    for (at, ids) in &by_time {
        assert!(
            ids.iter().all(|i| i == &ids[0]),
            "{at} sent twice with different ids: {ids:?}"
        );
    }
    (by_time.len(), msgs.len() - by_time.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_under_two_beats_loses_no_fire_time() {
    // A node of its own: this test restarts it.
    let mut own = beatd::testkit::RabbitServer::start().expect("rabbitmq-server");
    let mut s = Scene::on(&own);
    let url = AmqpUrl::parse(&s.amqp).unwrap();
    let vhost = url.vhost().to_owned();
    std::fs::create_dir_all(s.path("schedules")).unwrap();
    std::fs::write(
        s.path("schedules/tick.toml"),
        "[[entry]]\nname = \"tick\"\ntask = \"interop.record\"\nevery = \"1s\"\n\
         catch_up = \"all\"\ncatch_up_window = \"5m\"\n",
    )
    .unwrap();
    for i in 0..2 {
        let mut beat = s.command(Path::new(env!("CARGO_BIN_EXE_beatd")));
        beat.args([
            "beat",
            "--schedules",
            "schedules",
            "--http-addr",
            "off",
            "--lock-ttl",
            "3s",
        ])
        .env("CELERY_BROKER_URL", &s.amqp)
        .env("REDIS_URL", s.redis.url());
        s.spawn(&format!("beat-{i}"), beat);
    }
    s.wait_for("3 fires", || (queued_on(&own, &vhost) >= 3).then_some(()));
    own.restart().expect("restart rabbitmq");
    let n = queued_on(&own, &vhost);
    s.wait_for("3 fires after the restart", || {
        (queued_on(&own, &vhost) >= n + 3).then_some(())
    });
    for (_, p) in &s.procs {
        signal(p.0.id(), "-TERM");
    }
    let deadline = std::time::Instant::now() + super::celery::WAIT;
    for (name, p) in &mut s.procs {
        while p.0.try_wait().ok().flatten().is_none() {
            assert!(std::time::Instant::now() < deadline, "{name} did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (_c, ch) = super::channel(&url).await;
    let msgs = super::drain(&ch, "celery").await;
    let (times, republished) = check_every_fire_time(&msgs, &s.logs());
    // Connected once before the restart and again after it.
    let connects: usize = (0..2)
        .map(|i| {
            s.log_of(&format!("beat-{i}"))
                .matches("rabbitmq connected")
                .count()
        })
        .sum();
    assert!(connects >= 2, "{}", s.logs());
    eprintln!(
        "rabbitmq restart under two beats: {times} fire times, {republished} same-id republishes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_beats_kill9_and_sigstop_every_fire_time_delivered() {
    let mut s = Scene::new();
    let url = AmqpUrl::parse(&s.amqp).unwrap();
    std::fs::create_dir_all(s.path("schedules")).unwrap();
    std::fs::write(
        s.path("schedules/tick.toml"),
        "[[entry]]\nname = \"tick\"\ntask = \"interop.record\"\nevery = \"1s\"\n\
         catch_up = \"all\"\ncatch_up_window = \"1m\"\n",
    )
    .unwrap();
    let mut pids = Vec::new();
    for i in 0..3 {
        let mut beat = s.command(Path::new(env!("CARGO_BIN_EXE_beatd")));
        beat.args([
            "beat",
            "--schedules",
            "schedules",
            "--http-addr",
            "off",
            "--lock-ttl",
            "2s",
        ])
        .env("CELERY_BROKER_URL", &s.amqp)
        .env("REDIS_URL", s.redis.url());
        s.spawn(&format!("beat-{i}"), beat);
        pids.push(s.procs.last().unwrap().1 .0.id());
    }
    let vhost = url.vhost().to_owned();
    let first = s.wait_for("a leader", || leader_pid(&s));
    s.wait_for("3 fires", || (queued(&vhost) >= 3).then_some(()));
    let name = |pid: u32| format!("beat-{}", pids.iter().position(|p| *p == pid).unwrap());
    s.kill9(&name(first));
    let second = s.wait_for("a new leader", || leader_pid(&s).filter(|p| *p != first));
    let n = queued(&vhost);
    s.wait_for("3 more fires", || (queued(&vhost) >= n + 3).then_some(()));
    // Paused past its TTL: the third takes over; continued, the paused one must not send
    // what is no longer its to send.
    signal(second, "-STOP");
    let third = s.wait_for("the third leader", || {
        leader_pid(&s).filter(|p| *p != first && *p != second)
    });
    let n = queued(&vhost);
    s.wait_for("3 fires of the third", || {
        (queued(&vhost) >= n + 3).then_some(())
    });
    signal(second, "-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await; // let the continued one act, if it would
    let n = queued(&vhost);
    s.wait_for("2 more fires", || (queued(&vhost) >= n + 2).then_some(()));
    for p in [second, third] {
        signal(p, "-TERM");
    }
    let deadline = std::time::Instant::now() + super::celery::WAIT;
    for (name, p) in &mut s.procs {
        while p.0.try_wait().ok().flatten().is_none() {
            assert!(std::time::Instant::now() < deadline, "{name} did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let (_c, ch) = super::channel(&url).await;
    let msgs = super::drain(&ch, "celery").await;
    let (times, republished) = check_every_fire_time(&msgs, &s.logs());
    eprintln!(
        "three beats on rabbitmq: {times} fire times, {} messages, {republished} same-id republishes",
        msgs.len()
    );
}
