//! Tests that need the whole process to themselves, in a crate of their
//! own (the other is `tests/integration/`): one lowers the open-file limit,
//! one measures the process's memory, one installs the global log
//! subscriber and reads the process's CPU time. In one crate they would
//! blur or break every other test running beside them; here they take
//! turns ([`alone`]).

#[path = "../support/mod.rs"]
mod support;

mod descriptors;
mod hostile_memory;
mod upstream_trouble;

/// Held for the whole of each test here, its runtime's shutdown included.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scenario` alone in the process on a runtime of its own, and shuts
/// that runtime down (closing every socket and file its tasks held) before
/// the next test starts. Releasing the turn any earlier let one test's
/// thousands of connections close while the next counted descriptors.
fn alone(scenario: impl std::future::Future<Output = ()>) {
    let _turn = ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(scenario);
    drop(runtime);
}
