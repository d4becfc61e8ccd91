use beatd::emit::{EmitOptions, EmitOutcome::Sent, Emitter, Fire, RedisEmitter};
use beatd::leader::{LeaderLock, RedisLeader};
use beatd::redis::{connect, BrokerUrl, ConnectOptions, Keys};
use beatd::testkit::sentinel::SentinelSet;
use std::time::{Duration, Instant};

/// 10,000 distinct entries due at `at`, about a Celery envelope each.
fn herd(at: i64) -> Vec<Fire> {
    (0..10_000)
        .map(|i| Fire {
            entry: format!("entry-{i:05}"),
            fire_at_ms: at,
            task_id: String::new(),
            rq: None,
            list_key: "celery".into(),
            payload: vec![b'x'; 900],
            schedule_fingerprint: "0123456789abcdef".into(),
        })
        .collect()
}

/// Not a timed assertion: prints what `WAIT` for one replica costs when 10,000 fires are
/// due at once (end to end from this client, best of three, debug build), against the same
/// Sentinel-managed master without `WAIT`. Run with `--nocapture`.
#[tokio::test]
async fn emit_10k_due_at_once_with_and_without_wait_timing() {
    let set = SentinelSet::start().expect("sentinel set");
    let url = BrokerUrl::parse(&set.url()).unwrap();
    let mut at = 1_800_000_000_000;
    let mut figures = Vec::new();
    for (label, u) in [
        ("WAIT 1 replica", url.clone()),
        ("no WAIT", url.clone().with_wait(None)),
    ] {
        let conn = connect(&u, ConnectOptions::default()).await.unwrap();
        let keys = Keys::new(&format!("t{}", figures.len()));
        let lock = RedisLeader::new(conn.clone(), keys.clone(), Duration::from_secs(600));
        let lease = lock.try_acquire().await.unwrap().expect("free");
        let em = RedisEmitter::new(conn, keys, EmitOptions::default());
        let mut best = Duration::MAX;
        for _ in 0..3 {
            at += 1_000;
            let fires = herd(at);
            em.emit(&lease, &fires[..1]).await.unwrap(); // loads the script
            let t = Instant::now();
            let out = em.emit(&lease, &fires[1..]).await.unwrap();
            best = best.min(t.elapsed());
            assert!(out.iter().all(|o| *o == Sent));
        }
        figures.push(format!("{label}: {best:?}"));
    }
    println!(
        "emit 9,999 fires due at once behind Sentinel (debug build): {}",
        figures.join(", ")
    );
}
