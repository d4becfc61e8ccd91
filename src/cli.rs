//! The command line: subcommands and flags (clap derive). Every flag can also come from a
//! `BEATD_*` environment variable; values left unset fall back to `beatd.toml`, then to the
//! built-in defaults (see `app`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Highly available, Celery-compatible periodic-task scheduler with a minimal worker.
#[derive(Debug, Parser)]
#[command(name = "beatd", version, about, propagate_version = true)]
pub struct Cli {
    /// Application config file [default: ./beatd.toml when it exists].
    #[arg(long, global = true, env = "BEATD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format: human text or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "BEATD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of `next` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text.
    Text,
    /// JSON.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The scheduler: reads schedules, joins the leader election, sends due tasks to Redis.
    Beat(BeatArgs),
    /// The worker: runs Celery messages from Redis as exec, http or Rust tasks.
    Worker(WorkerArgs),
    /// Beat and worker in one process; without a Redis URL, fully embedded (in-process queue,
    /// local state file).
    Run(RunArgs),
    /// Validates schedule files (and beatd.toml); every problem as file:line:column.
    Check(CheckArgs),
    /// Prints the next fire times of entries, in their time zone and UTC.
    Next(NextArgs),
    /// Enqueues one task now, like Celery's `send_task`, and prints its id.
    Send(SendArgs),
    /// Shows the leader and each entry's last and next fire time.
    Status(StatusArgs),
    /// Pauses an entry: the leader sends nothing for it until resumed (or --until).
    Pause(PauseArgs),
    /// Resumes a paused entry; --catch-up says what to send of the fire times it missed.
    Resume(ResumeArgs),
    /// Sends one extra run of an entry now (header beatd_trigger: manual), fenced like every
    /// send; the regular fire times are unchanged.
    Trigger(TriggerArgs),
    /// Sends every fire time of an entry in a past range, oldest first, each at most once.
    Backfill(BackfillArgs),
}

/// Where a control request goes: a running beat's HTTP port (`beatd run`), else Redis.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// The HTTP endpoint of a running beatd (e.g. `http://127.0.0.1:9808`), for `beatd run`;
    /// without it the request goes through Redis to the HA beat's leader.
    #[arg(long, env = "BEATD_CONTROL_URL", value_name = "URL")]
    pub url: Option<String>,
    /// The control token the HTTP endpoint was started with (only with --url).
    #[arg(
        long,
        env = "BEATD_CONTROL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub control_token: Option<String>,
    /// How long to wait for the leader's answer [default: 10s].
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub wait: humantime::Duration,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// `beatd pause`.
#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    /// The entry's name.
    pub entry: String,
    /// End the pause by itself at this instant: RFC 3339, or a local date-time in the
    /// app-wide default zone.
    #[arg(long, value_name = "DATETIME")]
    pub until: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `beatd resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The entry's name.
    pub entry: String,
    /// Which fire times missed while paused to send: none (the default), the latest, or all.
    #[arg(long, value_enum, default_value = "none")]
    pub catch_up: crate::control::ResumeCatchUp,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `beatd trigger`.
#[derive(Debug, Clone, Args)]
pub struct TriggerArgs {
    /// The entry's name.
    pub entry: String,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `beatd backfill`.
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// The entry's name.
    pub entry: String,
    /// First instant of the range (RFC 3339, or local in the app-wide default zone).
    #[arg(long, value_name = "DATETIME")]
    pub from: String,
    /// Last instant of the range, not in the future.
    #[arg(long, value_name = "DATETIME")]
    pub to: String,
    /// Send even when the range holds more than 100 fire times (at most 10,000).
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// Where schedules are read from.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Schedule file or directory of *.toml files (repeatable) [default: schedules/].
    #[arg(
        long = "schedules",
        env = "BEATD_SCHEDULES",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub schedules: Vec<PathBuf>,
}

/// How to reach Redis.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (redis:// or rediss://); else BEATD_REDIS_URL, CELERY_BROKER_URL, REDIS_URL.
    /// With a RabbitMQ broker, the Redis that holds the lock, last runs (and results).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Broker URL: amqp:// amqps:// pyamqp:// (RabbitMQ) or redis://; else BEATD_BROKER_URL,
    /// CELERY_BROKER_URL.
    #[arg(long, value_name = "URL")]
    pub broker_url: Option<String>,
    /// Where results go with a RabbitMQ broker: redis:// or rediss://; else
    /// CELERY_RESULT_BACKEND [default: none, results are logged]. With a Redis broker, where
    /// the overlap policies also look for Celery workers' results.
    #[arg(long, value_name = "URL")]
    pub result_backend: Option<String>,
    /// Key namespace for the lock and last-run state [default: beatd].
    #[arg(long, env = "BEATD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The master name the Sentinels monitor, for a sentinel:// URL (else ?master_name=).
    #[arg(long, env = "BEATD_SENTINEL_MASTER", value_name = "NAME")]
    pub sentinel_master: Option<String>,
    /// The Sentinels' own password, when they have one (the URL's is the master's).
    #[arg(
        long,
        env = "BEATD_SENTINEL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub sentinel_password: Option<String>,
    /// Replicas each lock change and emission step waits for (WAIT); 0 turns it off
    /// [default: 1 behind Sentinels, else 0].
    #[arg(long, env = "BEATD_WAIT_REPLICAS", value_name = "N")]
    pub wait_replicas: Option<u32>,
    /// Longest WAIT for those replicas, e.g. `500ms` [default: 1s].
    #[arg(long, env = "BEATD_WAIT_TIMEOUT", value_name = "DURATION")]
    pub wait_timeout: Option<humantime::Duration>,
}

/// The HTTP endpoint and shutdown timing shared by long-running commands.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Address for /healthz, /readyz and /metrics, or `off` [default: 127.0.0.1:9808].
    #[arg(long, env = "BEATD_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Longest graceful stop, e.g. `30s` [default: 30s].
    #[arg(long, env = "BEATD_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<humantime::Duration>,
    /// Enables the status page's pause, resume and trigger buttons and the control API for
    /// requests carrying this token; without it the page is read-only.
    #[arg(
        long,
        env = "BEATD_CONTROL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub control_token: Option<String>,
}

/// Beat-only options.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
    /// Leader lock time-to-live, e.g. `10s` [default: 10s].
    #[arg(long, env = "BEATD_LOCK_TTL", value_name = "DURATION")]
    pub lock_ttl: Option<humantime::Duration>,
    /// Report not ready (`/readyz` 503) while this replica's schedule files differ from the
    /// leader's [default: only logged and counted].
    #[arg(long, env = "BEATD_STRICT_SCHEDULE")]
    pub strict_schedule: bool,
}

/// Worker options.
#[derive(Debug, Clone, Args)]
pub struct WorkerOpts {
    /// Queues to consume, comma-separated [default: celery].
    #[arg(long, env = "BEATD_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Tasks run at once [default: number of CPUs].
    #[arg(long, env = "BEATD_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Unacknowledged messages of a dead worker are restored after this long [default: 1h].
    #[arg(long, env = "BEATD_VISIBILITY_TIMEOUT", value_name = "DURATION")]
    pub visibility_timeout: Option<humantime::Duration>,
    /// Store STARTED when any task starts (Celery's task_track_started) [default: only the
    /// tasks with `track_started = true`].
    #[arg(long, env = "BEATD_TRACK_STARTED")]
    pub track_started: bool,
    /// The name `celery inspect` lists this worker under [default: beatd@<host>].
    #[arg(long, env = "BEATD_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Serve the endpoint http tasks POST their progress to on this address, e.g.
    /// `0.0.0.0:9809` [default: off].
    #[arg(long, env = "BEATD_PROGRESS_ADDR", value_name = "ADDR")]
    pub progress_addr: Option<std::net::SocketAddr>,
    /// The base URL tasks are given for that endpoint [default: http://<address>, the host
    /// name for a wildcard address].
    #[arg(long, env = "BEATD_PROGRESS_URL", value_name = "URL")]
    pub progress_url: Option<String>,
}

/// `beatd beat`.
#[derive(Debug, Clone, Args)]
pub struct BeatArgs {
    #[command(flatten)]
    pub schedules: ScheduleArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `beatd worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub worker: WorkerOpts,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `beatd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub schedules: ScheduleArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub worker: WorkerOpts,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Last-run state file of the embedded mode [default: $STATE_DIRECTORY/beatd-state.json,
    /// else ./beatd-state.json].
    #[arg(long, env = "BEATD_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<PathBuf>,
}

/// `beatd check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Schedule files or directories to check (same meaning as --schedules).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub schedules: ScheduleArgs,
    /// Also check Redis (the URL from the usual places): that it parses and that the server,
    /// or the Sentinels and the master they name, answer.
    #[arg(long)]
    pub redis: bool,
    #[command(flatten)]
    pub redis_args: RedisArgs,
}

/// `beatd next`.
#[derive(Debug, Clone, Args)]
pub struct NextArgs {
    #[command(flatten)]
    pub schedules: ScheduleArgs,
    /// Fire times per entry (at least 1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub count: u16,
    /// Only this entry (repeatable).
    #[arg(long)]
    pub entry: Vec<String>,
    /// Start from this instant instead of now: RFC 3339 (`2027-03-26T12:00:00+01:00`), or a
    /// local date-time (`2027-03-26T12:00:00`) read in the app-wide default zone (UTC unless
    /// set).
    #[arg(long, value_name = "DATETIME")]
    pub from: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// `beatd send`.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Celery task name.
    pub task: String,
    /// Positional arguments, a JSON array.
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// Keyword arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Destination queue.
    #[arg(long, default_value = "celery")]
    pub queue: String,
    /// kombu Redis priority 0-9 (0 runs first).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: Option<u8>,
    /// Message expiry from now, e.g. `1h`.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<humantime::Duration>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// `beatd status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub schedules: ScheduleArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Embedded mode: read this state file instead of Redis.
    #[arg(long, env = "BEATD_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn schedules_flag_repeats_and_splits() {
        let cli = Cli::parse_from([
            "beatd",
            "next",
            "--schedules",
            "a.toml",
            "--schedules",
            "b,c",
        ]);
        let Command::Next(next) = cli.command else {
            panic!("not next")
        };
        assert_eq!(
            next.schedules.schedules,
            ["a.toml", "b", "c"].map(PathBuf::from)
        );
    }
}
