//! The chaos run of beatd, shared by `examples/chaos.rs` (the command) and
//! `tests/integration/chaos.rs` (a short run in the test suite), which include this directory
//! with `#[path]`.

pub mod check;
pub mod proxy;
pub mod runner;
