//! Bad input at the edges: huge schedule files, very many entries, deep nesting, bytes that are
//! not UTF-8, symlink loops, and a 100 MB message in the queue. Each gets a clear error or
//! bounded handling: never a crash, a hang or unbounded memory.

use crate::util::{beatd, output, project, spawn_logged, texts, wait_exit, wait_for};
use beatd::testkit::RedisServer;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Peak resident memory (kB) of a running process, from `/proc`.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits for the child while sampling its peak RSS; returns the status and the peak in MB.
fn wait_with_peak(child: &mut Child, timeout: Duration) -> (ExitStatus, u64) {
    let deadline = Instant::now() + timeout;
    let mut peak = 0;
    loop {
        if let Some(kb) = peak_rss_kb(child.id()) {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak / 1024);
        }
        assert!(Instant::now() < deadline, "still running after {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn check(dir: &Path, args: &[&str]) -> (ExitStatus, String, String, u64) {
    let log = dir.join("check.log");
    let _ = std::fs::remove_file(&log);
    let mut child = spawn_logged(beatd(dir).arg("check").args(args), &log);
    let (status, peak) = wait_with_peak(&mut child, Duration::from_secs(300));
    let text = std::fs::read_to_string(&log).unwrap();
    (status, text.clone(), text, peak)
}

const ENTRY: &str = "[[entry]]\nname = \"one\"\ntask = \"t\"\nevery = \"1m\"\n";

#[test]
fn a_10_mb_schedule_file_loads() {
    let mut text = String::from(ENTRY);
    text.push_str("description = \"");
    text.push_str(&"x".repeat(1 << 20));
    text.push_str("\"\n");
    while text.len() < 10 << 20 {
        text.push_str(
            "# a comment line of a very large schedule file, padding it to ten megabytes\n",
        );
    }
    let dir = project(&[("schedules/big.toml", &text)]);
    let started = Instant::now();
    let (status, out, _, peak) = check(dir.path(), &[]);
    eprintln!(
        "10 MB file: checked in {:?}, peak RSS {peak} MB",
        started.elapsed()
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("ok: 1 entry in schedules"), "{out}");
}

#[test]
fn a_schedule_file_above_the_size_limit_is_refused_unread() {
    let dir = project(&[("schedules/ok.toml", ENTRY)]);
    let huge = dir.path().join("schedules/huge.toml");
    // Sparse: 1 GiB of zeros on paper, nothing on disk; beatd must not read it into memory.
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let (status, out, _, peak) = check(dir.path(), &[]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("huge.toml") && out.contains("larger than"),
        "{out}"
    );
    assert!(peak < 200, "read the whole file: peak RSS {peak} MB");
}

#[test]
fn a_hundred_thousand_entries_load() {
    let mut text = String::with_capacity(100_000 * 90);
    for i in 0..100_000 {
        let _ = write!(
            text,
            "[[entry]]\nname = \"e{i}\"\ntask = \"t\"\nevery = \"{}s\"\n",
            i % 3600 + 1
        );
    }
    let dir = project(&[("schedules/many.toml", &text)]);
    let started = Instant::now();
    let (status, out, _, peak) = check(dir.path(), &[]);
    eprintln!(
        "100,000 entries ({} MB): checked in {:?}, peak RSS {peak} MB",
        text.len() >> 20,
        started.elapsed()
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("ok: 100000 entries"), "{out}");
    // Memory in proportion to the input: under 6 kB per entry (about 2.7 in a debug build).
    assert!(peak < 600, "peak RSS {peak} MB");
}

#[test]
fn deeply_nested_kwargs_are_a_clear_error_not_a_stack_overflow() {
    for depth in [200, 100_000] {
        let mut kwargs = "1".to_string();
        for _ in 0..depth {
            kwargs = format!("{{ a = {kwargs} }}");
        }
        let mut args = "1".to_string();
        for _ in 0..depth {
            args = format!("[{args}]");
        }
        for (what, line) in [
            ("kwargs", format!("kwargs = {kwargs}")),
            ("args", format!("args = [{args}]")),
        ] {
            let text = format!("{ENTRY}{line}\n");
            let dir = project(&[("schedules/deep.toml", &text)]);
            let (status, out, _, _) = check(dir.path(), &[]);
            assert_eq!(status.code(), Some(1), "{what} nested {depth} deep: {out}");
            assert!(
                out.contains("deep.toml:"),
                "{what} {depth}: no location: {out}"
            );
            assert!(out.contains("recurs"), "{what} {depth}: unclear: {out}");
        }
    }
    // Shallow enough nesting is fine.
    let text = format!("{ENTRY}kwargs = {{ a = {{ b = {{ c = [[1, 2], [3]] }} }} }}\n");
    let dir = project(&[("schedules/ok.toml", &text)]);
    let (status, out, _, _) = check(dir.path(), &[]);
    assert!(status.success(), "{out}");
    // The same limit on the command line.
    // As deep as one argument may be long (128 KiB).
    let deep = format!("{}1{}", "[".repeat(60_000), "]".repeat(60_000));
    let out = output(beatd(dir.path()).args([
        "send",
        "t",
        "--args",
        &deep,
        "--redis-url",
        "redis://127.0.0.1:1/0",
    ]));
    let (_, err) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--args"), "{err}");
}

#[test]
fn non_utf8_bytes_are_an_error_at_their_position() {
    let dir = project(&[]);
    let sched = dir.path().join("schedules");
    std::fs::create_dir_all(&sched).unwrap();
    let mut bytes = ENTRY.as_bytes().to_vec();
    bytes.extend_from_slice(b"description = \"caf\xe9 \xff\"\n");
    std::fs::write(sched.join("latin1.toml"), bytes).unwrap();
    let (status, out, _, _) = check(dir.path(), &[]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("latin1.toml:5:"), "{out}");
    assert!(out.contains("not valid UTF-8 (byte 0xe9)"), "{out}");
}

#[test]
fn a_symlink_loop_in_the_schedules_directory_is_reported_not_skipped() {
    let dir = project(&[("schedules/good.toml", ENTRY)]);
    let sched = dir.path().join("schedules");
    std::os::unix::fs::symlink("b.toml", sched.join("a.toml")).unwrap();
    std::os::unix::fs::symlink("a.toml", sched.join("b.toml")).unwrap();
    std::os::unix::fs::symlink(".", sched.join("sub")).unwrap(); // a directory loop
    std::os::unix::fs::symlink(&sched, sched.join("up.toml.d")).unwrap();
    let (status, out, _, _) = check(dir.path(), &[]);
    // A schedule file that cannot be read must not vanish silently: its entries' state would
    // be deleted as "removed from the files".
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("a.toml") && out.contains("b.toml"), "{out}");
    assert!(out.to_lowercase().contains("symbolic links"), "{out}");
}

/// A 100 MB Celery message with a readable id.
fn huge_message(id: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body = format!("[[\"{}\"], {{}}, {{}}]", "x".repeat(75 << 20));
    let body = base64::engine::general_purpose::STANDARD.encode(body);
    format!(
        r#"{{"body": "{body}", "content-encoding": "utf-8", "content-type": "application/json", "headers": {{"lang": "py", "task": "edge.noop", "id": "{id}", "retries": 0, "root_id": "{id}", "parent_id": null, "group": null}}, "properties": {{"correlation_id": "{id}", "reply_to": "", "delivery_mode": 2, "delivery_info": {{"exchange": "", "routing_key": "celery"}}, "priority": 0, "body_encoding": "base64", "delivery_tag": "tag-{id}"}}}}"#
    )
    .into_bytes()
}

#[test]
fn a_100_mb_message_is_rejected_with_bounded_memory_failed_and_acked() {
    let redis = RedisServer::start().expect("redis-server");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let msg = huge_message("huge-1");
    assert!(msg.len() > 100 << 20);
    let _: () = redis::cmd("LPUSH")
        .arg("celery")
        .arg(&msg)
        .query(&mut conn)
        .unwrap();
    drop(msg);
    let dir = project(&[(
        "beatd.toml",
        "[worker.tasks.\"edge.noop\"]\nkind = \"exec\"\ncommand = [\"true\"]\n",
    )]);
    let log = dir.path().join("worker.log");
    let mut worker = spawn_logged(
        beatd(dir.path()).args(["worker", "--redis-url", &redis.url(), "--http-addr", "off"]),
        &log,
    );
    let mut peak = 0;
    let done = wait_for(Duration::from_secs(60), || {
        peak = peak.max(peak_rss_kb(worker.id()).unwrap_or(0) / 1024);
        redis::cmd("GET")
            .arg("celery-task-meta-huge-1")
            .query::<Option<String>>(&mut conn)
            .ok()
            .flatten()
            .is_some()
    });
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(done, "no result stored:\n{}", logs());
    let meta: String = redis::cmd("GET")
        .arg("celery-task-meta-huge-1")
        .query(&mut conn)
        .unwrap();
    assert!(
        meta.contains("\"FAILURE\"") && meta.contains("exceeds the"),
        "{meta}"
    );
    let queued: u64 = redis::cmd("LLEN").arg("celery").query(&mut conn).unwrap();
    let unacked: u64 = redis::cmd("HLEN").arg("unacked").query(&mut conn).unwrap();
    assert_eq!((queued, unacked), (0, 0), "message not acknowledged");
    assert!(
        worker.try_wait().unwrap().is_none(),
        "worker died:\n{}",
        logs()
    );
    eprintln!("100 MB message: worker peak RSS {peak} MB");
    // The message is read once (a reply buffer and the message itself), never decoded.
    assert!(peak < 350, "worker peak RSS {peak} MB");
    crate::util::signal(&worker, "TERM");
    assert!(wait_exit(&mut worker, Duration::from_secs(15)).success());
}
