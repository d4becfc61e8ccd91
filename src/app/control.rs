//! `beatd pause`, `resume`, `trigger` and `backfill`: one control request to the leader,
//! through Redis (the HA beat) or a running beatd's HTTP port (`--url`, for `beatd run`), and
//! its answer. The leader validates and applies it (`beat::controls`); this only asks, waits
//! and reports, with an exit code per outcome (README, "Exit codes").

use super::settings::Settings;
use crate::cli::{Command, ControlArgs};
use crate::clock::{Clock, SystemClock};
use crate::control::{Action, ControlStore, RedisControls, Reply, Request};
use crate::error::{exit, Error};
use chrono::{DateTime, TimeZone, Utc};
use std::time::Duration;

/// Runs one of the control commands.
///
/// # Errors
/// A bad time or flag ([`exit::USAGE`]), a refusal by the leader ([`exit::REFUSED`]), no
/// answer in time ([`exit::NO_ANSWER`]), Redis or the endpoint unreachable.
pub async fn control(settings: &Settings, command: &Command) -> Result<u8, Error> {
    let tz = settings
        .default_timezone
        .unwrap_or(crate::schedule::Tz::UTC);
    let (entry, action, args): (&str, Action, &ControlArgs) = match command {
        Command::Pause(a) => {
            let until_ms = a
                .until
                .as_deref()
                .map(|s| parse_instant("--until", s, tz))
                .transpose()?
                .map(|t| t.timestamp_millis());
            (&a.entry, Action::Pause { until_ms }, &a.control)
        }
        Command::Resume(a) => (
            &a.entry,
            Action::Resume {
                catch_up: a.catch_up,
            },
            &a.control,
        ),
        Command::Trigger(a) => (&a.entry, Action::Trigger, &a.control),
        Command::Backfill(a) => {
            let from = parse_instant("--from", &a.from, tz)?;
            let to = parse_instant("--to", &a.to, tz)?;
            (
                &a.entry,
                Action::Backfill {
                    from_ms: from.timestamp_millis(),
                    to_ms: to.timestamp_millis(),
                    confirmed: a.yes,
                },
                &a.control,
            )
        }
        _ => return Err(Error::Usage("not a control command".into())),
    };
    let wait: Duration = args.wait.into();
    let now = SystemClock.now().timestamp_millis();
    let request = Request {
        id: crate::protocol::new_uuid(),
        entry: entry.to_owned(),
        action,
        by: who(),
        at_ms: now,
        deadline_ms: now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
    };
    let reply = match &args.url {
        Some(url) => over_http(url, args.control_token.as_deref(), &request, wait).await?,
        None => {
            let (conn, _) = super::daemon::connect_once(settings).await?;
            RedisControls::new(conn, &settings.namespace)
                .submit(&request, wait)
                .await
                .map_err(|e| Error::Control(crate::error_chain(&e)))?
        }
    };
    report(&request, reply, wait)
}

/// Exit code and output of the answer.
fn report(request: &Request, reply: Option<Reply>, wait: Duration) -> Result<u8, Error> {
    let Some(reply) = reply else {
        return Err(Error::NoAnswer {
            action: request.action.name(),
            wait,
        });
    };
    if let Some(why) = reply.refused {
        return Err(Error::Refused {
            action: request.action.name(),
            entry: request.entry.clone(),
            why,
            message: reply.message,
        });
    }
    println!(
        "{} {}: {} (leader epoch {})",
        request.action.name(),
        request.entry,
        reply.message,
        reply.epoch
    );
    Ok(exit::OK)
}

/// `user@host`, for the leader's log.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", crate::host::hostname())
}

/// Sends `request` to `POST {url}/api/control` and reads the reply.
async fn over_http(
    url: &str,
    token: Option<&str>,
    request: &Request,
    wait: Duration,
) -> Result<Option<Reply>, Error> {
    let Some(token) = token else {
        return Err(Error::Usage(
            "--url needs --control-token (or BEATD_CONTROL_TOKEN): the endpoint accepts \
             control requests only with the token it was started with"
                .into(),
        ));
    };
    let endpoint = format!("{}/api/control", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(wait + Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Control(e.to_string()))?;
    let resp = client
        .post(&endpoint)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(
            serde_json::json!({
                "request": request,
                "wait_ms": u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            })
            .to_string(),
        )
        .send()
        .await
        .map_err(|e| Error::Control(format!("{endpoint}: {}", crate::error_chain(&e))))?;
    match resp.status().as_u16() {
        200 => {
            let body = resp.text().await.unwrap_or_default();
            serde_json::from_str::<Reply>(&body)
                .map(Some)
                .map_err(|e| Error::Control(format!("{endpoint}: unreadable reply: {e}")))
        }
        401 | 403 => Err(Error::Usage(format!(
            "{endpoint} rejected the control token"
        ))),
        504 => Ok(None),
        code => Err(Error::Control(format!(
            "{endpoint} answered {code}: {}",
            resp.text().await.unwrap_or_default().trim()
        ))),
    }
}

/// An RFC 3339 instant, or a local date-time (seconds optional) read in `tz`.
fn parse_instant(flag: &str, s: &str, tz: crate::schedule::Tz) -> Result<DateTime<Utc>, Error> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.to_utc());
    }
    let local = [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
    .ok_or_else(|| {
        Error::Usage(format!(
            "{flag} {s:?} is not a date-time: write 2027-03-26T12:00:00+01:00 (an instant) \
                 or 2027-03-26T12:00:00 (local time in {tz})"
        ))
    })?;
    tz.from_local_datetime(&local)
        .earliest()
        .map(|t| t.to_utc())
        .ok_or_else(|| Error::Usage(format!("{flag} {s:?} does not exist in {tz} (a DST gap)")))
}
