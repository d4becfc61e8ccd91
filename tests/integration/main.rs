//! The one integration-test binary: the real `beatd` binary and library against real
//! processes (redis-server, Python Celery). One module per concern.

mod util;

// Command line: check diagnostics and exit codes, next, help.
mod cli;
// Embedded `beatd run`: the state-file lock, kill -9 and restart.
mod embedded;
// Interoperability with real Python Celery (worker, beat, client) on a private redis-server.
mod interop;
// `send` and `status` against Redis.
mod redis_cli;
