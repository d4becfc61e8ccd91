//! Signals turned into tokens: SIGTERM or SIGINT starts a graceful stop, a second SIGINT (or
//! SIGTERM) stops at once, SIGHUP asks for a reload. Owns no policy about what stopping
//! means; each subsystem watches the tokens it is given.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The tokens and notices a daemon reacts to.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Cancelled on the first SIGTERM/SIGINT: stop taking work, finish what runs.
    pub graceful: CancellationToken,
    /// Cancelled on the second: stop now.
    pub immediate: CancellationToken,
    /// Notified on SIGHUP.
    pub reload: std::sync::Arc<Notify>,
}

impl Signals {
    /// Installs the handlers and returns the tokens they drive.
    ///
    /// # Errors
    /// When a handler cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        let signals = Self::default();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let s = signals.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {
                        s.reload.notify_one();
                        continue;
                    }
                }
                if s.graceful.is_cancelled() {
                    tracing::warn!("second stop signal: stopping now");
                    s.immediate.cancel();
                    return;
                }
                tracing::info!("stop signal: shutting down gracefully");
                s.graceful.cancel();
            }
        });
        Ok(signals)
    }
}
