//! The one host name of the process, for lock tokens, `headers.origin` and worker names.
//! Reads the environment and `/proc` once; everything else takes the value as an argument.

use std::sync::OnceLock;

/// `$HOSTNAME` (the pod name in Kubernetes, which the kernel's name matches there too), else
/// the kernel's host name, else `localhost`.
#[must_use]
pub fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// The producer name in `headers.origin`, like Celery's `gen<pid>@<host>`.
#[must_use]
pub fn origin() -> String {
    format!("beatd{}@{}", std::process::id(), hostname())
}
