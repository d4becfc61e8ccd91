//! Interim states of a running task (Celery's `self.update_state(state=…, meta=…)`): the
//! handle a task reports through ([`StateUpdates`]), the check of what it reports, and the
//! writer that stores each state in the result backend as Celery does (SETEX + PUBLISH of the
//! record), never over a final state. Updates coalesce: the writer stores at most one per
//! [`MIN_INTERVAL`], the latest, so a task reporting in a tight loop costs Redis nothing more.
//! Reading the lines of an `exec` task is `exec`'s; storing is the [`ResultSink`]'s.

use super::results::ResultSink;
use crate::protocol::{StateRecord, READY_STATES};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Shortest time between two stored updates of one task (at most 10 a second).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Largest update accepted, as JSON text (a progress line of an `exec` task included).
pub const MAX_UPDATE_BYTES: usize = 64 << 10;
/// Longest state name.
const MAX_STATE_LEN: usize = 64;

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectedUpdate {
    /// The line is not JSON.
    #[error("not json: {0}")]
    NotJson(String),
    /// JSON, but not `{"state": "<name>", "meta": …}`.
    #[error("expected {{\"state\": \"<name>\", \"meta\": …}}")]
    Shape,
    /// The state name is empty or too long.
    #[error("state name must be 1 to {MAX_STATE_LEN} characters")]
    BadState,
    /// A final state: only the task's end sets one.
    #[error("state {0} is final; a task reports it by how it ends, not as progress")]
    FinalState(String),
    /// Larger than [`MAX_UPDATE_BYTES`].
    #[error("update of {0} bytes is over the {MAX_UPDATE_BYTES}-byte limit")]
    TooLarge(usize),
}

/// The latest state reported and not yet stored: name and meta.
type Pending = Option<(String, Value)>;

/// A task's way to report interim states; cheap to clone. Updates sent after the task
/// ended are dropped.
#[derive(Clone, Default)]
pub struct StateUpdates {
    tx: Option<Arc<watch::Sender<Pending>>>,
}

impl std::fmt::Debug for StateUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateUpdates")
            .field("connected", &self.tx.is_some())
            .finish()
    }
}

impl PartialEq for StateUpdates {
    /// Requests compare by content; the channel they report on is not part of it.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl StateUpdates {
    /// Reports `state` with `meta` (`AsyncResult(id).state` / `.info`).
    ///
    /// # Errors
    /// A final or malformed state name, or a meta over [`MAX_UPDATE_BYTES`].
    pub fn update_state(&self, state: &str, meta: Value) -> Result<(), RejectedUpdate> {
        if state.is_empty() || state.chars().count() > MAX_STATE_LEN {
            return Err(RejectedUpdate::BadState);
        }
        if READY_STATES.contains(&state) {
            return Err(RejectedUpdate::FinalState(state.into()));
        }
        let len = meta.to_string().len();
        if len > MAX_UPDATE_BYTES {
            return Err(RejectedUpdate::TooLarge(len));
        }
        if let Some(tx) = &self.tx {
            tx.send_replace(Some((state.into(), meta)));
        }
        Ok(())
    }

    /// Reports one JSON line `{"state": "PROGRESS", "meta": {…}}` (`meta` may be omitted).
    ///
    /// # Errors
    /// As [`StateUpdates::update_state`], or a line that is not such an object.
    pub fn update_from_line(&self, line: &[u8]) -> Result<(), RejectedUpdate> {
        if line.len() > MAX_UPDATE_BYTES {
            return Err(RejectedUpdate::TooLarge(line.len()));
        }
        let v: Value =
            serde_json::from_slice(line).map_err(|e| RejectedUpdate::NotJson(e.to_string()))?;
        let Value::Object(mut m) = v else {
            return Err(RejectedUpdate::Shape);
        };
        let Some(Value::String(state)) = m.remove("state") else {
            return Err(RejectedUpdate::Shape);
        };
        let meta = m.remove("meta").unwrap_or(Value::Null);
        if !m.is_empty() {
            return Err(RejectedUpdate::Shape);
        }
        self.update_state(&state, meta)
    }
}

/// Stores a task's updates while it runs; dropping it stops storing (pending updates are
/// superseded by the final state anyway).
pub(crate) struct Writer(tokio::task::JoinHandle<()>);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A handle for task `task_id` and the writer storing what it reports into `sink`.
pub(crate) fn start(task_id: &str, sink: Arc<dyn ResultSink>) -> (StateUpdates, Writer) {
    let (tx, mut rx) = watch::channel::<Pending>(None);
    let id = task_id.to_owned();
    let handle = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some((state, meta)) = rx.borrow_and_update().clone() else {
                continue;
            };
            let record = StateRecord {
                task_id: id.clone(),
                state,
                meta,
            };
            if let Err(e) = sink.store_state(&record).await {
                tracing::warn!(task_id = %id, error = %e, "cannot store task state");
            }
            tokio::time::sleep(MIN_INTERVAL).await;
        }
    });
    (
        StateUpdates {
            tx: Some(Arc::new(tx)),
        },
        Writer(handle),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_are_checked() {
        let u = StateUpdates::default();
        assert_eq!(
            u.update_from_line(br#"{"state": "PROGRESS", "meta": {"current": 1}}"#),
            Ok(())
        );
        assert_eq!(u.update_from_line(br#"{"state": "WAITING"}"#), Ok(()));
        assert!(matches!(
            u.update_from_line(b"50%"),
            Err(RejectedUpdate::NotJson(_))
        ));
        assert_eq!(
            u.update_from_line(br#"{"state": 3}"#),
            Err(RejectedUpdate::Shape)
        );
        assert_eq!(
            u.update_from_line(br#"{"state": "P", "meta": 1, "extra": 2}"#),
            Err(RejectedUpdate::Shape)
        );
        assert_eq!(
            u.update_state("SUCCESS", json!(1)),
            Err(RejectedUpdate::FinalState("SUCCESS".into()))
        );
        assert_eq!(u.update_state("", json!(1)), Err(RejectedUpdate::BadState));
        let big = "x".repeat(MAX_UPDATE_BYTES + 1);
        assert!(matches!(
            u.update_state("P", json!(big)),
            Err(RejectedUpdate::TooLarge(_))
        ));
    }
}
