//! Wall-clock time for freshness decisions, replaceable in tests.
//!
//! Tag records carry the wall-clock time they were last confirmed (they
//! outlive the process), so ferry compares wall-clock times. Tests swap in a
//! [`Clock::manual`] and move it forward by hand: deterministic, and free of
//! the hazards of pausing tokio's clock while real sockets are in play.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from the system or from a test.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A clock that only moves when told to, starting at the system time.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(system_ms())))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; a system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    /// How long ago `then_ms` was (zero if it lies in the future).
    pub fn age(&self, then_ms: u64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(then_ms))
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual();
        let t = c.now_ms();
        assert_eq!(c.age(t), Duration::ZERO);
        c.advance(Duration::from_secs(301));
        assert_eq!(c.age(t), Duration::from_secs(301));
        assert_eq!(c.age(t + 10_000_000), Duration::ZERO);
    }
}
