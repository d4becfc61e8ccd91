//! Helpers shared by the integration modules: run the real binary with a clean environment,
//! temp dirs, polling with a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The built `beatd` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_beatd"))
}

/// Variables that would point a test's beatd at some other Redis or config.
const INHERITED: &[&str] = &[
    "BEATD_REDIS_URL",
    "BEATD_BROKER_URL",
    "CELERY_BROKER_URL",
    "BEATD_RESULT_BACKEND",
    "CELERY_RESULT_BACKEND",
    "REDIS_URL",
    "BEATD_CONFIG",
    "BEATD_SCHEDULES",
    "BEATD_STATE_FILE",
    "BEATD_HTTP_ADDR",
    "BEATD_NAMESPACE",
    "BEATD_LOG_FORMAT",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "STATE_DIRECTORY",
    "BEATD_TIMEZONE",
    "CELERY_TIMEZONE",
    "BEATD_STRICT_SCHEDULE",
];

/// `beatd` with a clean environment, run in `dir`.
pub fn beatd(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir);
    for k in INHERITED {
        cmd.env_remove(k);
    }
    cmd.env("BEATD_LOG", "info");
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs to completion and returns the output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run beatd")
}

/// Text of stdout and stderr.
pub fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Spawns with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("spawn beatd")
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a signal to a child.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// Waits for a child to exit within `timeout`; kills it otherwise and fails.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temp dir with a `schedules/` subdirectory holding `files`.
pub fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}
