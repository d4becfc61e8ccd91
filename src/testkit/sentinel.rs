//! A Sentinel-managed Redis for tests: a primary, a replica and three Sentinels on free
//! loopback ports (quorum 2, `down-after-milliseconds` 1000, `failover-timeout` 3000), so a
//! `kill -9` of the primary is followed by a promotion within a few seconds. Sentinels run as
//! `redis-server FILE.conf --sentinel`, each with its own writable config file.

use super::{free_port, RedisServer};
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name the Sentinels monitor the primary under.
pub const MASTER_NAME: &str = "beatdtest";

/// One primary, one replica, three Sentinels.
#[derive(Debug)]
pub struct SentinelSet {
    /// The data nodes; which one is the master changes with failovers.
    pub nodes: Vec<RedisServer>,
    sentinels: Vec<SentinelProc>,
    /// Holds the Sentinels' config files; removed on drop.
    dir: PathBuf,
    /// Extra `sentinel.conf` lines (a TLS listener).
    sentinel_conf: String,
}

#[derive(Debug)]
struct SentinelProc {
    port: u16,
    /// The TLS listener's port, when started with certificates.
    tls_port: Option<u16>,
    child: Child,
}

/// Extra arguments every data node gets: a node that lost its master keeps no stale data
/// visible, and `WAIT` has a replica to count.
const NODE_ARGS: &[&str] = &["--replica-serve-stale-data", "no"];

impl SentinelSet {
    /// Starts a primary, one replica and three Sentinels, and waits until every Sentinel
    /// knows the replica and the other two Sentinels (before that, a failover could not
    /// happen).
    ///
    /// # Errors
    /// When a process cannot start or the set does not form within 30 s.
    pub fn start() -> io::Result<Self> {
        Self::start_with_replicas(1)
    }

    /// [`SentinelSet::start`] with `replicas` replicas: with two, a promoted primary still
    /// has a replica for `WAIT` while the killed one is down.
    ///
    /// # Errors
    /// As [`SentinelSet::start`].
    pub fn start_with_replicas(replicas: usize) -> io::Result<Self> {
        Self::start_inner(replicas, None)
    }

    /// [`SentinelSet::start`] with each Sentinel also listening with TLS (certificate
    /// `server` of `certs`, no client certificates asked); see
    /// [`SentinelSet::sentinel_tls_ports`].
    ///
    /// # Errors
    /// As [`SentinelSet::start`].
    pub fn start_with_tls_sentinels(certs: &super::certs::TestCerts) -> io::Result<Self> {
        Self::start_inner(1, Some(certs))
    }

    fn start_inner(replicas: usize, certs: Option<&super::certs::TestCerts>) -> io::Result<Self> {
        let primary = RedisServer::start_with(NODE_ARGS)?;
        let pport = primary.port().to_string();
        let mut replica_args = NODE_ARGS.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", pport.as_str()]);
        let mut nodes = vec![primary];
        for _ in 0..replicas.max(1) {
            nodes.push(RedisServer::start_with(&replica_args)?);
        }
        let dir = std::env::temp_dir().join(format!(
            "beatd-sentinel-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let sentinel_conf = certs.map_or(String::new(), |c| {
            format!(
                "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
                c.cert("server").display(),
                c.key("server").display(),
                c.cert("ca").display()
            )
        });
        let mut set = Self {
            nodes,
            sentinels: Vec::new(),
            dir,
            sentinel_conf,
        };
        set.wait_replicated(replicas.max(1), Duration::from_secs(20))?;
        for i in 0..3 {
            let proc = set.start_sentinel(i, &pport)?;
            set.sentinels.push(proc);
        }
        set.wait_formed(Duration::from_secs(30))?;
        Ok(set)
    }

    fn start_sentinel(&self, i: usize, primary_port: &str) -> io::Result<SentinelProc> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let tls_port = if self.sentinel_conf.is_empty() {
                None
            } else {
                Some(free_port()?)
            };
            let tls = tls_port.map_or(String::new(), |p| {
                format!("tls-port {p}\n{}", self.sentinel_conf)
            });
            let conf = self.dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\n{tls}\
                     logfile {log}\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    log = self.dir.join(format!("sentinel-{i}.log")).display(),
                    dir = self.dir.display(),
                ),
            )?;
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    last = Some(io::Error::other("sentinel exited early (port taken?)"));
                    break;
                }
                // Our sentinel, not another test's server that took the port: it answers
                // SENTINEL about our master.
                let ours = query::<Vec<String>>(port, sentinel_cmd("master").arg(MASTER_NAME))
                    .is_ok_and(|kv| kv.iter().any(|v| v == primary_port));
                if ours {
                    return Ok(SentinelProc {
                        port,
                        tls_port,
                        child,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(io::Error::other("sentinel did not answer in 10 s"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("sentinel did not start")))
    }

    /// The Sentinels' ports.
    #[must_use]
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The Sentinels' TLS ports (empty unless started with TLS).
    #[must_use]
    pub fn sentinel_tls_ports(&self) -> Vec<u16> {
        self.sentinels.iter().filter_map(|s| s.tls_port).collect()
    }

    /// kombu's form: `sentinel://127.0.0.1:P1;sentinel://127.0.0.1:P2;…?master_name=…`.
    #[must_use]
    pub fn url(&self) -> String {
        let parts: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("sentinel://127.0.0.1:{p}"))
            .collect();
        format!("{}/0?master_name={MASTER_NAME}", parts.join(";"))
    }

    /// RedBeat's form: `redis-sentinel://127.0.0.1:P1,127.0.0.1:P2,…/0?service_name=…`.
    #[must_use]
    pub fn redbeat_url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://{}/0?service_name={MASTER_NAME}",
            hosts.join(",")
        )
    }

    /// The master's port as the first answering Sentinel names it.
    ///
    /// # Errors
    /// When no Sentinel answers with an address.
    pub fn master_port(&self) -> io::Result<u16> {
        for p in self.sentinel_ports() {
            let addr = query::<Option<(String, u16)>>(
                p,
                sentinel_cmd("get-master-addr-by-name").arg(MASTER_NAME),
            );
            if let Ok(Some((_, port))) = addr {
                return Ok(port);
            }
        }
        Err(io::Error::other("no sentinel names a master"))
    }

    /// `redis://127.0.0.1:<master port>/0`, for reading what beatd wrote.
    ///
    /// # Errors
    /// As [`SentinelSet::master_port`].
    pub fn master_url(&self) -> io::Result<String> {
        Ok(format!("redis://127.0.0.1:{}/0", self.master_port()?))
    }

    /// The index in `nodes` of the node on `port`.
    #[must_use]
    pub fn node_on(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// `kill -9` of the current master; returns its port.
    ///
    /// # Errors
    /// As [`SentinelSet::master_port`].
    pub fn kill_master(&mut self) -> io::Result<u16> {
        let port = self.master_port()?;
        let i = self
            .node_on(port)
            .ok_or_else(|| io::Error::other("the master is none of ours"))?;
        self.nodes[i].kill();
        Ok(port)
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`) to the node on `port` with kill(1).
    ///
    /// # Errors
    /// When there is no running node on `port` or kill(1) fails.
    pub fn signal_node(&self, port: u16, signal: &str) -> io::Result<()> {
        let pid = self
            .node_on(port)
            .and_then(|i| self.nodes[i].pid())
            .ok_or_else(|| io::Error::other("no running node on that port"))?;
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?
            .success();
        if ok {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -{signal} {pid} failed")))
        }
    }

    /// Waits until the Sentinels name a master other than `old` that answers `ROLE` as
    /// master; returns its port.
    ///
    /// # Errors
    /// When that does not happen within `timeout`.
    pub fn wait_new_master(&self, old: u16, timeout: Duration) -> io::Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(port) = self.master_port() {
                let role = query::<redis::Value>(port, &redis::cmd("ROLE"));
                let is_master = matches!(&role, Ok(redis::Value::Array(v))
                    if matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
                if port != old && is_master {
                    return Ok(port);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "no new master within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts the killed node on `port` as a replica of the current master and waits
    /// until it has caught up (so the next kill has a replica to promote).
    ///
    /// # Errors
    /// When it cannot start or does not sync within 30 s.
    pub fn rejoin(&mut self, port: u16) -> io::Result<()> {
        let master = self.master_port()?.to_string();
        let i = self
            .node_on(port)
            .ok_or_else(|| io::Error::other("no node on that port"))?;
        let mut args = NODE_ARGS.to_vec();
        args.extend(["--replicaof", "127.0.0.1", master.as_str()]);
        self.nodes[i].set_extra_args(&args);
        self.nodes[i].restart()?;
        self.wait_replicated(self.nodes.len() - 1, Duration::from_secs(30))?;
        // The Sentinels must see the replica again before it can be promoted.
        self.wait_formed(Duration::from_secs(30))
    }

    /// Waits until the replica has every write the master has (equal replication offsets),
    /// so a kill after it loses nothing to asynchronous replication.
    ///
    /// # Errors
    /// When it does not catch up within `timeout`.
    pub fn wait_synced(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let field = |port: u16, key: &str| {
            query::<String>(port, redis::cmd("INFO").arg("replication"))
                .ok()
                .and_then(|i| {
                    i.lines()
                        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                })
        };
        loop {
            let master = self.master_port()?;
            let want = field(master, "master_repl_offset:");
            let synced = self
                .nodes
                .iter()
                .filter(|n| n.is_running() && n.port() != master)
                .all(|n| field(n.port(), "slave_repl_offset:").is_some_and(|o| Some(o) == want));
            if synced && want.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("replica did not catch up"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the set is whole again after a fault: the master has every other node as
    /// an online replica, and every Sentinel sees them all up with no failover under way (so a
    /// next fault has a replica to promote).
    ///
    /// # Errors
    /// When that does not happen within `timeout`.
    pub fn wait_whole(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.wait_replicated(self.nodes.len() - 1, timeout)?;
        self.wait_formed(deadline.saturating_duration_since(Instant::now()))
    }

    /// Waits until the master reports `n` replicas online.
    fn wait_replicated(&self, n: usize, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let port = if self.sentinels.is_empty() {
                Ok(self.nodes[0].port())
            } else {
                self.master_port()
            };
            if let Ok(port) = port {
                let info = query::<String>(port, redis::cmd("INFO").arg("replication"));
                let online = info.as_deref().map_or(0, |i| {
                    i.lines()
                        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                        .count()
                });
                if online >= n {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "master has not {n} replica(s) online within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every Sentinel knows every replica, up, and two other Sentinels, and
    /// the master is neither down nor being failed over in its view.
    fn wait_formed(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let formed = self.sentinel_ports().iter().all(|&p| {
                let info = query::<Vec<String>>(p, sentinel_cmd("master").arg(MASTER_NAME));
                info.is_ok_and(|kv| {
                    let get = |k: &str| {
                        kv.chunks(2)
                            .find(|c| c[0] == k)
                            .map(|c| c[1].clone())
                            .unwrap_or_default()
                    };
                    get("num-slaves") == (self.nodes.len() - 1).to_string()
                        && get("num-other-sentinels") == "2"
                        && !get("flags").contains("down")
                        && !get("flags").contains("failover")
                        && replicas_up(p)
                })
            });
            if formed {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "sentinel set did not form within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the Sentinel on `port` sees all its master's replicas as up (not `s_down`).
fn replicas_up(port: u16) -> bool {
    query::<Vec<Vec<String>>>(port, sentinel_cmd("replicas").arg(MASTER_NAME)).is_ok_and(|rs| {
        rs.iter().all(|kv| {
            kv.chunks(2)
                .any(|c| c[0] == "flags" && c.get(1).is_some_and(|f| !f.contains("down")))
        })
    })
}

fn sentinel_cmd(sub: &str) -> redis::Cmd {
    let mut c = redis::cmd("SENTINEL");
    c.arg(sub);
    c
}

/// One command on `127.0.0.1:port`, with short timeouts.
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut c = client.get_connection_with_timeout(Duration::from_millis(500))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut c)
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
