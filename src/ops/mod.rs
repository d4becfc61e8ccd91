//! Operations: the HTTP endpoint, Prometheus metrics and systemd notifications.

pub mod http;
pub mod metrics;
pub mod notify;
