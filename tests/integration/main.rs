//! beatd as users run it: the real `beatd` binary as child processes against real
//! `redis-server` processes the tests start on free ports. No mocks.
//!
//! One test binary; each module covers one concern.

/// High availability: replicas, failover (kill -9, SIGSTOP, SIGTERM), Redis outages, restarts
/// and schedule changes; every (entry, fire time) in the queue exactly once (issue 3, points 4
/// and 5).
mod ha;
/// Helpers: spawn `beatd beat` replicas with a temp schedule dir and a log file, read and watch
/// the queue, probe `/readyz`, poll with deadlines.
mod util;
