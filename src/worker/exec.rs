//! The `exec` task kind: runs a configured program directly (no shell, message arguments
//! never reach its command line), hands it the arguments as JSON on stdin and in
//! `BEATD_TASK_*` variables, and maps its exit to a result. Interim states come as JSON lines
//! on the fd named by `BEATD_TASK_PROGRESS_FD`, so stdout stays the result; each stderr line
//! is logged as it comes. Output is read with bounds so a chatty program cannot exhaust
//! memory or flood the log.

use super::progress::{RejectedUpdate, StateUpdates, MAX_UPDATE_BYTES};
use super::task::{Handler, TaskError, TaskRequest, TaskResult};
use super::Error;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Most stdout kept as the result.
const STDOUT_LIMIT: usize = 1 << 20;
/// Largest argument JSON also passed in the environment.
const ENV_LIMIT: usize = 64 << 10;
/// Most stderr kept (its tail) as the traceback.
const STDERR_TAIL: usize = 8 << 10;
/// Longest stderr line logged whole; longer ones are cut.
const LOG_LINE: usize = 4 << 10;
/// Most stderr lines logged per run; the rest only counted.
const LOG_LINES: u64 = 1000;
/// Most malformed progress lines logged per run; the rest only counted.
const BAD_PROGRESS_LOGGED: u64 = 5;

/// Runs one configured program per task.
#[derive(Debug, Clone)]
pub(crate) struct ExecHandler {
    /// Program and fixed arguments.
    command: Vec<String>,
    /// Extra environment.
    env: BTreeMap<String, String>,
    /// Working directory.
    cwd: Option<PathBuf>,
}

impl ExecHandler {
    pub(crate) fn new(
        task: &str,
        command: &[String],
        env: &BTreeMap<String, String>,
        cwd: Option<&Path>,
    ) -> Result<Self, Error> {
        if command.first().is_none_or(String::is_empty) {
            return Err(Error::EmptyCommand { task: task.into() });
        }
        Ok(Self {
            command: command.to_vec(),
            env: env.clone(),
            cwd: cwd.map(Path::to_path_buf),
        })
    }
}

#[async_trait::async_trait]
impl Handler for ExecHandler {
    async fn call(&self, req: TaskRequest) -> TaskResult {
        let args = Value::Array(req.args.clone()).to_string();
        let kwargs = Value::Object(req.kwargs.clone()).to_string();
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .envs(&self.env)
            .env("BEATD_TASK_ID", &req.id)
            .env("BEATD_TASK_NAME", &req.task)
            .env("BEATD_TASK_RETRIES", req.retries.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A time limit or an immediate shutdown drops this future: the child must die.
            .kill_on_drop(true);
        // Its own process group, so whatever it spawns dies with it (see `GroupKill`).
        #[cfg(unix)]
        cmd.process_group(0);
        // Linux refuses a single variable over 128 KiB (E2BIG) and the task would not start;
        // big arguments are on stdin only.
        for (name, value) in [("BEATD_TASK_ARGS", &args), ("BEATD_TASK_KWARGS", &kwargs)] {
            if value.len() <= ENV_LIMIT {
                cmd.env(name, value);
            }
        }
        if let Some(at) = &req.scheduled_at {
            cmd.env("BEATD_TASK_SCHEDULED_AT", at);
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let (spawned, progress) = spawn_with_progress(&mut cmd);
        let mut child = spawned.map_err(|e| {
            TaskError::fatal(
                "ExecFailed",
                format!("cannot run {:?}: {e}", self.command[0]),
            )
        })?;
        let mut group = GroupKill(child.id());
        let input = json!({"args": req.args, "kwargs": req.kwargs}).to_string();
        let stdin = child.stdin.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A program that ignores stdin closes it early: that is not a failure.
                let _ = stdin.write_all(input.as_bytes()).await;
            }
        };
        let out = read_head(child.stdout.take(), STDOUT_LIMIT);
        let err = log_stderr(child.stderr.take(), &req);
        // Progress is read while the program runs and not waited for after: a grandchild
        // left holding the fd must not hold the task, and a state after the end is moot.
        let updates = read_progress(progress, &req.updates, &req);
        let run = async { tokio::join!(feed, out, err, child.wait()) };
        tokio::pin!(updates, run);
        let mut updates_ended = false;
        let ((), stdout, stderr, status) = loop {
            tokio::select! {
                r = &mut run => break r,
                () = &mut updates, if !updates_ended => updates_ended = true,
            }
        };
        group.0 = None; // reaped: the id may be reused, never signal it again
        let status = status.map_err(|e| TaskError::fatal("ExecFailed", e.to_string()))?;
        if status.success() {
            return Ok(parse_output(&stdout));
        }
        let tail = String::from_utf8_lossy(&stderr).into_owned();
        let what = status.code().map_or_else(
            || format!("{:?} killed by a signal", self.command[0]),
            |c| format!("{:?} exited with status {c}", self.command[0]),
        );
        let last = tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let msg = if last.is_empty() {
            what
        } else {
            format!("{what}: {last}")
        };
        Err(TaskError::retryable("ExecFailed", msg).with_traceback(tail))
    }
}

/// Kills the task's process group when the run is abandoned before the child was reaped
/// (time limit, immediate shutdown); `kill_on_drop` alone would spare grandchildren, such as
/// the programs a shell script started.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Held while a progress pipe's write end is inheritable: only the child spawned meanwhile
/// gets it. (Setting it up in the child instead, after fork, would take std off its
/// `posix_spawn` path; forking a large process is much slower.)
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Spawns `cmd` with the write end of a progress pipe inherited, its number announced in
/// `BEATD_TASK_PROGRESS_FD`; returns the child and the read end (`None`, and no variable,
/// when the pipe cannot be made).
fn spawn_with_progress(
    cmd: &mut Command,
) -> (
    std::io::Result<tokio::process::Child>,
    Option<tokio::net::unix::pipe::Receiver>,
) {
    use std::os::fd::AsRawFd;
    let made = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(std::io::Error::from)
        .and_then(|(read, write)| {
            Ok((
                tokio::net::unix::pipe::Receiver::from_owned_fd(read)?,
                write,
            ))
        });
    let (rx, write) = match made {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "cannot make the progress pipe; the task runs without");
            return (cmd.spawn(), None);
        }
    };
    cmd.env("BEATD_TASK_PROGRESS_FD", write.as_raw_fd().to_string());
    let spawned = {
        let _only_this_child = SPAWNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let spawned = match rustix::io::fcntl_setfd(&write, rustix::io::FdFlags::empty()) {
            Ok(()) => cmd.spawn(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the progress pipe over; the task runs without");
                cmd.env_remove("BEATD_TASK_PROGRESS_FD");
                cmd.spawn()
            }
        };
        // Closed still under the lock: no other child can inherit it.
        drop(write);
        spawned
    };
    (spawned, Some(rx))
}

/// Reads the progress pipe line by line into `updates`; malformed lines are logged (a few per
/// run) and ignored.
async fn read_progress(
    pipe: Option<tokio::net::unix::pipe::Receiver>,
    updates: &StateUpdates,
    req: &TaskRequest,
) {
    let mut bad: u64 = 0;
    for_each_line(
        pipe,
        MAX_UPDATE_BYTES,
        |line, cut| {
            if line.iter().all(u8::is_ascii_whitespace) {
                return;
            }
            let checked = if cut {
                Err(RejectedUpdate::TooLarge(line.len()))
            } else {
                updates.update_from_line(line)
            };
            if let Err(e) = checked {
                bad += 1;
                if bad <= BAD_PROGRESS_LOGGED {
                    let text = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                    tracing::warn!(task_id = %req.id, task = %req.task, error = %e, line = %text,
                    "ignored a malformed progress line");
                }
            }
        },
        |_| {},
    )
    .await;
    if bad > BAD_PROGRESS_LOGGED {
        tracing::warn!(task_id = %req.id, task = %req.task, ignored = bad,
            "ignored malformed progress lines (only the first {BAD_PROGRESS_LOGGED} logged)");
    }
}

/// Logs each stderr line as it comes (cut at [`LOG_LINE`], at most [`LOG_LINES`] a run) and
/// returns the last [`STDERR_TAIL`] bytes for the traceback.
async fn log_stderr(pipe: Option<impl AsyncRead + Unpin>, req: &TaskRequest) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut lines: u64 = 0;
    for_each_line(
        pipe,
        LOG_LINE,
        |line, cut| {
            lines += 1;
            if lines <= LOG_LINES {
                let text = String::from_utf8_lossy(line);
                let text = text.trim_end_matches('\r');
                if cut {
                    tracing::info!(task_id = %req.id, task = %req.task, line = %text,
                        "task stderr (line cut)");
                } else {
                    tracing::info!(task_id = %req.id, task = %req.task, line = %text,
                        "task stderr");
                }
            } else if lines == LOG_LINES + 1 {
                tracing::warn!(task_id = %req.id, task = %req.task,
                    "task stderr: further lines are not logged (limit {LOG_LINES} a run)");
            }
        },
        |chunk| {
            tail.extend_from_slice(chunk);
            if tail.len() > 2 * STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        },
    )
    .await;
    if tail.len() > STDERR_TAIL {
        tail.drain(..tail.len() - STDERR_TAIL);
    }
    tail
}

/// Reads `pipe` to its end, calling `raw` with every chunk and `line` with every line
/// (without its newline; at most `max` bytes of it, `true` when it was cut).
async fn for_each_line(
    pipe: Option<impl AsyncRead + Unpin>,
    max: usize,
    mut line: impl FnMut(&[u8], bool),
    mut raw: impl FnMut(&[u8]),
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 8192];
    let mut current = Vec::new();
    let mut cut = false;
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        raw(&buf[..n]);
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (part, ended) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            let room = max.saturating_sub(current.len());
            current.extend_from_slice(&part[..part.len().min(room)]);
            cut |= part.len() > room;
            match ended {
                Some(next) => {
                    line(&current, cut);
                    current.clear();
                    cut = false;
                    rest = &rest[next..];
                }
                None => rest = &[],
            }
        }
    }
    if !current.is_empty() {
        line(&current, cut);
    }
}

/// stdout as JSON when it parses, else the trimmed text (`null` when empty).
fn parse_output(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string()))
}

/// Reads everything, keeping the first `limit` bytes (draining the rest so the child never
/// blocks on a full pipe).
async fn read_head(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_json_when_it_parses() {
        assert_eq!(parse_output(b" {\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(parse_output(b"hello world\n"), json!("hello world"));
        assert_eq!(parse_output(b"42"), json!(42));
        assert_eq!(parse_output(b"\n"), Value::Null);
    }

    #[tokio::test]
    async fn head_keeps_the_start() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let head = read_head(Some(&data[..]), 1000).await;
        assert_eq!(head, data[..1000]);
    }

    #[tokio::test]
    async fn lines_are_split_and_cut() {
        let long = "y".repeat(20_000);
        let data = format!("one\n\n{long}\ntwo");
        let mut lines = Vec::new();
        let mut bytes = 0;
        for_each_line(
            Some(data.as_bytes()),
            10,
            |l, cut| lines.push((String::from_utf8_lossy(l).into_owned(), cut)),
            |c| bytes += c.len(),
        )
        .await;
        assert_eq!(bytes, data.len());
        let want = [
            ("one", false),
            ("", false),
            ("yyyyyyyyyy", true),
            ("two", false),
        ];
        let got: Vec<(&str, bool)> = lines.iter().map(|(l, c)| (l.as_str(), *c)).collect();
        assert_eq!(got, want);
    }
}
