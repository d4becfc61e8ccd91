//! The one failure vocabulary of the beat's three ports (`leader`, `emit`, `state`), whatever
//! backs them. Owns that type only; imports nothing from the crate.

/// What went wrong at a port. The beat loop needs exactly two answers: step down
/// ([`Error::LeaseLost`]) or retry later with backoff ([`Error::Unavailable`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lock no longer holds this lease's token; the call pushed and recorded nothing.
    #[error("lease lost: the leader lock no longer holds this replica's token")]
    LeaseLost,
    /// The backing store could not be reached or refused the operation. Emission and state
    /// writes are idempotent per (entry, fire time), so the caller may simply retry.
    #[error("beat backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// A switch that makes an in-memory port fail: down, every call fails with
/// [`Error::Unavailable`], like Redis during an outage that keeps its data (AOF); hung, every
/// call waits forever, like a store that accepts a request and never answers. Shared by the
/// in-memory lock, emitter and state of one test so they fail together.
#[derive(Debug, Clone, Default)]
pub struct Fault(std::sync::Arc<std::sync::atomic::AtomicU8>);

const UP: u8 = 0;
const DOWN: u8 = 1;
const HUNG: u8 = 2;

impl Fault {
    /// Starts (`true`) or ends (`false`) an outage.
    pub fn set_down(&self, down: bool) {
        self.0.store(
            if down { DOWN } else { UP },
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// From now on, calls never return.
    pub fn hang(&self) {
        self.0.store(HUNG, std::sync::atomic::Ordering::SeqCst);
    }

    /// What a call meets on entry: `Err` while down, no return while hung.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while down.
    pub async fn enter(&self) -> Result<(), Error> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            DOWN => Err(Error::Unavailable("store down".into())),
            HUNG => std::future::pending().await,
            _ => Ok(()),
        }
    }
}
