//! The one integration-test binary: the real `beatd` binary (`env!("CARGO_BIN_EXE_beatd")`)
//! and library against real processes and tools (redis-server, Python Celery,
//! systemd-analyze, kubernetes-validate). One module per concern.

mod util;

// Command line: check diagnostics and exit codes, next, help.
mod cli;
// Embedded `beatd run`: the state-file lock, kill -9 and restart.
mod embedded;
// Interoperability with real Python Celery (worker, beat, client) on a private redis-server.
mod interop;
// Operations: HTTP endpoints and metrics, systemd notify, reloads, deploy files, logs and
// secrets.
mod ops;
// Helpers of `ops`: child processes, HTTP client, metric lookup.
mod ops_util;
// `send` and `status` against Redis.
mod redis_cli;
