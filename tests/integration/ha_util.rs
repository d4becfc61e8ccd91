//! Helpers for tests that run the real `beatd` binary: replicas as child processes with a temp
//! schedule directory and a log file each, the queue read back from Redis, `/readyz` probed
//! over plain TCP, and polling with deadlines instead of fixed sleeps.

#![allow(dead_code)]

use beatd::clock::{Clock, SystemClock};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wall time, through the crate's one clock.
pub fn now() -> DateTime<Utc> {
    SystemClock.now()
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sleeps until the wall clock is `frac` into a second (e.g. 300 ms after a 1 s fire time), so
/// a signal lands between fires rather than racing one.
pub fn sleep_to_fraction(frac: Duration) {
    let ms = i64::from(now().timestamp_subsec_millis());
    let target = i64::try_from(frac.as_millis()).unwrap_or(0);
    let wait = (target - ms).rem_euclid(1000);
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
}

/// A temp directory holding one schedule file, `beat.toml`.
pub struct Schedules {
    /// Removed on drop.
    dir: tempfile::TempDir,
}

impl Schedules {
    /// A directory with `toml` as its only schedule file.
    pub fn new(toml: &str) -> Self {
        let s = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        s.write(toml);
        s
    }

    /// Replaces the schedule file atomically (write a temp file, rename), as editors and
    /// config management do, so a watching beat never reads half a file.
    pub fn write(&self, toml: &str) {
        let tmp = self.dir.path().join(".beat.toml.tmp");
        std::fs::write(&tmp, toml).expect("write schedule");
        std::fs::rename(&tmp, self.dir.path().join("beat.toml")).expect("rename schedule");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// How to start one replica.
#[derive(Debug, Clone, Default)]
pub struct BeatOpts {
    /// `--lock-ttl`, e.g. `"3s"`; the default (10 s) when `None`.
    pub lock_ttl: Option<&'static str>,
    /// Serve `/readyz` on a free loopback port instead of `--http-addr off`.
    pub http: bool,
    /// More arguments of `beatd beat`.
    pub extra: Vec<&'static str>,
}

/// A `beatd beat` child process. Killed (`kill -9`) on drop if still running.
pub struct Beat {
    child: Child,
    /// Its pid, also in its lock token (`hostname:pid:random`) and `headers.origin`.
    pub pid: u32,
    /// stdout and stderr, JSON log lines.
    pub log: PathBuf,
    /// The `/readyz` port, when started with `http`.
    pub http_port: Option<u16>,
    /// Exit status once reaped.
    exited: Option<ExitStatus>,
    /// Keeps the log directory alive.
    _logdir: Arc<tempfile::TempDir>,
}

/// A private directory for one replica's log (a failing test prints the log instead).
fn log_dir() -> Arc<tempfile::TempDir> {
    Arc::new(tempfile::tempdir().expect("temp dir"))
}

impl Beat {
    /// Starts `beatd beat` on `redis_url` with the schedules in `schedules`.
    pub fn spawn(redis_url: &str, schedules: &Schedules, opts: &BeatOpts) -> Self {
        let logdir = log_dir();
        let log = logdir.path().join("beat.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let http_port = opts
            .http
            .then(|| beatd::testkit::free_port().expect("free port"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_beatd"));
        cmd.args(["--log-format", "json", "beat", "--schedules"])
            .arg(schedules.path())
            .arg("--http-addr")
            .arg(http_port.map_or("off".to_string(), |p| format!("127.0.0.1:{p}")))
            .args(["--shutdown-grace", "10s"]);
        if let Some(ttl) = opts.lock_ttl {
            cmd.args(["--lock-ttl", ttl]);
        }
        cmd.args(&opts.extra);
        // Only this test's Redis and settings: nothing from the environment the tests run in.
        for (k, _) in std::env::vars() {
            if k.starts_with("BEATD_")
                || ["CELERY_BROKER_URL", "REDIS_URL", "CELERY_TIMEZONE"].contains(&k.as_str())
            {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("BEATD_REDIS_URL", redis_url)
            .env("BEATD_LOG", "info,beatd=debug")
            .env_remove("RUST_LOG")
            .current_dir(logdir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn beatd");
        Self {
            pid: child.id(),
            child,
            log,
            http_port,
            exited: None,
            _logdir: logdir,
        }
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`, `"TERM"`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} {} failed", self.pid);
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = Some(self.child.wait().expect("wait"));
        }
    }

    /// Whether the process is still running (reaps it if not).
    pub fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited.is_none()
    }

    /// SIGTERM, then waits for the exit; panics (with the log) if it takes over `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "beatd {} did not exit within {timeout:?} of SIGTERM; log:\n{}",
                self.pid,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited.expect("exited")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// The HTTP status of `GET /readyz`, `None` if nothing answers.
    pub fn readyz(&self) -> Option<u16> {
        let port = self.http_port.expect("started with http");
        http_status(port, "/readyz")
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        // Only while unreaped is the pid surely still our child's.
        if self.running() {
            // SIGKILL ends a stopped process too (a failing SIGSTOP test leaves one).
            self.kill9();
        }
    }
}

/// Minimal HTTP/1.1 GET; returns the status code.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Prints every replica's log (for a failing test's output).
pub fn dump_logs(beats: &[&Beat]) -> String {
    beats
        .iter()
        .map(|b| format!("---- beatd pid {} ----\n{}", b.pid, b.log_text()))
        .collect()
}

/// A synchronous connection to the test's Redis.
pub fn redis(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("redis url");
    let c = client
        .get_connection_with_timeout(Duration::from_secs(3))
        .expect("connect to the test redis");
    c.set_read_timeout(Some(Duration::from_secs(3))).ok();
    c
}

/// The pid in the lock token `hostname:pid:random` of `beatd:leader`, if held.
pub fn leader_pid(url: &str) -> Option<u32> {
    let client = redis::Client::open(url).ok()?;
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let token: Option<String> = redis::cmd("GET").arg("beatd:leader").query(&mut c).ok()?;
    token?.rsplit(':').nth(1)?.parse().ok()
}

/// Waits until one of `pids` holds the lock; returns it.
pub fn wait_leader(url: &str, pids: &[u32], timeout: Duration) -> u32 {
    let mut found = None;
    wait_until(&format!("one of {pids:?} holds the lock"), timeout, || {
        found = leader_pid(url).filter(|p| pids.contains(p));
        found.is_some()
    });
    found.expect("leader")
}

/// `HGET beatd:last_run entry` in ms since the epoch.
pub fn last_run(url: &str, entry: &str) -> Option<i64> {
    try_last_run(url, entry).expect("HGET")
}

/// Like [`last_run`], with the error (a Redis just restarted may still be loading its AOF).
pub fn try_last_run(url: &str, entry: &str) -> redis::RedisResult<Option<i64>> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(1))?;
    redis::cmd("HGET")
        .arg("beatd:last_run")
        .arg(entry)
        .query(&mut c)
}

/// Whether the entry's last run is gone; `false` while Redis does not answer.
pub fn state_gone(url: &str, entry: &str) -> bool {
    matches!(try_last_run(url, entry), Ok(None))
}

/// One message from the queue, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// `headers.beatd_entry`.
    pub entry: String,
    /// `headers.beatd_scheduled_at`.
    pub at: DateTime<Utc>,
    /// `headers.beatd_epoch`.
    pub epoch: u64,
    /// The sender's pid, from `headers.origin` (`beatd<pid>@<host>`).
    pub pid: u32,
}

/// Decodes one envelope; panics on anything that is not a beatd message.
pub fn decode(raw: &str) -> Msg {
    let v: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    let h = &v["headers"];
    let origin = h["origin"].as_str().expect("origin");
    Msg {
        entry: h["beatd_entry"].as_str().expect("beatd_entry").to_owned(),
        at: DateTime::parse_from_rfc3339(h["beatd_scheduled_at"].as_str().expect("scheduled"))
            .expect("rfc3339")
            .to_utc(),
        epoch: h["beatd_epoch"].as_u64().expect("beatd_epoch"),
        pid: origin
            .strip_prefix("beatd")
            .and_then(|s| s.split('@').next())
            .and_then(|p| p.parse().ok())
            .expect("origin beatd<pid>@host"),
    }
}

/// Every message of the `celery` list, in the order sent (LPUSH puts the newest first).
pub fn queue(url: &str) -> Vec<Msg> {
    try_queue(url).expect("LRANGE")
}

/// Like [`queue`], with the error (for polling across a Redis restart).
pub fn try_queue(url: &str) -> redis::RedisResult<Vec<Msg>> {
    Ok(read_list(url)?.iter().rev().map(|r| decode(r)).collect())
}

/// Panics unless every (entry, scheduled_at) appears exactly once.
pub fn assert_exactly_once(msgs: &[Msg], context: &str) {
    let mut seen: BTreeMap<(&str, DateTime<Utc>), Vec<&Msg>> = BTreeMap::new();
    for m in msgs {
        seen.entry((m.entry.as_str(), m.at)).or_default().push(m);
    }
    let dups: Vec<_> = seen.values().filter(|v| v.len() > 1).collect();
    assert!(
        dups.is_empty(),
        "duplicated (entry, fire time): {dups:#?}\n{context}"
    );
}

/// The fire times of `entry`, sorted.
pub fn times(msgs: &[Msg], entry: &str) -> Vec<DateTime<Utc>> {
    let mut t: Vec<_> = msgs
        .iter()
        .filter(|m| m.entry == entry)
        .map(|m| m.at)
        .collect();
    t.sort();
    t
}

/// The fire times every `step` between the first and the last sent of `entry` that were not
/// sent.
pub fn missing(msgs: &[Msg], entry: &str, step: Duration) -> Vec<DateTime<Utc>> {
    let t = times(msgs, entry);
    let (Some(first), Some(last)) = (t.first(), t.last()) else {
        return Vec::new();
    };
    let step = TimeDelta::from_std(step).expect("step");
    let mut out = Vec::new();
    let mut at = *first;
    while at <= *last {
        if t.binary_search(&at).is_err() {
            out.push(at);
        }
        at += step;
    }
    out
}

/// Messages per sender pid.
pub fn senders(msgs: &[Msg]) -> HashMap<u32, usize> {
    let mut out = HashMap::new();
    for m in msgs {
        *out.entry(m.pid).or_default() += 1;
    }
    out
}

/// When each (entry, scheduled_at) was first seen in the queue.
type Seen = HashMap<(String, DateTime<Utc>), DateTime<Utc>>;

/// Watches the queue from a thread, recording when each message was first seen, for lateness
/// figures (polling every 20 ms: the times are upper bounds within ~20 ms).
pub struct QueueWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl QueueWatch {
    pub fn start(url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (s, m, url) = (stop.clone(), Arc::clone(&seen), url.to_owned());
        let thread = std::thread::spawn(move || {
            let mut known = 0usize;
            while !s.load(Ordering::Relaxed) {
                if let Ok(raw) = read_list(&url) {
                    // The list only grows at the head, except across a Redis restart.
                    if raw.len() < known {
                        known = 0;
                    }
                    let t = now();
                    let mut seen = m.lock().expect("lock");
                    for r in raw.iter().take(raw.len() - known) {
                        let msg = decode(r);
                        seen.entry((msg.entry, msg.at)).or_insert(t);
                    }
                    known = raw.len();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// When (entry, at) was first seen in the queue.
    pub fn seen_at(&self, entry: &str, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.seen
            .lock()
            .expect("lock")
            .get(&(entry.to_owned(), at))
            .copied()
    }
}

fn read_list(url: &str) -> redis::RedisResult<Vec<String>> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_connection_with_timeout(Duration::from_millis(500))?;
    redis::cmd("LRANGE")
        .arg("celery")
        .arg(0)
        .arg(-1)
        .query(&mut c)
}

impl Drop for QueueWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
