//! Integration tests against real processes: one test binary, one module per concern.

/// Interoperability with real Python Celery (worker, beat, client) on a private redis-server.
mod interop;
