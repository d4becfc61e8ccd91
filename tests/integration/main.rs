//! The one integration-test binary: the real `beatd` binary (`env!("CARGO_BIN_EXE_beatd")`)
//! and library against real processes and tools (redis-server, Python Celery and RQ,
//! systemd-analyze, kubernetes-validate). No mocks. One module per concern.

mod util;

// scripts/celery-to-toml.py on a real Celery app: `beatd check`, and `next` against Celery.
mod celery_import;
// The chaos run (short) and its invariant checker.
mod chaos;
// Command line: check diagnostics and exit codes, next, help.
mod cli;
// The status page in headless Chromium: entries, timeline, trigger only with the token.
mod console;
// Runtime controls: pause, resume, trigger, backfill against HA replicas and `beatd run`.
mod controls;
// Bad input at the edges: huge files, many entries, deep nesting, symlink loops, huge messages.
mod edges;
// Embedded `beatd run`: the state-file lock, kill -9 and restart.
mod embedded;
// High availability: replicas, failover (kill -9, SIGSTOP, SIGTERM), Redis outages, restarts
// and schedule changes; every (entry, fire time) in the queue exactly once.
mod ha;
// Helpers of `ha`: beat replicas with a temp schedule dir and a log file, queue reads,
// readiness probes.
mod ha_util;
// Interoperability with real Python Celery (worker, beat, client) on a private redis-server.
mod interop;
// Overlap policies with slow tasks on beatd's worker; `check` without a result backend.
mod overlap;
// Operations: HTTP endpoints and metrics, systemd notify, reloads, deploy files, logs and
// secrets.
mod ops;
// Helpers of `ops`: child processes, HTTP client, metric lookup.
mod ops_util;
// `send` and `status` against Redis.
mod redis_cli;
// RQ jobs encoded by beatd, read by python-rq 3's `Job.fetch` and run by a stock `rq worker`.
mod rq_wire;
// Property tests of next-fire computation against a minute-by-minute DST reference.
mod schedule_props;
// RQ entries end to end: three beats, stock rq workers, a kill -9 of the leader.
mod rq_beat;
// Redis with a password, an ACL user limited to beatd's keys, and TLS.
mod secure;
// Two replicas of one namespace with different schedule files: the split is reported.
mod split;
