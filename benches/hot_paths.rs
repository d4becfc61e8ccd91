//! Micro-benchmarks of the beat's hot paths: next-fire computation (cron in UTC and in a zone
//! with DST, anchored intervals) and Celery message encoding. `cargo bench`; figures in
//! BENCHMARKS.md.

use beatd::protocol::{beatd_headers, TaskMessage};
use beatd::schedule::{CronSchedule, Schedule};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::hint::black_box;
use std::time::Duration;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-29T00:30:17.250Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn next_fire(c: &mut Criterion) {
    let mut g = c.benchmark_group("next_fire");
    let cases = [
        (
            "cron_every_minute_utc",
            "* * * * *",
            beatd::schedule::Tz::UTC,
        ),
        (
            "cron_daily_0230_utc",
            "30 2 * * *",
            beatd::schedule::Tz::UTC,
        ),
        (
            "cron_daily_0230_paris_dst_gap",
            "30 2 * * *",
            beatd::schedule::Tz::named("Europe/Paris").unwrap(),
        ),
        (
            "cron_weekdays_9_to_17_new_york",
            "*/15 9-17 * * MON-FRI",
            beatd::schedule::Tz::named("America/New_York").unwrap(),
        ),
        (
            "cron_last_day_of_month_tokyo",
            "0 0 L * *",
            beatd::schedule::Tz::named("Asia/Tokyo").unwrap(),
        ),
    ];
    for (name, expr, tz) in cases {
        let s = Schedule::Cron(CronSchedule::parse(expr, tz).unwrap());
        g.bench_function(name, |b| {
            b.iter(|| black_box(&s).next_after(black_box(t0())))
        });
    }
    let every = Schedule::Every {
        interval: Duration::from_secs(30),
        anchor: DateTime::UNIX_EPOCH,
    };
    g.bench_function("every_30s", |b| {
        b.iter(|| black_box(&every).next_after(black_box(t0())));
    });
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let at = t0();
    let msg = TaskMessage::new("reports.generate")
        .args(vec![json!("pdf"), json!(42)])
        .kwargs(
            json!({"recipients": ["ops@example.com"]})
                .as_object()
                .unwrap()
                .clone(),
        )
        .queue("celery")
        .expires(Some(at + ChronoDuration::hours(1)))
        .ignore_result(Some(false))
        .origin("beatd1234@host")
        .beat(true)
        .headers(beatd_headers("nightly-report", at, 7));
    let mut g = c.benchmark_group("encode");
    g.bench_function("celery_message_v2", |b| {
        b.iter(|| black_box(&msg).encode(at))
    });
    g.bench_function("build_and_encode", |b| {
        b.iter(|| {
            TaskMessage::new("reports.generate")
                .args(vec![json!("pdf"), json!(42)])
                .queue("celery")
                .origin("beatd1234@host")
                .beat(true)
                .headers(beatd_headers("nightly-report", at, 7))
                .encode(at)
        });
    });
    g.finish();
}

criterion_group!(benches, next_fire, encoding);
criterion_main!(benches);
