//! The chaos run of beatd, shared by `examples/chaos.rs` (the command) and the short runs in
//! the test suite (`tests/integration/chaos.rs`, `tests/sentinel/chaos.rs`,
//! `tests/on_rabbitmq/chaos.rs`), which include this directory with `#[path]`.

pub mod check;
pub mod mode_rabbit;
pub mod mode_redis;
pub mod mode_sentinel;
pub mod procs;
pub mod proxy;
pub mod runner;
