//! No silent schedule split: two replicas of one namespace with different schedule files.
//! The leader publishes its schedule set; the standby names the entries that differ and who
//! leads, in its log, `/metrics`, `/readyz` (with `--strict-schedule`) and `beatd status`, and
//! clears all of it once its files match again.

use crate::ha_util::{wait_leader, wait_until, Beat, BeatOpts, Schedules};
use beatd::testkit::RedisServer;
use std::io::{Read, Write};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

const APP_A: &str = "[[entry]]\nname = \"shared\"\ntask = \"t.shared\"\nevery = \"1m\"\n\
                     [[entry]]\nname = \"only-a\"\ntask = \"t.a\"\nevery = \"1m\"\n";
const APP_B: &str = "[[entry]]\nname = \"shared\"\ntask = \"t.shared\"\nevery = \"2m\"\n\
                     [[entry]]\nname = \"only-b\"\ntask = \"t.b\"\nevery = \"1m\"\n";

/// `GET path` on `port`: the body, when it answers.
fn body(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split("\r\n\r\n").nth(1)?.to_string())
}

fn status(url: &str, schedules: &Schedules) -> String {
    let out = crate::util::beatd(schedules.path())
        .env("BEATD_REDIS_URL", url)
        .args(["status", "--schedules"])
        .arg(schedules.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_replica_with_other_schedule_files_says_so_until_they_match() {
    let redis = RedisServer::start().expect("redis-server");
    let url = redis.url();
    let a_files = Schedules::new(APP_A);
    let a = Beat::spawn(&url, &a_files, &BeatOpts::default());
    wait_leader(&url, &[a.pid], WAIT);
    let b_files = Schedules::new(APP_B);
    let b = Beat::spawn(
        &url,
        &b_files,
        &BeatOpts {
            http: true,
            extra: vec!["--strict-schedule"],
            ..BeatOpts::default()
        },
    );
    let port = b.http_port.unwrap();
    wait_until("the standby reports the split", WAIT, || {
        b.log_text()
            .contains("schedule files differ from those of the leader")
    });
    let log = b.log_text();
    assert!(log.contains("standing by"), "{log}");
    assert!(log.contains(&format!(":{} leads", a.pid)), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("differ from those of the leader"))
        .unwrap();
    assert!(line.contains("1 only here (only-b)"), "{line}");
    assert!(line.contains("1 only in the leader's (only-a)"), "{line}");
    assert!(line.contains("1 defined differently (shared)"), "{line}");
    assert!(line.contains(&format!(":{}", a.pid)), "{line}");
    assert!(line.contains("--namespace"), "{line}");
    wait_until("the mismatch metric", WAIT, || {
        body(port, "/metrics").is_some_and(|m| m.contains("beatd_schedule_mismatch 1"))
    });
    assert_eq!(b.readyz(), Some(503), "strict: not ready while split");
    let shown = status(&url, &b_files);
    assert!(shown.contains("schedule: these files DIFFER"), "{shown}");
    assert!(shown.contains("only-b"), "{shown}");
    assert!(status(&url, &a_files).contains("schedule: these files match the leader's"));
    // Repeated at a bounded rate: not once per check (every 5 s).
    std::thread::sleep(Duration::from_secs(11));
    let reports = b
        .log_text()
        .lines()
        .filter(|l| l.contains("differ from those of the leader"))
        .count();
    assert_eq!(reports, 1, "logged more than once a minute");

    // Same files now: the standby reloads and the split is over.
    b_files.write(APP_A);
    wait_until("the split clears", WAIT, || {
        body(port, "/metrics").is_some_and(|m| m.contains("beatd_schedule_mismatch 0"))
    });
    assert_eq!(b.readyz(), Some(200));
    assert!(b
        .log_text()
        .contains("schedule files now match the leader's"));
}
