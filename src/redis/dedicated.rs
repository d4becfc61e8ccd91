//! A connection of one caller's own (the worker's blocking waits, takes, acks and results):
//! redis-rs's `ConnectionManager` for one fixed Redis, and behind Sentinels a connection
//! that resolves the master again after a connection error, a `READONLY` or a
//! `+switch-master`. The manager would reconnect to the address it started with, which after
//! a failover is a dead node or a replica. Owns the reconnecting; the commands are the
//! callers'.

use super::sentinel::{self, Sentinels};
use super::Error;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Shortest pause between two resolutions after a failed one.
const RESOLVE_RETRY: Duration = Duration::from_millis(200);

/// A dedicated connection ([`super::RedisConn::dedicated`]). Clones share it.
#[derive(Clone)]
pub struct DedicatedConn(Kind);

#[derive(Clone)]
enum Kind {
    Direct(ConnectionManager),
    Sentinel(Arc<Followed>),
}

/// The master's connection, replaced when the master changes.
struct Followed {
    sentinels: Arc<Sentinels>,
    cfg: AsyncConnectionConfig,
    state: Mutex<FollowState>,
}

#[derive(Default)]
struct FollowState {
    /// The connection and the Sentinels' generation it was found under.
    conn: Option<(MultiplexedConnection, u64)>,
    /// No resolution before this instant, and the error returned until then.
    retry: Option<(Instant, Arc<Error>)>,
}

impl From<ConnectionManager> for DedicatedConn {
    fn from(m: ConnectionManager) -> Self {
        Self::direct(m)
    }
}

impl DedicatedConn {
    pub(crate) fn direct(m: ConnectionManager) -> Self {
        Self(Kind::Direct(m))
    }

    /// A connection to the master the Sentinels name, made now so a bad configuration
    /// surfaces at startup.
    pub(crate) async fn behind_sentinels(
        sentinels: Arc<Sentinels>,
        cfg: AsyncConnectionConfig,
    ) -> Result<Self, Error> {
        let f = Arc::new(Followed {
            sentinels,
            cfg,
            state: Mutex::default(),
        });
        f.current().await.map_err(|e| (*e).clone())?;
        Ok(Self(Kind::Sentinel(f)))
    }
}

impl Followed {
    async fn current(&self) -> Result<(MultiplexedConnection, u64), Arc<Error>> {
        let mut st = self.state.lock().await;
        if let Some((c, g)) = &st.conn {
            if *g == self.sentinels.generation() {
                return Ok((c.clone(), *g));
            }
            st.conn = None;
        }
        if let Some((at, e)) = &st.retry {
            if Instant::now() < *at {
                return Err(e.clone());
            }
        }
        match self.sentinels.master(&self.cfg).await {
            Ok(m) => {
                tracing::info!(master = %m.addr, "dedicated redis connection to the master");
                st.retry = None;
                st.conn = Some((m.conn.clone(), m.generation));
                Ok((m.conn, m.generation))
            }
            Err(e) => {
                let e = Arc::new(e);
                st.retry = Some((Instant::now() + RESOLVE_RETRY, e.clone()));
                Err(e)
            }
        }
    }

    /// After a failed command: a broken connection or a demoted node means resolving again.
    async fn failed(&self, e: &RedisError, generation: u64) {
        let not_master = sentinel::means_not_master(e);
        if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() || not_master {
            let mut st = self.state.lock().await;
            if st.conn.as_ref().is_some_and(|(_, g)| *g == generation) {
                st.conn = None;
            }
            if not_master {
                self.sentinels.invalidate(generation);
            }
        }
    }
}

/// Our error as the client's, an I/O kind so callers treat it as a connection problem.
fn as_redis_error(e: &Error) -> RedisError {
    RedisError::from((ErrorKind::IoError, "no redis master", crate::error_chain(e)))
}

/// A command left waiting on the former master (a blocking wait on a paused node): as
/// unknown an outcome as a timeout, and the caller handles it as one.
fn master_changed() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the redis master changed while the command waited",
    ))
}

impl ConnectionLike for DedicatedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Kind::Direct(m) => m.req_packed_command(cmd),
            Kind::Sentinel(f) => {
                let f = f.clone();
                Box::pin(async move {
                    let (mut c, g) = f.current().await.map_err(|e| as_redis_error(&e))?;
                    let r = tokio::select! {
                        r = c.req_packed_command(cmd) => r,
                        () = f.sentinels.changed_since(g) => Err(master_changed()),
                    };
                    if let Err(e) = &r {
                        f.failed(e, g).await;
                    }
                    r
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Direct(m) => m.req_packed_commands(cmd, offset, count),
            Kind::Sentinel(f) => {
                let f = f.clone();
                Box::pin(async move {
                    let (mut c, g) = f.current().await.map_err(|e| as_redis_error(&e))?;
                    let r = tokio::select! {
                        r = c.req_packed_commands(cmd, offset, count) => r,
                        () = f.sentinels.changed_since(g) => Err(master_changed()),
                    };
                    if let Err(e) = &r {
                        f.failed(e, g).await;
                    }
                    r
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Direct(m) => m.get_db(),
            Kind::Sentinel(f) => f.sentinels.db(),
        }
    }
}
