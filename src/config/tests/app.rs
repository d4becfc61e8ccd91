//! `beatd.toml`: defaults, every key, and diagnostics with line:column.

use crate::config::{load_app_config_str, AppConfig, Diagnostic, HeaderValue, TaskKind};
use std::path::PathBuf;
use std::time::Duration;

fn errors(text: &str) -> Vec<Diagnostic> {
    match load_app_config_str("/etc/beatd/beatd.toml", text) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(d) => d.0,
    }
}

#[test]
fn an_empty_file_is_the_defaults() {
    let c = load_app_config_str("beatd.toml", "").unwrap();
    assert_eq!(c, AppConfig::default());
    assert_eq!(c.namespace, "beatd");
    assert_eq!(c.lock_ttl, Duration::from_secs(10));
    assert_eq!(c.http_addr.unwrap().to_string(), "127.0.0.1:9808");
    assert_eq!(c.worker.queues, ["celery"]);
    assert_eq!(c.worker.visibility_timeout, Duration::from_secs(3600));
    assert_eq!(c.worker.shutdown_grace, Duration::from_secs(30));
}

const FULL: &str = r#"
redis_url = "redis://:s3cret@localhost:6379/0"
namespace = "prod"
lock_ttl = "15s"
http_addr = "off"
state_file = "state/beatd.json"
schedules = ["schedules", "/srv/more"]

[worker]
queues = ["fast", "celery"]
concurrency = 8
visibility_timeout = "30m"
shutdown_grace = "20s"

[worker.tasks."demo.hello"]
kind = "exec"
command = ["echo", "hello"]
env = { GREETING = "hi" }
cwd = "work"
time_limit = "1m"
max_retries = 3
retry_backoff = "2s"
track_started = true

[worker.tasks."hooks.notify"]
kind = "http"
url = "https://example.com/hook"
headers = { Authorization = { env = "HOOK_TOKEN" }, X-Team = "ops" }
timeout = "5s"
ignore_result = true
"#;

#[test]
fn every_key_is_read_and_relative_paths_follow_the_file() {
    let c = load_app_config_str("/etc/beatd/beatd.toml", FULL).unwrap_or_else(|d| panic!("{d}"));
    let url = c.redis_url.as_ref().unwrap();
    assert_eq!(url.as_str(), "redis://:s3cret@localhost:6379/0");
    assert_eq!(
        format!("{url} {url:?}"),
        "redis://:****@localhost:6379/0 RedisUrl(\"redis://:****@localhost:6379/0\")"
    );
    assert_eq!(
        (c.namespace.as_str(), c.lock_ttl, c.http_addr),
        ("prod", Duration::from_secs(15), None)
    );
    assert_eq!(
        c.state_file,
        Some(PathBuf::from("/etc/beatd/state/beatd.json"))
    );
    assert_eq!(
        c.schedules,
        [
            PathBuf::from("/etc/beatd/schedules"),
            PathBuf::from("/srv/more")
        ]
    );
    let w = &c.worker;
    assert_eq!(
        (w.queues.clone(), w.concurrency),
        (vec!["fast".to_owned(), "celery".to_owned()], Some(8))
    );
    assert_eq!(
        (w.visibility_timeout, w.shutdown_grace),
        (Duration::from_secs(1800), Duration::from_secs(20))
    );

    let hello = &w.tasks["demo.hello"];
    let TaskKind::Exec { command, env, cwd } = &hello.kind else {
        panic!("{hello:?}")
    };
    assert_eq!(command, &["echo", "hello"]);
    assert_eq!(env["GREETING"], "hi");
    assert_eq!(
        cwd.as_deref(),
        Some(std::path::Path::new("/etc/beatd/work"))
    );
    assert_eq!(
        (hello.time_limit, hello.max_retries),
        (Some(Duration::from_secs(60)), 3)
    );
    assert_eq!(
        (hello.retry_backoff, hello.ignore_result),
        (Duration::from_secs(2), false)
    );

    let notify = &w.tasks["hooks.notify"];
    let TaskKind::Http {
        url,
        headers,
        timeout,
    } = &notify.kind
    else {
        panic!("{notify:?}")
    };
    assert_eq!(url, "https://example.com/hook");
    assert_eq!(
        headers["Authorization"],
        HeaderValue::Env("HOOK_TOKEN".into())
    );
    assert_eq!(headers["X-Team"], HeaderValue::Literal("ops".into()));
    assert_eq!(
        (*timeout, notify.max_retries, notify.retry_backoff),
        (Some(Duration::from_secs(5)), 0, Duration::from_secs(1))
    );
    assert!(notify.ignore_result && notify.time_limit.is_none());
    assert!(hello.track_started && !notify.track_started);
}

#[test]
fn unknown_keys_are_found_at_every_level() {
    let ds = errors(
        "namespce = \"x\"\n[worker]\nqueue = [\"a\"]\n[worker.tasks.\"a.b\"]\nkind = \"exec\"\ncomand = [\"x\"]\n",
    );
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str(), d.help.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (
                1,
                1,
                "unknown key `namespce` in beatd.toml",
                Some("did you mean `namespace`?")
            ),
            (
                3,
                1,
                "unknown key `queue` in [worker]",
                Some("did you mean `queues`?")
            ),
            (
                6,
                1,
                "unknown key `comand` in [worker.tasks.\"a.b\"]",
                Some("did you mean `command`?")
            ),
        ]
    );
}

#[test]
fn task_definitions_are_checked_per_kind() {
    let ds = errors(
        "[worker.tasks.a]\nkind = \"exec\"\nurl = \"http://x\"\n\n\
         [worker.tasks.b]\nkind = \"http\"\nheaders = { X = 5 }\n\n\
         [worker.tasks.c]\nkind = \"exe\"\n\n\
         [worker.tasks.d]\nkind = \"exec\"\ncommand = []\nmax_retries = -1\n",
    );
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, 1, "exec task has no `command`"),
            (3, 7, "`url` only applies to kind = \"http\""),
            (5, 1, "http task has no `url`"),
            (7, 17, "header `X` must be a string or { env = \"VAR\" }"),
            (10, 8, "unknown task kind `exe`"),
            (14, 11, "`command` must start with a program"),
            (15, 15, "`max_retries` must be 0 or more"),
        ]
    );
    assert_eq!(ds[4].help.as_deref(), Some("did you mean `exec`?"));
}

#[test]
fn bad_values_point_at_the_value_and_never_show_a_password() {
    let ds = errors(
        "redis_url = \"http://:hunter2@host\"\nhttp_addr = \"localhost\"\nlock_ttl = \"ten\"\n\
         [worker]\nconcurrency = 0\n",
    );
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                1,
                13,
                "invalid `redis_url`: unsupported Redis URL scheme `http`"
            ),
            (2, 13, "invalid `http_addr` `localhost`"),
            (
                3,
                12,
                "invalid duration `ten` for `lock_ttl`: expected number at 0"
            ),
            (5, 15, "`concurrency` must be at least 1"),
        ]
    );
    let shown = crate::config::Diagnostics(ds).to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn a_syntax_error_in_beatd_toml() {
    let ds = errors("[worker\nqueues = []\n");
    assert_eq!((ds[0].line, ds[0].column), (1, 8), "{:?}", ds[0]);
}

#[test]
fn a_bad_key_does_not_hide_bad_values_elsewhere() {
    let ds = errors("http_addr = \"nowhere\"\n[worker]\nconcurency = 2\n");
    let got: Vec<_> = ds
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, 13, "invalid `http_addr` `nowhere`"),
            (3, 1, "unknown key `concurency` in [worker]")
        ]
    );
}

#[test]
fn app_wide_defaults_take_a_time_zone_and_report_a_bad_one() {
    let c = load_app_config_str("beatd.toml", "[defaults]\ntimezone = \"Europe/Paris\"\n").unwrap();
    assert_eq!(c.default_timezone.map(|t| t.name()), Some("Europe/Paris"));
    let e = errors("[defaults]\ntimezone = \"CEST\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].message, "unknown time zone `CEST`");
    assert_eq!((e[0].line, e[0].column), (2, 12));
    let e = errors("[defaults]\nqueue = \"x\"\n");
    assert!(e[0].message.contains("unknown"), "{:?}", e[0]);
}
