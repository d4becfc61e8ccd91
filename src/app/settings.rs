//! Settings of the long-running commands: `beatd.toml` (optional) with environment variables
//! and flags merged over it, in DESIGN.md's precedence (defaults < file < env < flags; clap
//! already folded env into the flags).

use crate::app::Error;
use crate::cli::{DaemonArgs, LeaderArgs, RedisArgs, ScheduleArgs, WorkerOpts};
use crate::config::{self, AppConfig};
use crate::redis_edge::{resolve_url, BrokerUrl};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The broker URL: flag, `BEATD_REDIS_URL`, `CELERY_BROKER_URL`, `REDIS_URL`, then the file.
///
/// # Errors
/// When the URL found does not parse.
pub fn redis_url(args: &RedisArgs, file: &AppConfig) -> Result<Option<BrokerUrl>, Error> {
    let found = resolve_url(args.redis_url.as_deref(), |k| std::env::var(k).ok())
        .map(|(url, _source)| url)
        .or_else(|| file.redis_url.as_ref().map(|u| u.as_str().to_owned()));
    found
        .map(|u| BrokerUrl::parse(&u).map_err(|e| Error::Usage(crate::error_chain(&e))))
        .transpose()
}

/// The key namespace.
#[must_use]
pub fn namespace(args: &RedisArgs, file: &AppConfig) -> String {
    args.namespace
        .clone()
        .unwrap_or_else(|| file.namespace.clone())
}

/// Schedule paths: flags/env, else the file's, else `schedules/`.
#[must_use]
pub fn schedule_paths(args: &ScheduleArgs, file: &AppConfig) -> Vec<PathBuf> {
    if args.schedules.is_empty() {
        file.schedules.clone()
    } else {
        args.schedules.clone()
    }
}

/// Leader lock TTL.
#[must_use]
pub fn lock_ttl(args: &LeaderArgs, file: &AppConfig) -> Duration {
    args.lock_ttl.map_or(file.lock_ttl, Into::into)
}

/// The HTTP address, `None` when `off`.
///
/// # Errors
/// When the flag is neither `off` nor a socket address.
pub fn http_addr(args: &DaemonArgs, file: &AppConfig) -> Result<Option<SocketAddr>, Error> {
    match args.http_addr.as_deref() {
        None => Ok(file.http_addr),
        Some("off") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e| Error::Usage(format!("--http-addr {s:?}: {e} (or `off`)"))),
    }
}

/// Graceful stop limit.
#[must_use]
pub fn shutdown_grace(args: &DaemonArgs, file: &AppConfig) -> Duration {
    args.shutdown_grace
        .map_or(file.worker.shutdown_grace, Into::into)
}

/// The embedded state file: flag/env, file, `$STATE_DIRECTORY/beatd-state.json` (systemd),
/// else `./beatd-state.json`.
#[must_use]
pub fn state_file(flag: Option<&Path>, file: &AppConfig) -> PathBuf {
    state_file_in(flag, file, std::env::var("STATE_DIRECTORY").ok().as_deref())
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

/// Worker queues, concurrency and visibility timeout.
#[must_use]
pub fn worker_queues(args: &WorkerOpts, file: &AppConfig) -> Vec<String> {
    if args.queues.is_empty() {
        file.worker.queues.clone()
    } else {
        args.queues.clone()
    }
}

/// Tasks run at once.
#[must_use]
pub fn concurrency(args: &WorkerOpts, file: &AppConfig) -> usize {
    args.concurrency
        .or(file.worker.concurrency)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1)
}

/// Visibility timeout.
#[must_use]
pub fn visibility_timeout(args: &WorkerOpts, file: &AppConfig) -> Duration {
    args.visibility_timeout
        .map_or(file.worker.visibility_timeout, Into::into)
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
}
