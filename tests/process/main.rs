//! Tests that need the whole process to themselves, in a crate of their
//! own (the other is `tests/integration/`): one lowers the open-file limit,
//! one measures the process's memory, one installs the global log
//! subscriber and reads the process's CPU time. In one crate they would
//! blur or break every other test running beside them; here they take
//! turns ([`ALONE`]).

#[path = "../support/mod.rs"]
mod support;

mod descriptors;
mod hostile_memory;
mod upstream_trouble;

/// Held for the whole of each test here: they run one at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
