//! How long 10,000 fires take.

use crate::*;
use beatd::emit::{EmitOptions, EmitOutcome::Sent, Emitter, Fire, RedisEmitter};
use beatd::redis::Keys;
use std::time::{Duration, Instant};

/// Not a timed assertion: prints how long 10,000 fires of ~1 KB take, as Redis main-thread
/// CPU time (robust on a busy machine), Redis wall time (commandstats) and end to end from this
/// client, for several chunk sizes; the best of three rounds each. Run with `--nocapture`.
#[tokio::test]
async fn emit_10k_fires_timing() {
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 600_000)).await;
    let mut raw = redis::Client::open(conn_url(&conn))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut at = 1_800_000_000_000;
    for per_call in [10_000, 5_000, 2_000, 1_000] {
        let opts = EmitOptions {
            max_fires_per_call: per_call,
            max_bytes_per_call: usize::MAX,
            ..EmitOptions::default()
        };
        let em = RedisEmitter::new(conn.clone(), Keys::default(), opts);
        let mut best = (f64::MAX, f64::MAX, Duration::MAX);
        for _ in 0..3 {
            at += 1_000;
            let fires = herd(at);
            em.emit(&lease, &fires[..1]).await.unwrap(); // loads the script
            let _: () = redis::cmd("DEL")
                .arg("celery")
                .arg("reports")
                .query_async(&mut raw)
                .await
                .unwrap();
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut raw)
                .await
                .unwrap();
            let cpu0 = redis_cpu_ms(&mut raw).await;
            let t = Instant::now();
            let out = em.emit(&lease, &fires[1..]).await.unwrap();
            let wall = t.elapsed();
            let cpu = redis_cpu_ms(&mut raw).await - cpu0;
            assert!(out.iter().all(|o| *o == Sent));
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut raw)
                .await
                .unwrap();
            let usec: f64 = info
                .lines()
                .find(|l| l.starts_with("cmdstat_evalsha:"))
                .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            best = (best.0.min(cpu), best.1.min(usec / 1000.0), best.2.min(wall));
        }
        println!(
            "emit 9,999 fires of 900 B, {per_call} per call: redis cpu {:.1} ms, redis wall {:.1} ms, \
             end to end {:?} (debug build)",
            best.0, best.1, best.2
        );
    }
}

/// 10,000 distinct entries due at `at`, over two queues.
fn herd(at: i64) -> Vec<Fire> {
    (0..10_000)
        .map(|i| Fire {
            entry: format!("entry-{i:05}"),
            fire_at_ms: at,
            task_id: String::new(),
            rq: None,
            list_key: if i % 2 == 0 {
                "celery".into()
            } else {
                "reports".into()
            },
            payload: vec![b'x'; 900], // about a Celery envelope with small args
            schedule_fingerprint: "0123456789abcdef".into(),
        })
        .collect()
}

/// Redis main-thread CPU time (user + system), in ms.
async fn redis_cpu_ms(raw: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(raw)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user_main_thread:")
                .or_else(|| l.strip_prefix("used_cpu_sys_main_thread:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum::<f64>()
        * 1000.0
}

/// Not a timed assertion: the longest single settle call (Redis's own time, from SLOWLOG)
/// for 10,000 staged fires in the default steps, with task ids recorded beside the runs and
/// without (fires with no task id). Run with `--nocapture`.
#[tokio::test]
async fn settle_10k_with_task_ids_timing() {
    use beatd::emit::{BatchId, StagedEmitter};
    let (_s, conn) = server().await;
    let lease = acquire(&leader(&conn, 600_000)).await;
    let mut raw = redis::Client::open(conn_url(&conn))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let em = RedisEmitter::new(conn.clone(), Keys::default(), EmitOptions::default());
    let mut at = 1_900_000_000_000;
    for with_ids in [true, false, true, false, true, false] {
        at += 1_000;
        let fires: Vec<Fire> = herd(at)
            .into_iter()
            .enumerate()
            .map(|(i, mut f)| {
                if with_ids {
                    f.task_id = format!("{:08x}-0000-4000-8000-{i:012x}", at % 1_000_000);
                }
                f
            })
            .collect();
        let batch = BatchId {
            epoch: lease.epoch,
            at_ms: at,
        };
        em.stage(&lease, batch, &fires).await.unwrap();
        em.publish(&lease, batch).await.unwrap();
        for (k, v) in [
            ("slowlog-log-slower-than", "0"),
            ("slowlog-max-len", "10000"),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut raw)
            .await
            .unwrap();
        let t = Instant::now();
        em.settle(batch).await.unwrap();
        let wall = t.elapsed();
        let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(10_000)
            .query_async(&mut raw)
            .await
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg("10000")
            .query_async(&mut raw)
            .await
            .unwrap();
        let mut calls = 0;
        let (mut longest_us, mut total_us) = (0i64, 0i64);
        for entry in &log {
            let redis::Value::Array(parts) = entry else {
                continue;
            };
            let (Some(redis::Value::Int(us)), Some(redis::Value::Array(args))) =
                (parts.get(2), parts.get(3))
            else {
                continue;
            };
            let is_script = matches!(args.first(), Some(redis::Value::BulkString(c))
                if c.eq_ignore_ascii_case(b"evalsha") || c.eq_ignore_ascii_case(b"eval"));
            if is_script {
                calls += 1;
                longest_us = longest_us.max(*us);
                total_us += *us;
            }
        }
        println!(
            "settle 10,000 staged fires {}: {calls} calls, longest {:.2} ms, all {:.1} ms in \
             redis, {wall:?} end to end (debug build)",
            if with_ids {
                "with task ids"
            } else {
                "without task ids"
            },
            longest_us as f64 / 1000.0,
            total_us as f64 / 1000.0
        );
    }
}
