//! beatd against a secured Redis: a password (`requirepass`), an ACL user limited to the keys,
//! channels and commands beatd needs (the ACL the README documents), and TLS (`rediss://`)
//! with certificates made by the test. A wrong password ends the start with a clear error.

use crate::util::{beatd, output, project, spawn_logged, texts, wait_exit, wait_for};
use beatd::testkit::{free_port, RedisServer};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The ACL of the README: beat and worker on the default namespace and queue.
const ACL: &[&str] = &[
    "beatd",
    "on",
    ">beatd-secret",
    "resetkeys",
    "~beatd:*",
    "~celery*",
    "~unacked",
    "~unacked_index",
    "~unacked_mutex",
    "~_kombu.binding.*",
    "~*.reply.celery.pidbox",
    "resetchannels",
    "&celery-task-meta-*",
    "&beatd:*",
    "&/0.celery.pidbox",
    "-@all",
    "+ping",
    "+select",
    "+info",
    "+eval",
    "+evalsha",
    "+script|load",
    "+multi",
    "+exec",
    "+discard",
    "+get",
    "+set",
    "+setex",
    "+del",
    "+incr",
    "+pexpire",
    "+pttl",
    "+hget",
    "+hgetall",
    "+hmget",
    "+hset",
    "+hdel",
    "+hkeys",
    "+hlen",
    "+hscan",
    "+hrandfield",
    "+object|encoding",
    "+unlink",
    "+exists",
    "+rename",
    "+persist",
    "+rpoplpush",
    "+lpush",
    "+rpush",
    "+rpop",
    "+brpop",
    "+blmove",
    "+zadd",
    "+zrem",
    "+zrange",
    "+publish",
    "+subscribe",
    "+psubscribe",
    "+lrange",
    "+lrem",
    "+hincrby",
    "+hsetnx",
    "+zremrangebyrank",
    "+zrangebyscore",
    "+mget",
    // Commits onto busy queues prepared before the instant (emit/prepared.rs).
    "+watch",
    "+llen",
    "+ltrim",
    "+smembers",
];

const SCHEDULE: &str = r#"
[[entry]]
name = "tick"
task = "secure.tick"
every = "1s"
args = ["tick"]
"#;

fn worker_config(out: &Path) -> String {
    format!(
        "[worker.tasks.\"secure.tick\"]\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", 'echo \"$BEATD_TASK_ID\" >> \"$OUT\"']\n\
         env = {{ OUT = \"{}\" }}\n",
        out.display()
    )
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a beat and a worker on `url` until the worker has run `n` tasks; returns their logs.
fn beat_and_worker_run(url: &str, n: usize) -> String {
    let dir = project(&[("schedules/s.toml", SCHEDULE)]);
    let out = dir.path().join("ran.txt");
    std::fs::write(dir.path().join("beatd.toml"), worker_config(&out)).unwrap();
    let log_b = dir.path().join("beat.log");
    let log_w = dir.path().join("worker.log");
    let mut beat = spawn_logged(
        beatd(dir.path()).args(["beat", "--redis-url", url, "--http-addr", "off"]),
        &log_b,
    );
    let mut worker = spawn_logged(
        beatd(dir.path()).args(["worker", "--redis-url", url, "--http-addr", "off"]),
        &log_w,
    );
    let ran = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() >= n)
    });
    for c in [&beat, &worker] {
        crate::util::signal(c, "TERM");
    }
    let exited = |c: &mut Child| {
        let mut status = None;
        wait_for(Duration::from_secs(20), || {
            status = c.try_wait().unwrap();
            status.is_some()
        });
        if status.is_none() {
            let _ = c.kill();
        }
        status
    };
    let (sb, sw) = (exited(&mut beat), exited(&mut worker));
    let logs = format!(
        "--- beat\n{}\n--- worker\n{}",
        std::fs::read_to_string(&log_b).unwrap_or_default(),
        std::fs::read_to_string(&log_w).unwrap_or_default()
    );
    assert!(ran, "worker ran fewer than {n} tasks:\n{logs}");
    let ok = |s: Option<std::process::ExitStatus>| s.is_some_and(|s| s.success());
    assert!(
        ok(sb) && ok(sw),
        "exit on SIGTERM: beat {sb:?}, worker {sw:?}:\n{logs}"
    );
    logs
}

#[test]
fn beat_and_worker_work_as_an_acl_user_limited_to_beatd_keys() {
    let redis =
        RedisServer::start_with(&[&["--requirepass", "default-secret", "--user"], ACL].concat())
            .expect("redis-server");
    let url = format!("redis://beatd:beatd-secret@127.0.0.1:{}/0", redis.port());
    let logs = beat_and_worker_run(&url, 3);
    assert!(!logs.contains("NOPERM"), "a command was refused:\n{logs}");
    assert!(
        !logs.contains("beatd-secret"),
        "password in the logs:\n{logs}"
    );
    // The ACL is really limiting: a key outside beatd's is refused to this user.
    let denied = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--user",
            "beatd",
            "--pass",
            "beatd-secret",
        ])
        .args(["--no-auth-warning", "SET", "other:key", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&denied.stdout);
    assert!(text.contains("NOPERM"), "not refused: {text}");
    // State and the lock went where the ACL allows.
    let last = redis_cli(
        redis.port(),
        &[
            "--pass",
            "default-secret",
            "--no-auth-warning",
            "HGET",
            "beatd:last_run",
            "tick",
        ],
    );
    assert!(last.parse::<i64>().is_ok(), "last run: {last:?}");
}

#[test]
fn beat_and_worker_work_with_requirepass() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]).expect("redis-server");
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port());
    let logs = beat_and_worker_run(&url, 2);
    assert!(!logs.contains("s3cret"), "password in the logs:\n{logs}");
}

#[test]
fn a_wrong_password_is_a_clear_error_at_startup_not_a_retry_loop() {
    let redis = RedisServer::start_with(&["--requirepass", "right"]).expect("redis-server");
    let dir = project(&[("schedules/s.toml", SCHEDULE)]);
    for (what, url) in [
        (
            "wrong",
            format!("redis://:wrong@127.0.0.1:{}/0", redis.port()),
        ),
        ("missing", format!("redis://127.0.0.1:{}/0", redis.port())),
        (
            "wrong user",
            format!("redis://nobody:right@127.0.0.1:{}/0", redis.port()),
        ),
    ] {
        for cmd in ["beat", "worker"] {
            // A retry loop never exits: `wait_exit` fails the test after its bound.
            let log = dir.path().join(format!("{cmd}.log"));
            let _ = std::fs::remove_file(&log);
            let mut child = spawn_logged(
                beatd(dir.path()).args([cmd, "--redis-url", &url, "--http-addr", "off"]),
                &log,
            );
            let status = wait_exit(&mut child, Duration::from_secs(30));
            let err = std::fs::read_to_string(&log).unwrap();
            assert_eq!(status.code(), Some(1), "{what} password, {cmd}: {err}");
            assert!(err.contains("credentials"), "{what} password, {cmd}: {err}");
            assert!(
                !err.contains(":wrong@") && !err.contains(":right@"),
                "{err}"
            );
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 / localhost, made with the openssl CLI.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=beatd test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

/// redis-server with TLS only (`--port 0`), client certificates not required.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(dir: &Path, password: &str) -> Self {
        let port = free_port().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-auth-clients",
                "no",
            ])
            .args(["--requirepass", password])
            .arg("--dir")
            .arg(dir)
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let mut me = Self { child, port };
        let up = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !up {
            let _ = me.child.kill();
            panic!("redis-server with TLS did not start (built without TLS?)");
        }
        me
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn beat_and_worker_work_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let redis = TlsRedis::start(certs.path(), "tls-secret");
    // The test CA is not among the webpki roots: Celery's `ssl_cert_reqs=none` turns
    // verification off (the traffic is still encrypted).
    let url = format!(
        "rediss://:tls-secret@127.0.0.1:{}/0?ssl_cert_reqs=none",
        redis.port
    );
    let logs = beat_and_worker_run(&url, 2);
    assert!(
        !logs.contains("tls-secret"),
        "password in the logs:\n{logs}"
    );
    // Plain text to a TLS port does not pass for a connection.
    let dir = project(&[("schedules/s.toml", SCHEDULE)]);
    let plain = format!("redis://:tls-secret@127.0.0.1:{}/0", redis.port);
    let out = output(beatd(dir.path()).args(["send", "x", "--redis-url", &plain]));
    assert_ne!(
        out.status.code(),
        Some(0),
        "plain text to a TLS port succeeded"
    );
    // Verification is on by default: an untrusted certificate is refused.
    let verified = format!("rediss://:tls-secret@127.0.0.1:{}/0", redis.port);
    let out = output(beatd(dir.path()).args(["send", "x", "--redis-url", &verified]));
    let (_, err) = texts(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "untrusted certificate accepted: {err}"
    );
}
