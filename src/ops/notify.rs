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

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
#[must_use]
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog at half its interval while `alive` holds and until `shutdown`.
pub async fn watchdog(alive: impl Fn() -> bool + Send, shutdown: CancellationToken) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if alive() {
                    send(&[NotifyState::Watchdog]);
                }
            }
        }
    }
}
