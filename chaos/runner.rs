//! The chaos run: a durable redis-server (`--appendonly yes --appendfsync always`), three
//! `beatd beat` replicas (one behind the flaky [`proxy`](super::proxy)), two `beatd worker`s
//! running an `exec` task that appends `scheduled_at task_id args` to the worker's own log,
//! and seeded faults at random intervals until the duration is over. Then every process is
//! brought back, the entries run to their `end_at`, the queue drains, and the
//! [checker](super::check) reads the logs and `{ns}:run_count`.

use super::check::{self, Counts, Execution, GridEntry};
use super::proxy::{self, Mode};
use beatd::testkit::RedisServer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Redis key namespace of the run.
const NS: &str = "chaos";
/// Queue the entries send to and the workers consume.
const QUEUE: &str = "chaos";
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

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
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

/// The outcome: the faults and the checker's figures.
#[derive(Debug, Clone)]
pub struct Report {
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
    /// Where logs are.
    pub dir: PathBuf,
}

impl Report {
    /// Every invariant held.
    pub fn pass(&self) -> bool {
        self.counts.pass() && self.crashes == 0 && self.leftover == 0
    }

    /// The one line of figures.
    pub fn line(&self) -> String {
        let c = &self.counts;
        let total: u64 = self.faults.values().sum();
        let kinds: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "chaos seed={} duration={}s faults={total} ({}) due={} sent={} duplicated={} \
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

/// The kinds of fault, drawn from a shuffled bag so each kind occurs once per round.
const KINDS: &[&str] = &[
    "beat_kill",
    "beat_stop",
    "beat_term",
    "worker_kill",
    "worker_stop",
    "worker_term",
    "redis_kill",
    "proxy_drop",
    "proxy_stall",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Running,
    /// SIGSTOPped; SIGCONT at the instant.
    Stopped(Instant),
    /// SIGTERM sent; kill -9 if still alive at the instant.
    Terminating(Instant),
    /// Not running; start at the instant.
    Down(Instant),
}

struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    state: State,
}

impl Proc {
    fn start(&mut self, beatd: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut cmd = Command::new(beatd);
        for (k, _) in std::env::vars() {
            if k.starts_with("BEATD_") || k == "CELERY_BROKER_URL" || k == "REDIS_URL" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(&self.args)
            .env("BEATD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", beatd.display()))?;
        self.child = Some(child);
        self.state = State::Running;
        Ok(())
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exited already (reaped)?
    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }
}

fn between(rng: &mut StdRng, lo_ms: u64, hi_ms: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo_ms..=hi_ms))
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

async fn redis_conn(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

async fn run_counts(port: u16) -> redis::RedisResult<HashMap<String, u64>> {
    let mut c = redis_conn(port).await?;
    redis::cmd("HGETALL")
        .arg(format!("{NS}:run_count"))
        .query_async(&mut c)
        .await
}

async fn last_runs(port: u16) -> HashMap<String, i64> {
    let Ok(mut c) = redis_conn(port).await else {
        return HashMap::new();
    };
    redis::cmd("HGETALL")
        .arg(format!("{NS}:last_run"))
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

/// Messages in the queue lists (every priority step) and in `unacked`.
async fn pending(port: u16) -> redis::RedisResult<(u64, u64)> {
    let mut c = redis_conn(port).await?;
    let mut queued = 0;
    for step in beatd::protocol::PRIORITY_STEPS {
        let key = beatd::protocol::priority_list_key(QUEUE, Some(step));
        let n: u64 = redis::cmd("LLEN").arg(key).query_async(&mut c).await?;
        queued += n;
    }
    let unacked: u64 = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut c)
        .await?;
    Ok((queued, unacked))
}

/// Runs the whole chaos run and checks it.
///
/// # Errors
/// When the setup fails (no redis-server, no beatd binary); a failed invariant is a
/// [`Report`] that does not pass.
#[allow(clippy::too_many_lines)]
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
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
        .map_err(|e| e.to_string())?;
    let port = redis.port();
    let url = redis.url();
    let proxy = proxy::start(([127, 0, 0, 1], port).into())
        .await
        .map_err(|e| e.to_string())?;
    let proxied = format!("redis://{}/0", proxy.addr);

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

    let mut procs = Vec::new();
    for i in 0..3 {
        let u = if i == 0 { proxied.clone() } else { url.clone() };
        procs.push(Proc {
            name: format!("beat-{i}"),
            args: [
                "beat",
                "--redis-url",
                &u,
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
            .map(String::from)
            .to_vec(),
            log: dir.join(format!("beat-{i}.log")),
            child: None,
            state: State::Running,
        });
    }
    let mut exec_logs = Vec::new();
    for i in 0..2 {
        let exec_log = dir.join(format!("executions-{i}.log"));
        let cfg = dir.join(format!("worker-{i}.toml"));
        std::fs::write(&cfg, worker_config(&exec_log)).map_err(|e| e.to_string())?;
        exec_logs.push(exec_log);
        procs.push(Proc {
            name: format!("worker-{i}"),
            args: [
                "--config",
                &cfg.display().to_string(),
                "worker",
                "--redis-url",
                &url,
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
            .map(String::from)
            .to_vec(),
            log: dir.join(format!("worker-{i}.log")),
            child: None,
            state: State::Running,
        });
    }
    for p in &mut procs {
        p.start(&opts.beatd)?;
    }
    let say = |msg: &str| {
        if opts.verbose {
            eprintln!("[chaos] {msg}");
        }
    };
    say(&format!(
        "dir {} redis {url} proxy {proxied}",
        dir.display()
    ));

    // No faults before every entry has fired once: the first fire of a never-run entry is
    // "from now", not caught up, so it must happen in calm.
    let first_deadline = Instant::now() + settle + Duration::from_secs(20);
    loop {
        let lr = last_runs(port).await;
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
    let mut redis_up_at: Option<Instant> = None;
    let mut proxy_pass_at: Option<Instant> = None;
    let fault_end = Instant::now() + opts.duration;
    let mut next_fault = Instant::now() + between(&mut rng, 500, 2500);
    loop {
        let now = Instant::now();
        let ending = now >= fault_end;
        // Undo faults whose time has come (all of them once the fault phase is over).
        for p in &mut procs {
            let crashed = p.state == State::Running && p.exited();
            match p.state {
                State::Stopped(at) if ending || now >= at => {
                    p.signal("CONT");
                    p.state = State::Running;
                    say(&format!("{} continued", p.name));
                }
                State::Terminating(at) => {
                    if p.exited() {
                        p.child = None;
                        let back = if ending {
                            now
                        } else {
                            now + between(&mut rng, 0, 2000)
                        };
                        p.state = State::Down(back);
                    } else if now >= at {
                        say(&format!("{} did not stop on SIGTERM; kill -9", p.name));
                        *faults.entry("term_timeout").or_default() += 1;
                        p.kill9();
                        p.state = State::Down(now);
                    }
                }
                State::Down(at) if ending || now >= at => {
                    p.start(&opts.beatd)?;
                    say(&format!("{} started", p.name));
                }
                State::Running if crashed => {
                    crashes += 1;
                    say(&format!("{} exited by itself; restarting", p.name));
                    p.start(&opts.beatd)?;
                }
                _ => {}
            }
        }
        if redis_up_at.is_some_and(|at| ending || now >= at) {
            tokio::task::block_in_place(|| redis.restart()).map_err(|e| e.to_string())?;
            redis_up_at = None;
            say("redis restarted");
        }
        if proxy_pass_at.is_some_and(|at| ending || now >= at) {
            let _ = proxy.mode.send(Mode::Pass);
            proxy_pass_at = None;
            say("proxy passes");
        }
        if ending {
            break;
        }
        if now >= next_fault {
            if bag.is_empty() {
                bag = KINDS.to_vec();
                bag.shuffle(&mut rng);
            }
            let kind = bag.pop().expect("refilled");
            let injected = inject(kind, &mut procs, &mut rng, &redis, &proxy, now);
            let injected = match injected {
                Inject::Proc(msg) => Some(msg),
                Inject::Redis(up) => {
                    redis.kill();
                    redis_up_at = Some(up);
                    Some("redis killed".to_string())
                }
                Inject::Proxy(mode, until) => {
                    let _ = proxy.mode.send(mode);
                    proxy_pass_at = Some(until);
                    Some(format!("proxy {mode:?}"))
                }
                Inject::Nothing => {
                    bag.insert(0, kind); // nothing to do it to now: later in the round
                    None
                }
            };
            if let Some(msg) = injected {
                *faults.entry(kind).or_default() += 1;
                say(&msg);
            }
            next_fault = now + between(&mut rng, 500, 3000);
        }
        sleep(Duration::from_millis(50)).await;
    }

    // Everything runs again: processes still stopping are waited for, then started.
    for p in &mut procs {
        match p.state {
            State::Stopped(_) => {
                p.signal("CONT");
                p.state = State::Running;
            }
            State::Terminating(_) => {
                for _ in 0..300 {
                    if p.exited() {
                        break;
                    }
                    sleep(Duration::from_millis(50)).await;
                }
                if !p.exited() {
                    say(&format!("{} did not stop on SIGTERM; kill -9", p.name));
                    *faults.entry("term_timeout").or_default() += 1;
                }
                p.kill9();
                p.start(&opts.beatd)?;
            }
            State::Down(_) => p.start(&opts.beatd)?,
            State::Running => {}
        }
    }

    // Recovery: wait for the entries to reach their end and the queue
    // to drain. A dead worker's unacked messages come back when a worker starts after the
    // visibility timeout, so one is restarted while some remain.
    say("fault phase over; recovering");
    let end_ms = end_at.timestamp_millis();
    let deadline = Instant::now() + recover + settle + Duration::from_secs(60);
    loop {
        let lr = last_runs(port).await;
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
        let (queued, unacked) = pending(port).await.unwrap_or((u64::MAX, u64::MAX));
        let leftover = queued.saturating_add(unacked);
        if leftover == 0 || Instant::now() > drain_deadline {
            break leftover;
        }
        if queued == 0 && unacked > 0 {
            let since = *unacked_since.get_or_insert_with(Instant::now);
            if since.elapsed() > VISIBILITY + Duration::from_secs(1) {
                // A worker restores at startup.
                let w = procs
                    .iter_mut()
                    .find(|p| p.name == "worker-0")
                    .expect("worker");
                w.signal("TERM");
                for _ in 0..200 {
                    if w.exited() {
                        break;
                    }
                    sleep(Duration::from_millis(50)).await;
                }
                w.kill9();
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
        for _ in 0..200 {
            if p.exited() {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        if !p.exited() {
            say(&format!("{} did not stop on SIGTERM", p.name));
            *faults.entry("term_timeout").or_default() += 1;
        }
        p.kill9();
    }

    let counts_by_entry = run_counts(port).await.map_err(|e| e.to_string())?;
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
    drop(redis);
    Ok(Report {
        seed: opts.seed,
        duration: opts.duration,
        faults,
        counts,
        crashes,
        leftover,
        dir,
    })
}

enum Inject {
    Proc(String),
    Redis(Instant),
    Proxy(Mode, Instant),
    Nothing,
}

fn inject(
    kind: &str,
    procs: &mut [Proc],
    rng: &mut StdRng,
    redis: &RedisServer,
    proxy: &proxy::Proxy,
    now: Instant,
) -> Inject {
    let (role, action) = kind.split_once('_').expect("kind");
    match role {
        "redis" => {
            if !redis.is_running() {
                return Inject::Nothing;
            }
            Inject::Redis(now + between(rng, 500, 4000))
        }
        "proxy" => {
            if *proxy.mode.borrow() != Mode::Pass {
                return Inject::Nothing;
            }
            if action == "drop" {
                Inject::Proxy(Mode::Drop, now + between(rng, 0, 3000))
            } else {
                // Beyond the lock TTL: the beat behind the proxy loses the lock unawares, and
                // its held requests arrive late.
                Inject::Proxy(Mode::Stall, now + between(rng, 2000, 8000))
            }
        }
        _ => {
            let running: Vec<usize> = procs
                .iter()
                .enumerate()
                .filter(|(_, p)| p.name.starts_with(role) && p.state == State::Running)
                .map(|(i, _)| i)
                .collect();
            let Some(&i) = running.get(rng.random_range(0..running.len().max(1))) else {
                return Inject::Nothing;
            };
            let p = &mut procs[i];
            match action {
                "kill" => {
                    p.kill9();
                    p.state = State::Down(now + between(rng, 0, 3000));
                    Inject::Proc(format!("{} kill -9", p.name))
                }
                "stop" => {
                    let d = if role == "beat" {
                        between(rng, 4000, 8000) // beyond the 3 s lock TTL
                    } else {
                        between(rng, 2000, 8000) // around the 5 s visibility timeout
                    };
                    p.signal("STOP");
                    p.state = State::Stopped(now + d);
                    Inject::Proc(format!("{} SIGSTOP for {d:?}", p.name))
                }
                _ => {
                    p.signal("TERM");
                    p.state = State::Terminating(now + Duration::from_secs(15));
                    Inject::Proc(format!("{} SIGTERM", p.name))
                }
            }
        }
    }
}
