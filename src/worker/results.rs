//! Where task results go: Celery's Redis result backend (GET-check, then one
//! `MULTI SETEX … PUBLISH … EXEC`, celery-wire §7), a log-only sink for the embedded mode,
//! and an in-memory sink for tests. Owns storing; building records is `protocol`'s.

use super::Error;
use crate::protocol::{ResultRecord, StateRecord, TaskState, RESULT_TTL_SECS};
use crate::redis::DedicatedConn;
use std::sync::{Arc, Mutex};

/// Stores result records.
#[async_trait::async_trait]
pub trait ResultSink: Send + Sync + 'static {
    /// Stores one record.
    async fn store(&self, record: &ResultRecord) -> Result<(), Error>;

    /// Stores an interim state (`STARTED`, `PROGRESS`…) unless the task's record is final
    /// already; returns whether it was stored.
    async fn store_state(&self, record: &StateRecord) -> Result<bool, Error>;

    /// Stores `record` only while the task has not started (no record, or `PENDING`,
    /// `RECEIVED`, `RETRY`, `REJECTED`), as Celery's workers mark a revoked task; returns
    /// whether it was stored.
    async fn store_if_pending(&self, record: &ResultRecord) -> Result<bool, Error> {
        self.store(record).await.map(|()| true)
    }
}

/// Celery's `_revoke`: a task that has not started gets its REVOKED record at once.
const STORE_IF_PENDING: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, meta = pcall(cjson.decode, cur)
  if ok and type(meta) == 'table' then
    local s = meta['status']
    if s ~= 'PENDING' and s ~= 'RECEIVED' and s ~= 'RETRY' and s ~= 'REJECTED' then
      return 0
    end
  end
end
redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
";

/// Celery's `update_state` write (SETEX + PUBLISH), skipped over a final record: an update
/// that arrives after the task ended must not hide its result.
const STORE_STATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, meta = pcall(cjson.decode, cur)
  if ok and type(meta) == 'table' then
    local s = meta['status']
    if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then return 0 end
  end
end
redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
";

/// Celery's Redis result backend.
#[derive(Clone)]
pub struct RedisResults {
    /// Shared multiplexed connection; concurrent stores pipeline on it.
    conn: DedicatedConn,
    /// Key TTL in seconds (Celery's `result_expires`, one day).
    ttl_secs: u64,
}

impl RedisResults {
    /// A sink writing through `conn` with Celery's default one-day expiry.
    #[must_use]
    pub fn new(conn: DedicatedConn) -> Self {
        Self {
            conn,
            ttl_secs: RESULT_TTL_SECS,
        }
    }

    /// Overrides the expiry.
    #[must_use]
    pub fn with_ttl(mut self, ttl_secs: u64) -> Self {
        self.ttl_secs = ttl_secs.max(1);
        self
    }
}

#[async_trait::async_trait]
impl ResultSink for RedisResults {
    async fn store(&self, record: &ResultRecord) -> Result<(), Error> {
        let key = record.key();
        let mut conn = self.conn.clone();
        // Celery never overwrites a SUCCESS (a redelivered duplicate must not undo it).
        let existing: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        let done = existing
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|m| m["status"] == "SUCCESS");
        if done {
            return Ok(());
        }
        let json = record.to_json();
        redis::pipe()
            .atomic()
            .cmd("SETEX")
            .arg(&key)
            .arg(self.ttl_secs)
            .arg(&json)
            .ignore()
            .cmd("PUBLISH")
            .arg(&key)
            .arg(&json)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn store_state(&self, record: &StateRecord) -> Result<bool, Error> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(STORE_STATE));
        self.store_guarded(&SCRIPT, record.key(), record.to_json())
            .await
    }

    async fn store_if_pending(&self, record: &ResultRecord) -> Result<bool, Error> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(STORE_IF_PENDING));
        self.store_guarded(&SCRIPT, record.key(), record.to_json())
            .await
    }
}

impl RedisResults {
    /// Runs a script that stores `json` under `key` with the result TTL only if the record
    /// there allows it; whether it stored.
    async fn store_guarded(
        &self,
        script: &redis::Script,
        key: impl redis::ToRedisArgs,
        json: impl redis::ToRedisArgs,
    ) -> Result<bool, Error> {
        let mut conn = self.conn.clone();
        let stored: i64 = script
            .key(key)
            .arg(json)
            .arg(self.ttl_secs)
            .invoke_async(&mut conn)
            .await?;
        Ok(stored == 1)
    }
}

/// Logs results at debug level instead of storing them (embedded mode without Redis).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogResults;

#[async_trait::async_trait]
impl ResultSink for LogResults {
    async fn store(&self, record: &ResultRecord) -> Result<(), Error> {
        // The pipeline logged the outcome once already (with the result or the reason):
        // this is the record's detail, for debugging only.
        tracing::debug!(
            task_id = %record.task_id,
            state = record.state.as_str(),
            result = %record.result,
            traceback = record.traceback.as_deref().unwrap_or(""),
            "task result (not stored: no result backend)"
        );
        Ok(())
    }

    async fn store_state(&self, record: &StateRecord) -> Result<bool, Error> {
        tracing::info!(task_id = %record.task_id, state = %record.state,
            meta = %record.meta, "task state");
        Ok(true)
    }
}

/// Keeps every record in memory, in order (tests).
#[derive(Debug, Clone, Default)]
pub struct MemoryResults {
    /// The records stored so far.
    records: Arc<Mutex<Vec<ResultRecord>>>,
    /// The interim states stored so far.
    states: Arc<Mutex<Vec<StateRecord>>>,
}

impl MemoryResults {
    /// A copy of the records stored so far.
    #[must_use]
    pub fn records(&self) -> Vec<ResultRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// A copy of the interim states stored so far.
    #[must_use]
    pub fn states(&self) -> Vec<StateRecord> {
        self.states.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl ResultSink for MemoryResults {
    async fn store(&self, record: &ResultRecord) -> Result<(), Error> {
        if let Ok(mut r) = self.records.lock() {
            r.push(record.clone());
        }
        Ok(())
    }

    async fn store_state(&self, record: &StateRecord) -> Result<bool, Error> {
        let done = self
            .records()
            .iter()
            .any(|r| r.task_id == record.task_id && r.state != TaskState::Retry);
        if done {
            return Ok(false);
        }
        if let Ok(mut s) = self.states.lock() {
            s.push(record.clone());
        }
        Ok(true)
    }
}
