//! The one integration-test binary: the real `beatd` binary and library against real
//! processes (redis-server, Python Celery). One module per concern.

mod util;

// Command line: check diagnostics and exit codes, next, help.
mod cli;
// Embedded `beatd run`: the state-file lock, kill -9 and restart.
mod embedded;
// The chaos run (short) and its invariant checker.
mod chaos;
// Redis with a password, an ACL user limited to beatd's keys, and TLS.
mod secure;
// Bad input at the edges: huge files, many entries, deep nesting, symlink loops, huge messages.
mod edges;
// Property tests of next-fire computation against a minute-by-minute DST reference.
mod schedule_props;
