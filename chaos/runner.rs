//! The chaos run: the servers of a [`Mode`], three `beatd beat` replicas, two `beatd worker`s
//! running an `exec` task that appends `scheduled_at task_id args` to the worker's own log,
//! and seeded faults at random intervals until the duration is over: the
//! [process faults](super::procs) in every mode, and the mode's own (its servers killed,
//! paused, cut off). Then every process is brought back, the entries run to their `end_at`,
//! the queue drains, and the [checker](super::check) reads the logs and `{ns}:run_count`.
//!
//! Each mode is a [`Backend`] in a file of its own: [`mode_redis`](super::mode_redis),
//! [`mode_sentinel`](super::mode_sentinel), [`mode_rabbit`](super::mode_rabbit).

use super::check::{self, Counts, Execution, GridEntry};
use super::mode_redis::conn;
use super::procs::{self, between, Proc};
use super::{mode_rabbit, mode_redis, mode_sentinel};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Redis key namespace of the run.
pub const NS: &str = "chaos";
/// Queue the entries send to and the workers consume.
pub const QUEUE: &str = "chaos";
/// Leader lock TTL of the beats (`--lock-ttl`): faults are measured against it.
const LOCK_TTL: &str = "3s";
/// Visibility timeout of the workers: a dead worker's message runs again after it.
const VISIBILITY: Duration = Duration::from_secs(5);
/// The entries: name, schedule line, period in ms.
const ENTRIES: &[(&str, &str, i64)] = &[
    ("every-1s", "every = \"1s\"", 1000),
    ("every-3s", "every = \"3s\"\npriority = 3", 3000),
    ("cron-5s", "cron = \"*/5 * * * * *\"", 5000),
];

/// Which servers beatd runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One durable redis-server: broker, lock and state.
    #[default]
    Redis,
    /// A primary, two replicas and three Sentinels.
    Sentinel,
    /// RabbitMQ as the broker, a durable Redis for the lock, state and results.
    Rabbitmq,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "redis" => Ok(Self::Redis),
            "sentinel" => Ok(Self::Sentinel),
            "rabbitmq" => Ok(Self::Rabbitmq),
            _ => Err(format!("unknown mode {s:?} (redis, sentinel, rabbitmq)")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Redis => "redis",
            Self::Sentinel => "sentinel",
            Self::Rabbitmq => "rabbitmq",
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which servers.
    pub mode: Mode,
    /// How long faults are injected.
    pub duration: Duration,
    /// Seed of the fault sequence.
    pub seed: u64,
    /// The `beatd` binary.
    pub beatd: PathBuf,
    /// Working directory (logs, configs); a temp dir when `None`.
    pub dir: Option<PathBuf>,
    /// Print each fault as it happens.
    pub verbose: bool,
}

/// Messages not yet done at the end of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pending {
    /// Waiting in the queue (on RabbitMQ: also intents not yet confirmed).
    pub queued: u64,
    /// Taken by a worker and not acknowledged.
    pub unacked: u64,
}

/// What a mode provides: its servers, how beats and workers reach them, and its own faults.
/// Used with static dispatch only, inside this harness.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// The mode's fault kinds, besides the [process ones](procs::KINDS).
    fn kinds(&self) -> &'static [&'static str];
    /// How beat `i` reaches the servers (arguments after `beat`).
    fn beat_args(&self, i: usize) -> Vec<String>;
    /// How the workers reach them (arguments after `worker`).
    fn worker_args(&self) -> Vec<String>;
    /// Where the servers are, for the log.
    fn describe(&self) -> String;
    /// Injects one of [`Backend::kinds`]; `None` when it cannot be done now (the same fault,
    /// or another one of this mode, is still in progress).
    async fn inject(
        &mut self,
        kind: &'static str,
        rng: &mut StdRng,
        now: Instant,
    ) -> Result<Option<String>, String>;
    /// Undoes the mode's faults that are due (all of them when `ending`); lines to print.
    async fn undo_due(&mut self, now: Instant, ending: bool) -> Result<Vec<String>, String>;
    /// The fault phase is over: waits for faults in progress until every server is up.
    async fn settle(&mut self) -> Result<Vec<String>, String>;
    /// The Redis holding `{ns}:last_run` and `{ns}:run_count` now.
    async fn state_url(&self) -> Option<String>;
    /// Messages not yet done.
    async fn pending(&self) -> Result<Pending, String>;
    /// Whether unacknowledged messages come back only when a worker restores them (the
    /// Redis transport), so the drain restarts a worker while some remain.
    fn restores_unacked(&self) -> bool;
    /// Figures of the mode's own faults.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The outcome: the faults and the checker's figures.
#[derive(Debug, Clone)]
pub struct Report {
    /// Mode.
    pub mode: Mode,
    /// Seed.
    pub seed: u64,
    /// Fault phase length.
    pub duration: Duration,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// The checker's figures.
    pub counts: Counts,
    /// Processes that exited without being told to.
    pub crashes: u64,
    /// Messages still queued or unacknowledged at the end.
    pub leftover: u64,
    /// Figures of the mode's own faults (failover times, node boots).
    pub notes: Vec<String>,
    /// Where logs are.
    pub dir: PathBuf,
}

impl Report {
    /// Every invariant held.
    pub fn pass(&self) -> bool {
        self.counts.pass() && self.crashes == 0 && self.leftover == 0
    }

    /// The one line of figures (`mode=` only outside the default mode, so that lines of
    /// redis runs compare with earlier ones).
    pub fn line(&self) -> String {
        let c = &self.counts;
        let total: u64 = self.faults.values().sum();
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mode = if self.mode == Mode::Redis {
            String::new()
        } else {
            format!(" mode={}", self.mode)
        };
        format!(
            "chaos{mode} seed={} duration={}s faults={total} ({}) due={} sent={} duplicated={} \
             missed={} executed={} reexecuted={} lost={} unexpected={} unaccounted={} \
             crashes={} leftover={}: {}",
            self.seed,
            self.duration.as_secs(),
            kinds.join(" "),
            c.due,
            c.sent,
            c.duplicated,
            c.missed,
            c.executed,
            c.reexecuted,
            c.lost,
            c.unexpected,
            c.unaccounted,
            self.crashes,
            self.leftover,
            if self.pass() { "PASS" } else { "FAIL" }
        )
    }
}

fn schedule_file(
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
) -> String {
    let mut s = String::from("# generated by the chaos run\n");
    for (name, sched, _) in ENTRIES {
        let _ = write!(
            s,
            "\n[[entry]]\nname = \"{name}\"\ntask = \"chaos.record\"\n{sched}\nqueue = \"{QUEUE}\"\n\
             args = [\"{name}\"]\ncatch_up = \"all\"\ncatch_up_window = \"1h\"\n\
             start_at = \"{}\"\nend_at = \"{}\"\n",
            start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    s
}

fn worker_config(log: &Path) -> String {
    format!(
        "[worker.tasks.\"chaos.record\"]\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", 'printf \"%s %s %s\\n\" \"$BEATD_TASK_SCHEDULED_AT\" \
         \"$BEATD_TASK_ID\" \"$BEATD_TASK_ARGS\" >> \"$CHAOS_LOG\"']\n\
         env = {{ CHAOS_LOG = \"{}\" }}\ntime_limit = \"20s\"\n",
        log.display()
    )
}

async fn hgetall<V: redis::FromRedisValue>(
    url: Option<String>,
    key: &str,
) -> Result<HashMap<String, V>, String> {
    let url = url.ok_or("no Redis to read the state from")?;
    let mut c = conn(&url).await.map_err(|e| e.to_string())?;
    redis::cmd("HGETALL")
        .arg(format!("{NS}:{key}"))
        .query_async(&mut c)
        .await
        .map_err(|e| e.to_string())
}

/// Runs the whole chaos run of `opts.mode` and checks it.
///
/// # Errors
/// When the setup fails (no redis-server or rabbitmq-server, no beatd binary, a server set
/// that does not recover); a failed invariant is a [`Report`] that does not pass.
pub async fn run(opts: Options) -> Result<Report, String> {
    let tmp;
    let dir = if let Some(d) = &opts.dir {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        d.clone()
    } else {
        tmp = tempfile::Builder::new()
            .prefix("beatd-chaos-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        tmp.keep()
    };
    match opts.mode {
        Mode::Redis => drive(opts, dir, mode_redis::Plain::start().await?).await,
        Mode::Sentinel => drive(opts, dir, mode_sentinel::Sentinel::start().await?).await,
        Mode::Rabbitmq => drive(opts, dir, mode_rabbit::Rabbit::start().await?).await,
    }
}

/// The processes of the run: three beats, then two workers; the workers' execution logs.
fn processes(
    backend: &impl Backend,
    dir: &Path,
    sched_dir: &Path,
) -> Result<(Vec<Proc>, Vec<PathBuf>), String> {
    let mut procs = Vec::new();
    for i in 0..3 {
        let mut args = vec!["beat".to_string()];
        args.extend(backend.beat_args(i));
        args.extend(
            [
                "--schedules",
                &sched_dir.display().to_string(),
                "--namespace",
                NS,
                "--lock-ttl",
                LOCK_TTL,
                "--http-addr",
                "off",
                "--shutdown-grace",
                "5s",
            ]
            .map(String::from),
        );
        procs.push(Proc::new(
            format!("beat-{i}"),
            args,
            dir.join(format!("beat-{i}.log")),
        ));
    }
    let mut exec_logs = Vec::new();
    for i in 0..2 {
        let exec_log = dir.join(format!("executions-{i}.log"));
        let cfg = dir.join(format!("worker-{i}.toml"));
        std::fs::write(&cfg, worker_config(&exec_log)).map_err(|e| e.to_string())?;
        exec_logs.push(exec_log);
        let mut args = vec![
            "--config".to_string(),
            cfg.display().to_string(),
            "worker".to_string(),
        ];
        args.extend(backend.worker_args());
        args.extend(
            [
                "--queues",
                QUEUE,
                "--concurrency",
                "2",
                "--visibility-timeout",
                "5s",
                "--shutdown-grace",
                "5s",
                "--http-addr",
                "off",
            ]
            .map(String::from),
        );
        procs.push(Proc::new(
            format!("worker-{i}"),
            args,
            dir.join(format!("worker-{i}.log")),
        ));
    }
    Ok((procs, exec_logs))
}

#[allow(clippy::too_many_lines)]
async fn drive(opts: Options, dir: PathBuf, mut backend: impl Backend) -> Result<Report, String> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    // Wall-clock stamps, to match a fault with the beats' and workers' logs.
    let say = |msg: &str| {
        if opts.verbose {
            let at = beatd::clock::Clock::now(&beatd::clock::SystemClock).format("%H:%M:%S%.3f");
            eprintln!("[chaos {at}] {msg}");
        }
    };

    // Fire times start a few seconds from now, once the beats are up, and end after the fault
    // phase plus time for every replica to come back and catch up.
    let now = beatd::clock::Clock::now(&beatd::clock::SystemClock);
    let start_at = chrono::DateTime::from_timestamp(now.timestamp() + 6, 0).expect("time");
    let settle = Duration::from_secs(12);
    let recover = Duration::from_secs(15);
    let end_at =
        start_at + chrono::Duration::from_std(settle + opts.duration + recover).expect("duration");
    let sched_dir = dir.join("schedules");
    std::fs::create_dir_all(&sched_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        sched_dir.join("chaos.toml"),
        schedule_file(start_at, end_at),
    )
    .map_err(|e| e.to_string())?;

    let (mut procs, exec_logs) = processes(&backend, &dir, &sched_dir)?;
    for p in &mut procs {
        p.start(&opts.beatd)?;
    }
    say(&format!(
        "mode {} dir {} {}",
        opts.mode,
        dir.display(),
        backend.describe()
    ));

    // No faults before every entry has fired once: the first fire of a never-run entry is
    // "from now", not caught up, so it must happen in calm.
    let first_deadline = Instant::now() + settle + Duration::from_secs(20);
    loop {
        let lr: HashMap<String, i64> = hgetall(backend.state_url().await, "last_run")
            .await
            .unwrap_or_default();
        if ENTRIES.iter().all(|(n, _, _)| lr.contains_key(*n)) {
            break;
        }
        if Instant::now() > first_deadline {
            return Err(format!(
                "entries did not fire within the settle time; logs in {}",
                dir.display()
            ));
        }
        sleep(Duration::from_millis(200)).await;
    }

    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut crashes = 0;
    let mut bag: Vec<&'static str> = Vec::new();
    let fault_end = Instant::now() + opts.duration;
    let mut next_fault = Instant::now() + between(&mut rng, 500, 2500);
    loop {
        let now = Instant::now();
        let ending = now >= fault_end;
        // Undo faults whose time has come (all of them once the fault phase is over).
        let turn = procs::undo_due(&mut procs, &opts.beatd, &mut rng, now, ending)?;
        crashes += turn.crashes;
        if turn.term_timeouts > 0 {
            *faults.entry("term_timeout").or_default() += turn.term_timeouts;
        }
        for line in turn.said {
            say(&line);
        }
        for line in backend.undo_due(now, ending).await? {
            say(&line);
        }
        if ending {
            break;
        }
        if now >= next_fault {
            if bag.is_empty() {
                bag = procs::KINDS
                    .iter()
                    .chain(backend.kinds())
                    .copied()
                    .collect();
                bag.shuffle(&mut rng);
            }
            let kind = bag.pop().expect("refilled");
            let injected = if procs::KINDS.contains(&kind) {
                procs::inject(kind, &mut procs, &mut rng, now)
            } else {
                backend.inject(kind, &mut rng, now).await?
            };
            if let Some(msg) = injected {
                *faults.entry(kind).or_default() += 1;
                say(&msg);
            } else {
                bag.insert(0, kind); // nothing to do it to now: later in the round
            }
            next_fault = now + between(&mut rng, 500, 3000);
        }
        sleep(Duration::from_millis(50)).await;
    }

    // Everything runs again: processes still stopping are waited for, then started; the
    // mode's fault in progress is waited for.
    for line in backend.settle().await? {
        say(&line);
    }
    procs::bring_back(&mut procs, &opts.beatd, &mut faults, say).await?;

    // Recovery: wait for the entries to reach their end and the queue
    // to drain. A dead worker's unacked messages come back when a worker starts after the
    // visibility timeout, so one is restarted while some remain.
    say("fault phase over; recovering");
    let end_ms = end_at.timestamp_millis();
    let deadline = Instant::now() + recover + settle + Duration::from_secs(60);
    loop {
        let lr: HashMap<String, i64> = hgetall(backend.state_url().await, "last_run")
            .await
            .unwrap_or_default();
        let done = ENTRIES
            .iter()
            .all(|(n, _, p)| lr.get(*n).is_some_and(|t| *t >= end_ms - end_ms % p));
        if done || Instant::now() > deadline {
            break;
        }
        for p in &mut procs {
            if p.exited() {
                crashes += 1;
                say(&format!("{} exited by itself; restarting", p.name));
                p.start(&opts.beatd)?;
            }
        }
        sleep(Duration::from_millis(250)).await;
    }
    let drain_deadline = Instant::now() + VISIBILITY * 4 + Duration::from_secs(30);
    let mut unacked_since: Option<Instant> = None;
    let leftover = loop {
        let pending = backend.pending().await;
        let (queued, unacked) = pending.map_or((u64::MAX, u64::MAX), |p| (p.queued, p.unacked));
        let leftover = queued.saturating_add(unacked);
        if leftover == 0 || Instant::now() > drain_deadline {
            break leftover;
        }
        if queued == 0 && unacked > 0 && backend.restores_unacked() {
            let since = *unacked_since.get_or_insert_with(Instant::now);
            if since.elapsed() > VISIBILITY + Duration::from_secs(1) {
                // A worker restores at startup.
                let w = procs
                    .iter_mut()
                    .find(|p| p.name == "worker-0")
                    .expect("worker");
                w.stop().await;
                w.start(&opts.beatd)?;
                unacked_since = None;
                say("restarted worker-0 to restore unacked messages");
            }
        } else {
            unacked_since = None;
        }
        sleep(Duration::from_millis(250)).await;
    };

    for p in &mut procs {
        p.signal("TERM");
    }
    for p in &mut procs {
        if !p.reap_within_10s().await {
            say(&format!("{} did not stop on SIGTERM", p.name));
            *faults.entry("term_timeout").or_default() += 1;
        }
    }

    let counts_by_entry: HashMap<String, u64> =
        hgetall(backend.state_url().await, "run_count").await?;
    let mut executions: Vec<Execution> = Vec::new();
    for log in &exec_logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            match check::parse_line(line) {
                Some(x) => executions.push(x),
                None => {
                    return Err(format!("unreadable line {line:?} in {}", log.display()));
                }
            }
        }
    }
    let grid: Vec<GridEntry> = ENTRIES
        .iter()
        .map(|(n, _, p)| GridEntry {
            name: (*n).to_string(),
            period_ms: *p,
        })
        .collect();
    let counts = check::check(
        &grid,
        start_at.timestamp_millis(),
        end_ms,
        &counts_by_entry,
        &executions,
    );
    Ok(Report {
        mode: opts.mode,
        seed: opts.seed,
        duration: opts.duration,
        faults,
        counts,
        crashes,
        leftover,
        notes: backend.notes(),
        dir,
    })
}
