//! What an upstream says of its pull budget, and its cool-down after a
//! `429`.
//!
//! Docker Hub counts pulls per 6 h window and says so in every answer:
//! `ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`
//! (the IETF draft's form; `docker-ratelimit-source` names who is
//! counted). [`Budget::read`] keeps the latest figures per registry for the
//! metrics and the status page, and warns once when the remaining budget
//! falls below a tenth.
//!
//! A `429` puts the registry into a cool-down until its `Retry-After` (or
//! [`DEFAULT_COOL_DOWN`] when it gives none): meanwhile every request that
//! needs the upstream is refused at once ([`Budget::cooling`]) instead of
//! spending another pull of the budget on a certain refusal, and the
//! client's `429` carries the time left.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use prometheus_client::metrics::gauge::Gauge;

/// The cool-down after a `429` without `Retry-After`.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(60);

/// One registry's budget as it last said, and its cool-down.
#[derive(Debug, Default)]
pub struct Budget {
    /// Requests (pulls) the window allows (exported once the registry
    /// said, see [`Budget::known`]).
    pub limit: Gauge,
    /// Requests left in the window.
    pub remaining: Gauge,
    /// The window, in seconds (0 when not given).
    pub window: Gauge,
    /// Until when (ms since the Unix epoch) requests are not sent.
    cool_until: AtomicU64,
    /// The low-budget warning was logged (until the budget recovers).
    warned_low: AtomicBool,
    known: AtomicBool,
}

impl Budget {
    /// Takes the budget headers of an answer of `registry`, if any.
    pub fn read(&self, registry: &dyn std::fmt::Display, headers: &HeaderMap) {
        let field = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(parse)
        };
        let (Some((limit, window)), Some((remaining, _))) =
            (field("ratelimit-limit"), field("ratelimit-remaining"))
        else {
            return;
        };
        self.known.store(true, Ordering::Relaxed);
        self.limit.set(limit as i64);
        self.remaining.set(remaining as i64);
        self.window.set(window.unwrap_or(0) as i64);
        let low = remaining.saturating_mul(10) < limit;
        if low && !self.warned_low.swap(true, Ordering::Relaxed) {
            let source = headers
                .get("docker-ratelimit-source")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::warn!(
                %registry,
                remaining,
                limit,
                window_s = window.unwrap_or(0),
                source,
                "the upstream's pull budget is below a tenth"
            );
        } else if !low {
            self.warned_low.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the registry reported a budget.
    pub fn known(&self) -> bool {
        self.known.load(Ordering::Relaxed)
    }

    /// The requests left in the window, if the registry said.
    pub fn left(&self) -> Option<u64> {
        self.known().then(|| self.remaining.get().max(0) as u64)
    }

    /// No request until `wait` from now (a `429`).
    pub fn cool_down(&self, wait: Duration) {
        let until = now_ms().saturating_add(wait.as_millis() as u64);
        self.cool_until.fetch_max(until, Ordering::SeqCst);
    }

    /// The cool-down left, if the registry is in one.
    pub fn cooling(&self) -> Option<Duration> {
        let left = self
            .cool_until
            .load(Ordering::SeqCst)
            .checked_sub(now_ms())?;
        (left > 0).then(|| Duration::from_millis(left))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `76;w=21600` (or `76`): the number and the window in seconds.
fn parse(value: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = value.split(';').map(str::trim);
    let n = parts.next()?.parse().ok()?;
    let window = parts.find_map(|p| p.strip_prefix("w=")?.parse().ok());
    Some((n, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hubs_headers_are_read_and_others_ignored() {
        let b = Budget::default();
        b.read(&"r", &HeaderMap::new());
        assert!(!b.known() && b.left().is_none());
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        b.read(&"r", &h);
        assert_eq!(
            (b.limit.get(), b.remaining.get(), b.window.get()),
            (100, 76, 21600)
        );
        assert_eq!(b.left(), Some(76));
        h.insert("ratelimit-remaining", "5".parse().unwrap());
        b.read(&"r", &h);
        assert_eq!(b.left(), Some(5));
        h.insert("ratelimit-remaining", "lots".parse().unwrap());
        b.read(&"r", &h);
        assert_eq!(b.left(), Some(5), "a malformed answer changes nothing");
    }

    #[test]
    fn a_cool_down_lasts_as_long_as_asked() {
        let b = Budget::default();
        assert!(b.cooling().is_none());
        b.cool_down(Duration::from_secs(30));
        let left = b.cooling().unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        // A shorter one does not end a longer one.
        b.cool_down(Duration::from_secs(1));
        assert!(b.cooling().unwrap() > Duration::from_secs(29));
    }
}
