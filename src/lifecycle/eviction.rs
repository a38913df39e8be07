//! Which blobs to evict: a pure function of the index, so it can be tested
//! without a disk. It returns keys; the caller deletes (as pingora-cache's
//! eviction does).

use std::time::Duration;

use crate::oci::Digest;

/// One stored blob as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub digest: Digest,
    pub size: u64,
    /// Last read, ms since the epoch.
    pub last_access_ms: u64,
}

/// The limits to enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Evict when the store holds more than this...
    pub max_size: Option<u64>,
    /// ...down to this.
    pub low_water: u64,
    /// Evict what was not read for this long.
    pub max_idle: Option<Duration>,
}

/// The blobs to evict, least recently used first. `busy` blobs (in flight
/// or being read) are never chosen.
pub fn plan(
    entries: &[Candidate],
    limits: Limits,
    now_ms: u64,
    busy: impl Fn(&Digest) -> bool,
) -> Vec<Digest> {
    let mut order: Vec<&Candidate> = entries.iter().collect();
    order.sort_by_key(|c| (c.last_access_ms, c.digest.clone()));
    let total: u64 = entries.iter().map(|c| c.size).sum();
    let mut remaining = total;
    let mut out = Vec::new();
    let over = limits.max_size.is_some_and(|m| total > m);
    for c in order {
        if busy(&c.digest) {
            continue;
        }
        let idle = limits
            .max_idle
            .is_some_and(|i| now_ms.saturating_sub(c.last_access_ms) > i.as_millis() as u64);
        let shrink = over && remaining > limits.low_water;
        if idle || shrink {
            remaining -= c.size;
            out.push(c.digest.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8, size: u64, at: u64) -> Candidate {
        Candidate {
            digest: Digest::sha256_of(&[n]),
            size,
            last_access_ms: at,
        }
    }

    #[test]
    fn evicts_least_recently_used_down_to_the_low_water_mark() {
        let entries = vec![c(1, 40, 300), c(2, 40, 100), c(3, 40, 200), c(4, 40, 400)];
        let limits = Limits {
            max_size: Some(100),
            low_water: 90,
            max_idle: None,
        };
        let victims = plan(&entries, limits, 1000, |_| false);
        // 160 bytes; drop the oldest (2, then 3) to reach 80 <= 90.
        assert_eq!(
            victims,
            vec![entries[1].digest.clone(), entries[2].digest.clone()]
        );
        // Under the cap: nothing.
        let small = Limits {
            max_size: Some(1000),
            ..limits
        };
        assert!(plan(&entries, small, 1000, |_| false).is_empty());
    }

    #[test]
    fn never_evicts_busy_blobs_and_honours_max_idle() {
        let entries = vec![c(1, 40, 100), c(2, 40, 200), c(3, 40, 300)];
        let busy = entries[0].digest.clone();
        let limits = Limits {
            max_size: Some(50),
            low_water: 45,
            max_idle: None,
        };
        let victims = plan(&entries, limits, 1000, |d| *d == busy);
        assert_eq!(
            victims,
            vec![entries[1].digest.clone(), entries[2].digest.clone()]
        );
        let idle = Limits {
            max_size: None,
            low_water: 0,
            max_idle: Some(Duration::from_millis(750)),
        };
        assert_eq!(
            plan(&entries, idle, 1000, |_| false),
            vec![entries[0].digest.clone(), entries[1].digest.clone()]
        );
    }
}
