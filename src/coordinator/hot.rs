//! Small blobs kept in memory after they were read from the store, so the
//! many tiny requests of an image pull (configs, small layers) cost no
//! system call at all. Content-addressed bytes never go stale; entries are
//! dropped when the cache is over its budget and when a scrub finds the
//! stored copy damaged.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashMap;

use crate::oci::Digest;

#[derive(Debug)]
pub struct HotCache {
    map: DashMap<Digest, Bytes>,
    bytes: AtomicU64,
    budget: u64,
}

impl HotCache {
    pub fn new(budget: u64) -> HotCache {
        HotCache {
            map: DashMap::new(),
            bytes: AtomicU64::new(0),
            budget,
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.map.get(digest).map(|b| b.clone())
    }

    pub fn put(&self, digest: &Digest, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.budget / 16 {
            return;
        }
        if self.map.insert(digest.clone(), bytes).is_none() {
            self.bytes.fetch_add(len, Ordering::Relaxed);
        }
        if self.bytes.load(Ordering::Relaxed) > self.budget {
            // Over budget: drop about a quarter, whichever come first.
            let victims: Vec<Digest> = self
                .map
                .iter()
                .take(self.map.len() / 4 + 1)
                .map(|e| e.key().clone())
                .collect();
            victims.iter().for_each(|d| self.remove(d));
        }
    }

    pub fn remove(&self, digest: &Digest) {
        if let Some((_, b)) = self.map.remove(digest) {
            self.bytes.fetch_sub(b.len() as u64, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
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
