//! What the status page and `/api/status` show, gathered once per request: the leader, each
//! entry with its next fire times, last run, result state, pause and skip counts, and the
//! recent failures.

use super::{Console, LeaderSource};
use crate::control::SkipReason;
use crate::entry::Entry;
use crate::schedule::Schedule;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

/// The whole page's data.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// When it was gathered (RFC 3339, UTC).
    pub now: String,
    /// Who leads.
    pub leader: LeaderView,
    /// Every entry, in file order.
    pub entries: Vec<EntryView>,
    /// Entries whose last run failed.
    pub failures: Vec<Failure>,
    /// Fire times of the next 24 hours: (entry index, ms since the epoch); at most
    /// [`TIMELINE_CAP`] per entry.
    #[serde(skip)]
    pub timeline: Vec<(usize, i64)>,
    /// The timeline's start, ms.
    #[serde(skip)]
    pub now_ms: i64,
}

/// The leader.
#[derive(Debug, Serialize)]
pub struct LeaderView {
    /// `redis` or `embedded`.
    pub mode: &'static str,
    /// The lock holder's token (`host:pid:random`), `None` when nobody leads.
    pub holder: Option<String>,
    /// The fencing epoch.
    pub epoch: Option<u64>,
    /// When the current term began, if known (RFC 3339).
    pub since: Option<String>,
    /// Whether the replica serving this page leads.
    pub this_replica: bool,
}

/// One entry.
#[derive(Debug, Serialize)]
pub struct EntryView {
    /// Name.
    pub name: String,
    /// Celery task.
    pub task: String,
    /// The schedule in words.
    pub schedule: String,
    /// IANA zone.
    pub timezone: String,
    /// `enabled = false` in the file.
    pub enabled: bool,
    /// The next three fire times: (local with offset, UTC).
    pub next: Vec<(String, String)>,
    /// The last fire time sent (UTC).
    pub last_run: Option<String>,
    /// Fires sent, ever.
    pub runs: u64,
    /// The last message's task id.
    pub last_task: Option<String>,
    /// Its state in the result backend (`SUCCESS`, `FAILURE`, ...), when known.
    pub result: Option<String>,
    /// Seconds from the last fire time to now, when the entry is overdue (a due fire time
    /// not sent while not paused).
    pub lateness_s: Option<f64>,
    /// Paused, and until when.
    pub paused: Option<PauseView>,
    /// Fire times not sent (or late) by reason.
    pub skips: BTreeMap<&'static str, u64>,
}

/// A pause.
#[derive(Debug, Serialize)]
pub struct PauseView {
    /// Since (RFC 3339).
    pub since: String,
    /// Until (RFC 3339), `None`: until resumed.
    pub until: Option<String>,
    /// Who.
    pub by: String,
}

/// A failed last run.
#[derive(Debug, Serialize)]
pub struct Failure {
    /// Entry.
    pub entry: String,
    /// Task id.
    pub task_id: String,
    /// Result state.
    pub state: String,
    /// The exception, as the result backend has it.
    pub error: Option<String>,
}

/// Fire times per entry on the timeline.
pub const TIMELINE_CAP: usize = 200;

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}

/// The schedule of `e` in words.
#[must_use]
pub fn describe(e: &Entry) -> String {
    match &e.schedule {
        Schedule::Every { interval, .. } => {
            format!("every {}", humantime::format_duration(*interval))
        }
        Schedule::At(t) => format!("once at {}", rfc(*t)),
        Schedule::Cron(c) => describe_cron(&c.expr),
    }
}

fn describe_cron(expr: &str) -> String {
    let f: Vec<&str> = expr.split_whitespace().collect();
    let num = |s: &str| s.parse::<u32>().ok();
    let days = |dom: &str, mon: &str, dow: &str| -> Option<String> {
        match (dom, mon, dow) {
            ("*", "*", "*") => Some("every day".into()),
            ("*", "*", "1-5") => Some("on weekdays".into()),
            ("*", "*", d) => num(d).and_then(|d| {
                [
                    "Sunday",
                    "Monday",
                    "Tuesday",
                    "Wednesday",
                    "Thursday",
                    "Friday",
                    "Saturday",
                    "Sunday",
                ]
                .get(d as usize)
                .map(|n| format!("every {n}"))
            }),
            (d, "*", "*") => num(d).map(|d| format!("on day {d} of every month")),
            _ => None,
        }
    };
    let said = match f.as_slice() {
        ["*", "*", "*", "*", "*"] => Some("every minute".to_owned()),
        [m, "*", "*", "*", "*"] if m.starts_with("*/") => {
            Some(format!("every {} minutes", &m[2..]))
        }
        [m, "*", "*", "*", "*"] => num(m).map(|m| format!("at minute {m} of every hour")),
        [m, h, dom, mon, dow] => match (num(m), num(h)) {
            (Some(m), Some(h)) => days(dom, mon, dow).map(|d| format!("at {h:02}:{m:02} {d}")),
            _ => None,
        },
        _ => None,
    };
    said.unwrap_or_else(|| format!("cron {expr}"))
}

/// Gathers the page's data.
///
/// # Errors
/// When the store cannot be read.
pub async fn status(c: &Console) -> Result<StatusView, crate::store::Error> {
    let now = c.clock.now();
    let entries = c.entries.borrow().clone();
    let last = c.state.last_runs().await?;
    let controls = c.controls.read().await?;
    let leader = match &c.leader {
        LeaderSource::Redis(lock) => {
            let h = lock.holder().await?;
            LeaderView {
                mode: "redis",
                since: h
                    .as_ref()
                    .and_then(|h| controls.leader_since.filter(|(e, _)| *e == h.epoch))
                    .map(|(_, ms)| rfc(at(ms))),
                epoch: h.as_ref().map(|h| h.epoch),
                holder: h.map(|h| h.holder),
                this_replica: c.beat.is_leader.load(Ordering::Relaxed),
            }
        }
        LeaderSource::Embedded => LeaderView {
            mode: "embedded",
            holder: Some(format!(
                "{}:{}",
                crate::host::hostname(),
                std::process::id()
            )),
            epoch: Some(c.beat.epoch.load(Ordering::Relaxed)),
            since: controls.leader_since.map(|(_, ms)| rfc(at(ms))),
            this_replica: c.beat.is_leader.load(Ordering::Relaxed),
        },
    };
    let results = results(c, &controls.last_task).await;
    let mut failures = Vec::new();
    let mut timeline = Vec::new();
    let horizon = now + TimeDelta::hours(24);
    let views = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut next = Vec::new();
            let mut t = now;
            while let Some(f) = e.next_fire_after(t) {
                if f > horizon && next.len() >= 3 {
                    break;
                }
                if next.len() < 3 {
                    let local = f.with_timezone(&e.timezone);
                    next.push((local.to_rfc3339_opts(SecondsFormat::Secs, false), rfc(f)));
                }
                if f <= horizon && timeline.iter().filter(|(j, _)| *j == i).count() < TIMELINE_CAP {
                    timeline.push((i, f.timestamp_millis()));
                } else if next.len() >= 3 {
                    break;
                }
                t = f;
            }
            let l = last.get(&*e.name);
            let task = controls.last_task.get(&*e.name).cloned();
            let result = task.as_ref().and_then(|id| results.get(id)).cloned();
            if let (Some(id), Some((state, error))) = (&task, &result) {
                if state == "FAILURE" || state == "REVOKED" {
                    failures.push(Failure {
                        entry: e.name.to_string(),
                        task_id: id.clone(),
                        state: state.clone(),
                        error: error.clone(),
                    });
                }
            }
            let paused = controls.pauses.get(&*e.name).map(|p| PauseView {
                since: rfc(at(p.since_ms)),
                until: p.until_ms.map(|u| rfc(at(u))),
                by: p.by.clone(),
            });
            // Overdue: a fire time after the last run is past by more than a second.
            let lateness_s = match (l, &paused) {
                (Some(l), None) if e.enabled => e
                    .next_fire_after(at(l.fire_at_ms))
                    .filter(|due| now - *due > TimeDelta::seconds(1))
                    .map(|due| (now - due).as_seconds_f64()),
                _ => None,
            };
            let counts = controls.skips.get(&*e.name);
            let skips = SkipReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str(),
                        counts.and_then(|c| c.get(r)).copied().unwrap_or(0),
                    )
                })
                .collect();
            EntryView {
                name: e.name.to_string(),
                task: e.task.to_string(),
                schedule: describe(e),
                timezone: e.timezone.name().to_owned(),
                enabled: e.enabled,
                next,
                last_run: l.map(|l| rfc(at(l.fire_at_ms))),
                runs: l.map_or(0, |l| l.count),
                last_task: task,
                result: result.map(|(s, _)| s),
                lateness_s,
                paused,
                skips,
            }
        })
        .collect();
    Ok(StatusView {
        now: rfc(now),
        leader,
        entries: views,
        failures,
        timeline,
        now_ms: now.timestamp_millis(),
    })
}

/// Result states by task id, from Celery's result keys; empty when there is no backend.
async fn results(
    c: &Console,
    tasks: &BTreeMap<String, String>,
) -> HashMap<String, (String, Option<String>)> {
    let Some(conn) = &c.results else {
        return HashMap::new();
    };
    if tasks.is_empty() {
        return HashMap::new();
    }
    let ids: Vec<&String> = tasks.values().collect();
    let keys: Vec<String> = ids
        .iter()
        .map(|id| format!("celery-task-meta-{id}"))
        .collect();
    let raw: Vec<Option<String>> = match conn
        .run(|mut c| {
            let k = keys.clone();
            async move { ::redis::cmd("MGET").arg(k).query_async(&mut c).await }
        })
        .await
    {
        Ok(r) => r,
        Err(_) => return HashMap::new(),
    };
    ids.into_iter()
        .zip(raw)
        .filter_map(|(id, r)| {
            let v: serde_json::Value = serde_json::from_str(&r?).ok()?;
            let state = v.get("status")?.as_str()?.to_owned();
            let error = (state == "FAILURE").then(|| v["result"].to_string());
            Some((id.clone(), (state, error)))
        })
        .collect()
}
