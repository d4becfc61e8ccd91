//! The one-shot commands that talk to a running deployment: `send` (enqueue one task now)
//! and `status` (leader, last and next fire per entry).

use crate::app::{exit, settings, Error};
use crate::beat_io::LastRun;
use crate::cli::{OutputFormat, SendArgs, StatusArgs};
use crate::clock::{Clock, SystemClock};
use crate::entry::Entry;
use crate::protocol::TaskMessage;
use crate::redis_edge::{self, ConnectOptions, Keys, RedisConn};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

fn other(e: &(dyn std::error::Error + 'static)) -> Error {
    Error::Other(crate::error_chain(e))
}

async fn connect(
    args: &crate::cli::RedisArgs,
    config: Option<&Path>,
) -> Result<(RedisConn, Keys), Error> {
    let file = settings::app_config(config)?;
    let Some(url) = settings::redis_url(args, &file)? else {
        return Err(Error::Usage(
            "no Redis URL: set --redis-url, BEATD_REDIS_URL, CELERY_BROKER_URL or REDIS_URL".into(),
        ));
    };
    let conn = redis_edge::connect(&url, ConnectOptions::default())
        .await
        .map_err(|e| other(&e))?;
    Ok((conn, Keys::new(&settings::namespace(args, &file))))
}

/// `beatd send`: one Celery message now; prints its task id.
pub async fn send(config: Option<&Path>, args: &SendArgs) -> Result<u8, Error> {
    let parsed_args: Value = serde_json::from_str(&args.args)
        .map_err(|e| Error::Usage(format!("--args is not JSON: {e}")))?;
    let Value::Array(task_args) = parsed_args else {
        return Err(Error::Usage("--args must be a JSON array".into()));
    };
    let parsed_kwargs: Value = serde_json::from_str(&args.kwargs)
        .map_err(|e| Error::Usage(format!("--kwargs is not JSON: {e}")))?;
    let Value::Object(kwargs) = parsed_kwargs else {
        return Err(Error::Usage("--kwargs must be a JSON object".into()));
    };
    let (conn, _) = connect(&args.redis, config).await?;
    let now = SystemClock.now();
    let expires = args
        .expires
        .and_then(|d| chrono::Duration::from_std(d.into()).ok())
        .map(|d| now + d);
    let msg = TaskMessage::new(args.task.clone())
        .args(task_args)
        .kwargs(kwargs)
        .queue(args.queue.clone())
        .priority(args.priority)
        .expires(expires)
        .origin(crate::app::daemon::origin());
    let encoded = msg.encode(now);
    redis_edge::send_one(&conn, &encoded.list_key, encoded.payload.as_bytes())
        .await
        .map_err(|e| other(&e))?;
    println!("{}", encoded.id);
    Ok(exit::OK)
}

/// `beatd status`: the leader and, per entry, its last and next fire time.
pub async fn status(config: Option<&Path>, args: &StatusArgs) -> Result<u8, Error> {
    let file = settings::app_config(config)?;
    let now = SystemClock.now();
    let paths = settings::schedule_paths(&args.schedules, &file);
    let entries = crate::config::load_schedules(&paths, now)
        .map_err(Error::Config)?
        .entries;
    let embedded = settings::redis_url(&args.redis, &file)?.is_none();
    let (leader, last_runs) = if embedded {
        let path = settings::state_file(args.state_file.as_deref(), &file);
        let last = crate::embedded::state_file::read(&path).map_err(|e| other(&e))?;
        (
            json!({"mode": "embedded", "state_file": path.display().to_string()}),
            last,
        )
    } else {
        let (conn, keys) = connect(&args.redis, config).await?;
        let st = redis_edge::status(&conn, &keys)
            .await
            .map_err(|e| other(&e))?;
        let leader = match st.leader {
            Some(l) => json!({
                "mode": "redis",
                "holder": l.holder,
                "epoch": l.epoch,
                "ttl_left_ms": u64::try_from(l.ttl_left.as_millis()).unwrap_or(u64::MAX),
            }),
            None => json!({"mode": "redis", "holder": null}),
        };
        (leader, st.last_runs)
    };
    let rows = rows(&entries, &last_runs, now);
    match args.format {
        OutputFormat::Json => {
            let out = json!({"leader": leader, "entries": rows});
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("serializes")
            );
        }
        OutputFormat::Text => print!("{}", render_text(&leader, &rows)),
    }
    Ok(exit::OK)
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rows(entries: &[Entry], last: &HashMap<String, LastRun>, now: DateTime<Utc>) -> Vec<Value> {
    entries
        .iter()
        .map(|e| {
            let l = last.get(&e.name);
            let mut row = Map::new();
            row.insert("entry".into(), e.name.clone().into());
            row.insert("task".into(), Value::from(&*e.task));
            row.insert(
                "last_run".into(),
                l.and_then(|l| DateTime::from_timestamp_millis(l.fire_at_ms))
                    .map(rfc)
                    .into(),
            );
            row.insert("runs".into(), l.map_or(0, |l| l.count).into());
            row.insert("next_run".into(), e.next_fire_after(now).map(rfc).into());
            Value::Object(row)
        })
        .collect()
}

fn render_text(leader: &Value, rows: &[Value]) -> String {
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
    out.push_str(&format!(
        "{:<32} {:<26} {:<26} {}\n",
        "ENTRY", "LAST RUN", "NEXT RUN", "RUNS"
    ));
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        out.push_str(&format!(
            "{:<32} {:<26} {:<26} {}\n",
            s("entry"),
            s("last_run"),
            s("next_run"),
            r["runs"]
        ));
    }
    out
}
