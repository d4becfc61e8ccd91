//! The status page in a real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from tests/browser, both installed by scripts/test.sh): it loads, lists the entries and
//! the timeline; one click of trigger with the control token sends exactly one message, the
//! same click without it none; a beat started without a token shows no buttons.

use crate::ha_util::{redis, wait_leader, wait_until, Beat, BeatOpts, Schedules};
use beatd::testkit::RedisServer;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "page-token-123";

/// Two entries that do not fire during the test: every message is a trigger.
const SCHEDULE: &str = "[[entry]]\nname = \"nightly-report\"\ntask = \"reports.nightly\"\n\
    cron = \"0 3 * * *\"\ntimezone = \"Europe/Paris\"\n\n\
    [[entry]]\nname = \"hourly-sync\"\ntask = \"sync.hourly\"\nevery = \"1h\"\n";

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Runs the page script; panics with its output when it fails.
fn page(port: u16, entry: &str, token: Option<&str>, click: bool, shot: Option<&str>) -> Value {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm install --prefix tests/browser` \
         (scripts/test.sh does)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("status_page.js"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(entry)
        .arg(token.unwrap_or("-"))
        .arg(if click { "yes" } else { "no" });
    if let Some(s) = shot {
        cmd.arg(s);
    }
    let out = cmd.output().expect("run node");
    assert!(
        out.status.success(),
        "status_page.js failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

fn queued(url: &str) -> usize {
    let mut c = redis(url);
    ::redis::cmd("LLEN")
        .arg("celery")
        .query(&mut c)
        .expect("LLEN")
}

#[test]
fn status_page_in_chromium_trigger_needs_the_token_and_sends_exactly_one() {
    let server = RedisServer::start().expect("redis-server");
    let url = server.url();
    let s = Schedules::new(SCHEDULE);
    let opts = BeatOpts {
        http: true,
        extra: vec!["--control-token", TOKEN],
        ..BeatOpts::default()
    };
    let mut beat = Beat::spawn(&url, &s, &opts);
    wait_leader(&url, &[beat.pid], WAIT);
    let port = beat.http_port.unwrap();
    wait_until("readyz 200", WAIT, || beat.readyz() == Some(200));

    let v = page(port, "nightly-report", None, false, None);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(
        v["entries"],
        serde_json::json!(["nightly-report", "hourly-sync"]),
        "{v}"
    );
    assert_eq!(v["buttons"], 4, "pause and trigger per entry: {v}");
    assert!(
        v["timeline"].as_u64().unwrap() > 24,
        "hour lines and fire ticks: {v}"
    );

    // Without the token: refused, nothing sent.
    let v = page(port, "nightly-report", None, true, None);
    assert!(v["reply"].as_str().unwrap().starts_with("401"), "{v}");
    assert_eq!(queued(&url), 0, "a click without the token sent something");

    // With it: exactly one message, marked manual.
    let v = page(port, "nightly-report", Some(TOKEN), true, None);
    assert!(
        v["reply"].as_str().unwrap().starts_with("200"),
        "{v}\n{}",
        beat.log_text()
    );
    assert_eq!(queued(&url), 1, "{v}\n{}", beat.log_text());
    let mut c = redis(&url);
    let msg: String = ::redis::cmd("LINDEX")
        .arg("celery")
        .arg(0)
        .query(&mut c)
        .unwrap();
    let msg: Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(msg["headers"]["beatd_trigger"], "manual", "{msg:#}");
    assert_eq!(msg["headers"]["beatd_entry"], "nightly-report", "{msg:#}");
    assert!(
        !beat.log_text().contains(TOKEN),
        "the control token appears in the log"
    );
    beat.terminate(Duration::from_secs(15));

    // A beat without a token: read-only page, and the API refuses.
    let ro = Beat::spawn(
        &url,
        &s,
        &BeatOpts {
            http: true,
            ..BeatOpts::default()
        },
    );
    wait_leader(&url, &[ro.pid], WAIT);
    let port = ro.http_port.unwrap();
    wait_until("readyz 200", WAIT, || ro.readyz() == Some(200));
    let v = page(port, "nightly-report", None, false, None);
    assert_eq!(v["buttons"], 0, "read-only page shows buttons: {v}");
    assert_eq!(queued(&url), 1);
}
