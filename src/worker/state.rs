//! What the worker is doing, as remote control sees it (Celery's `celery.worker.state`): the
//! requests running now, the ids revoked (remembered for a bounded time and number, like
//! Celery's `REVOKES_MAX` / `REVOKE_EXPIRES`), and the per-task totals of `inspect stats`.
//! Shared by the pipeline, which registers runs and consults revokes, and the pidbox, which
//! reads and revokes. No I/O; time is tokio's, so tests may pause it.

use super::progress::{RejectedUpdate, StateUpdates};
use crate::protocol::ParsedTask;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most revoked ids remembered (Celery: 50,000).
pub const REVOKES_MAX: usize = 50_000;
/// How long a revoke is remembered (Celery: 3 hours).
pub const REVOKE_EXPIRES: Duration = Duration::from_secs(3 * 3600);

/// One running request.
struct Active {
    /// Celery's `Request.info()` for `inspect active`.
    info: Value,
    /// Cancelled by `revoke(terminate=True)`.
    terminate: CancellationToken,
    /// Where states posted for it go.
    updates: StateUpdates,
    /// The secret an `http` task posts its states with.
    token: String,
}

/// Why a posted state was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// No such task is running (never was, or it has ended).
    #[error("no task {0} is running here")]
    NotRunning(String),
    /// The token does not match the task's.
    #[error("wrong token")]
    BadToken,
    /// The state itself was refused.
    #[error(transparent)]
    Rejected(#[from] RejectedUpdate),
}

#[derive(Default)]
struct Inner {
    active: HashMap<String, Active>,
    /// Revoked ids and when they were revoked, oldest first (for expiry).
    revoked: VecDeque<(String, Instant)>,
    revoked_set: HashMap<String, Instant>,
    /// Finished tasks by name (`stats.total`).
    total: BTreeMap<String, u64>,
}

/// The worker's shared state; cheap to clone.
#[derive(Clone)]
pub struct WorkerState {
    /// The node name (`beatd@host`), the key of every remote-control reply.
    node: Arc<str>,
    /// When the worker started (`stats.uptime`).
    since: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerState")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerState {
    fn default() -> Self {
        Self::new(&default_node_name())
    }
}

/// `beatd@<host>`, the node name unless one is configured (Celery's `celery@%h`).
#[must_use]
pub fn default_node_name() -> String {
    format!("beatd@{}", crate::host::hostname())
}

/// Removes its request from the active set when the run ends, however it ends.
pub struct ActiveGuard {
    state: WorkerState,
    id: String,
    name: String,
    /// Fires on `revoke(terminate=True)`.
    pub terminate: CancellationToken,
    /// The secret that authorizes posting states for this run.
    pub token: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut inner = self.state.lock();
        inner.active.remove(&self.id);
        *inner
            .total
            .entry(std::mem::take(&mut self.name))
            .or_default() += 1;
    }
}

impl WorkerState {
    /// State of the node `node`.
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self {
            node: node.into(),
            since: Instant::now(),
            inner: Arc::default(),
        }
    }

    /// The node name.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves plain data behind: keep using it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `task` starts running, reporting its states to `updates`; the guard
    /// ends the record.
    #[must_use]
    pub fn begin(&self, task: &ParsedTask, time_start: f64, updates: StateUpdates) -> ActiveGuard {
        let info = json!({
            "id": task.id,
            "name": task.task,
            "args": task.args,
            "kwargs": task.kwargs,
            "type": task.task,
            "hostname": &*self.node,
            "time_start": time_start,
            "acknowledged": true,
            "delivery_info": {
                "exchange": task.exchange,
                "routing_key": task.routing_key,
                "priority": task.priority.unwrap_or(0),
                "redelivered": task.redelivered,
            },
            "worker_pid": std::process::id(),
        });
        let terminate = CancellationToken::new();
        let token = format!("{:032x}", rand::random::<u128>());
        self.lock().active.insert(
            task.id.clone(),
            Active {
                info,
                terminate: terminate.clone(),
                updates,
                token: token.clone(),
            },
        );
        ActiveGuard {
            state: self.clone(),
            id: task.id.clone(),
            name: task.task.clone(),
            terminate,
            token,
        }
    }

    /// A state posted for running task `id` with `token` (one JSON object, as an `exec`
    /// task's progress line).
    ///
    /// # Errors
    /// [`PostError`]: not running, wrong token, or a refused state.
    pub fn post_state(&self, id: &str, token: &str, body: &[u8]) -> Result<(), PostError> {
        let updates = {
            let inner = self.lock();
            let active = inner
                .active
                .get(id)
                .ok_or_else(|| PostError::NotRunning(id.to_owned()))?;
            // Compared in full whatever the first difference: no timing hint at the token.
            let same = active.token.len() == token.len()
                && active
                    .token
                    .bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if !same {
                return Err(PostError::BadToken);
            }
            active.updates.clone()
        };
        Ok(updates.update_from_line(body)?)
    }

    /// Whether `id` was revoked (and the revoke has not expired).
    #[must_use]
    pub fn is_revoked(&self, id: &str) -> bool {
        let mut inner = self.lock();
        expire(&mut inner, Instant::now());
        inner.revoked_set.contains_key(id)
    }

    /// Remembers `ids` as revoked; with `terminate`, cancels those running now. Returns the
    /// ids that were running and are being terminated.
    pub fn revoke(&self, ids: &[String], terminate: bool) -> Vec<String> {
        let now = Instant::now();
        let mut inner = self.lock();
        expire(&mut inner, now);
        let mut killed = Vec::new();
        for id in ids {
            inner.revoked_set.insert(id.clone(), now);
            inner.revoked.push_back((id.clone(), now));
            if terminate {
                if let Some(a) = inner.active.get(id) {
                    a.terminate.cancel();
                    killed.push(id.clone());
                }
            }
        }
        while inner.revoked.len() > REVOKES_MAX {
            if let Some((old, at)) = inner.revoked.pop_front() {
                if inner.revoked_set.get(&old) == Some(&at) {
                    inner.revoked_set.remove(&old);
                }
            }
        }
        killed
    }

    /// `inspect active`: the running requests.
    #[must_use]
    pub fn active(&self) -> Vec<Value> {
        self.lock()
            .active
            .values()
            .map(|a| a.info.clone())
            .collect()
    }

    /// `inspect revoked`: the remembered revoked ids.
    #[must_use]
    pub fn revoked(&self) -> Vec<String> {
        let mut inner = self.lock();
        expire(&mut inner, Instant::now());
        inner.revoked_set.keys().cloned().collect()
    }

    /// `inspect stats`: the parts of Celery's reply that mean something for beatd.
    #[must_use]
    pub fn stats(&self, concurrency: usize, prefetch: usize) -> Value {
        let inner = self.lock();
        let total: Map<String, Value> = inner
            .total
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect();
        json!({
            "total": total,
            "pid": std::process::id(),
            "uptime": self.since.elapsed().as_secs(),
            "pool": {
                "implementation": "beatd",
                "max-concurrency": concurrency,
                "processes": [std::process::id()],
            },
            "prefetch_count": prefetch,
            "sw_ident": "beatd",
            "sw_ver": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// Forgets revokes older than [`REVOKE_EXPIRES`].
fn expire(inner: &mut Inner, now: Instant) {
    while let Some((id, at)) = inner.revoked.front() {
        if now.duration_since(*at) < REVOKE_EXPIRES {
            break;
        }
        // A re-revoke refreshed the set's time: the queue entry is stale, the set's is not.
        if inner.revoked_set.get(id) == Some(at) {
            inner.revoked_set.remove(id);
        }
        inner.revoked.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn revokes_expire_and_are_bounded() {
        let s = WorkerState::new("beatd@test");
        s.revoke(&["a".into()], false);
        assert!(s.is_revoked("a"));
        tokio::time::advance(REVOKE_EXPIRES + Duration::from_secs(1)).await;
        assert!(!s.is_revoked("a"));
        let ids: Vec<String> = (0..=REVOKES_MAX).map(|i| i.to_string()).collect();
        s.revoke(&ids, false);
        assert!(!s.is_revoked("0"));
        assert!(s.is_revoked(&REVOKES_MAX.to_string()));
        assert_eq!(s.revoked().len(), REVOKES_MAX);
    }
}
