//! Replayed peer requests: a signed request is valid for [`MAX_SKEW`]
//! either side of its time, so one captured on the wire could be sent
//! again for that long. The receiver remembers every (time, nonce) it took
//! until that time is out of the window, and refuses one it has seen.
//!
//! The memory is bounded: beyond [`Replays::CAPACITY`] remembered requests
//! the oldest are forgotten, and every request signed at or before a
//! forgotten one's time is refused from then on (it could be a replay of a
//! forgotten one). A flood of peer requests shortens the window instead of
//! growing the memory.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::signature::MAX_SKEW;

/// What this replica remembers of the peer requests it took.
#[derive(Debug, Default)]
pub struct Replays {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// (signed time, nonce): a replay carries the same time, as the
    /// signature covers it.
    taken: BTreeSet<(u64, u128)>,
    /// Requests signed before this are refused: some of their kind were
    /// forgotten for room.
    floor: u64,
}

impl Replays {
    /// At most this many requests are remembered (about 10 MB).
    pub const CAPACITY: usize = 1 << 18;

    /// Whether the request signed at `time` with `nonce` is taken for the
    /// first time, `now` (seconds since the Unix epoch); remembers it.
    pub fn first_time(&self, time: u64, nonce: u128, now: u64) -> bool {
        self.first_time_within(time, nonce, now, Self::CAPACITY)
    }

    fn first_time_within(&self, time: u64, nonce: u128, now: u64, capacity: usize) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Out of the window: refused by the signature check already.
        let expired = now.saturating_sub(MAX_SKEW.as_secs());
        while seen.taken.first().is_some_and(|(t, _)| *t < expired) {
            seen.taken.pop_first();
        }
        if time < seen.floor || !seen.taken.insert((time, nonce)) {
            return false;
        }
        while seen.taken.len() > capacity {
            if let Some((t, _)) = seen.taken.pop_first() {
                seen.floor = seen.floor.max(t + 1);
            }
        }
        true
    }

    /// How many requests are remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().map(|s| s.taken.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_once_and_forgotten_when_its_time_is_out() {
        let r = Replays::default();
        assert!(r.first_time(1000, 1, 1000));
        assert!(!r.first_time(1000, 1, 1030), "replayed within the window");
        assert!(r.first_time(1000, 2, 1030), "another nonce");
        assert!(r.first_time(1001, 1, 1030), "another time");
        assert_eq!(r.len(), 3);
        // Once 1000 is more than MAX_SKEW ago, it is forgotten (and the
        // signature check refuses a request of that time anyway).
        assert!(r.first_time(1100, 3, 1000 + MAX_SKEW.as_secs() + 1));
        assert_eq!(r.len(), 2, "the two requests of time 1000 are gone");
    }

    #[test]
    fn a_full_memory_refuses_what_it_may_have_forgotten() {
        let r = Replays::default();
        for nonce in 0..4 {
            assert!(r.first_time_within(1000 + nonce as u64, nonce, 1010, 4));
        }
        // A fifth pushes out (1000, 0): anything signed at 1000 or before
        // is refused from now on, a fresh nonce too.
        assert!(r.first_time_within(1004, 4, 1010, 4));
        assert_eq!(r.len(), 4);
        assert!(!r.first_time_within(1000, 0, 1010, 4), "the forgotten one");
        assert!(!r.first_time_within(1000, 99, 1010, 4));
        assert!(r.first_time_within(1001, 99, 1010, 4));
        assert!(!r.first_time_within(1002, 2, 1010, 4), "still remembered");
    }
}
