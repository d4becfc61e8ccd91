//! HTTP endpoints and metrics of `beat`, `worker` and `run`, readiness around shutdown and Redis
//! outages, `--http-addr off`, and leadership as the metrics show it.

use super::*;

#[test]
fn beat_endpoints_and_metrics_move() {
    let mut server = redis();
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let http = port();
    let mut cmd = beatd(dir.path());
    cmd.args(["beat", "--redis-url", &server.url(), "--lock-ttl", "1s"])
        .arg("--schedules")
        .arg(&schedule)
        .args(["--http-addr", &format!("127.0.0.1:{http}")]);
    let mut p = Proc::spawn(cmd);

    assert_eq!(wait_http(&p, http, "/healthz", 200), "ok\n");
    assert_eq!(wait_http(&p, http, "/readyz", 200), "ready\n");
    let (status, _) = http_get(http, "/nope").expect("answers");
    assert_eq!(status, 404);

    let text = wait_metric(&p, http, "beatd_messages_sent_total{entry=\"tick\"}", 2.0);
    let sent = metric(&text, "beatd_messages_sent_total{entry=\"tick\"}").unwrap();
    assert_eq!(metric(&text, "beatd_is_leader"), Some(1.0));
    assert!(
        metric(&text, "beatd_leader_epoch").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "beatd_lock_acquisitions_total"), Some(1.0));
    assert!(metric(&text, "beatd_emission_lateness_seconds_count").unwrap() >= sent);
    assert!(metric(&text, "beatd_emission_lateness_seconds_sum").is_some());
    assert_eq!(metric(&text, "beatd_reloads_total"), Some(0.0));
    assert_eq!(metric(&text, "beatd_reload_failures_total"), Some(0.0));
    assert_eq!(metric(&text, "beatd_lock_losses_total"), Some(0.0));
    // Present from the start; a loaded machine may already have seen a timed-out call, so the
    // outage below is checked against this value.
    let errors_before = metric(&text, "beatd_redis_errors_total").expect("redis errors metric");
    // Every message counted is in Redis (the counter moves only after the push).
    let mut conn = redis_conn(&server.url());
    let queued = fires(&mut conn, "celery");
    assert!(queued.len() as f64 >= sent, "{queued:?} vs {sent}");
    assert!(queued.iter().all(|(e, _)| e == "tick"));
    // A renewal every third of the TTL.
    wait_metric(&p, http, "beatd_lock_renewals_total", 1.0);

    // Losing the lock (its key deleted) is counted, and the beat takes it back.
    let epoch = metric(&text, "beatd_leader_epoch").unwrap();
    let _: () = redis::cmd("DEL")
        .arg("beatd:leader")
        .query(&mut conn)
        .unwrap();
    wait_metric(&p, http, "beatd_lock_losses_total", 1.0);
    let text = wait_metric(&p, http, "beatd_lock_acquisitions_total", 2.0);
    assert!(
        metric(&text, "beatd_leader_epoch").unwrap() > epoch,
        "{text}"
    );

    // Redis down: errors counted and readiness drops; back up: ready again.
    server.kill();
    wait_metric(&p, http, "beatd_redis_errors_total", errors_before + 1.0);
    assert_eq!(wait_http(&p, http, "/readyz", 503), "not ready\n");
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    let (_, text) = http_get(http, "/metrics").unwrap();
    let sent = metric(&text, "beatd_messages_sent_total{entry=\"tick\"}").unwrap();
    server.restart().unwrap();
    wait_http(&p, http, "/readyz", 200);
    // And it sends again: the restarted (empty) Redis receives new messages.
    let series = "beatd_messages_sent_total{entry=\"tick\"}";
    wait_metric(&p, http, series, sent + 2.0);
    let mut conn = redis_conn(&server.url());
    assert!(!fires(&mut conn, "celery").is_empty());

    p.signal("TERM");
    assert!(p.wait_exit().success(), "{}", p.output());
}

#[test]
fn worker_metrics_and_readiness_turns_503_before_draining() {
    let server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let http = port();
    let mut p = start_worker(&server, dir.path(), http);
    wait_http(&p, http, "/readyz", 200);

    send(dir.path(), &server.url(), "t.ok");
    send(dir.path(), &server.url(), "t.ok");
    send(dir.path(), &server.url(), "t.fail");
    let ok = "beatd_worker_tasks_total{task=\"t.ok\",state=\"success\"}";
    let failed = "beatd_worker_tasks_total{task=\"t.fail\",state=\"failure\"}";
    wait_metric(&p, http, ok, 2.0);
    let text = wait_metric(&p, http, failed, 1.0);
    assert_eq!(
        metric(
            &text,
            "beatd_worker_task_duration_seconds_count{task=\"t.ok\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(metric(&text, "beatd_worker_in_flight"), Some(0.0));
    assert!(
        metric(&text, "beatd_redis_errors_total").is_some(),
        "{text}"
    );

    // A task that runs until the test lets it go.
    send(dir.path(), &server.url(), "t.block");
    wait_metric(&p, http, "beatd_worker_in_flight", 1.0);
    p.signal("TERM");
    // 503 while the task still runs: the process cannot have drained yet.
    assert_eq!(wait_http(&p, http, "/readyz", 503), "draining\n");
    assert!(p.running(), "exited before the task was released");
    let (_, text) = http_get(http, "/metrics").expect("metrics still served while draining");
    assert_eq!(metric(&text, "beatd_worker_in_flight"), Some(1.0));
    std::fs::write(dir.path().join("release"), "").unwrap();
    assert!(p.wait_exit().success(), "{}", p.output());
    assert!(
        p.output().contains("task succeeded") && p.output().contains("t.block"),
        "the blocked task finished within the grace\n{}",
        p.output()
    );
}

#[test]
fn worker_counts_redis_errors_and_is_not_ready_while_redis_is_down() {
    let mut server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let http = port();
    let p = start_worker(&server, dir.path(), http);
    wait_http(&p, http, "/readyz", 200);
    server.kill();
    wait_metric(&p, http, "beatd_redis_errors_total", 1.0);
    assert_eq!(wait_http(&p, http, "/readyz", 503), "not ready\n");
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    server.restart().unwrap();
    wait_http(&p, http, "/readyz", 200);
}

/// After an outage of a few seconds the consumer fetches again (it used to stay stuck for
/// minutes in redis-rs's reconnect backoff while `/readyz` said ready).
#[test]
fn worker_consumes_again_after_a_redis_outage() {
    let mut server = redis();
    let dir = tempdir();
    worker_config(dir.path());
    let http = port();
    let p = start_worker(&server, dir.path(), http);
    wait_http(&p, http, "/readyz", 200);
    server.kill();
    wait_http(&p, http, "/readyz", 503);
    server.restart().unwrap();
    wait_http(&p, http, "/readyz", 200);
    send(dir.path(), &server.url(), "t.ok");
    wait_metric(
        &p,
        http,
        "beatd_worker_tasks_total{task=\"t.ok\",state=\"success\"}",
        1.0,
    );
}

#[test]
fn run_embedded_and_on_redis_serve_beat_and_worker_metrics() {
    for on_redis in [false, true] {
        let server = redis();
        let dir = tempdir();
        write(dir.path(), "beatd.toml", TASKS);
        let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
        let http = port();
        let mut cmd = beatd(dir.path());
        cmd.arg("run")
            .arg("--schedules")
            .arg(&schedule)
            .args(["--http-addr", &format!("127.0.0.1:{http}")]);
        if on_redis {
            cmd.args(["--redis-url", &server.url()]);
        } else {
            cmd.arg("--state-file").arg(dir.path().join("state.json"));
        }
        let mut p = Proc::spawn(cmd);
        assert_eq!(wait_http(&p, http, "/healthz", 200), "ok\n");
        wait_http(&p, http, "/readyz", 200);
        wait_metric(&p, http, "beatd_messages_sent_total{entry=\"tick\"}", 1.0);
        let text = wait_metric(
            &p,
            http,
            "beatd_worker_tasks_total{task=\"t.ok\",state=\"success\"}",
            1.0,
        );
        assert!(
            metric(
                &text,
                "beatd_worker_task_duration_seconds_count{task=\"t.ok\"}"
            )
            .unwrap()
                >= 1.0
        );
        assert_eq!(
            metric(&text, "beatd_is_leader"),
            Some(1.0),
            "on_redis={on_redis}"
        );
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
    }
}

#[test]
fn http_addr_off_disables_the_endpoint() {
    for off in [false, true] {
        let dir = tempdir();
        let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
        let http = port();
        let mut cmd = beatd(dir.path());
        // The flag wins over the environment.
        cmd.env("BEATD_HTTP_ADDR", format!("127.0.0.1:{http}"))
            .arg("run")
            .arg("--schedules")
            .arg(&schedule)
            .arg("--state-file")
            .arg(dir.path().join("state.json"));
        if off {
            cmd.args(["--http-addr", "off"]);
        }
        let mut p = Proc::spawn(cmd);
        p.wait_line("the ready log line", |l| l.ends_with(": ready"));
        let listening = p.output().contains("http endpoint listening");
        assert_eq!(listening, !off, "{}", p.output());
        assert_eq!(http_get(http, "/healthz").is_some(), !off);
        p.signal("TERM");
        assert!(p.wait_exit().success(), "{}", p.output());
    }
}

#[test]
fn a_standby_is_ready_and_takes_over_after_the_leader_stops() {
    let server = redis();
    let dir = tempdir();
    let schedule = write(dir.path(), "s.toml", EVERY_SECOND);
    let (a, b) = (port(), port());
    let mut first = start_beat(&server, dir.path(), &schedule, a);
    wait_metric(&first, a, "beatd_is_leader", 1.0);
    let second = start_beat(&server, dir.path(), &schedule, b);
    assert_eq!(wait_http(&second, b, "/readyz", 200), "ready\n");
    let (_, text) = http_get(b, "/metrics").unwrap();
    assert_eq!(metric(&text, "beatd_is_leader"), Some(0.0), "two leaders");
    first.signal("TERM");
    assert!(first.wait_exit().success(), "{}", first.output());
    let text = wait_metric(&second, b, "beatd_is_leader", 1.0);
    assert_eq!(metric(&text, "beatd_lock_acquisitions_total"), Some(1.0));
}

#[test]
fn readme_metrics_table_lists_exactly_the_exported_metrics() {
    let m = beatd::ops::metrics::Metrics::default();
    // Families list no TYPE line until they have a series.
    let labels = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    m.count_sent(&"e".into());
    let _ = m
        .worker_tasks
        .get_or_create(&labels(&[("task", "t"), ("state", "success")]));
    let _ = m.task_duration.get_or_create(&labels(&[("task", "t")]));
    m.count_skip("e", "pause", 1);
    let exported: std::collections::BTreeSet<String> = m
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `beatd_"))
        .map(|l| {
            let name = l.split('`').next().unwrap();
            format!("beatd_{}", name.trim_end_matches("_total"))
        })
        .collect();
    assert_eq!(
        documented, exported,
        "README's metrics table drifted from src/ops/metrics.rs"
    );
}
