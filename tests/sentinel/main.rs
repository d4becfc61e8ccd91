//! Redis behind Sentinel, against real processes: a primary, a replica and three Sentinels
//! on free ports (`beatd::testkit::sentinel`), the primary killed (`kill -9`) or paused
//! (SIGSTOP) the ways production loses it. beatd must find the master, follow a failover
//! without a restart, and keep every fire time exactly once across it.
//!
//! Figures (time from the kill to the first fire on the new primary) are printed; run with
//! `--nocapture` to see them.

/// Three `beatd beat` processes, an entry every second, the primary killed and paused.
mod beat;
/// A short chaos run in Sentinel mode (`chaos/mode_sentinel.rs`).
mod chaos;
/// `beatd check --redis` and startup on a bad or unreachable Sentinel set.
mod cli;
/// Resolution, errors, the lock's epoch and WAIT across a failover (library level).
mod resolve;
/// What WAIT costs when 10,000 fires are due at once (prints; asserts no time).
mod timing;
/// `beatd worker` consuming and storing results across a failover.
mod worker;

#[path = "../integration/ha_util.rs"]
mod ha_util;
