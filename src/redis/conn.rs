//! The one place that opens Redis connections: timeouts, reconnection with capped exponential
//! backoff, and the mapping of client errors to [`Error`] variants named for what happened.
//! The beat and the one-shot commands share one multiplexed [`RedisConn`]; the worker takes
//! its blocking and consuming connections from it too ([`RedisConn::dedicated`]).
//!
//! Calls fail fast instead of waiting out the backoff: while Redis is down every call returns
//! [`Error::Unreachable`] at once and a new connection is attempted only when the backoff has
//! elapsed, so the beat loop keeps its own cadence (renewal deadlines, readiness) and decides
//! what to do. redis-rs's `ConnectionManager` instead parks callers on its reconnect future.

use super::dedicated::DedicatedConn;
use super::sentinel::{self, Sentinels};
use super::url::Target;
use super::{BrokerUrl, Error, RedactedUrl, WaitReplicas};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Longest wait between two reconnect attempts of a [`RedisConn::dedicated`] connection.
const DEDICATED_RECONNECT_MAX_DELAY_MS: u64 = 500;

/// Timeouts and backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Limit on establishing a connection (TCP, TLS, AUTH, SELECT).
    pub connect_timeout: Duration,
    /// Limit on any one command's reply. Emission batches are bounded so they finish well
    /// within it.
    pub response_timeout: Duration,
    /// Wait before the second connection attempt; doubles per failure.
    pub backoff_min: Duration,
    /// Cap on the wait between attempts.
    pub backoff_max: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl ConnectOptions {
    /// The wait after `failures` consecutive failed attempts (the first retry is immediate
    /// after a working connection drops; see [`RedisConn`]).
    #[must_use]
    pub fn backoff(&self, failures: u32) -> Duration {
        crate::backoff::Backoff::between(self.backoff_min, self.backoff_max).after(failures)
    }
}

/// A shared, self-healing connection to one Redis. Cheap to clone; clones share the
/// connection (redis-rs multiplexes concurrent commands over it) and the backoff state.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    url: RedactedUrl,
    opts: ConnectOptions,
    /// `WAIT` after each write the beat acts on ([`RedisConn::run_replicated`]).
    wait: Option<WaitReplicas>,
    state: Mutex<ConnState>,
    /// When a command last got a reply on a live connection; `None` after the connection
    /// was lost. Readiness needs no `PING` of its own while other commands answer.
    answered: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Where connections go: one fixed Redis, or the master the Sentinels name at the time.
enum Source {
    Direct(redis::Client),
    Sentinel(Arc<Sentinels>),
}

#[derive(Default)]
struct ConnState {
    /// The live connection, `None` after it failed.
    conn: Option<MultiplexedConnection>,
    /// Bumped on every new connection, so a late failure of an old one cannot drop a new one.
    generation: u64,
    /// Consecutive failed connection attempts.
    failures: u32,
    /// No attempt before this instant.
    next_attempt: Option<Instant>,
    /// Why the last attempt failed, returned while waiting out the backoff.
    last_error: Option<Error>,
    /// The Sentinels' generation the connection's master was found under.
    master_generation: u64,
    /// The master's `ip:port` behind Sentinels.
    master: Option<String>,
    /// The Sentinels' generation when the last attempt failed: once it moves on (a new
    /// master announced), the next attempt need not wait out the backoff.
    failed_generation: u64,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// Connects and checks the server answers (`PING`), so a wrong password or an unreachable
/// host surfaces at startup as [`Error::AuthFailed`] / [`Error::Unreachable`] rather than later
/// in a retry loop.
///
/// # Errors
/// As [`RedisConn::check`].
pub async fn connect(url: &BrokerUrl, opts: ConnectOptions) -> Result<RedisConn, Error> {
    let conn = RedisConn::new(url, opts)?;
    conn.check().await?;
    Ok(conn)
}

impl RedisConn {
    /// A handle that connects on first use (no I/O here): for a daemon that must start and
    /// keep retrying while Redis is down.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] if redis-rs rejects the URL.
    pub fn new(url: &BrokerUrl, opts: ConnectOptions) -> Result<Self, Error> {
        let source = match url.target() {
            Target::Direct(_) => {
                Source::Direct(url.direct_client().map_err(|e| Error::InvalidUrl {
                    url: url.redacted().clone(),
                    reason: e.to_string(),
                })?)
            }
            Target::Sentinel(spec) => {
                Source::Sentinel(Sentinels::new(spec.clone(), url.redacted().clone()))
            }
        };
        let inner = Inner {
            source,
            url: url.redacted().clone(),
            opts,
            wait: url.wait(),
            state: Mutex::new(ConnState::default()),
            answered: std::sync::Mutex::new(None),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// A pub/sub connection of its own, to the master when behind Sentinels.
    ///
    /// # Errors
    /// As [`RedisConn::check`].
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub, Error> {
        let client = match &self.inner.source {
            Source::Direct(c) => c.clone(),
            Source::Sentinel(s) => s.master(&self.connect_config()).await?.client,
        };
        client
            .get_async_pubsub()
            .await
            .map_err(|e| self.classify(Arc::new(e), true))
    }

    fn connect_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(self.inner.opts.connect_timeout)
            .set_response_timeout(self.inner.opts.response_timeout)
    }

    /// A connection of the caller's own, reconnecting by itself, for commands that block it
    /// (`BRPOP`) or that must not queue behind other callers' (the worker's takes, acks and
    /// results). `response` bounds each reply: a blocking command needs its own timeout
    /// plus a margin.
    ///
    /// # Errors
    /// As [`RedisConn::check`], when the first connection cannot be made.
    pub async fn dedicated(&self, response: Duration) -> Result<DedicatedConn, Error> {
        // redis-rs hands its retry `factor` (100) to backon as the growth factor, so without a
        // cap the waits between reconnect attempts go 1 s, 60 s, 60 s...: a command issued
        // during an outage of a few seconds then blocks for minutes after Redis is back. Cap
        // each wait.
        let client = match &self.inner.source {
            Source::Direct(client) => client,
            Source::Sentinel(s) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(self.inner.opts.connect_timeout)
                    .set_response_timeout(response);
                return DedicatedConn::behind_sentinels(s.clone(), cfg).await;
            }
        };
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_max_delay(DEDICATED_RECONNECT_MAX_DELAY_MS)
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(response)
            .set_factor(2)
            .set_number_of_retries(3);
        client
            .get_connection_manager_with_config(cfg)
            .await
            .map(DedicatedConn::direct)
            .map_err(|e| self.classify(Arc::new(e), true))
    }

    /// A connection no other caller shares and that never reconnects by itself, to the
    /// master behind Sentinels: for a `WATCH` … `EXEC` sequence, whose guard belongs to the
    /// connection that set it (a silently reconnected one would run the transaction
    /// unguarded). Errors are the caller's to classify with [`RedisConn::classify_error`].
    ///
    /// # Errors
    /// As [`RedisConn::check`], when the connection cannot be made.
    pub(crate) async fn exclusive(&self) -> Result<MultiplexedConnection, Error> {
        let cfg = self.connect_config();
        match &self.inner.source {
            Source::Direct(client) => client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(|e| self.classify(Arc::new(e), true)),
            Source::Sentinel(s) => s.master(&cfg).await.map(|m| m.conn),
        }
    }

    /// Names a failure of a command on an [`RedisConn::exclusive`] connection.
    pub(crate) fn classify_error(&self, e: redis::RedisError) -> Error {
        self.classify(Arc::new(e), false)
    }

    /// The database number commands run in (pub/sub channels such as Celery's pidbox carry it).
    #[must_use]
    pub fn db(&self) -> i64 {
        match &self.inner.source {
            Source::Direct(c) => c.get_connection_info().redis.db,
            Source::Sentinel(s) => s.db(),
        }
    }

    /// Resolves when the Sentinels' master changes (never for a plain URL): for long-lived
    /// connections of their own (pub/sub) to follow it.
    pub(crate) async fn master_changed(&self) {
        match &self.inner.source {
            Source::Direct(_) => std::future::pending().await,
            Source::Sentinel(s) => s.changed_since(s.generation()).await,
        }
    }

    /// Whether the URL names Sentinels.
    #[must_use]
    pub fn is_sentinel(&self) -> bool {
        matches!(self.inner.source, Source::Sentinel(_))
    }

    /// What writes the beat acts on wait for.
    #[must_use]
    pub fn wait(&self) -> Option<WaitReplicas> {
        self.inner.wait
    }

    /// The printable URL.
    #[must_use]
    pub fn url(&self) -> &RedactedUrl {
        &self.inner.url
    }

    /// Whether a connection is currently established (no I/O): for readiness and metrics.
    /// A broken connection is noticed at its next use.
    pub async fn is_connected(&self) -> bool {
        self.inner.state.lock().await.conn.is_some()
    }

    /// Behind Sentinels, the `ip:port` of the master the connection uses (for `check`).
    pub async fn master_addr(&self) -> Option<String> {
        let st = self.inner.state.lock().await;
        st.conn.as_ref().and(st.master.clone())
    }

    /// `PING`s the server.
    ///
    /// # Errors
    /// [`Error::AuthFailed`] for a wrong or missing password, [`Error::Unreachable`],
    /// [`Error::Timeout`].
    pub async fn check(&self) -> Result<(), Error> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }

    /// Server settings that silently break beatd's guarantees, as human-readable warnings
    /// for the startup log: an `allkeys-*` eviction policy may evict `{ns}:last_run` under
    /// memory pressure, and an evicted last run is sent again; fewer replicas attached than
    /// writes `WAIT` for stops emission.
    ///
    /// # Errors
    /// As [`RedisConn::check`].
    pub async fn config_warnings(&self) -> Result<Vec<String>, Error> {
        // INFO, not CONFIG GET: managed Redis services often disable CONFIG.
        let info: String = self
            .run(|mut c| async move { redis::cmd("INFO").arg("memory").query_async(&mut c).await })
            .await?;
        let policy = info
            .lines()
            .find_map(|l| l.strip_prefix("maxmemory_policy:"))
            .map(str::trim)
            .unwrap_or_default();
        let mut warnings = Vec::new();
        if policy.starts_with("allkeys-") {
            warnings.push(format!(
                "redis maxmemory-policy is {policy}: under memory pressure it can evict beatd's \
                 last-run state and cause repeated runs; use noeviction or a volatile-* policy"
            ));
        }
        if let Some(w) = self.inner.wait {
            let info: String = self
                .run(|mut c| async move {
                    redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let attached: u32 = info
                .lines()
                .find_map(|l| l.strip_prefix("connected_slaves:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if attached < w.replicas {
                warnings.push(format!(
                    "the redis master has {attached} replica(s) attached and writes wait for {}: \
                     the beat sends nothing until enough replicas are back (--wait-replicas)",
                    w.replicas
                ));
            }
        }
        Ok(warnings)
    }

    /// The current connection, or a new one if the backoff allows an attempt now. Behind
    /// Sentinels, a connection to a master that has since been replaced is dropped first.
    async fn get(&self) -> Result<(MultiplexedConnection, u64), Error> {
        let mut st = self.inner.state.lock().await;
        if let Some(c) = &st.conn {
            match &self.inner.source {
                Source::Sentinel(s) if s.generation() != st.master_generation => {
                    tracing::info!(url = %self.inner.url, "leaving the former redis master");
                    st.conn = None;
                }
                _ => return Ok((c.clone(), st.generation)),
            }
        }
        if let (Some(at), Some(err)) = (st.next_attempt, &st.last_error) {
            let announced = match &self.inner.source {
                Source::Sentinel(s) => s.generation() != st.failed_generation,
                Source::Direct(_) => false,
            };
            if Instant::now() < at && !announced {
                return Err(err.clone());
            }
        }
        let cfg = self.connect_config();
        let opened = match &self.inner.source {
            Source::Direct(client) => client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map(|c| (c, 0, None))
                .map_err(|e| self.classify(Arc::new(e), true)),
            Source::Sentinel(s) => s
                .master(&cfg)
                .await
                .map(|m| (m.conn, m.generation, Some(m.addr))),
        };
        match opened {
            Ok((c, master_generation, master)) => {
                st.generation += 1;
                st.failures = 0;
                st.next_attempt = None;
                st.last_error = None;
                st.master_generation = master_generation;
                st.master.clone_from(&master);
                st.conn = Some(c.clone());
                tracing::info!(url = %self.inner.url, master = master.as_deref(),
                    "connected to redis");
                Ok((c, st.generation))
            }
            Err(e) => {
                if let Source::Sentinel(s) = &self.inner.source {
                    st.failed_generation = s.generation();
                }
                st.failures = st.failures.saturating_add(1);
                let wait = self.inner.opts.backoff(st.failures);
                st.next_attempt = Some(Instant::now() + wait);
                st.last_error = Some(e.clone());
                tracing::warn!(url = %self.inner.url, error = %crate::error_chain(&e),
                    retry_in = ?wait, "redis connection failed");
                Err(e)
            }
        }
    }

    /// Runs one operation on the connection, dropping the connection when the failure means
    /// it is unusable (I/O, timeout: a half-open TCP connection otherwise times out forever;
    /// behind Sentinels, a node that answers as a replica).
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_then_wait(op, None).await
    }

    /// [`RedisConn::run`] for a write the beat acts on: then `WAIT`s for the configured
    /// replicas on the same connection (so it covers this write). Fewer replicas in time is
    /// [`Error::NotReplicated`]: the write happened but may not survive a failover, and the
    /// caller treats it like a reply that never came.
    pub(crate) async fn run_replicated<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_then_wait(op, self.inner.wait).await
    }

    async fn run_then_wait<T, F, Fut>(&self, op: F, wait: Option<WaitReplicas>) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (conn, generation) = self.get().await?;
        let mut same = conn.clone();
        let done = async {
            match &self.inner.source {
                // A reply from a master the Sentinels start failing over is not acted on,
                // even if it comes: its writes may be lost with it (a paused primary that
                // resumes while a replica is promoted).
                Source::Sentinel(s) => {
                    let seen = s.failovers();
                    tokio::select! {
                        r = op(conn) => r,
                        () = s.failover_since(seen) => Err(master_changed()),
                    }
                }
                Source::Direct(_) => op(conn).await,
            }
        };
        let result = match done.await {
            Ok(v) => match wait {
                None => Ok((v, None)),
                Some(w) => {
                    let ms = u64::try_from(w.timeout.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    redis::cmd("WAIT")
                        .arg(w.replicas)
                        .arg(ms)
                        .query_async::<i64>(&mut same)
                        .await
                        .map(|acked| (v, Some((acked, w))))
                }
            },
            Err(e) => Err(e),
        };
        if result.is_ok() {
            self.note_answer(true);
        }
        match result {
            Ok((v, None)) => Ok(v),
            Ok((_, Some((acked, w)))) if acked < i64::from(w.replicas) => {
                Err(Error::NotReplicated {
                    url: self.inner.url.clone(),
                    acked,
                    wanted: w.replicas,
                    timeout: w.timeout,
                })
            }
            Ok((v, Some(_))) => Ok(v),
            Err(e) => {
                let not_master = self.is_sentinel() && sentinel::means_not_master(&e);
                if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() || not_master {
                    self.note_answer(false);
                    let mut st = self.inner.state.lock().await;
                    if st.generation == generation && st.conn.is_some() {
                        // The next call reconnects at once; backoff starts if that fails.
                        st.conn = None;
                        tracing::warn!(url = %self.inner.url, error = %e, "redis connection lost");
                        if let (true, Source::Sentinel(s)) = (not_master, &self.inner.source) {
                            s.invalidate(st.master_generation);
                        }
                    }
                }
                Err(self.classify(Arc::new(e), false))
            }
        }
    }

    fn note_answer(&self, answered: bool) {
        *self
            .inner
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            answered.then(tokio::time::Instant::now);
    }

    /// Whether a command got a reply within the last `d` and the connection has not been
    /// lost since.
    #[must_use]
    pub fn answered_within(&self, d: Duration) -> bool {
        self.inner
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < d)
    }

    /// `connecting`: a timeout while connecting means the host is unreachable, not slow.
    fn classify(&self, e: Arc<RedisError>, connecting: bool) -> Error {
        let timeout = (!connecting).then_some(self.inner.opts.response_timeout);
        classify(&self.inner.url, timeout, e)
    }
}

fn master_changed() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the sentinels started failing the redis master over while the command waited",
    ))
}

/// Names what happened. `NOAUTH` (no password given; redis-rs reports it as "Authentication
/// required" when it comes back from the `SELECT` of the handshake) and `WRONGPASS` both mean
/// the credentials are wrong, which retrying never fixes.
fn classify(url: &RedactedUrl, timeout: Option<Duration>, e: Arc<RedisError>) -> Error {
    let url = url.clone();
    let code = e.code().unwrap_or_default();
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "NOAUTH" | "WRONGPASS")
        || ["NOAUTH", "WRONGPASS", "Authentication required"]
            .iter()
            .any(|s| text.contains(s))
    {
        Error::AuthFailed { url, source: e }
    } else if is_tls_failure(&text) {
        Error::Tls { url, source: e }
    } else if let (true, Some(timeout)) = (e.is_timeout(), timeout) {
        Error::Timeout { url, timeout }
    } else if e.is_io_error() || e.is_unrecoverable_error() {
        Error::Unreachable { url, source: e }
    } else {
        Error::Command { url, source: e }
    }
}

/// rustls's words for a handshake refused over certificates, either side's.
fn is_tls_failure(text: &str) -> bool {
    [
        "invalid peer certificate",
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "certificate required",
        "bad certificate",
        "unknown ca",
    ]
    .iter()
    .any(|s| text.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_5s() {
        let o = ConnectOptions::default();
        let waits: Vec<u128> = (1..=8).map(|n| o.backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(o.backoff(u32::MAX), Duration::from_secs(5));
    }
}
