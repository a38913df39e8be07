//! What the store holds, in memory: each blob's size and last access, and
//! the total. The files are the truth: the index is rebuilt from them at
//! start-up (size from metadata, last access from mtime) and last-access
//! times go back to the files' mtimes in batches, never per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::eviction::Candidate;
use crate::oci::Digest;
use crate::store::{FsStore, Kind};

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    last_access_ms: u64,
    /// Accessed since its mtime was last written.
    dirty: bool,
}

/// The in-memory index of stored blobs.
#[derive(Debug, Default)]
pub struct Index {
    entries: DashMap<Digest, Entry>,
    total: AtomicU64,
}

impl Index {
    /// Indexes every blob the store holds.
    pub fn rebuild(store: &FsStore) -> std::io::Result<Index> {
        let index = Index::default();
        for entry in store.entries(Kind::Blob)? {
            let at = entry.accessed.map_or(0, to_ms);
            index.insert(entry.digest, entry.len, at);
        }
        // Rebuilt entries are not dirty: their mtimes are what we read.
        index.entries.iter_mut().for_each(|mut e| e.dirty = false);
        Ok(index)
    }

    pub fn insert(&self, digest: Digest, size: u64, now_ms: u64) {
        let old = self.entries.insert(
            digest,
            Entry {
                size,
                last_access_ms: now_ms,
                dirty: true,
            },
        );
        self.total.fetch_add(size, Ordering::Relaxed);
        if let Some(o) = old {
            self.total.fetch_sub(o.size, Ordering::Relaxed);
        }
    }

    /// Records a read: memory only.
    pub fn touch(&self, digest: &Digest, now_ms: u64) {
        if let Some(mut e) = self.entries.get_mut(digest) {
            e.last_access_ms = now_ms;
            e.dirty = true;
        }
    }

    pub fn remove(&self, digest: &Digest) {
        if let Some((_, e)) = self.entries.remove(digest) {
            self.total.fetch_sub(e.size, Ordering::Relaxed);
        }
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest)
    }

    /// Bytes of all indexed blobs.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn candidates(&self) -> Vec<Candidate> {
        self.entries
            .iter()
            .map(|e| Candidate {
                digest: e.key().clone(),
                size: e.size,
                last_access_ms: e.last_access_ms,
            })
            .collect()
    }

    /// Takes the blobs read since the last call, with their access times.
    pub fn take_dirty(&self) -> Vec<(Digest, u64)> {
        let mut out = Vec::new();
        for mut e in self.entries.iter_mut() {
            if e.dirty {
                e.dirty = false;
                out.push((e.key().clone(), e.last_access_ms));
            }
        }
        out
    }
}

pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_follow_inserts_and_removals() {
        let i = Index::default();
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        i.insert(a.clone(), 10, 1);
        i.insert(b.clone(), 5, 2);
        i.insert(a.clone(), 10, 3); // re-published: counted once
        assert_eq!((i.total(), i.len()), (15, 2));
        assert_eq!(i.take_dirty().len(), 2);
        assert!(i.take_dirty().is_empty());
        i.touch(&b, 9);
        assert_eq!(i.take_dirty(), vec![(b.clone(), 9)]);
        i.remove(&a);
        assert_eq!(i.total(), 5);
    }
}
