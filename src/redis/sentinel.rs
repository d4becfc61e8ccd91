//! Finding the master behind Sentinels and noticing when it changes. redis-rs's Sentinel
//! client resolves only when it connects and has no timeouts on the nodes it tries
//! (redis-rs#1438), so a failover would leave beatd on a dead or demoted node: this asks the
//! Sentinels itself (`SENTINEL get-master-addr-by-name`), uses a node only after `ROLE` says
//! it is the master, and keeps a generation that every connection compares with its own.
//! The generation moves on Sentinel's `+switch-master` and when a node answers as a replica
//! (`READONLY`); connections then resolve again. Owns no long-lived connection of the
//! callers': `conn.rs` and `dedicated.rs` hold those.

use super::sentinel_url::SentinelSpec;
use super::{tls, Error, RedactedUrl};
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// The channel Sentinels announce a new master on: `<name> <old ip> <old port> <new ip> <new port>`.
const SWITCH_MASTER: &str = "+switch-master";

/// Channels on which Sentinels say a failover may be starting: `master <name> <ip> <port> …`.
/// The master they name may come back (a paused process resumes) while a replica is already
/// being promoted; writes it takes then are lost when the other replicas follow the new one.
/// So on these, every connection leaves it, and [`Sentinels::master`] names no master
/// until the failover is over.
const FAILOVER_STARTING: [&str; 2] = ["+odown", "+try-failover"];

/// The master's flags (`SENTINEL MASTER`) under which no node is used: down in the
/// Sentinels' agreed view, or a failover under way.
const UNSAFE_FLAGS: [&str; 2] = ["o_down", "failover_in_progress"];

/// Pause before the watcher tries the next Sentinel.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// A set of Sentinels and the master they name, shared by every connection of one URL.
pub(crate) struct Sentinels {
    spec: Arc<SentinelSpec>,
    url: RedactedUrl,
    /// Moves on whenever the master may have changed.
    generation: Arc<AtomicU64>,
    /// Moves on when the Sentinels say a failover may be starting ([`FAILOVER_STARTING`]).
    failovers: Arc<AtomicU64>,
    /// Wakes commands blocked on the former master when the generation moves.
    changed: Arc<tokio::sync::Notify>,
    /// The `+switch-master` watcher runs (started on the first resolution, in the runtime).
    watching: OnceLock<()>,
    /// For the watcher, which stops once nobody holds these Sentinels.
    this: Weak<Sentinels>,
}

/// A master found and checked.
pub(crate) struct Master {
    /// Its client (for pub/sub and dedicated connections).
    pub client: redis::Client,
    /// The connection `ROLE` was checked on, ready for use.
    pub conn: MultiplexedConnection,
    /// `ip:port`, for logs.
    pub addr: String,
    /// The generation it was resolved under.
    pub generation: u64,
}

impl Sentinels {
    pub fn new(spec: Arc<SentinelSpec>, url: RedactedUrl) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            spec,
            url,
            generation: Arc::default(),
            changed: Arc::default(),
            failovers: Arc::default(),
            watching: OnceLock::new(),
            this: this.clone(),
        })
    }

    /// The current generation: a connection resolved under an older one must resolve again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Says the master found under `seen` is no longer the master (a `READONLY`, a demoted
    /// node): moves the generation on once, however many connections notice.
    pub fn invalidate(&self, seen: u64) {
        if self
            .generation
            .compare_exchange(seen, seen + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.changed.notify_waiters();
            tracing::info!(url = %self.url, "redis master changed; resolving again");
        }
    }

    /// Resolves once the generation is past `seen` (at once if it already is): a blocking
    /// command on a paused former master would otherwise wait out its whole timeout.
    pub async fn changed_since(&self, seen: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a bump between the two is not missed.
            notified.as_mut().enable();
            if self.generation() != seen {
                return;
            }
            notified.await;
        }
    }

    /// How many failover starts were announced so far.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::SeqCst)
    }

    /// Resolves once a failover start is announced after `seen` ([`Sentinels::failovers`]):
    /// a reply still to come from the master being failed over must not be acted on.
    pub async fn failover_since(&self, seen: u64) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.failovers() != seen {
                return;
            }
            notified.await;
        }
    }

    /// The master's db, for `ConnectionLike::get_db`.
    pub fn db(&self) -> i64 {
        self.spec.master.db
    }

    /// Asks every Sentinel for the master and returns the first named node whose `ROLE`
    /// says master, connected with `cfg`'s timeouts.
    ///
    /// # Errors
    /// [`Error::UnknownMaster`] when every Sentinel answers that it monitors no such name;
    /// [`Error::AuthFailed`] when the master or the Sentinels refuse the credentials;
    /// [`Error::NoMaster`] otherwise, with what each Sentinel said.
    pub async fn master(&self, cfg: &AsyncConnectionConfig) -> Result<Master, Error> {
        self.watch();
        let generation = self.generation();
        let name = &self.spec.master_name;
        let mut said = Vec::new();
        let mut unknown = 0;
        // All asked at once, answers taken as they come: a paused Sentinel (it accepts the
        // connection, then says nothing) must not hold up the others for a whole timeout.
        let mut asks: FuturesUnordered<_> = self
            .spec
            .sentinels
            .iter()
            .map(|(host, port)| async move { (host, port, self.ask(host, *port, cfg).await) })
            .collect();
        let mut answers = Vec::new();
        while let Some((host, port, answer)) = asks.next().await {
            match answer {
                Ok(Some((_, _, Some(flags)))) => {
                    // One Sentinel seeing a failover under way is enough to wait: the one
                    // leading it may be the only one that says so.
                    return Err(Error::NoMaster {
                        url: self.url.clone(),
                        master: name.clone(),
                        detail: format!(
                            "{host}:{port} reports the master {flags} (a failover under way)"
                        ),
                    });
                }
                other => answers.push((host, port, other.map(|a| a.map(|(i, p, _)| (i, p))))),
            }
        }
        for (host, port, answer) in answers {
            let answer = match answer {
                Ok(a) => a,
                Err(e) if is_auth(&e) => return Err(self.auth_failed(e)),
                Err(e) => {
                    said.push(format!("{host}:{port}: {e}"));
                    continue;
                }
            };
            let Some((ip, p)) = answer else {
                unknown += 1;
                said.push(format!("{host}:{port}: monitors no master named {name:?}"));
                continue;
            };
            match self.verify(&ip, p, cfg).await {
                Ok((client, conn)) => {
                    return Ok(Master {
                        client,
                        conn,
                        addr: format!("{ip}:{p}"),
                        generation,
                    })
                }
                Err(Verify::Redis(e)) if is_auth(&e) => return Err(self.auth_failed(e)),
                Err(Verify::Redis(e)) => {
                    said.push(format!("{host}:{port} names {ip}:{p}, unreachable: {e}"));
                }
                Err(Verify::Role(role)) => said.push(format!(
                    "{host}:{port} names {ip}:{p}, whose ROLE is {role} (a failover under way?)"
                )),
            }
        }
        if unknown == self.spec.sentinels.len() {
            return Err(Error::UnknownMaster {
                url: self.url.clone(),
                master: name.clone(),
            });
        }
        Err(Error::NoMaster {
            url: self.url.clone(),
            master: name.clone(),
            detail: said.join("; "),
        })
    }

    fn auth_failed(&self, e: RedisError) -> Error {
        Error::AuthFailed {
            url: self.url.clone(),
            source: Arc::new(e),
        }
    }

    /// `SENTINEL get-master-addr-by-name` on one Sentinel.
    async fn ask(
        &self,
        host: &str,
        port: u16,
        cfg: &AsyncConnectionConfig,
    ) -> redis::RedisResult<Option<(String, u16, Option<String>)>> {
        let client = tls::client(
            host,
            port,
            &self.spec.sentinel,
            self.spec.sentinel_tls.as_ref(),
        )?;
        let mut c = client
            .get_multiplexed_async_connection_with_config(cfg)
            .await?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.spec.master_name)
            .query_async(&mut c)
            .await?;
        let Some((ip, port)) = addr else {
            return Ok(None);
        };
        // Flat field/value pairs; a Sentinel that refuses the command (an ACL without it)
        // leaves the check to the others.
        let info: redis::RedisResult<Vec<String>> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.spec.master_name)
            .query_async(&mut c)
            .await;
        let unsafe_flags = info.ok().and_then(|kv| {
            let flags = kv.chunks(2).find(|p| p[0] == "flags")?.get(1)?.clone();
            flags
                .split(',')
                .any(|f| UNSAFE_FLAGS.contains(&f))
                .then_some(flags)
        });
        Ok(Some((ip, port, unsafe_flags)))
    }

    /// Connects to `ip:port` and checks that `ROLE` says master.
    async fn verify(
        &self,
        ip: &str,
        port: u16,
        cfg: &AsyncConnectionConfig,
    ) -> Result<(redis::Client, MultiplexedConnection), Verify> {
        let client = tls::client(ip, port, &self.spec.master, self.spec.master_tls.as_ref())
            .map_err(Verify::Redis)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(cfg)
            .await
            .map_err(Verify::Redis)?;
        let role: Value = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(Verify::Redis)?;
        match role_name(&role).as_deref() {
            Some("master") => Ok((client, conn)),
            other => Err(Verify::Role(other.unwrap_or("unreadable").to_owned())),
        }
    }

    /// Starts, once, the task that listens for `+switch-master` on one Sentinel at a time.
    /// A missed announcement only delays the switch to the next error or `READONLY`.
    fn watch(&self) {
        self.watching.get_or_init(|| {
            let (spec, generation, failovers, owner) = (
                self.spec.clone(),
                self.generation.clone(),
                self.failovers.clone(),
                self.this.clone(),
            );
            let changed = self.changed.clone();
            let url = self.url.clone();
            tokio::spawn(async move {
                for (host, port) in spec.sentinels.iter().cycle() {
                    if owner.strong_count() == 0 {
                        return;
                    }
                    let pubsub = async {
                        let client =
                            tls::client(host, *port, &spec.sentinel, spec.sentinel_tls.as_ref())?;
                        let mut p = client.get_async_pubsub().await?;
                        p.subscribe(SWITCH_MASTER).await?;
                        for ch in FAILOVER_STARTING {
                            p.subscribe(ch).await?;
                        }
                        Ok::<_, RedisError>(p)
                    };
                    match tokio::time::timeout(Duration::from_secs(5), pubsub).await {
                        Ok(Ok(mut p)) => {
                            let mut messages = p.on_message();
                            loop {
                                let next =
                                    tokio::time::timeout(Duration::from_secs(5), messages.next());
                                match next.await {
                                    Ok(Some(msg)) => {
                                        let payload: String = msg.get_payload().unwrap_or_default();
                                        let channel = msg.get_channel_name().to_owned();
                                        // `+switch-master <name> …`; the others `master <name> …`.
                                        let named = if channel == SWITCH_MASTER {
                                            payload.split(' ').next()
                                        } else {
                                            payload.split(' ').nth(1)
                                        };
                                        if named == Some(spec.master_name.as_str()) {
                                            if channel != SWITCH_MASTER {
                                                failovers.fetch_add(1, Ordering::SeqCst);
                                            }
                                            generation.fetch_add(1, Ordering::SeqCst);
                                            changed.notify_waiters();
                                            tracing::info!(url = %url, event = %channel,
                                                detail = %payload,
                                                "sentinel announced a master change; resolving again");
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(_) if owner.strong_count() == 0 => return,
                                    Err(_) => {}
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(sentinel = %format!("{host}:{port}"), error = %e,
                                "cannot watch sentinel");
                        }
                        Err(_) => {}
                    }
                    tokio::time::sleep(WATCH_RETRY).await;
                }
            });
        });
    }
}

enum Verify {
    Redis(RedisError),
    Role(String),
}

/// The first element of a `ROLE` reply: `master`, `slave` or `sentinel`.
fn role_name(v: &Value) -> Option<String> {
    let Value::Array(items) = v else {
        return None;
    };
    match items.first()? {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn is_auth(e: &RedisError) -> bool {
    let text = e.to_string();
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || ["NOAUTH", "WRONGPASS", "Authentication required"]
            .iter()
            .any(|s| text.contains(s))
}

/// Whether a reply means the node is not (or no longer) the master: a write refused by a
/// replica, a blocked command released because the node was demoted, a replica without
/// its master. The caller resolves again.
pub(crate) fn means_not_master(e: &RedisError) -> bool {
    if matches!(
        e.kind(),
        redis::ErrorKind::ReadOnly | redis::ErrorKind::MasterDown
    ) {
        return true;
    }
    // Scripts report the READONLY of the redis.call inside them in their own error text.
    let text = e.to_string();
    ["READONLY", "UNBLOCKED", "MASTERDOWN"]
        .iter()
        .any(|s| text.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_reply_names_the_role() {
        let master = Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(0),
            Value::Array(vec![]),
        ]);
        assert_eq!(role_name(&master).as_deref(), Some("master"));
        let replica = Value::Array(vec![Value::BulkString(b"slave".to_vec())]);
        assert_eq!(role_name(&replica).as_deref(), Some("slave"));
        assert_eq!(role_name(&Value::Nil), None);
    }

    #[test]
    fn readonly_and_unblocked_mean_not_master() {
        let ro = RedisError::from((
            redis::ErrorKind::ReadOnly,
            "You can't write against a read only replica.",
        ));
        assert!(means_not_master(&ro));
        let script = RedisError::from((
            redis::ErrorKind::ExtensionError,
            "script",
            "READONLY You can't write against a read only replica. script: abc".to_owned(),
        ));
        assert!(means_not_master(&script));
        let other = RedisError::from((redis::ErrorKind::TypeError, "WRONGTYPE"));
        assert!(!means_not_master(&other));
    }
}
