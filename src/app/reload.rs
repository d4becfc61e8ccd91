//! Schedule reloads: on SIGHUP or a change under the schedule paths (inotify; Kubernetes
//! swaps a `..data` symlink when a ConfigMap changes, which shows as an event on the
//! directory). A valid set of files replaces the schedule; an invalid one keeps the old
//! schedule, logs every diagnostic and counts a failure.

use crate::clock::SharedClock;
use crate::config;
use crate::entry::Entry;
use crate::ops::{malloc, metrics::Metrics, notify as sd};
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

/// Editors and Kubernetes write in several steps: wait this long after the first event.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `paths` (directories themselves, files through their parent directory) and
/// forwards a unit event per change. The watcher stops when the returned value is dropped.
fn watch(paths: &[PathBuf], events: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() && ev.paths.iter().any(|p| is_schedule_path(p)) {
                let _ = events.try_send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch schedule files; SIGHUP still reloads"))
    .ok()?;
    for path in paths {
        let dir = if path.is_dir() {
            path.as_path()
        } else {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        };
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(path = %dir.display(), error = %e, "cannot watch schedule path");
        }
    }
    Some(watcher)
}

/// Whether a changed path can change the schedule: a `*.toml` file, or Kubernetes'
/// `..data` / `..<timestamp>` entries of a mounted ConfigMap. Other files in the directory
/// (a log, an editor's swap file) do not trigger a reload.
fn is_schedule_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."))
}

/// How often to look whether the beat has let go of the schedule a reload replaced.
const RELEASE_POLL: Duration = Duration::from_millis(100);

/// How long to keep looking: the beat replans on a change within milliseconds, unless it is
/// sending a batch or waiting on Redis; past this, the memory waits for the next reload.
const RELEASE_WAIT: Duration = Duration::from_secs(60);

/// Where schedules are read from, and how.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Schedule files and directories.
    pub paths: Vec<PathBuf>,
    /// The zone of entries whose file sets none.
    pub default_timezone: Option<crate::schedule::Tz>,
}

impl Sources {
    /// Loads them as of `now`.
    ///
    /// # Errors
    /// Diagnostics of invalid files.
    pub fn load(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<config::Schedules, config::Diagnostics> {
        config::load_schedules_in(&self.paths, now, self.default_timezone)
    }
}

/// Reloads schedules into `entries` until `shutdown`.
pub async fn run(
    sources: Sources,
    entries: watch::Sender<Arc<[Entry]>>,
    hup: Arc<Notify>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let _watcher = watch(&sources.paths, tx);
    // The schedule the last reload replaced, until the beat's plan has dropped it: then its
    // memory is freed, and handed back to the kernel (glibc keeps it otherwise, about 5 MB
    // for 10,000 entries).
    let mut replaced: Option<(Weak<[Entry]>, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hup.notified() => tracing::info!("SIGHUP: reloading schedules"),
            Some(()) = rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
            }
            () = tokio::time::sleep(RELEASE_POLL), if replaced.is_some() => {
                if let Some((old, since)) = &replaced {
                    if old.strong_count() == 0 {
                        // Dropped first: an `Arc`'s memory goes with its last `Weak`.
                        replaced = None;
                        malloc::release_free_memory();
                        tracing::debug!("replaced schedule freed; memory returned");
                    } else if since.elapsed() > RELEASE_WAIT {
                        replaced = None;
                    }
                }
                continue;
            }
        }
        sd::reloading();
        // Parsing 100,000 entries takes a second of CPU: off the runtime's threads, so the
        // beat keeps its fire instants meanwhile (it was seen committing a second late).
        let (src, now) = (sources.clone(), clock.now());
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = src.load(now);
            // Whatever the outcome, the load's parse tree and raw tables are free now.
            malloc::release_free_memory();
            loaded
        })
        .await;
        match loaded {
            Ok(loaded) => {
                if let Some(old) = apply(loaded, &entries, &metrics) {
                    replaced = Some((Arc::downgrade(&old), tokio::time::Instant::now()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "schedule reload failed; keeping the previous schedule")
            }
        }
        sd::reloaded();
    }
}

/// Applies one reload's outcome; returns the schedule it replaced, if it replaced it.
fn apply(
    loaded: Result<config::Schedules, config::Diagnostics>,
    entries: &watch::Sender<Arc<[Entry]>>,
    metrics: &Metrics,
) -> Option<Arc<[Entry]>> {
    match loaded {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{}", w.to_string().trim_end());
            }
            metrics.reloads.inc();
            if **entries.borrow() != *loaded.entries {
                tracing::info!(entries = loaded.entries.len(), "schedules reloaded");
                Some(entries.send_replace(loaded.entries.into()))
            } else {
                tracing::info!("schedules unchanged");
                None
            }
        }
        Err(diags) => {
            metrics.reload_failures.inc();
            tracing::error!(
                "schedule reload rejected; keeping the previous schedule:\n{}",
                diags.to_string().trim_end()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_toml_files_and_configmap_links_trigger_reloads() {
        assert!(is_schedule_path(Path::new("/etc/beatd/schedules/a.toml")));
        assert!(is_schedule_path(Path::new("/etc/beatd/schedules/..data")));
        assert!(is_schedule_path(Path::new(
            "/etc/beatd/schedules/..2026_11_23_10_00_00.1"
        )));
        assert!(!is_schedule_path(Path::new(
            "/etc/beatd/schedules/beat.log"
        )));
        assert!(!is_schedule_path(Path::new(
            "/etc/beatd/schedules/.a.toml.swp"
        )));
    }
}
