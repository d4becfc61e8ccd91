//! The `beatd` processes of a chaos run (beats and workers) and the faults done to them,
//! shared by every mode: `kill -9`, SIGSTOP/SIGCONT, SIGTERM-and-restart, each undone at a
//! seeded time, and a process that exits without being told to counted as a crash.

use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// The process fault kinds, in every mode.
pub const KINDS: &[&str] = &[
    "beat_kill",
    "beat_stop",
    "beat_term",
    "worker_kill",
    "worker_stop",
    "worker_term",
];

/// A duration drawn between `lo_ms` and `hi_ms`.
pub fn between(rng: &mut StdRng, lo_ms: u64, hi_ms: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo_ms..=hi_ms))
}

/// Where a process is in its fault cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// Running as it should.
    Running,
    /// SIGSTOPped; SIGCONT at the instant.
    Stopped(Instant),
    /// SIGTERM sent; kill -9 if still alive at the instant.
    Terminating(Instant),
    /// Not running; start at the instant.
    Down(Instant),
}

/// One `beatd` process the run starts, faults and restarts.
pub struct Proc {
    /// `beat-0`, `worker-1`: the role is the part before the dash.
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Its fault state.
    pub state: State,
}

impl Proc {
    /// A process not started yet; its output is appended to `log`.
    pub fn new(name: String, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name,
            args,
            log,
            child: None,
            state: State::Running,
        }
    }

    /// Starts it (again) with a clean environment: nothing from the shell the run started in.
    ///
    /// # Errors
    /// When the log cannot be opened or the binary cannot run.
    pub fn start(&mut self, beatd: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut cmd = Command::new(beatd);
        for (k, _) in std::env::vars() {
            if k.starts_with("BEATD_")
                || ["CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"].contains(&k.as_str())
            {
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

    /// Sends `sig` (`STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exited already (reaped)?
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// SIGTERM, up to 10 s for it to exit, then `kill -9`; `false` when it had to be killed.
    pub async fn stop(&mut self) -> bool {
        self.signal("TERM");
        self.reap_within_10s().await
    }

    /// Up to 10 s for it to exit (after a SIGTERM sent already), then `kill -9`; `false`
    /// when it had to be killed.
    pub async fn reap_within_10s(&mut self) -> bool {
        for _ in 0..200 {
            if self.exited() {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let stopped = self.exited();
        self.kill9();
        stopped
    }
}

/// What happened to the processes in one turn of the fault loop.
#[derive(Debug, Default)]
pub struct Turn {
    /// Lines to print.
    pub said: Vec<String>,
    /// Processes that exited by themselves (restarted).
    pub crashes: u64,
    /// SIGTERMs that needed a `kill -9`.
    pub term_timeouts: u64,
}

/// Undoes the process faults whose time has come (all of them when `ending`).
///
/// # Errors
/// When a process cannot be started again.
pub fn undo_due(
    procs: &mut [Proc],
    beatd: &Path,
    rng: &mut StdRng,
    now: Instant,
    ending: bool,
) -> Result<Turn, String> {
    let mut turn = Turn::default();
    for p in procs {
        let crashed = p.state == State::Running && p.exited();
        match p.state {
            State::Stopped(at) if ending || now >= at => {
                p.signal("CONT");
                p.state = State::Running;
                turn.said.push(format!("{} continued", p.name));
            }
            State::Terminating(at) => {
                if p.exited() {
                    p.child = None;
                    let back = if ending {
                        now
                    } else {
                        now + between(rng, 0, 2000)
                    };
                    p.state = State::Down(back);
                } else if now >= at {
                    turn.said
                        .push(format!("{} did not stop on SIGTERM; kill -9", p.name));
                    turn.term_timeouts += 1;
                    p.kill9();
                    p.state = State::Down(now);
                }
            }
            State::Down(at) if ending || now >= at => {
                p.start(beatd)?;
                turn.said.push(format!("{} started", p.name));
            }
            State::Running if crashed => {
                turn.crashes += 1;
                turn.said
                    .push(format!("{} exited by itself; restarting", p.name));
                p.start(beatd)?;
            }
            _ => {}
        }
    }
    Ok(turn)
}

/// Does the process fault `kind` (`<role>_<action>`) to a running process of that role;
/// `None` when none is running.
pub fn inject(kind: &str, procs: &mut [Proc], rng: &mut StdRng, now: Instant) -> Option<String> {
    let (role, action) = kind.split_once('_').expect("kind");
    let running: Vec<usize> = procs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.name.starts_with(role) && p.state == State::Running)
        .map(|(i, _)| i)
        .collect();
    let &i = running.get(rng.random_range(0..running.len().max(1)))?;
    let p = &mut procs[i];
    Some(match action {
        "kill" => {
            p.kill9();
            p.state = State::Down(now + between(rng, 0, 3000));
            format!("{} kill -9", p.name)
        }
        "stop" => {
            let d = if role == "beat" {
                between(rng, 4000, 8000) // beyond the 3 s lock TTL
            } else {
                between(rng, 2000, 8000) // around the 5 s visibility timeout
            };
            p.signal("STOP");
            p.state = State::Stopped(now + d);
            format!("{} SIGSTOP for {d:?}", p.name)
        }
        _ => {
            p.signal("TERM");
            p.state = State::Terminating(now + Duration::from_secs(15));
            format!("{} SIGTERM", p.name)
        }
    })
}

/// After the fault phase: every process runs again (those still stopping are waited for).
///
/// # Errors
/// When a process cannot be started again.
pub async fn bring_back(
    procs: &mut [Proc],
    beatd: &Path,
    faults: &mut BTreeMap<&'static str, u64>,
    say: impl Fn(&str),
) -> Result<(), String> {
    for p in procs {
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
                p.start(beatd)?;
            }
            State::Down(_) => p.start(beatd)?,
            State::Running => {}
        }
    }
    Ok(())
}
