//! Operations: the HTTP endpoint, Prometheus metrics, systemd notifications and the
//! allocator's settings.

pub mod http;
pub mod malloc;
pub mod metrics;
pub mod notify;
