//! The one place that opens Redis connections: timeouts, reconnection with capped exponential
//! backoff, and the mapping of client errors to [`Error`] variants named for what happened.
//! The beat and the one-shot commands share one multiplexed [`RedisConn`]; the worker takes
//! its blocking and consuming connections from it too ([`RedisConn::dedicated`]).
//!
//! Calls fail fast instead of waiting out the backoff: while Redis is down every call returns
//! [`Error::Unreachable`] at once and a new connection is attempted only when the backoff has
//! elapsed, so the beat loop keeps its own cadence (renewal deadlines, readiness) and decides
//! what to do. redis-rs's `ConnectionManager` instead parks callers on its reconnect future.

use super::{BrokerUrl, Error, RedactedUrl};
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
    client: redis::Client,
    url: RedactedUrl,
    opts: ConnectOptions,
    state: Mutex<ConnState>,
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
    last_error: Option<Arc<RedisError>>,
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
        let client = redis::Client::open(url.expose()).map_err(|e| Error::InvalidUrl {
            url: url.redacted().clone(),
            reason: e.to_string(),
        })?;
        let inner = Inner {
            client,
            url: url.redacted().clone(),
            opts,
            state: Mutex::new(ConnState::default()),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The client, for connections of their own (pub/sub).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// A connection of the caller's own, reconnecting by itself, for commands that block it
    /// (`BRPOP`) or that must not queue behind other callers' (the worker's takes, acks and
    /// results). `response` bounds each reply: a blocking command needs its own timeout
    /// plus a margin.
    ///
    /// # Errors
    /// As [`RedisConn::check`], when the first connection cannot be made.
    pub async fn dedicated(
        &self,
        response: Duration,
    ) -> Result<redis::aio::ConnectionManager, Error> {
        // redis-rs hands its retry `factor` (100) to backon as the growth factor, so without a
        // cap the waits between reconnect attempts go 1 s, 60 s, 60 s...: a command issued
        // during an outage of a few seconds then blocks for minutes after Redis is back. Cap
        // each wait.
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_max_delay(DEDICATED_RECONNECT_MAX_DELAY_MS)
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(response)
            .set_factor(2)
            .set_number_of_retries(3);
        self.inner
            .client
            .get_connection_manager_with_config(cfg)
            .await
            .map_err(|e| self.classify(Arc::new(e), true))
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
    /// memory pressure, and an evicted last run is sent again.
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
        Ok(warnings)
    }

    /// The current connection, or a new one if the backoff allows an attempt now.
    async fn get(&self) -> Result<(MultiplexedConnection, u64), Error> {
        let mut st = self.inner.state.lock().await;
        if let Some(c) = &st.conn {
            return Ok((c.clone(), st.generation));
        }
        if let (Some(at), Some(err)) = (st.next_attempt, &st.last_error) {
            if Instant::now() < at {
                return Err(self.classify(err.clone(), true));
            }
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.inner.opts.connect_timeout)
            .set_response_timeout(self.inner.opts.response_timeout);
        match self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
        {
            Ok(c) => {
                st.generation += 1;
                st.failures = 0;
                st.next_attempt = None;
                st.last_error = None;
                st.conn = Some(c.clone());
                tracing::info!(url = %self.inner.url, "connected to redis");
                Ok((c, st.generation))
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let wait = self.inner.opts.backoff(st.failures);
                st.next_attempt = Some(Instant::now() + wait);
                let e = Arc::new(e);
                st.last_error = Some(e.clone());
                tracing::warn!(url = %self.inner.url, error = %e, retry_in = ?wait,
                    "redis connection failed");
                Err(self.classify(e, true))
            }
        }
    }

    /// Runs one operation on the connection, dropping the connection when the failure means
    /// it is unusable (I/O, timeout: a half-open TCP connection otherwise times out forever).
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (conn, generation) = self.get().await?;
        match op(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() {
                    let mut st = self.inner.state.lock().await;
                    if st.generation == generation && st.conn.is_some() {
                        // The next call reconnects at once; backoff starts if that fails.
                        st.conn = None;
                        tracing::warn!(url = %self.inner.url, error = %e, "redis connection lost");
                    }
                }
                Err(self.classify(Arc::new(e), false))
            }
        }
    }

    /// `connecting`: a timeout while connecting means the host is unreachable, not slow.
    fn classify(&self, e: Arc<RedisError>, connecting: bool) -> Error {
        let timeout = (!connecting).then_some(self.inner.opts.response_timeout);
        classify(&self.inner.url, timeout, e)
    }
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
    } else if let (true, Some(timeout)) = (e.is_timeout(), timeout) {
        Error::Timeout { url, timeout }
    } else if e.is_io_error() || e.is_unrecoverable_error() {
        Error::Unreachable { url, source: e }
    } else {
        Error::Command { url, source: e }
    }
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
