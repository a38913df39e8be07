//! Small blobs kept in memory after they were read from the store (and
//! verified against their digest), so the many tiny requests of an image
//! pull (configs, small layers) cost no system call at all.
//!
//! A quick_cache weighed in bytes: it stays within its budget whatever is
//! put in, and evicts by its own policy (CLOCK-Pro). Content-addressed
//! bytes never go stale; an entry leaves when the stored copy does (scrub,
//! eviction: the store's removal listener, set in `Coordinator::new`).

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::oci::Digest;

#[derive(Clone, Debug)]
struct ByLength;

impl Weighter<Digest, Bytes> for ByLength {
    fn weight(&self, _: &Digest, bytes: &Bytes) -> u64 {
        // An empty blob still takes an entry.
        bytes.len().max(1) as u64
    }
}

#[derive(Debug)]
pub struct HotCache {
    map: Cache<Digest, Bytes, ByLength>,
    budget: u64,
}

/// Typical entry size, for the cache's sizing of its table.
const TYPICAL: u64 = 16 * 1024;

impl HotCache {
    pub fn new(budget: u64) -> HotCache {
        let items = (budget / TYPICAL).max(16) as usize;
        HotCache {
            map: Cache::with_weighter(items, budget, ByLength),
            budget,
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.map.get(digest)
    }

    /// Keeps `bytes` (verified content of `digest`); a blob larger than a
    /// sixteenth of the budget is not kept.
    pub fn put(&self, digest: &Digest, bytes: Bytes) {
        if bytes.len() as u64 > self.budget / 16 {
            return;
        }
        self.map.insert(digest.clone(), bytes);
    }

    pub fn remove(&self, digest: &Digest) {
        self.map.remove(digest);
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.map.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_budget() {
        let c = HotCache::new(16 * 1024);
        for i in 0..100u32 {
            c.put(
                &Digest::sha256_of(&i.to_le_bytes()),
                Bytes::from(vec![0u8; 1000]),
            );
            assert!(c.bytes() <= 16 * 1024, "{}", c.bytes());
        }
        let d = Digest::sha256_of(b"x");
        c.put(&d, Bytes::from_static(b"abc"));
        assert_eq!(c.get(&d).as_deref(), Some(&b"abc"[..]));
        c.remove(&d);
        assert_eq!(c.get(&d), None);
        c.put(&d, Bytes::from(vec![0u8; 2000]));
        assert_eq!(c.get(&d), None, "larger than a sixteenth of the budget");
    }
}
