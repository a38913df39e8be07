//! Blobs the upstream recently said a repository does not have
//! (`ferry.absentTTL`): a flood of requests for made-up digests costs one
//! upstream request per digest and repository, not one per request.
//!
//! A bounded cache (quick_cache, [`ENTRIES`] at most, least recently used
//! first out), so invented names cannot grow memory; an entry holds the
//! clock time it expires at, read against ferry's clock so tests can move
//! time.

use crate::clock::Clock;
use crate::oci::Digest;

/// Entries kept at most.
pub const ENTRIES: usize = 100_000;

#[derive(Debug)]
pub struct Absent {
    until: quick_cache::sync::Cache<(String, Digest), u64>,
    ttl: std::time::Duration,
}

impl Absent {
    pub fn new(ttl: std::time::Duration) -> Absent {
        Absent {
            until: quick_cache::sync::Cache::new(ENTRIES),
            ttl,
        }
    }

    /// Remembers that the upstream has no `digest` under `repo`.
    pub fn remember(&self, repo: String, digest: &Digest, clock: &Clock) {
        if self.ttl.is_zero() {
            return;
        }
        let until = clock
            .now_ms()
            .saturating_add(self.ttl.as_millis().try_into().unwrap_or(u64::MAX));
        self.until.insert((repo, digest.clone()), until);
    }

    /// True while the upstream's "no" is younger than the TTL.
    pub fn is_absent(&self, repo: String, digest: &Digest, clock: &Clock) -> bool {
        let key = (repo, digest.clone());
        let Some(until) = self.until.get(&key) else {
            return false;
        };
        if clock.now_ms() >= until {
            self.until.remove(&key);
            return false;
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_stay_bounded() {
        let clock = Clock::manual();
        let a = Absent::new(std::time::Duration::from_secs(10));
        let d = Digest::sha256_of(b"x");
        a.remember("r".into(), &d, &clock);
        assert!(a.is_absent("r".into(), &d, &clock));
        assert!(!a.is_absent("other".into(), &d, &clock));
        clock.advance(std::time::Duration::from_secs(10));
        assert!(!a.is_absent("r".into(), &d, &clock));
        for i in 0..(ENTRIES as u32 + 5_000) {
            a.remember(format!("r{i}"), &d, &clock);
        }
        assert!(a.len() <= ENTRIES, "{} entries", a.len());
    }
}
