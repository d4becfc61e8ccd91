//! tokio-cron-scheduler with N jobs all due at the same second; prints lateness to the job
//! callback as JSON. Usage: tcs N FIRE_AT_UNIX_S TIMEOUT_S
use chrono::{DateTime, Timelike, Utc};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_cron_scheduler::{Job, JobScheduler};

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: usize = a[1].parse().unwrap();
    let fire_at: i64 = a[2].parse().unwrap();
    let timeout: f64 = a[3].parse().unwrap();
    let at: DateTime<Utc> = DateTime::from_timestamp(fire_at, 0).unwrap();
    // Fires once a year, at the chosen second.
    let expr = format!("{} {} {} {} {} *", at.second(), at.minute(), at.hour(), at.format("%-d"), at.format("%-m"));
    let fired: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let sched = JobScheduler::new().await.unwrap();
    let t0 = now_s();
    let mut added = 0;
    for _ in 0..n {
        let fired = fired.clone();
        let job = Job::new_async(expr.as_str(), move |_id, _l| {
            let fired = fired.clone();
            Box::pin(async move {
                let t = now_s();
                fired.lock().unwrap().push(t);
            })
        })
        .unwrap();
        sched.add(job).await.unwrap();
        added += 1;
        if now_s() > fire_at as f64 - 0.5 {
            break;
        }
    }
    let add_s = now_s() - t0;
    sched.start().await.unwrap();
    let deadline = fire_at as f64 + timeout;
    while now_s() < deadline {
        if fired.lock().unwrap().len() >= added && now_s() > fire_at as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times = fired.lock().unwrap().clone();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // utime + stime in clock ticks (100 Hz on Linux).
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let out = serde_json::json!({
        "n": n, "added": added, "add_s": add_s, "fire_at": fire_at,
        "arrivals": times,
        "stats": {"VmHWM": hwm_kb / 1024.0, "cpu_s": ticks / 100.0},
    });
    println!("{out}");
    std::process::exit(0);
}
