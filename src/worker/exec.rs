//! The `exec` task kind: runs a configured program directly (no shell, message arguments
//! never reach its command line), hands it the arguments as JSON on stdin and in
//! `BEATD_TASK_*` variables, and maps its exit to a result. Output is read with bounds so a
//! chatty program cannot exhaust memory.

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
        let mut child = cmd.spawn().map_err(|e| {
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
        let err = read_tail(child.stderr.take(), STDERR_TAIL);
        let ((), stdout, stderr, status) = tokio::join!(feed, out, err, child.wait());
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

/// Reads everything, keeping the last `limit` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * limit {
            kept.drain(..kept.len() - limit);
        }
    }
    if kept.len() > limit {
        kept.drain(..kept.len() - limit);
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
    async fn tail_keeps_the_end() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let tail = read_tail(Some(&data[..]), 1000).await;
        assert_eq!(tail, data[data.len() - 1000..]);
        let head = read_head(Some(&data[..]), 1000).await;
        assert_eq!(head, data[..1000]);
    }
}
