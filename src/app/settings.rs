//! Settings, resolved once per command from flags, environment and `beatd.toml` into one
//! [`Settings`] value, in DESIGN.md's precedence (defaults < file < env < flags). Two levels,
//! as in ripgrep: [`Flags`] is what the command line said (clap already folded `BEATD_*`
//! variables in), flat and unvalidated; [`Settings::resolve`] merges it with the environment's
//! Celery-style variables and the file, validates, and is the only place that does.

use crate::amqp::{is_amqp, AmqpUrl};
use crate::cli::{self, Command};
use crate::config::{self, AppConfig};
use crate::error::Error;
use crate::redis::{resolve_url, BrokerUrl, ConnectOptions, SentinelOptions, WaitReplicas};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the command line set, whichever command it was; unset means "not given".
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--schedules` (and the positional paths of `check`).
    pub schedules: Vec<PathBuf>,
    /// `--redis-url`.
    pub redis_url: Option<String>,
    /// `--broker-url`.
    pub broker_url: Option<String>,
    /// `--result-backend`.
    pub result_backend: Option<String>,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--sentinel-master`, `--sentinel-password`.
    pub sentinel: SentinelOptions,
    /// `--wait-replicas`.
    pub wait_replicas: Option<u32>,
    /// `--wait-timeout`.
    pub wait_timeout: Option<Duration>,
    /// `--lock-ttl`.
    pub lock_ttl: Option<Duration>,
    /// `--strict-schedule`.
    pub strict_schedule: bool,
    /// `--http-addr` (`off` or an address).
    pub http_addr: Option<String>,
    /// `--shutdown-grace`.
    pub shutdown_grace: Option<Duration>,
    /// `--queues`.
    pub queues: Vec<String>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--visibility-timeout`.
    pub visibility_timeout: Option<Duration>,
    /// `--state-file`.
    pub state_file: Option<PathBuf>,
    /// `--track-started`.
    pub track_started: bool,
    /// `--node-name`.
    pub node_name: Option<String>,
    /// `--progress-addr`.
    pub progress_addr: Option<SocketAddr>,
    /// `--progress-url`.
    pub progress_url: Option<String>,
    /// `--control-token`.
    pub control_token: Option<String>,
    /// `check --redis`.
    pub check_redis: bool,
}

impl Flags {
    /// The flags of `command`, with the global `--config`.
    #[must_use]
    pub fn of(config: Option<&Path>, command: &Command) -> Self {
        let mut f = Self {
            config: config.map(Path::to_path_buf),
            ..Self::default()
        };
        let d = |x: Option<humantime::Duration>| x.map(Into::into);
        let redis = |f: &mut Self, r: &cli::RedisArgs| {
            f.redis_url.clone_from(&r.redis_url);
            f.broker_url.clone_from(&r.broker_url);
            f.result_backend.clone_from(&r.result_backend);
            f.namespace.clone_from(&r.namespace);
            f.sentinel = SentinelOptions {
                master: r.sentinel_master.clone(),
                password: r.sentinel_password.clone(),
            };
            f.wait_replicas = r.wait_replicas;
            f.wait_timeout = d(r.wait_timeout);
        };
        let daemon = |f: &mut Self, a: &cli::DaemonArgs| {
            f.http_addr.clone_from(&a.http_addr);
            f.shutdown_grace = d(a.shutdown_grace);
            f.control_token.clone_from(&a.control_token);
        };
        let worker = |f: &mut Self, w: &cli::WorkerOpts| {
            f.queues.clone_from(&w.queues);
            f.concurrency = w.concurrency;
            f.visibility_timeout = d(w.visibility_timeout);
            f.track_started = w.track_started;
            f.node_name.clone_from(&w.node_name);
            f.progress_addr = w.progress_addr;
            f.progress_url.clone_from(&w.progress_url);
        };
        match command {
            Command::Beat(a) => {
                f.schedules.clone_from(&a.schedules.schedules);
                redis(&mut f, &a.redis);
                f.lock_ttl = d(a.leader.lock_ttl);
                f.strict_schedule = a.leader.strict_schedule;
                daemon(&mut f, &a.daemon);
            }
            Command::Worker(a) => {
                redis(&mut f, &a.redis);
                worker(&mut f, &a.worker);
                daemon(&mut f, &a.daemon);
            }
            Command::Run(a) => {
                f.schedules.clone_from(&a.schedules.schedules);
                redis(&mut f, &a.redis);
                f.lock_ttl = d(a.leader.lock_ttl);
                f.strict_schedule = a.leader.strict_schedule;
                worker(&mut f, &a.worker);
                daemon(&mut f, &a.daemon);
                f.state_file.clone_from(&a.state_file);
            }
            Command::Check(a) => {
                f.schedules = a
                    .paths
                    .iter()
                    .chain(&a.schedules.schedules)
                    .cloned()
                    .collect();
                if a.redis {
                    f.check_redis = true;
                    redis(&mut f, &a.redis_args);
                }
            }
            Command::Next(a) => f.schedules.clone_from(&a.schedules.schedules),
            Command::Send(a) => redis(&mut f, &a.redis),
            Command::Status(a) => {
                f.schedules.clone_from(&a.schedules.schedules);
                redis(&mut f, &a.redis);
                f.state_file.clone_from(&a.state_file);
            }
            Command::Pause(a) => redis(&mut f, &a.control.redis),
            Command::Resume(a) => redis(&mut f, &a.control.redis),
            Command::Trigger(a) => redis(&mut f, &a.control.redis),
            Command::Backfill(a) => redis(&mut f, &a.control.redis),
        }
        f
    }
}

/// Everything a command runs with, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `beatd.toml` as loaded (defaults when absent); task definitions live here.
    pub file: AppConfig,
    /// Schedule paths: flags/env, else the file's, else `schedules/`.
    pub schedules: Vec<PathBuf>,
    /// The zone of entries whose schedule file sets none: `BEATD_TIMEZONE`,
    /// `CELERY_TIMEZONE` (Celery's `timezone` setting), else `beatd.toml`'s
    /// `[defaults] timezone`; `None`: UTC.
    pub default_timezone: Option<crate::schedule::Tz>,
    /// Redis: `--redis-url`, `BEATD_REDIS_URL`, `CELERY_BROKER_URL`, `REDIS_URL`, the file.
    /// With a RabbitMQ broker, `CELERY_BROKER_URL` is that broker, and a Redis result
    /// backend is the last fallback (the FastAPI layout: RabbitMQ broker, Redis backend).
    pub redis_url: Option<BrokerUrl>,
    /// The RabbitMQ broker, when the broker URL (`--broker-url`, `BEATD_BROKER_URL`,
    /// `CELERY_BROKER_URL`) is `amqp://`, `amqps://` or `pyamqp://`.
    pub amqp_url: Option<AmqpUrl>,
    /// The Redis results go to with a RabbitMQ broker (`--result-backend`,
    /// `CELERY_RESULT_BACKEND`); `None`: results are only logged. On a Redis broker the
    /// worker stores them in that Redis, as before, and the beat's overlap policies read
    /// Celery workers' results here first (`app::beat`).
    pub result_backend: Option<BrokerUrl>,
    /// Arguments of the RabbitMQ queues beatd creates (`BEATD_QUEUE_MAX_PRIORITY`,
    /// `BEATD_QUEUE_TYPE`: Celery's `task_queue_max_priority`, `task_default_queue_type`).
    pub queue_args: crate::amqp::QueueArgs,
    /// The key namespace.
    pub namespace: String,
    /// Leader lock TTL.
    pub lock_ttl: Duration,
    /// Not ready while this replica's schedules differ from the leader's.
    pub strict_schedule: bool,
    /// The HTTP address, `None` when `off`.
    pub http_addr: Option<SocketAddr>,
    /// Graceful stop limit.
    pub shutdown_grace: Duration,
    /// The embedded state file: flag/env, file, `$STATE_DIRECTORY/beatd-state.json`
    /// (systemd), else `./beatd-state.json`.
    pub state_file: PathBuf,
    /// Worker queues.
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Unacked messages older than this are restored.
    pub visibility_timeout: Duration,
    /// Where `beatd.toml` was read from (`None`: `./beatd.toml` if present), re-read on a
    /// worker's SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Store STARTED for every task.
    pub track_started: bool,
    /// The worker's remote-control name.
    pub node_name: Option<String>,
    /// Where the worker serves task progress for `http` tasks, if anywhere.
    pub progress_addr: Option<SocketAddr>,
    /// The base URL given to tasks for it.
    pub progress_url: Option<String>,
    /// The token the control API and the status page's buttons require; `None`: read-only.
    /// Never logged (`Debug` shows it redacted).
    pub control_token: Option<crate::console::Token>,
}

/// Loads `beatd.toml`: the `--config` path (which must exist), else `./beatd.toml` when it
/// exists, else the defaults.
///
/// # Errors
/// Diagnostics of an invalid file, or a missing `--config` file.
pub fn app_config(path: Option<&Path>) -> Result<AppConfig, Error> {
    match path {
        Some(p) => config::load_app_config(p).map_err(Error::Config),
        None if Path::new("beatd.toml").is_file() => {
            config::load_app_config(Path::new("beatd.toml")).map_err(Error::Config)
        }
        None => Ok(AppConfig::default()),
    }
}

impl Settings {
    /// Resolves `flags` over the process environment and `beatd.toml`.
    ///
    /// # Errors
    /// An invalid `beatd.toml`, Redis URL or HTTP address.
    pub fn resolve(flags: &Flags) -> Result<Self, Error> {
        let file = app_config(flags.config.as_deref())?;
        Self::resolve_with(flags, file, |k| std::env::var(k).ok())
    }

    /// The Redis URL alone, as [`Settings::resolve`] finds and validates it (`check --redis`).
    ///
    /// # Errors
    /// As [`Settings::resolve`] for the URL.
    pub fn redis_url_of(
        flags: &Flags,
        file: &AppConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<BrokerUrl>, Error> {
        Ok(Self::resolve_with(flags, file.clone(), env)?.redis_url)
    }

    /// [`Settings::resolve`] with the file already loaded and the environment given.
    ///
    /// # Errors
    /// As [`Settings::resolve`].
    pub fn resolve_with(
        flags: &Flags,
        file: AppConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        fn usage(e: &(dyn std::error::Error + 'static), source: &str) -> Error {
            Error::Usage(format!("{} (set by {source})", crate::error_chain(e)))
        }
        let broker = resolve_broker(flags.broker_url.as_deref(), &env);
        let amqp_url = match &broker {
            Some((u, source)) if is_amqp(u) => {
                Some(AmqpUrl::parse(u).map_err(|e| usage(&e, source))?)
            }
            _ => None,
        };
        let result_backend = match resolve_result_backend(flags.result_backend.as_deref(), &env) {
            Some((u, source)) => Some(parse_result_backend(&u).map_err(|e| usage(&e, source))?),
            None => None,
        };
        // With a RabbitMQ broker, CELERY_BROKER_URL names it, not Redis.
        let redis_env = |k: &str| {
            if amqp_url.is_some() && k == "CELERY_BROKER_URL" {
                None
            } else {
                env(k)
            }
        };
        let redis_url = resolve_url(flags.redis_url.as_deref(), redis_env)
            .map(|(url, source)| (url, source.to_string()))
            .or_else(|| match &broker {
                // A redis:// --broker-url / BEATD_BROKER_URL is the Redis, as before.
                Some((u, source)) if amqp_url.is_none() => Some((u.clone(), (*source).to_owned())),
                _ => None,
            })
            .or_else(|| {
                file.redis_url
                    .as_ref()
                    .map(|u| (u.as_str().to_owned(), "beatd.toml".to_owned()))
            })
            .map(|(u, source)| {
                BrokerUrl::parse_with(&u, &flags.sentinel).map_err(|e| usage(&e, &source))
            })
            .transpose()?
            .map(|u| with_wait(u, flags))
            .transpose()?
            .or_else(|| amqp_url.as_ref().and(result_backend.clone()));
        let http_addr = match flags.http_addr.as_deref() {
            None => file.http_addr,
            Some("off") => None,
            Some(s) => Some(
                s.parse()
                    .map_err(|e| Error::Usage(format!("--http-addr {s:?}: {e} (or `off`)")))?,
            ),
        };
        let default_timezone = default_timezone(&file, &env)?;
        let state_file = state_file_in(
            flags.state_file.as_deref(),
            &file,
            env("STATE_DIRECTORY").as_deref(),
        );
        let queue_args = queue_args(&env)?;
        Ok(Self {
            queue_args,
            schedules: schedule_paths(flags, &file),
            default_timezone,
            redis_url,
            amqp_url,
            result_backend,
            namespace: flags
                .namespace
                .clone()
                .unwrap_or_else(|| file.namespace.clone()),
            lock_ttl: flags.lock_ttl.unwrap_or(file.lock_ttl),
            strict_schedule: flags.strict_schedule,
            http_addr,
            shutdown_grace: flags.shutdown_grace.unwrap_or(file.worker.shutdown_grace),
            state_file,
            queues: if flags.queues.is_empty() {
                file.worker.queues.clone()
            } else {
                flags.queues.clone()
            },
            concurrency: flags
                .concurrency
                .or(file.worker.concurrency)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
                .max(1),
            visibility_timeout: flags
                .visibility_timeout
                .unwrap_or(file.worker.visibility_timeout),
            control_token: flags
                .control_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(crate::console::Token::new),
            file,
            config_path: flags.config.clone(),
            track_started: flags.track_started,
            node_name: flags.node_name.clone().filter(|n| !n.trim().is_empty()),
            progress_addr: flags.progress_addr,
            progress_url: flags.progress_url.clone().filter(|u| !u.trim().is_empty()),
        })
    }

    /// The Redis URL, or a usage error naming where it could have come from.
    ///
    /// # Errors
    /// When none is configured; `why` says what needed it.
    pub fn require_redis(&self, why: &str) -> Result<&BrokerUrl, Error> {
        self.redis_url.as_ref().ok_or_else(|| {
            if self.amqp_url.is_some() {
                return Error::Usage(format!(
                    "{why} with a RabbitMQ broker needs Redis for this: set --redis-url, \
                     BEATD_REDIS_URL, REDIS_URL or a redis:// result backend"
                ));
            }
            Error::Usage(format!(
                "{why} needs Redis: set --redis-url, BEATD_REDIS_URL, CELERY_BROKER_URL or \
                 REDIS_URL (or use `beatd run` for the embedded mode)"
            ))
        })
    }
}

/// The broker URL: `--broker-url`, `BEATD_BROKER_URL`, `CELERY_BROKER_URL`; empty values
/// count as unset.
fn resolve_broker(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, &'static str)> {
    let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    non_empty(flag.map(str::to_owned))
        .map(|v| (v, "--broker-url"))
        .or_else(|| non_empty(env("BEATD_BROKER_URL")).map(|v| (v, "BEATD_BROKER_URL")))
        .or_else(|| non_empty(env("CELERY_BROKER_URL")).map(|v| (v, "CELERY_BROKER_URL")))
}

/// The arguments of queues beatd declares on RabbitMQ, from the environment.
fn queue_args(env: impl Fn(&str) -> Option<String>) -> Result<crate::amqp::QueueArgs, Error> {
    let non_empty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let max_priority = match non_empty("BEATD_QUEUE_MAX_PRIORITY") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "BEATD_QUEUE_MAX_PRIORITY={v:?} is not a priority from 1 to 255 (Celery's \
                 task_queue_max_priority, usually 10)"
                    ))
                })?,
        ),
    };
    let queue_type = match non_empty("BEATD_QUEUE_TYPE") {
        None => None,
        Some(v) if matches!(v.trim(), "classic" | "quorum") => Some(v.trim().to_owned()),
        Some(v) => {
            return Err(Error::Usage(format!(
                "BEATD_QUEUE_TYPE={v:?}: expected classic or quorum (Celery's \
                 task_default_queue_type)"
            )))
        }
    };
    Ok(crate::amqp::QueueArgs {
        max_priority,
        queue_type,
    })
}

/// The result backend: `--result-backend`, `BEATD_RESULT_BACKEND`, `CELERY_RESULT_BACKEND`.
fn resolve_result_backend(
    flag: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, &'static str)> {
    let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    non_empty(flag.map(str::to_owned))
        .map(|v| (v, "--result-backend"))
        .or_else(|| non_empty(env("BEATD_RESULT_BACKEND")).map(|v| (v, "BEATD_RESULT_BACKEND")))
        .or_else(|| non_empty(env("CELERY_RESULT_BACKEND")).map(|v| (v, "CELERY_RESULT_BACKEND")))
}

/// A Redis result backend; Celery's other backends (`rpc://`, `db+…`) are refused by name.
fn parse_result_backend(url: &str) -> Result<BrokerUrl, crate::redis::Error> {
    BrokerUrl::parse(url).map_err(|e| match e {
        crate::redis::Error::InvalidUrl { url, .. } => crate::redis::Error::InvalidUrl {
            url,
            reason: "beatd stores results only in Redis (redis://, rediss://); \
                     leave the result backend unset to only log them"
                .into(),
        },
        other => other,
    })
}

/// The `WAIT` a URL's writes get: the flags over the URL's default (one replica behind
/// Sentinels, none otherwise).
fn with_wait(url: BrokerUrl, flags: &Flags) -> Result<BrokerUrl, Error> {
    let default = url
        .wait()
        .unwrap_or(crate::redis::url::SENTINEL_DEFAULT_WAIT);
    let replicas = flags
        .wait_replicas
        .unwrap_or_else(|| url.wait().map_or(0, |w| w.replicas));
    let timeout = flags.wait_timeout.unwrap_or(default.timeout);
    // WAIT blocks the reply; past the response timeout the connection would be dropped.
    let limit = ConnectOptions::default().response_timeout;
    if timeout.is_zero() || timeout >= limit {
        return Err(Error::Usage(format!(
            "--wait-timeout {}: must be above 0 and below the {} response timeout",
            humantime::format_duration(timeout),
            humantime::format_duration(limit)
        )));
    }
    Ok(url.with_wait(Some(WaitReplicas { replicas, timeout })))
}

/// The app-wide default zone: `BEATD_TIMEZONE`, then `CELERY_TIMEZONE`, then the file's.
///
/// # Errors
/// A variable that names no IANA zone.
pub fn default_timezone(
    file: &AppConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<crate::schedule::Tz>, Error> {
    for var in ["BEATD_TIMEZONE", "CELERY_TIMEZONE"] {
        if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
            return v.trim().parse().map(Some).map_err(|_| {
                Error::Usage(format!(
                    "{var}={v:?} is not an IANA time zone (e.g. Europe/Paris, America/New_York, UTC)"
                ))
            });
        }
    }
    Ok(file.default_timezone)
}

/// Schedule paths: flags/env, else the file's (whose default is `schedules/`).
#[must_use]
pub fn schedule_paths(flags: &Flags, file: &AppConfig) -> Vec<PathBuf> {
    if flags.schedules.is_empty() {
        file.schedules.clone()
    } else {
        flags.schedules.clone()
    }
}

fn state_file_in(flag: Option<&Path>, file: &AppConfig, state_directory: Option<&str>) -> PathBuf {
    if let Some(p) = flag.or(file.state_file.as_deref()) {
        return p.to_path_buf();
    }
    // systemd may list several directories separated by ':'; the first is ours.
    match state_directory
        .and_then(|d| d.split(':').next())
        .filter(|d| !d.is_empty())
    {
        Some(dir) => PathBuf::from(dir).join("beatd-state.json"),
        None => PathBuf::from("beatd-state.json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_prefers_flag_then_file_then_systemd_state_directory() {
        let mut file = AppConfig::default();
        let flag = Path::new("/flag/state.json");
        assert_eq!(
            state_file_in(Some(flag), &file, Some("/var/lib/beatd")),
            flag
        );
        assert_eq!(
            state_file_in(None, &file, Some("/var/lib/beatd:/var/lib/other")),
            Path::new("/var/lib/beatd/beatd-state.json")
        );
        assert_eq!(
            state_file_in(None, &file, None),
            Path::new("beatd-state.json")
        );
        assert_eq!(
            state_file_in(None, &file, Some("")),
            Path::new("beatd-state.json")
        );
        file.state_file = Some(PathBuf::from("/etc/x.json"));
        assert_eq!(
            state_file_in(None, &file, Some("/var/lib/beatd")),
            Path::new("/etc/x.json")
        );
    }

    #[test]
    fn flags_win_over_env_and_env_over_the_file() {
        let file = AppConfig {
            namespace: "from-file".into(),
            lock_ttl: Duration::from_secs(30),
            ..AppConfig::default()
        };
        let env = |k: &str| (k == "CELERY_BROKER_URL").then(|| "redis://env:6379/0".to_owned());
        let s = Settings::resolve_with(&Flags::default(), file.clone(), env).unwrap();
        assert_eq!(s.namespace, "from-file");
        assert_eq!(s.lock_ttl, Duration::from_secs(30));
        assert!(s.redis_url.unwrap().expose().contains("env:6379"));
        let flags = Flags {
            redis_url: Some("redis://flag:6379/1".into()),
            namespace: Some("from-flag".into()),
            http_addr: Some("off".into()),
            ..Flags::default()
        };
        let s = Settings::resolve_with(&flags, file, env).unwrap();
        assert_eq!(s.namespace, "from-flag");
        assert!(s.redis_url.unwrap().expose().contains("flag:6379"));
        assert_eq!(s.http_addr, None);
        let sentinel = Flags {
            redis_url: Some("sentinel://h1:26379;sentinel://h2:26379".into()),
            sentinel: SentinelOptions {
                master: Some("mymaster".into()),
                password: None,
            },
            wait_timeout: Some(Duration::from_millis(250)),
            ..Flags::default()
        };
        let s = Settings::resolve_with(&sentinel, AppConfig::default(), |_| None).unwrap();
        let u = s.redis_url.unwrap();
        assert!(u.is_sentinel());
        assert_eq!(
            u.wait(),
            Some(WaitReplicas {
                replicas: 1,
                timeout: Duration::from_millis(250)
            })
        );
        let no_master = Flags {
            sentinel: SentinelOptions::default(),
            ..sentinel.clone()
        };
        let e = Settings::resolve_with(&no_master, AppConfig::default(), |_| None).unwrap_err();
        assert!(e.to_string().contains("--sentinel-master"), "{e}");
        let long_wait = Flags {
            wait_timeout: Some(Duration::from_secs(10)),
            ..sentinel
        };
        assert!(Settings::resolve_with(&long_wait, AppConfig::default(), |_| None).is_err());
        let bad = Flags {
            http_addr: Some("nowhere".into()),
            ..Flags::default()
        };
        assert!(matches!(
            Settings::resolve_with(&bad, AppConfig::default(), |_| None),
            Err(Error::Usage(_))
        ));
    }

    fn vars(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let pairs = pairs.to_vec();
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_fastapi_layout_runs_with_no_flag_rabbitmq_broker_and_redis_backend() {
        let env = vars(&[
            ("CELERY_BROKER_URL", "amqp://app:s3cret@rabbit:5672//"),
            ("CELERY_RESULT_BACKEND", "redis://:pw@cache:6379/1"),
        ]);
        let s = Settings::resolve_with(&Flags::default(), AppConfig::default(), env).unwrap();
        let amqp = s.amqp_url.as_ref().expect("rabbitmq broker");
        assert_eq!(
            (amqp.address().as_str(), amqp.vhost()),
            ("rabbit:5672", "/")
        );
        assert!(s
            .redis_url
            .as_ref()
            .unwrap()
            .expose()
            .contains("cache:6379/1"));
        assert!(s
            .result_backend
            .as_ref()
            .unwrap()
            .expose()
            .contains("cache:6379/1"));
        assert!(!format!("{s:?}").contains("s3cret"));
        // The lock's own Redis wins over the result backend when given.
        let env = vars(&[
            ("CELERY_BROKER_URL", "pyamqp://rabbit/prod"),
            ("CELERY_RESULT_BACKEND", "redis://cache:6379/1"),
            ("REDIS_URL", "redis://coord:6379/0"),
        ]);
        let s = Settings::resolve_with(&Flags::default(), AppConfig::default(), env).unwrap();
        assert_eq!(s.amqp_url.as_ref().unwrap().vhost(), "prod");
        assert!(s.redis_url.unwrap().expose().contains("coord:6379/0"));
        assert!(s.result_backend.unwrap().expose().contains("cache:6379/1"));
    }

    #[test]
    fn queue_arguments_come_from_the_environment_and_are_checked() {
        let env = vars(&[
            ("BEATD_QUEUE_MAX_PRIORITY", "10"),
            ("BEATD_QUEUE_TYPE", "quorum"),
        ]);
        let s = Settings::resolve_with(&Flags::default(), AppConfig::default(), env).unwrap();
        assert_eq!(s.queue_args.max_priority, Some(10));
        assert_eq!(s.queue_args.queue_type.as_deref(), Some("quorum"));
        for bad in [
            ("BEATD_QUEUE_MAX_PRIORITY", "0"),
            ("BEATD_QUEUE_TYPE", "stream"),
        ] {
            let err = Settings::resolve_with(&Flags::default(), AppConfig::default(), vars(&[bad]))
                .unwrap_err();
            assert!(err.to_string().contains(bad.0), "{err}");
        }
    }

    #[test]
    fn the_tutorial_layout_has_rabbitmq_and_no_redis_at_all() {
        let env = vars(&[("CELERY_BROKER_URL", "amqp://guest:**@localhost:5672//")]);
        let s = Settings::resolve_with(&Flags::default(), AppConfig::default(), env).unwrap();
        assert!(s.amqp_url.is_some());
        assert!(s.redis_url.is_none() && s.result_backend.is_none());
        // Flags win: --broker-url over BEATD_BROKER_URL over CELERY_BROKER_URL.
        let env = vars(&[
            ("BEATD_BROKER_URL", "amqp://b/b"),
            ("CELERY_BROKER_URL", "amqp://c/c"),
        ]);
        let s = Settings::resolve_with(&Flags::default(), AppConfig::default(), &env).unwrap();
        assert_eq!(s.amqp_url.unwrap().vhost(), "b");
        let flags = Flags {
            broker_url: Some("amqps://f/f".into()),
            ..Flags::default()
        };
        let s = Settings::resolve_with(&flags, AppConfig::default(), &env).unwrap();
        assert!(s.amqp_url.as_ref().unwrap().tls());
        assert_eq!(s.amqp_url.unwrap().vhost(), "f");
    }

    #[test]
    fn a_redis_broker_url_is_still_the_one_redis() {
        let env = vars(&[("CELERY_BROKER_URL", "redis://env:6379/0")]);
        let s = Settings::resolve_with(&Flags::default(), AppConfig::default(), env).unwrap();
        assert!(s.amqp_url.is_none());
        assert!(s.redis_url.unwrap().expose().contains("env:6379/0"));
        let flags = Flags {
            broker_url: Some("redis://flag:6379/2".into()),
            ..Flags::default()
        };
        let s = Settings::resolve_with(&flags, AppConfig::default(), |_| None).unwrap();
        assert!(s.redis_url.unwrap().expose().contains("flag:6379/2"));
    }

    #[test]
    fn bad_broker_and_backend_urls_name_their_source_and_hide_the_password() {
        let cases: [(&[(&'static str, &'static str)], &str); 3] = [
            (
                &[("CELERY_BROKER_URL", "amqp://u:s3cret@h/?ssl=yes")],
                "CELERY_BROKER_URL",
            ),
            (
                &[
                    ("CELERY_BROKER_URL", "amqp://h//"),
                    ("CELERY_RESULT_BACKEND", "rpc://u:s3cret@h"),
                ],
                "CELERY_RESULT_BACKEND",
            ),
            (
                &[("BEATD_BROKER_URL", "amqp://u:s3cret@a;amqp://b")],
                "BEATD_BROKER_URL",
            ),
        ];
        for (env, source) in cases {
            let err = Settings::resolve_with(&Flags::default(), AppConfig::default(), vars(env))
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(source), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }
}
