//! Logs: JSON lines with the fire fields, levels from the environment, and no secret in any output.

use super::*;

#[test]
fn json_logs_carry_fire_fields_and_levels_come_from_the_environment() {
    let server = redis();
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let mut conn = redis_conn(&server.url());
    let run = |env: &[(&str, &str)], conn: &mut redis::Connection| {
        let _: () = redis::cmd("FLUSHALL").query(conn).unwrap();
        let mut cmd = beatd(dir.path());
        cmd.args(["--log-format", "json", "beat", "--redis-url", &server.url()])
            .args(["--http-addr", "off", "--schedules"])
            .arg(&schedule)
            .envs(env.iter().copied());
        let mut p = Proc::spawn(cmd);
        wait_proc(&p, "two messages", || {
            (count(conn, "tick") >= 2).then_some(())
        });
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
        p
    };

    let p = run(&[("BEATD_LOG", "info"), ("RUST_LOG", "warn")], &mut conn);
    let mut fire = None;
    for line in p.lines() {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object per line: {line:?}: {e}"));
        assert!(v.is_object() && v["level"].is_string(), "{line}");
        if v["message"] == "fire" {
            fire = Some(v);
        }
    }
    let fire = fire.unwrap_or_else(|| panic!("no fire line (BEATD_LOG wins)\n{}", p.output()));
    assert_eq!(fire["entry"], "tick");
    assert_eq!(fire["task"], "t.ok");
    assert!(fire["epoch"].as_u64().unwrap() >= 1, "{fire}");
    // The same RFC 3339 form as the message's beatd_scheduled_at header.
    let scheduled = fire["scheduled"].as_str().expect("scheduled");
    at(scheduled);
    assert!(
        fires(&mut conn, "celery")
            .iter()
            .any(|(_, t)| t == scheduled),
        "{fire}"
    );
    // The logged task id is the id of a message in Redis.
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg("celery")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    let ids: Vec<String> = raw
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(m).unwrap()["headers"]["id"].to_string())
        .collect();
    assert!(
        ids.contains(&fire["task_id"].to_string()),
        "{fire} not in {ids:?}"
    );

    // RUST_LOG alone sets the level: at warn, no info line although messages were sent.
    let p = run(&[("RUST_LOG", "warn")], &mut conn);
    assert!(
        p.lines().iter().all(|l| !l.contains("\"INFO\"")),
        "{}",
        p.output()
    );
}

#[test]
fn no_secret_is_ever_printed() {
    const PASSWORD: &str = "pw-Zq81-s3cret";
    const WRONG: &str = "pw-Zq81-wrong";
    const HEADER: &str = "hdr-Zq81-value";
    let mut server = RedisServer::start_with(&["--requirepass", PASSWORD]).unwrap();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", server.port());
    let wrong = format!("redis://:{WRONG}@127.0.0.1:{}/0", server.port());
    let dir = tempdir();
    let schedule = write(
        dir.path(),
        "s.toml",
        "[[entry]]\nname = \"hook\"\ntask = \"hooks.x\"\nevery = \"1s\"\n",
    );
    // Nothing listens on this port: the task fails with a connection error.
    write(
        dir.path(),
        "beatd.toml",
        &format!(
            "[worker.tasks.\"hooks.x\"]\nkind = \"http\"\nurl = \"http://127.0.0.1:{}/hook\"\n\
             headers = {{ Authorization = \"Bearer {HEADER}\", X-Token = {{ env = \"HOOK_TOKEN\" }} }}\n",
            port()
        ),
    );
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let http = port();
        let mut cmd = beatd(dir.path());
        cmd.args(["--log-format", format, "run", "--redis-url", &url])
            .arg("--schedules")
            .arg(&schedule)
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .env("HOOK_TOKEN", HEADER)
            .env("BEATD_LOG", "trace");
        let mut p = Proc::spawn(cmd);
        wait_http(&p, http, "/readyz", 200);
        let text = wait_metric(
            &p,
            http,
            "beatd_worker_tasks_total{task=\"hooks.x\",state=\"failure\"}",
            1.0,
        );
        outputs.push(text);
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
        let out = p.output();
        assert!(
            out.contains("hooks.x") && out.contains("127.0.0.1"),
            "{out}"
        );
        outputs.push(out);
    }
    // One-shot commands, with the right and a wrong password.
    for (args, ok) in [
        (
            vec!["status", "--schedules", "s.toml", "--redis-url", &url],
            true,
        ),
        (vec!["send", "hooks.x", "--redis-url", &url], true),
        (
            vec!["status", "--schedules", "s.toml", "--redis-url", &wrong],
            false,
        ),
        (
            vec![
                "beat",
                "--http-addr",
                "off",
                "--schedules",
                "s.toml",
                "--redis-url",
                &wrong,
            ],
            false,
        ),
    ] {
        let out = beatd(dir.path()).args(&args).output().unwrap();
        assert_eq!(out.status.success(), ok, "{args:?}: {out:?}");
        outputs.push(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Redis down: the retry warnings name the server, not its password.
    server.kill();
    let mut cmd = beatd(dir.path());
    cmd.args([
        "beat",
        "--http-addr",
        "off",
        "--schedules",
        "s.toml",
        "--redis-url",
        &url,
    ])
    .env("BEATD_LOG", "debug");
    let mut p = Proc::spawn(cmd);
    p.wait_line("a retry warning", |l| l.contains("store unavailable"));
    p.signal("TERM");
    p.wait_exit();
    outputs.push(p.output());

    let all = outputs.join("\n");
    // The URL does reach the logs, redacted: the check below is not vacuous.
    assert!(
        all.contains(&format!("redis://:***@127.0.0.1:{}", server.port())),
        "{all}"
    );
    for secret in [PASSWORD, WRONG, HEADER] {
        assert!(!all.contains(secret), "{secret} printed:\n{all}");
    }
}
