//! `beatd status`: the leader and, per entry, its last and next fire time, from Redis or
//! from the embedded mode's state file.

use super::settings::Settings;
use crate::cli::{OutputFormat, StatusArgs};
use crate::clock::{Clock, SystemClock};
use crate::control::{Persisted, SkipReason};
use crate::entry::Entry;
use crate::error::{exit, Error};
use crate::state::LastRun;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// `beatd status`: the leader and, per entry, its last and next fire time.
///
/// # Errors
/// Invalid schedule files; Redis unreachable; an unreadable state file.
pub async fn status(settings: &Settings, args: &StatusArgs) -> Result<u8, Error> {
    let now = SystemClock.now();
    let entries =
        crate::config::load_schedules_in(&settings.schedules, now, settings.default_timezone)
            .map_err(Error::Config)?
            .entries;
    let mut schedule = Value::Null;
    let (leader, last_runs, controls) = if settings.redis_url.is_none() {
        let path = &settings.state_file;
        let last = crate::state::file::read(path)?;
        let controls = crate::control::local::read_file(&crate::control::local::path_beside(path))
            .map_err(Error::Controls)?;
        (
            json!({"mode": "embedded", "state_file": path.display().to_string()}),
            last,
            controls,
        )
    } else {
        let (conn, keys) = super::daemon::connect_once(settings).await?;
        let st = crate::state::status(&conn, &keys).await?;
        let controls = crate::control::RedisControls::new(conn.clone(), &settings.namespace)
            .persisted()
            .await?;
        schedule = compare_schedule(&conn, &keys, &entries).await?;
        let leader = match st.leader {
            Some(l) => json!({
                "mode": "redis",
                "holder": l.holder,
                "epoch": l.epoch,
                "ttl_left_ms": u64::try_from(l.ttl_left.as_millis()).unwrap_or(u64::MAX),
            }),
            None => json!({"mode": "redis", "holder": null}),
        };
        (leader, st.last_runs, controls)
    };
    let rows = rows(&entries, &last_runs, &controls, now);
    match args.format {
        OutputFormat::Json => {
            let out = json!({"leader": leader, "schedule": schedule, "entries": rows});
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("serializes")
            );
        }
        OutputFormat::Text => print!("{}", render_text(&leader, &schedule, &rows)),
    }
    Ok(exit::OK)
}

/// These schedule files against the set the leader published: `null` when none is
/// published (no leader, or one older than this feature).
async fn compare_schedule(
    conn: &crate::redis::RedisConn,
    keys: &crate::redis::Keys,
    entries: &[Entry],
) -> Result<Value, Error> {
    use crate::state::fleet::{Fleet, ScheduleSet};
    let fleet = Fleet::new(conn.clone(), keys.clone());
    let mine = ScheduleSet::of(entries);
    let Some(published) = fleet.published().await? else {
        return Ok(Value::Null);
    };
    let diff = match fleet.compare(&mine).await? {
        Some((_, diff)) => diff,
        None => crate::state::fleet::Diff::default(),
    };
    Ok(json!({
        "leader": published.leader,
        "matches": published.id == mine.id,
        "only_here": diff.only_here,
        "only_leader": diff.only_leader,
        "changed": diff.changed,
        "summary": diff.to_string(),
    }))
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rows(
    entries: &[Entry],
    last: &HashMap<String, LastRun>,
    controls: &Persisted,
    now: DateTime<Utc>,
) -> Vec<Value> {
    entries
        .iter()
        .map(|e| {
            let l = last.get(&*e.name);
            let mut row = Map::new();
            row.insert("entry".into(), Value::from(&*e.name));
            row.insert("task".into(), Value::from(&*e.task));
            row.insert(
                "last_run".into(),
                l.and_then(|l| DateTime::from_timestamp_millis(l.fire_at_ms))
                    .map(rfc)
                    .into(),
            );
            row.insert("runs".into(), l.map_or(0, |l| l.count).into());
            row.insert("next_run".into(), e.next_fire_after(now).map(rfc).into());
            let ms = |ms: i64| DateTime::from_timestamp_millis(ms).map(rfc);
            row.insert(
                "paused".into(),
                controls.pauses.get(&*e.name).map_or(Value::Null, |p| {
                    json!({"since": ms(p.since_ms), "until": p.until_ms.and_then(ms), "by": p.by})
                }),
            );
            let counts = controls.skips.get(&*e.name);
            let skipped: Map<String, Value> = SkipReason::ALL
                .iter()
                .map(|r| {
                    let n = counts.and_then(|c| c.get(r)).copied().unwrap_or(0);
                    (r.as_str().to_owned(), n.into())
                })
                .collect();
            row.insert("skipped".into(), Value::Object(skipped));
            Value::Object(row)
        })
        .collect()
}

fn render_text(leader: &Value, schedule: &Value, rows: &[Value]) -> String {
    let mut out = String::new();
    match leader.get("holder").and_then(Value::as_str) {
        Some(holder) => out.push_str(&format!(
            "leader: {holder} (epoch {}, lock ttl left {} ms)\n",
            leader["epoch"], leader["ttl_left_ms"]
        )),
        None if leader["mode"] == "embedded" => {
            out.push_str(&format!(
                "embedded mode, state file {}\n",
                leader["state_file"]
            ));
        }
        None => out.push_str("leader: none (no replica holds the lock)\n"),
    }
    match schedule.get("matches").and_then(Value::as_bool) {
        Some(true) => out.push_str("schedule: these files match the leader's\n"),
        Some(false) => out.push_str(&format!(
            "schedule: these files DIFFER from the leader's ({}): {}; only the leader's entries fire\n",
            schedule["leader"].as_str().unwrap_or("?"),
            schedule["summary"].as_str().unwrap_or("")
        )),
        None => {}
    }
    out.push_str(&format!(
        "{:<32} {:<26} {:<26} {:<6} {:<8} {}\n",
        "ENTRY", "LAST RUN", "NEXT RUN", "RUNS", "PAUSED", "SKIPPED"
    ));
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let paused = if r["paused"].is_null() { "-" } else { "paused" };
        let skipped: Vec<String> = r["skipped"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64() > Some(0))
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        out.push_str(&format!(
            "{:<32} {:<26} {:<26} {:<6} {:<8} {}\n",
            s("entry"),
            s("last_run"),
            s("next_run"),
            r["runs"],
            paused,
            if skipped.is_empty() {
                "-".to_owned()
            } else {
                skipped.join(" ")
            }
        ));
    }
    out
}
