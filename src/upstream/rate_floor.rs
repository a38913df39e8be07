//! `minReadRate`: the slowest an upstream body may bring its bytes.
//!
//! One rule for every body ferry reads from upstream, the transfer into the
//! store and the bodies that bypass it ([`super::PassedBody`]): each window
//! of `idleReadTimeout` must bring `minReadRate × window` bytes. The caller
//! says what time is: the transfer counts the wall clock, a passed-through
//! body only the time spent waiting for its upstream (so a client that
//! reads slowly does not make its upstream look slow).

use std::time::Duration;

/// Watches a body's average rate over consecutive windows.
#[derive(Debug)]
pub struct RateFloor {
    /// Bytes a window must bring; 0 turns the check off.
    need: u64,
    window: Duration,
    /// The caller's clock when this window opened.
    opened: Duration,
    got: u64,
}

impl RateFloor {
    /// A floor of `per_second` (0: none), checked over each `window`.
    pub fn new(per_second: u64, window: Duration) -> RateFloor {
        let need = (per_second as f64 * window.as_secs_f64()) as u64;
        RateFloor {
            need,
            window,
            opened: Duration::ZERO,
            got: 0,
        }
    }

    /// Counts `n` bytes that arrived at `clock` (time since the body
    /// started, on the caller's clock); true when the window that just
    /// closed brought too few.
    pub fn too_slow(&mut self, n: u64, clock: Duration) -> bool {
        self.got += n;
        if self.need == 0 || clock.saturating_sub(self.opened) < self.window {
            return false;
        }
        if self.got < self.need {
            return true;
        }
        self.opened = clock;
        self.got = 0;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_window_that_brought_too_little_is_too_slow() {
        // 100 bytes/s over 10 s windows: 1,000 bytes a window.
        let mut floor = RateFloor::new(100, 10 * S);
        assert!(!floor.too_slow(400, 3 * S), "the window is still open");
        assert!(!floor.too_slow(600, 10 * S), "1,000 bytes by 10 s");
        // A new window opened at 10 s; by 20 s it has 999.
        assert!(!floor.too_slow(999, 15 * S));
        assert!(floor.too_slow(0, 20 * S));
    }

    #[test]
    fn a_floor_of_zero_is_never_too_slow() {
        let mut floor = RateFloor::new(0, S);
        assert!(!floor.too_slow(0, 1000 * S));
    }
}
