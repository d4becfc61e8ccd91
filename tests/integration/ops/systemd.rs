//! systemd: notifications over a real `NOTIFY_SOCKET` datagram socket, and the units under
//! `systemd-analyze verify`.

use super::*;
use std::os::unix::net::UnixDatagram;

/// The test's end of `NOTIFY_SOCKET`.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(dir: &Path) -> (Self, PathBuf) {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        (
            Self {
                sock,
                seen: Vec::new(),
            },
            path,
        )
    }

    /// Reads datagrams until one has the line `line`; returns that datagram.
    fn until(&mut self, line: &str) -> String {
        loop {
            let mut buf = [0u8; 4096];
            let n = self
                .sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {line} (seen {:?}): {e}", self.seen));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }

    /// Datagrams already waiting, without blocking.
    fn drain(&mut self) -> Vec<String> {
        self.sock.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).unwrap();
        self.seen.extend(got.clone());
        got
    }
}

#[test]
fn systemd_notify_ready_reloading_watchdog_stopping() {
    let mut server = redis();
    server.kill(); // READY=1 must wait for Redis
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let (mut notify, sock) = Notify::bind(dir.path());
    // sd_notify honours WATCHDOG_USEC only when WATCHDOG_PID is the process's own pid, as
    // systemd sets it: the shell exports its pid and execs beatd, which keeps it.
    let mut cmd = Command::new("sh");
    clean_env(&mut cmd);
    cmd.current_dir(dir.path())
        .args([
            "-c",
            "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"",
        ])
        .arg(bin())
        .args(["beat", "--redis-url", &server.url(), "--http-addr", "off"])
        .arg("--schedules")
        .arg(&schedule)
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "200000");
    let mut p = Proc::spawn(cmd);

    // Not ready while Redis is unreachable (the beat has tried and failed by now).
    p.wait_line("a failed store call", |l| l.contains("store unavailable"));
    let early = notify.drain();
    assert!(
        !early.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 before Redis was reachable: {early:?}"
    );
    // The watchdog is fed meanwhile: the process loop is alive.
    notify.until("WATCHDOG=1");
    // A reload before the start completed must not announce readiness for it.
    let mark = p.mark();
    p.signal("HUP");
    p.wait_line_after(mark, "the reload", |l| l.contains("schedules unchanged"));
    let early = notify.drain();
    assert!(
        !early
            .iter()
            .any(|m| m.contains("READY=1") || m.contains("RELOADING=1")),
        "a reload during the start announced: {early:?}"
    );
    server.restart().unwrap();
    notify.until("READY=1");
    notify.until("WATCHDOG=1");

    p.signal("HUP");
    let reloading = notify.until("RELOADING=1");
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "Type=notify-reload wants MONOTONIC_USEC with RELOADING=1: {reloading:?}"
    );
    notify.until("READY=1");

    p.signal("TERM");
    notify.until("STOPPING=1");
    assert!(p.wait_exit().success(), "{}", p.output());
}

#[test]
fn systemd_notify_for_worker_and_run() {
    let server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    for sub in ["worker", "run"] {
        let own = dir.path().join(sub);
        std::fs::create_dir_all(&own).unwrap();
        let (mut notify, sock) = Notify::bind(&own);
        let mut cmd = beatd(dir.path());
        cmd.args([sub, "--http-addr", "off"])
            .env("NOTIFY_SOCKET", &sock);
        if sub == "worker" {
            cmd.args(["--redis-url", &server.url()]);
        } else {
            cmd.arg("--schedules")
                .arg(&schedule)
                .arg("--state-file")
                .arg(dir.path().join("state.json"));
        }
        let mut p = Proc::spawn(cmd);
        notify.until("READY=1");
        p.signal("TERM");
        notify.until("STOPPING=1");
        assert!(p.wait_exit().success(), "{sub}: {}", p.output());
    }
}

fn unit_value<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_units_are_hardened_and_pass_systemd_analyze_verify() {
    let units = ["beatd-beat.service", "beatd-worker.service"];
    let src = repo().join("deploy/systemd");
    for name in units {
        let unit = std::fs::read_to_string(src.join(name)).unwrap();
        for (key, want) in [
            ("Type", "notify"),
            ("DynamicUser", "yes"),
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("StateDirectory", "beatd"),
            ("EnvironmentFile", "-/etc/default/beatd"),
        ] {
            assert_eq!(unit_value(&unit, key), [want], "{name}: {key}");
        }
        assert_eq!(
            unit_value(&unit, "ExecStartPre"),
            ["/usr/local/bin/beatd check"],
            "{name}"
        );
        let stop: u64 = unit_value(&unit, "TimeoutStopSec")[0]
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            stop > 30,
            "{name}: TimeoutStopSec must exceed the 30 s shutdown grace"
        );
        assert!(!unit_value(&unit, "WatchdogSec").is_empty(), "{name}");
    }
    for name in units {
        let unit = std::fs::read_to_string(src.join(name)).unwrap();
        assert_eq!(
            unit_value(&unit, "ExecReload"),
            ["/usr/local/bin/beatd check", "/bin/kill -HUP $MAINPID"],
            "{name}: check first, then SIGHUP"
        );
    }
    // Every variable of the EnvironmentFile example is one beatd reads.
    let mut help = String::new();
    for sub in ["beat", "worker", "run"] {
        let out = Command::new(bin()).args([sub, "--help"]).output().unwrap();
        help.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let default = std::fs::read_to_string(src.join("beatd.default")).unwrap();
    for line in default
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let var = line.split('=').next().unwrap();
        let known = help.contains(&format!("env: {var}="))
            || ["BEATD_LOG", "BEATD_LOG_FORMAT", "BEATD_REDIS_URL"].contains(&var);
        assert!(known, "beatd.default sets {var}, which beatd does not read");
    }

    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        println!("NOTICE: systemd-analyze not installed; skipping `systemd-analyze verify`");
        return;
    };
    // verify wants every Exec binary to exist: point the units at the built binary.
    let tmp = tempdir();
    let mut paths = Vec::new();
    for name in units {
        let unit = std::fs::read_to_string(src.join(name))
            .unwrap()
            .replace("/usr/local/bin/beatd", &bin().display().to_string());
        paths.push(write(tmp.path(), name, &unit));
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stdout}{stderr}"
    );
    // Warnings about our units count as failures too.
    let ours: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("beatd"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warns:\n{}",
        ours.join("\n")
    );
}
