//! RabbitMQ and no Redis at all (the Celery tutorial's layout): `beatd beat` runs as a single
//! instance with the state file, says so, and a second beat on the same RabbitMQ stands by
//! (an exclusive queue is the lock) and takes over when the first goes away.

use super::celery::Scene;
use beatd::amqp::AmqpUrl;
use std::collections::BTreeMap;
use std::path::Path;

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

fn queued(vhost: &str) -> u64 {
    super::node()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_one_beat_sends_and_the_second_takes_over() {
    let mut s = Scene::new();
    let url = AmqpUrl::parse(&s.amqp).unwrap();
    let vhost = url.vhost().to_owned();
    std::fs::create_dir_all(s.path("schedules")).unwrap();
    std::fs::write(
        s.path("schedules/tick.toml"),
        "[[entry]]\nname = \"tick\"\ntask = \"interop.record\"\nevery = \"1s\"\n\
         catch_up = \"all\"\ncatch_up_window = \"1m\"\n",
    )
    .unwrap();
    for i in 0..2 {
        let mut beat = s.command(Path::new(env!("CARGO_BIN_EXE_beatd")));
        beat.args(["beat", "--schedules", "schedules", "--http-addr", "off"])
            .env("CELERY_BROKER_URL", &s.amqp);
        s.spawn(&format!("beat-{i}"), beat);
    }
    let leading = |s: &Scene| -> Vec<usize> {
        (0..2)
            .filter(|i| {
                s.log_of(&format!("beat-{i}"))
                    .contains("leadership acquired")
            })
            .collect()
    };
    let first = s.wait_for("a leader", || leading(&s).first().copied());
    s.wait_for("3 fires", || (queued(&vhost) >= 3).then_some(()));
    let other = 1 - first;
    assert!(
        !s.log_of(&format!("beat-{other}"))
            .contains("leadership acquired"),
        "both lead\n{}",
        s.logs()
    );
    for i in 0..2 {
        assert!(s.log_of(&format!("beat-{i}")).contains("single instance"));
    }
    let pid = |s: &Scene, i: usize| s.procs[i].1 .0.id();
    signal(pid(&s, first), "-TERM");
    s.wait_for("the standby to take over", || {
        s.log_of(&format!("beat-{other}"))
            .contains("leadership acquired")
            .then_some(())
    });
    let n = queued(&vhost);
    s.wait_for("3 more fires", || (queued(&vhost) >= n + 3).then_some(()));
    signal(pid(&s, other), "-TERM");
    let deadline = std::time::Instant::now() + super::celery::WAIT;
    for (name, p) in &mut s.procs {
        while p.0.try_wait().ok().flatten().is_none() {
            assert!(std::time::Instant::now() < deadline, "{name} did not stop");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    let (_c, ch) = super::channel(&url).await;
    let msgs = super::drain(&ch, "celery").await;
    let mut by_time: BTreeMap<String, usize> = BTreeMap::new();
    for m in &msgs {
        let h = m.delivery.properties.headers().as_ref().expect("headers");
        let at = beatd::amqp::wire::json(h.inner().get("beatd_scheduled_at").unwrap());
        *by_time.entry(at.as_str().unwrap().to_owned()).or_default() += 1;
    }
    let times: Vec<chrono::DateTime<chrono::Utc>> = by_time
        .keys()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc())
        .collect();
    let gaps: Vec<_> = times
        .windows(2)
        .filter(|w| w[1] - w[0] != chrono::Duration::seconds(1))
        .collect();
    assert!(gaps.is_empty(), "gaps {gaps:?}\n{}", s.logs());
    let twice: Vec<_> = by_time.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}\n{}", s.logs());
}
