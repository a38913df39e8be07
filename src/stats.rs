//! Counters the request paths bump, in one place, for logs, tests and the
//! metrics endpoint to come.

use std::sync::atomic::AtomicU64;

/// Process-wide counters. Relaxed atomics: they are statistics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Stored tags served because the upstream could not be used.
    pub stale_served: AtomicU64,
    /// Tag revalidations done with a `HEAD`.
    pub tag_head_revalidations: AtomicU64,
    /// Tag manifests fetched with a `GET`.
    pub tag_get_fetches: AtomicU64,
    /// Tag requests that joined a revalidation already in flight.
    pub tag_revalidations_joined: AtomicU64,
}
