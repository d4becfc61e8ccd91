//! Where task results go: Celery's Redis result backend (GET-check, then one
//! `MULTI SETEX … PUBLISH … EXEC`, celery-wire §7), a log-only sink for the embedded mode,
//! and an in-memory sink for tests. Owns storing; building records is `protocol`'s.

use super::Error;
use crate::protocol::{ResultRecord, TaskState, RESULT_TTL_SECS};
use crate::redis::DedicatedConn;
use std::sync::{Arc, Mutex};

/// Stores result records.
#[async_trait::async_trait]
pub trait ResultSink: Send + Sync + 'static {
    /// Stores one record.
    async fn store(&self, record: &ResultRecord) -> Result<(), Error>;
}

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
}

/// Logs results instead of storing them (embedded mode without Redis).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogResults;

#[async_trait::async_trait]
impl ResultSink for LogResults {
    async fn store(&self, record: &ResultRecord) -> Result<(), Error> {
        let result = record.result.to_string();
        match record.state {
            TaskState::Success => {
                tracing::info!(task_id = %record.task_id, %result, "task succeeded")
            }
            TaskState::Retry => tracing::warn!(task_id = %record.task_id, %result, "task retry"),
            TaskState::Failure | TaskState::Revoked => tracing::error!(
                task_id = %record.task_id,
                state = record.state.as_str(),
                %result,
                traceback = record.traceback.as_deref().unwrap_or(""),
                "task did not succeed"
            ),
        }
        Ok(())
    }
}

/// Keeps every record in memory, in order (tests).
#[derive(Debug, Clone, Default)]
pub struct MemoryResults {
    /// The records stored so far.
    records: Arc<Mutex<Vec<ResultRecord>>>,
}

impl MemoryResults {
    /// A copy of the records stored so far.
    #[must_use]
    pub fn records(&self) -> Vec<ResultRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
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
}
