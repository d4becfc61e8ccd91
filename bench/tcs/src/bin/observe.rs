//! Records when each message lands on a Redis list, without taking it: subscribes to the
//! list's keyspace notifications (LPUSH, RENAME into it) and reads `LLEN` on each, so the time
//! of every length change is known to a fraction of a millisecond however big the batch (a
//! `BLMPOP` of 10,000 × 900 B would itself take tens of ms to serve). At the end it reads the
//! list once: messages are pushed at the head, so the k-th oldest arrived when the length first
//! exceeded k. Nothing else may pop from the list meanwhile.
//!
//! Prints one JSON object per message, oldest first: arrival (unix s), scheduled (unix s from
//! the `beatd_scheduled_at` header, or null), origin, task, id, entry.
//! Stops at EXPECTED messages, after TIMEOUT_S, after IDLE_S without a change once one came,
//! or when its stdin is closed; prints `{"ready": t}` first, once subscribed.
//! Usage: observe REDIS_URL QUEUE EXPECTED TIMEOUT_S [IDLE_S]
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let client = redis::Client::open(a[1].as_str()).unwrap();
    let queue = &a[2];
    let expected: usize = a[3].parse().unwrap();
    let timeout = Duration::from_secs_f64(a[4].parse().unwrap());
    let idle: Option<f64> = a.get(5).map(|s| s.parse().unwrap());
    let mut con = client.get_connection().unwrap();
    let mut sub_con = client.get_connection().unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Klg")
        .query::<()>(&mut con)
        .unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, Ordering::Relaxed);
    });
    let mut sub = sub_con.as_pubsub();
    sub.subscribe(format!("__keyspace@0__:{queue}")).unwrap();
    sub.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let start = Instant::now();
    // (time, length) at every change.
    let mut steps: Vec<(f64, usize)> = Vec::new();
    let mut len: usize = redis::cmd("LLEN").arg(queue).query(&mut con).unwrap();
    let base = len;
    println!("{{\"ready\": {}}}", now_s());
    std::io::stdout().flush().unwrap();
    let mut last_change: Option<f64> = None;
    while len - base < expected && start.elapsed() < timeout && !closed.load(Ordering::Relaxed) {
        if let (Some(i), Some(l)) = (idle, last_change) {
            if now_s() - l > i {
                break;
            }
        }
        match sub.get_message() {
            Ok(_) => {
                let t = now_s();
                let n: usize = redis::cmd("LLEN").arg(queue).query(&mut con).unwrap();
                if n > len {
                    steps.push((t, n));
                    last_change = Some(t);
                }
                len = n;
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => panic!("{e}"),
        }
    }
    // Oldest first: the list's tail end.
    let mut msgs: Vec<Vec<u8>> = Vec::with_capacity(len);
    let mut at = len as isize - 1;
    while at >= 0 {
        let from = (at - 9_999).max(0);
        let mut part: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(queue)
            .arg(from)
            .arg(at)
            .query(&mut con)
            .unwrap();
        part.reverse();
        msgs.extend(part);
        at = from - 1;
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut step = 0;
    for (k, m) in msgs.iter().enumerate().skip(base) {
        while step < steps.len() && steps[step].1 <= k {
            step += 1;
        }
        let Some(&(t, _)) = steps.get(step) else { break };
        let v: serde_json::Value = serde_json::from_slice(m).unwrap_or_default();
        let h = &v["headers"];
        let sched = h["beatd_scheduled_at"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.timestamp_millis() as f64 / 1000.0);
        let o = serde_json::json!({
            "arrival": t, "scheduled": sched, "origin": h["origin"], "task": h["task"],
            "id": h["id"], "entry": h["beatd_entry"],
        });
        writeln!(out, "{o}").unwrap();
    }
}
