//! Real processes for tests and benchmarks: a private `redis-server` on a free loopback port
//! that a test can kill and restart, and a private RabbitMQ node ([`rabbit`]). Never mocks, never the machine's shared Redis.
//!
//! Public (not `cfg(test)`) so integration tests, benchmarks and the chaos run share it.

pub mod rabbit;

pub use rabbit::RabbitServer;
pub mod certs;
pub mod sentinel;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process bound to `127.0.0.1:<port>`, with nothing persisted
/// unless the caller asks for it through `extra_args`.
#[derive(Debug)]
pub struct RedisServer {
    /// The TCP port it listens on; kept across restarts.
    port: u16,
    /// The running process, `None` while killed.
    child: Option<Child>,
    /// Private working directory (logs, optional dump files), removed on drop.
    dir: PathBuf,
    /// Extra arguments given at every (re)start, e.g. `--requirepass x`.
    extra_args: Vec<String>,
}

/// Picks a currently free loopback TCP port.
///
/// # Errors
/// When no socket can be bound.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server on a free port.
    ///
    /// # Errors
    /// When `redis-server` is missing from `PATH` or does not come up within 10 s; the
    /// message says how to install it, because tests never skip for lack of Redis.
    pub fn start() -> io::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server on a free port with extra `redis-server` arguments.
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn start_with(extra_args: &[&str]) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "beatd-redis-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut last_err = None;
        // A port picked free can be taken by someone else before redis binds it: retry.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port()?,
                child: None,
                dir: dir.clone(),
                extra_args: extra_args.iter().map(ToString::to_string).collect(),
            };
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.dir = PathBuf::new(); // keep the dir for the next attempt
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// The TCP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's private directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `kill -9` the server (no shutdown save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running process's pid (for `kill -STOP`).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Replaces the extra arguments the next [`RedisServer::restart`] starts with (e.g. a
    /// killed primary coming back as `--replicaof` the new one).
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(ToString::to_string).collect();
    }

    /// Whether the process is running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]).
    ///
    /// # Errors
    /// When the process cannot be spawned or does not accept connections within 10 s.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot run redis-server ({e}); install it (apt-get install redis-server) \
                         or run the README's test command, which does"
                    ),
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "redis-server exited early: {status}"
                )));
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                // Parallel tests pick ports too: what answers must be this child, not another
                // test's server that took the port first (ours then exits on its bind error,
                // and the test meets a dead port once the other one stops).
                let ours = self.child.as_ref().map(std::process::Child::id);
                match server_pid(stream) {
                    Some(pid) if Some(pid) == ours => return Ok(()),
                    // No INFO without AUTH (requirepass, ACL): ours is the one answering if it
                    // is still alive a moment later (a bind error ends it at once).
                    None => {
                        std::thread::sleep(Duration::from_millis(100));
                        let alive = self
                            .child
                            .as_mut()
                            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                        if alive {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                }
                self.kill();
                return Err(io::Error::other(format!(
                    "port {} is another redis-server's",
                    self.port
                )));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(io::Error::other(
                    "redis-server did not accept connections in 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `process_id` in `INFO server` of the Redis at the other end of `stream`.
fn server_pid(mut stream: TcpStream) -> Option<u32> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\r\nrun_id:") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_kills_and_restarts_on_the_same_port() {
        let mut server = RedisServer::start().expect("redis-server");
        let port = server.port();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        server.restart().expect("restart");
        assert_eq!(server.port(), port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    }
}
