//! systemd `Type=notify` support: READY=1, STOPPING=1, RELOADING=1 and WATCHDOG=1 over
//! `$NOTIFY_SOCKET`. Every call is a no-op when the variable is unset (not under systemd).

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Whether READY=1 was sent: a reload before that (Redis still unreachable at start) must
/// not announce readiness on the start's behalf.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Tells systemd the service is up.
pub fn ready() {
    READY_SENT.store(true, Ordering::Relaxed);
    send(&[NotifyState::Ready]);
}

/// Tells systemd a reload finished (READY=1), if the service had been announced ready.
pub fn reloaded() {
    if READY_SENT.load(Ordering::Relaxed) {
        send(&[NotifyState::Ready]);
    }
}

/// Tells systemd a graceful stop began.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Tells systemd a reload began (`Type=notify-reload` wants the monotonic time with it);
/// nothing before the service was announced ready.
pub fn reloading() {
    if !READY_SENT.load(Ordering::Relaxed) {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Where and how often watchdog pings go: systemd's `$NOTIFY_SOCKET` at half of
/// `$WATCHDOG_USEC` ([`Watchdog::from_env`]), or a socket of a test's own.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// Half the interval systemd asked for; `None`: no watchdog.
    every: Option<Duration>,
    /// A datagram socket to ping instead of `$NOTIFY_SOCKET`.
    socket: Option<std::path::PathBuf>,
}

impl Watchdog {
    /// The watchdog systemd asked for, if any.
    #[must_use]
    pub fn from_env() -> Self {
        Self {
            every: sd_notify::watchdog_enabled().map(|i| i / 2),
            socket: None,
        }
    }

    /// Pings `socket` every `every` (tests).
    #[must_use]
    pub fn to_socket(socket: std::path::PathBuf, every: Duration) -> Self {
        Self {
            every: Some(every),
            socket: Some(socket),
        }
    }

    fn ping(&self) {
        match &self.socket {
            None => send(&[NotifyState::Watchdog]),
            Some(path) => {
                let sent = std::os::unix::net::UnixDatagram::unbound()
                    .and_then(|s| s.send_to(b"WATCHDOG=1", path));
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "watchdog ping failed");
                }
            }
        }
    }

    /// Pings while `alive` holds, until `shutdown`; a stalled process stops pinging, so
    /// systemd restarts it after `WatchdogSec`.
    pub async fn run(self, alive: impl Fn() -> bool + Send, shutdown: CancellationToken) {
        let Some(every) = self.every else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        let mut stalled = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if alive() {
                        stalled = false;
                        self.ping();
                    } else if !stalled {
                        stalled = true;
                        tracing::error!("a loop has stalled: watchdog pings stop");
                    }
                }
            }
        }
    }
}
