//! What a beatd worker answers over remote control (Celery's `celery.worker.control`):
//! `ping`, `active`, `registered`, `stats`, `revoked` and `revoke` (with `terminate`), in
//! Celery's reply shapes so `celery inspect` / `celery control` print beatd workers next to
//! Python ones. Unknown commands get Celery's error reply; `hello` (another worker's startup
//! sync) gets none. The transport is `pidbox`'s.

use super::pidbox::Control;
use super::registry::LiveRegistry;
use super::results::ResultSink;
use super::state::WorkerState;
use crate::clock::SharedClock;
use crate::protocol::ResultRecord;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Where a revoke marks tasks that have not started (as Celery's workers do), and the clock
/// of the record's `date_done`.
#[derive(Clone)]
pub struct RevokeMarks {
    /// The result backend.
    pub results: Arc<dyn ResultSink>,
    /// Wall time.
    pub clock: SharedClock,
}

impl std::fmt::Debug for RevokeMarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RevokeMarks")
    }
}

/// The worker's answers.
#[derive(Debug, Clone)]
pub struct WorkerControl {
    /// Running requests and revokes.
    pub state: WorkerState,
    /// The task table (`registered`).
    pub registry: LiveRegistry,
    /// Run slots (`stats.pool.max-concurrency`).
    pub concurrency: usize,
    /// Messages held at most (`stats.prefetch_count`).
    pub prefetch: usize,
    /// Mark revoked tasks that have not started REVOKED at once (none: only on arrival).
    pub marks: Option<RevokeMarks>,
}

impl WorkerControl {
    /// Celery's `_revoke`: each id not running here gets REVOKED unless some worker has
    /// started it or it has a result (the check and the write are one script).
    fn mark_revoked(&self, ids: &[String]) {
        let Some(marks) = self.marks.clone() else {
            return;
        };
        let running: Vec<String> = self
            .state
            .active()
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect();
        let ids: Vec<String> = ids
            .iter()
            .filter(|id| !running.contains(id))
            .cloned()
            .collect();
        if ids.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for id in ids {
                let record = ResultRecord::revoked(&id, "revoked", marks.clock.now());
                if let Err(e) = marks.results.store_if_pending(&record).await {
                    tracing::warn!(task_id = %id, error = %e, "cannot mark revoked task");
                }
            }
        });
    }
}

/// Python's repr of a set of strings, as Celery's revoke reply prints it.
fn set_repr(ids: &[String]) -> String {
    let items: Vec<String> = ids
        .iter()
        .map(|i| crate::protocol::pyrepr(&Value::String(i.clone())))
        .collect();
    format!("{{{}}}", items.join(", "))
}

impl Control for WorkerControl {
    fn handle(&self, method: &str, args: &Map<String, Value>) -> Option<Value> {
        Some(match method {
            "ping" => json!({"ok": "pong"}),
            "active" => Value::Array(self.state.active()),
            "registered" => json!(self.registry.current().names()),
            "stats" => self.state.stats(self.concurrency, self.prefetch),
            "revoked" => json!(self.state.revoked()),
            "revoke" => {
                let ids: Vec<String> = match args.get("task_id") {
                    Some(Value::String(id)) => vec![id.clone()],
                    Some(Value::Array(ids)) => ids
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    _ => Vec::new(),
                };
                let terminate = args
                    .get("terminate")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let killed = self.state.revoke(&ids, terminate);
                self.mark_revoked(&ids);
                tracing::info!(ids = ?ids, terminate, terminated = ?killed, "tasks revoked");
                if terminate {
                    if killed.is_empty() {
                        json!({"ok": "terminate: tasks unknown"})
                    } else {
                        json!({"ok": format!("terminate: {}", killed.join(", "))})
                    }
                } else {
                    json!({"ok": format!("tasks {} flagged as revoked", set_repr(&ids))})
                }
            }
            "hello" => return None,
            other => json!({"error": format!("No such control command: {other}")}),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_replies_like_celery() {
        let c = WorkerControl {
            state: WorkerState::new("beatd@t"),
            registry: LiveRegistry::default(),
            concurrency: 2,
            prefetch: 8,
            marks: None,
        };
        let mut args = Map::new();
        args.insert("task_id".into(), json!(["abc-123"]));
        assert_eq!(
            c.handle("revoke", &args),
            Some(json!({"ok": "tasks {'abc-123'} flagged as revoked"}))
        );
        assert!(c.state.is_revoked("abc-123"));
        args.insert("terminate".into(), json!(true));
        assert_eq!(
            c.handle("revoke", &args),
            Some(json!({"ok": "terminate: tasks unknown"}))
        );
        assert_eq!(c.handle("hello", &Map::new()), None);
        assert_eq!(c.handle("ping", &Map::new()), Some(json!({"ok": "pong"})));
    }
}
