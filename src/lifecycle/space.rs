//! Free space: whether a new blob may be written to the store.
//!
//! Before a fetch writes, it reserves the blob's size: allowed while the
//! filesystem's available bytes, less what other fetches reserved, leave
//! `minFreeSpace`. A write that fails anyway (disk full, read-only store)
//! puts the store in a degraded state for a while. Without room, blobs are
//! streamed straight from upstream to the client, verified but not kept;
//! caching resumes by itself when space returns.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the available byte count comes from.
#[derive(Debug, Clone)]
pub enum SpaceProbe {
    /// `statvfs` of the store's filesystem.
    Statvfs(PathBuf),
    /// Set by tests.
    Manual(Arc<AtomicU64>),
}

impl SpaceProbe {
    pub fn available(&self) -> u64 {
        match self {
            SpaceProbe::Statvfs(p) => match rustix::fs::statvfs(p) {
                Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
                Err(_) => 0,
            },
            SpaceProbe::Manual(n) => n.load(Ordering::SeqCst),
        }
    }
}

#[derive(Debug)]
pub struct Space {
    probe: SpaceProbe,
    min_free: u64,
    reserved: Arc<AtomicU64>,
    /// The last failed write, until when it keeps ferry from caching.
    write_failed: std::sync::Mutex<Option<(Instant, String)>>,
}

/// Room held for one fetch; released on drop.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
    reserved: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// How long a failed write keeps ferry from trying to cache again.
const DEGRADED_FOR: Duration = Duration::from_secs(10);

impl Space {
    pub fn new(probe: SpaceProbe, min_free: u64) -> Space {
        Space {
            probe,
            min_free,
            reserved: Arc::new(AtomicU64::new(0)),
            write_failed: std::sync::Mutex::new(None),
        }
    }

    pub fn probe(&self) -> &SpaceProbe {
        &self.probe
    }

    /// Room for `bytes` more, or `None` (then: do not cache).
    pub fn reserve(&self, bytes: u64) -> Option<Reservation> {
        if self.write_failure().is_some() {
            return None;
        }
        let available = self.probe.available();
        let mut current = self.reserved.load(Ordering::SeqCst);
        loop {
            let needed = current.saturating_add(bytes).saturating_add(self.min_free);
            if available < needed {
                return None;
            }
            match self.reserved.compare_exchange(
                current,
                current + bytes,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        bytes,
                        reserved: self.reserved.clone(),
                    })
                }
                Err(now) => current = now,
            }
        }
    }

    /// A write failed: stop caching for a while.
    /// Records a failed write (disk full, read-only or broken store): no
    /// caching for a while, and `/readyz` says so.
    pub fn mark_write_failed(&self, error: impl Into<String>) {
        *self.write_failed.lock().expect("space lock") =
            Some((Instant::now() + DEGRADED_FOR, error.into()));
    }

    /// The write failure that keeps ferry from caching now, if any.
    pub fn write_failure(&self) -> Option<String> {
        let mut f = self.write_failed.lock().expect("space lock");
        match &*f {
            Some((until, e)) if Instant::now() < *until => Some(e.clone()),
            Some(_) => {
                *f = None;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_count_against_free_space() {
        let avail = Arc::new(AtomicU64::new(100));
        let s = Space::new(SpaceProbe::Manual(avail.clone()), 10);
        let a = s.reserve(50).expect("room");
        assert!(s.reserve(50).is_none(), "50 + 50 + 10 > 100");
        let b = s.reserve(40).expect("50 + 40 + 10 = 100");
        drop(a);
        assert!(s.reserve(45).is_some());
        drop(b);
        avail.store(5, Ordering::SeqCst);
        assert!(s.reserve(0).is_none(), "below minFreeSpace");
        avail.store(1000, Ordering::SeqCst);
        s.mark_write_failed("disk full");
        assert!(s.reserve(1).is_none());
    }

    #[test]
    fn statvfs_reports_something_for_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SpaceProbe::Statvfs(dir.path().into()).available() > 0);
    }
}
