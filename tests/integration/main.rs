//! The one integration-test binary; each module tests one area against the real `beatd`
//! binary (`env!("CARGO_BIN_EXE_beatd")`) and real tools (redis-server, systemd-analyze,
//! kubernetes-validate).

/// Operations (issue 5): HTTP endpoints and metrics, systemd notify, reloads, deploy files,
/// logs and secrets.
mod ops;
/// Helpers of `ops`: child processes, HTTP client, metric lookup.
mod ops_util;
