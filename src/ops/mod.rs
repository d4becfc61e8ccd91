//! Operations: the HTTP endpoint, Prometheus metrics, loop liveness, systemd notifications
//! and the allocator's settings. Reads what the daemon hands it; never imports `beat`,
//! `worker` or the ports.

pub mod http;
pub mod liveness;
pub mod malloc;
pub mod metrics;
pub mod notify;
pub mod per_entry;
