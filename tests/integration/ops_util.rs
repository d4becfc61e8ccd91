//! Helpers of the operations tests: the real `beatd` binary as a child process whose
//! output is collected line by line, a tiny HTTP/1.1 client, metric lookup in the
//! Prometheus text, and a bounded wait for things that happen asynchronously.
//!
//! Waits are hang guards, never assertions about speed: each polls until its condition
//! holds and fails the test (with every log line seen) only after a generous bound.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound of every wait: far above anything that should take a second.
pub(crate) const PATIENCE: Duration = Duration::from_secs(40);

/// The `beatd` binary under test.
pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_beatd"))
}

/// A `beatd` command in `cwd` with none of the caller's beatd, Redis or systemd variables.
pub(crate) fn beatd(cwd: &Path) -> Command {
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd);
    cmd.current_dir(cwd);
    cmd
}

/// Removes every variable the binary reads, so the test decides them all.
pub(crate) fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BEATD_")
            || k.starts_with("WATCHDOG_")
            || [
                "REDIS_URL",
                "CELERY_BROKER_URL",
                "NOTIFY_SOCKET",
                "RUST_LOG",
                "STATE_DIRECTORY",
                "CELERY_TIMEZONE",
            ]
            .contains(&k.as_str())
        {
            cmd.env_remove(&k);
        }
    }
}

/// A running child with its stdout and stderr collected (both, in arrival order per stream).
pub(crate) struct Proc {
    /// The child; killed on drop if still running.
    child: Child,
    /// Every line seen on stdout or stderr, prefixed `out| ` or `err| `.
    lines: Arc<Mutex<Vec<String>>>,
    /// Set once the child was reaped.
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with piped output.
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn beatd");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (tag, stream) in [
            ("out| ", Box::new(out) as Box<dyn Read + Send>),
            ("err| ", Box::new(err)),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().unwrap().push(format!("{tag}{line}"));
                }
            });
        }
        Self {
            child,
            lines,
            status: None,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with kill(1).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// Every line so far (tag stripped).
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l[5..].to_owned())
            .collect()
    }

    /// All output so far, one string.
    pub(crate) fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a line satisfies `pred`; returns it.
    pub(crate) fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_line_after(0, what, pred)
    }

    /// Number of lines seen so far (a mark for [`Proc::wait_line_after`]).
    pub(crate) fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits until a line at index `from` or later satisfies `pred`.
    pub(crate) fn wait_line_after(
        &mut self,
        from: usize,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let found = wait_for(what, || {
            let lines = self.lines();
            lines.iter().skip(from).find(|l| pred(l)).cloned()
        });
        match found {
            Ok(l) => l,
            Err(e) => panic!("{e}\n--- output ---\n{}", self.output()),
        }
    }

    /// Whether the child is still running.
    pub(crate) fn running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait().expect("try_wait") {
            Some(s) => {
                self.status = Some(s);
                false
            }
            None => true,
        }
    }

    /// Waits for the child to exit (bounded); returns its status.
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        while self.running() {
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("beatd did not exit\n--- output ---\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        self.status.expect("exited")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, up to [`PATIENCE`].
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > PATIENCE {
            return Err(format!("gave up waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// [`wait_for`] that panics with `p`'s output on timeout.
pub(crate) fn wait_proc<T>(p: &Proc, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for(what, f).unwrap_or_else(|e| panic!("{e}\n--- output ---\n{}", p.output()))
}

/// `GET path` on `127.0.0.1:port`: status and body, or `None` when nothing answers.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits until `GET path` answers `status`; returns the body.
pub(crate) fn wait_http(p: &Proc, port: u16, path: &str, status: u16) -> String {
    wait_proc(p, &format!("GET {path} -> {status}"), || {
        http_get(port, path)
            .filter(|(s, _)| *s == status)
            .map(|(_, b)| b)
    })
}

/// The value of the sample whose name-and-labels text is exactly `series`
/// (e.g. `beatd_messages_sent_total{entry="a"}`).
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// Scrapes `/metrics` until `series` reaches at least `min`; returns the whole text.
pub(crate) fn wait_metric(p: &Proc, port: u16, series: &str, min: f64) -> String {
    wait_proc(p, &format!("{series} >= {min}"), || {
        let (s, body) = http_get(port, "/metrics")?;
        (s == 200 && metric(&body, series).is_some_and(|v| v >= min)).then_some(body)
    })
}

/// A fresh temporary directory.
pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Writes `text` to `dir/name`; returns the path.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A free loopback port for `--http-addr`.
pub(crate) fn port() -> u16 {
    beatd::testkit::free_port().expect("free port")
}

/// A synchronous Redis connection for checking queues.
pub(crate) fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("redis url")
        .get_connection()
        .expect("connect to the test redis")
}

/// Every envelope on list `queue`, oldest first, as `(entry, scheduled_at)` from beatd's
/// headers.
pub(crate) fn fires(conn: &mut redis::Connection, queue: &str) -> Vec<(String, String)> {
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(queue)
        .arg(0)
        .arg(-1)
        .query(conn)
        .expect("LRANGE");
    raw.iter()
        .rev()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_str(m).expect("envelope json");
            let h = &v["headers"];
            (
                h["beatd_entry"].as_str().unwrap_or_default().to_owned(),
                h["beatd_scheduled_at"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}
