//! A private `rabbitmq-server` node on free loopback ports, for tests: its own config file
//! (the machine's `/etc/rabbitmq/rabbitmq.conf` pins a listener of its own), node name,
//! distribution port, data and log directories (owned by the `rabbitmq` user, which Debian's
//! script drops to), and no plugins, so it starts in seconds. A vhost per test keeps tests
//! of one binary apart on one node.
//!
//! The node runs under a small shell guard that stops it when the process that started it
//! is gone, so a node kept in a `static` for a whole test binary does not outlive the binary.

use std::io;
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running node.
#[derive(Debug)]
pub struct RabbitServer {
    port: u16,
    dist_port: u16,
    node: String,
    dir: PathBuf,
    guard: Option<Child>,
}

impl RabbitServer {
    /// Starts a node on free ports and waits until it serves AMQP (up to 120 s).
    ///
    /// # Errors
    /// When `rabbitmq-server` is missing (the message says how to install it: tests never
    /// skip for lack of it) or the node does not come up.
    pub fn start() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "beatd-rabbit-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        for d in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let mut server = Self {
            port: super::free_port()?,
            dist_port: super::free_port()?,
            node: format!(
                "beatd-{}-{}@localhost",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            dir,
            guard: None,
        };
        server.boot()?;
        Ok(server)
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            // without the .conf suffix, as rabbitmq-server wants it
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"));
    }

    fn boot(&mut self) -> io::Result<()> {
        std::fs::write(
            self.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n",
                self.port
            ),
        )?;
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n")?;
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&self.dir)
            .status()?;
        if !chown.success() {
            return Err(io::Error::other(
                "chown rabbitmq: no rabbitmq user; install rabbitmq-server (apt-get install \
                 rabbitmq-server) or run scripts/test.sh, which does",
            ));
        }
        // The guard: runs the node, and stops it once the parent (this process) is gone.
        let script = r#"rabbitmq-server >"$LOGDIR/server.out" 2>&1 & srv=$!
while kill -0 "$PARENT" 2>/dev/null && kill -0 "$srv" 2>/dev/null; do sleep 1; done
rabbitmqctl -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || kill -9 "$srv""#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script])
            .env("PARENT", std::process::id().to_string())
            .env("LOGDIR", self.dir.join("log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.env(&mut cmd);
        self.guard = Some(cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot run sh for rabbitmq-server: {e}"))
        })?);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Some(status) = self
                .guard
                .as_mut()
                .and_then(|g| g.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "rabbitmq-server exited ({status}): {}",
                    self.log_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "rabbitmq-server did not listen on {} within 120 s: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ctl(&["await_startup"])?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("log/server.out")).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text[start..].to_owned()
    }

    /// Runs `rabbitmqctl -n <node> ARGS`; its stdout.
    ///
    /// # Errors
    /// When it fails; the message has its output.
    pub fn ctl(&self, args: &[&str]) -> io::Result<String> {
        let mut cmd = Command::new("rabbitmqctl");
        cmd.arg("-n").arg(&self.node).args(args);
        self.env(&mut cmd);
        let out = cmd.stdin(Stdio::null()).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "rabbitmqctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates `vhost` with every permission for `guest`; its URL.
    ///
    /// # Errors
    /// When `rabbitmqctl` fails.
    pub fn vhost(&self, vhost: &str) -> io::Result<String> {
        self.ctl(&["add_vhost", vhost])?;
        self.ctl(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"])?;
        Ok(format!(
            "amqp://guest:guest@127.0.0.1:{}/{vhost}",
            self.port
        ))
    }

    /// The AMQP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's private directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `kill -9` of the node: no clean shutdown, as a crash or an OOM kill leaves it; the
    /// next [`RabbitServer::restart`] recovers durable queues and persistent messages.
    ///
    /// # Errors
    /// When the node's OS pid cannot be read (it is not running).
    pub fn kill(&mut self) -> io::Result<()> {
        let out = self.ctl(&["eval", "os:getpid()."])?;
        let pid = out.trim().trim_matches('"').to_owned();
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(io::Error::other(format!("no pid from the node: {out:?}")));
        }
        Command::new("kill").args(["-9", &pid]).status()?;
        // The guard sees the node gone within a second and exits; its process group (the
        // guard and what it started) is killed if it lingers.
        if let Some(mut g) = self.guard.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while g.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let group = format!("-{}", g.id());
                    Command::new("kill").args(["-9", "--", &group]).status()?;
                    let _ = g.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Stops the node (`rabbitmqctl stop`) and its guard; nothing to do once killed.
    pub fn stop(&mut self) {
        if self.guard.is_none() {
            return;
        }
        let _ = self.ctl(&["stop"]);
        if let Some(mut g) = self.guard.take() {
            let _ = g.wait();
        }
    }

    /// Stops the node and starts it again on the same ports, with its data (durable queues
    /// and persistent messages survive).
    ///
    /// # Errors
    /// As [`RabbitServer::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.boot()
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
