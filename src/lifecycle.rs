//! Keeping the store correct and within its budget without a person
//! looking after it: the index of what is stored, LRU eviction under a size
//! cap (and `maxIdle`), free-space checks with an uncached fallback, and the
//! periodic scrub. Start-up recovery (temp files) lives in the store.
//!
//! The pieces are small and separately tested: [`eviction::plan`] is a pure
//! function, [`Index`] is memory only, [`Pinned`] is what `ferry.pin`
//! keeps, [`scrub`] is blocking file work.

pub mod eviction;
mod index;
mod pinned;
pub mod scrub;
mod space;

use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::clock::Clock;
use crate::config::LifecycleConfig;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::store::FsStore;

pub use index::Index;
pub use pinned::{PinState, Pinned};
pub use scrub::{ScrubOptions, ScrubReport};
pub use space::{Reservation, Space, SpaceProbe};

/// What an eviction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EvictionReport {
    pub evicted: usize,
    pub bytes: u64,
    /// The blobs whose files were deleted (the store's removal listener
    /// has already let every other copy go).
    pub digests: Vec<Digest>,
}

/// The store's caretaker, shared by the coordinator and background tasks.
#[derive(Debug)]
pub struct Lifecycle {
    pub config: LifecycleConfig,
    pub index: Index,
    pub space: Space,
    /// Open readers per stored blob: such blobs are never evicted.
    readers: DashMap<Digest, usize>,
    pub last_scrub: Mutex<Option<ScrubReport>>,
    /// Evictions are counted here as they happen.
    metrics: Arc<Metrics>,
    /// Wakes the eviction task after a publish took the store over its cap.
    pub pressure: tokio::sync::Notify,
    /// The blobs of `ferry.pin`'s images: never evicted.
    pub pinned: Pinned,
}

impl Lifecycle {
    /// Rebuilds the index from the store's files.
    pub fn open(
        store: &FsStore,
        config: LifecycleConfig,
        probe: Option<SpaceProbe>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Lifecycle> {
        let index = Index::rebuild(store)?;
        let probe = probe.unwrap_or_else(|| SpaceProbe::Statvfs(store.root().to_path_buf()));
        Ok(Lifecycle {
            space: Space::new(probe, config.min_free_space),
            last_scrub: Mutex::new(scrub::last_report(store)),
            config,
            index,
            readers: DashMap::new(),
            metrics,
            pressure: tokio::sync::Notify::new(),
            pinned: Pinned::default(),
        })
    }

    /// A blob was published.
    pub fn stored(&self, digest: &Digest, size: u64, clock: &Clock) {
        self.index.insert(digest.clone(), size, clock.now_ms());
        if self.config.max_size.is_some_and(|m| self.index.total() > m) {
            self.pressure.notify_one();
        }
    }

    /// A stored blob is being read; keep it until the guard drops.
    pub fn reading(self: &Arc<Self>, digest: &Digest, clock: &Clock) -> ReadGuard {
        self.index.touch(digest, clock.now_ms());
        *self.readers.entry(digest.clone()).or_default() += 1;
        ReadGuard {
            lifecycle: self.clone(),
            digest: digest.clone(),
        }
    }

    pub fn is_read(&self, digest: &Digest) -> bool {
        self.readers.get(digest).is_some_and(|n| *n > 0)
    }

    /// One eviction pass: plan, delete, and write back access times.
    pub fn evict(
        &self,
        store: &FsStore,
        now_ms: u64,
        in_flight: impl Fn(&Digest) -> bool,
    ) -> EvictionReport {
        self.persist_access_times(store);
        let limits = eviction::Limits {
            max_size: self.config.max_size,
            low_water: self.config.low_water().unwrap_or(0),
            max_idle: self.config.max_idle,
        };
        if limits.max_size.is_none() && limits.max_idle.is_none() {
            return EvictionReport::default();
        }
        let candidates = self.index.candidates();
        let sizes: std::collections::HashMap<_, _> = candidates
            .iter()
            .map(|c| (c.digest.clone(), c.size))
            .collect();
        let victims = eviction::plan(&candidates, limits, now_ms, |d| {
            in_flight(d) || self.is_read(d) || self.pinned.contains(d)
        });
        let mut report = EvictionReport::default();
        // The store tells its listener (this index, the memory cache).
        for d in victims {
            match store.remove_blob(&d) {
                Ok(true) => {
                    report.evicted += 1;
                    report.bytes += sizes.get(&d).copied().unwrap_or(0);
                    report.digests.push(d);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(digest = %d, error = %e, "cannot evict blob"),
            }
        }
        if report.evicted > 0 {
            self.metrics.evictions.inc_by(report.evicted as u64);
            tracing::info!(
                evicted = report.evicted,
                bytes = report.bytes,
                store_bytes = self.index.total(),
                "evicted least-recently-used blobs"
            );
        }
        report
    }

    /// Writes batched last-access times to the files' mtimes, so LRU order
    /// survives a restart.
    fn persist_access_times(&self, store: &FsStore) {
        for (digest, at) in self.index.take_dirty() {
            if let Err(e) = store.record_access(&digest, index::from_ms(at)) {
                tracing::debug!(%digest, error = %e, "cannot record last access");
            }
        }
    }
}

/// Marks a blob as being read; eviction skips it while one exists.
#[derive(Debug)]
pub struct ReadGuard {
    lifecycle: Arc<Lifecycle>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let gone = match self.lifecycle.readers.get_mut(&self.digest) {
            Some(mut n) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if gone {
            self.lifecycle
                .readers
                .remove_if(&self.digest, |_, n| *n == 0);
        }
    }
}
