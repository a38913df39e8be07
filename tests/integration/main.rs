//! ferry's integration tests, one crate: ferry runs in-process against
//! in-process fakes on `127.0.0.1:0`, one module per area.
//!
//! One crate links once: 23 separate test crates each linked ferry and
//! every dependency again (a newcomer's first `cargo test` took 9 min and
//! left 11 GB in `target/`). Tests that need the whole process to
//! themselves — a lowered open-file limit, a measure of its memory, a
//! global log subscriber — are the crate `tests/process/`; that is the
//! only other one.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod auth;
mod blobs;
mod budget;
mod check_config;
mod cluster;
mod crash;
mod forwarded;
mod freshness;
mod hostile;
mod hostile_upstreams;
mod house;
mod input;
mod lifecycle;
mod listener;
mod manifests;
mod multirange;
mod operations;
mod pins;
mod prefetch;
mod prewarm;
mod properties;
mod replicas;
mod routing;
mod state_held_once;
mod storage_fs;
/// Needs a running S3 server (CI starts Garage: `tests/e2e/storage-s3.sh`).
#[cfg(feature = "s3-tests")]
mod storage_s3;
