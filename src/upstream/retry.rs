//! Retry with exponential backoff and full jitter, honouring `Retry-After`.
//!
//! One *round* tries every URL of a registry once (failover); between
//! rounds ferry waits a random time in `[0, min(max_delay, delay * 2^n)]`,
//! or what the upstream's `Retry-After` asked for. No wait is longer than
//! the cap (a client is waiting): an upstream that asks for more is not
//! retried, and its answer (e.g. a 429) goes to the client.

use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::config::RetryPolicy;

/// What one round produced.
pub enum Round<T> {
    /// A final answer (success, or an error retrying cannot fix).
    Done(T),
    /// A failure worth retrying; `retry_after` is the upstream's request.
    Retry {
        result: T,
        retry_after: Option<Duration>,
    },
}

/// Statuses worth retrying: 408, 429 and 5xx.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `Retry-After` in either of its forms (RFC 9110 §10.2.3): a number of
/// seconds, or an HTTP-date (then the time left until it; a date in the
/// past asks for no wait).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The full-jitter delay before retry number `n` (0-based).
pub fn backoff(policy: &RetryPolicy, n: u32, cap: Duration) -> Duration {
    let exp = policy
        .delay
        .checked_mul(1u32.checked_shl(n.min(30)).unwrap_or(u32::MAX))
        .unwrap_or(policy.max_delay);
    let ceiling = exp.min(policy.max_delay).min(cap);
    ceiling.mul_f64(fastrand::f64())
}

/// Runs `round` until it is done or the retries are spent; returns the last
/// result and the number of retries made.
pub async fn with_retries<T, F, Fut>(policy: &RetryPolicy, cap: Duration, mut round: F) -> (T, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Round<T>>,
{
    let mut n = 0;
    loop {
        match round(n).await {
            Round::Done(t) => return (t, n),
            Round::Retry {
                result,
                retry_after,
            } => {
                if n >= policy.max_retries {
                    return (result, n);
                }
                let wait = match retry_after {
                    Some(asked) if asked > cap => return (result, n),
                    Some(asked) => asked.max(backoff(policy, n, cap)),
                    None => backoff(policy, n, cap),
                };
                tracing::debug!(
                    retry = n + 1,
                    wait_ms = wait.as_millis() as u64,
                    "retrying upstream"
                );
                tokio::time::sleep(wait).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        h.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let wait = retry_after(&h).expect("an HTTP-date is honoured");
        assert!(wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600));
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date: no wait"
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(10);
        for n in 0..40 {
            let d = backoff(&p, n, Duration::from_secs(60));
            assert!(d <= Duration::from_secs(2), "retry {n}: {d:?}");
        }
        for _ in 0..100 {
            assert!(backoff(&p, 0, Duration::from_secs(60)) <= Duration::from_millis(100));
            assert!(backoff(&p, 5, Duration::from_millis(30)) <= Duration::from_millis(30));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_honours_retry_after() {
        let start = Instant::now();
        let mut calls = Vec::new();
        let (result, retries) = with_retries(&policy(5), Duration::from_secs(30), |n| {
            calls.push(start.elapsed());
            async move {
                if n < 2 {
                    Round::Retry {
                        result: Err(429),
                        retry_after: Some(Duration::from_secs(7)),
                    }
                } else {
                    Round::Done(Ok::<_, u16>("ok"))
                }
            }
        })
        .await;
        assert_eq!(result, Ok("ok"));
        assert_eq!(retries, 2);
        assert_eq!(calls.len(), 3);
        // Each retry waited at least what Retry-After asked for.
        assert!(calls[1] - calls[0] >= Duration::from_secs(7), "{calls:?}");
        assert!(calls[2] - calls[1] >= Duration::from_secs(7), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_and_never_waits_past_the_cap() {
        let mut count = 0;
        let (result, retries) = with_retries(&policy(2), Duration::from_secs(30), |_| {
            count += 1;
            async {
                Round::Retry {
                    result: "503",
                    retry_after: None,
                }
            }
        })
        .await;
        assert_eq!((result, retries, count), ("503", 2, 3));

        // The upstream asks for longer than a client can wait: no retry.
        let start = Instant::now();
        let mut count = 0;
        let (result, _) = with_retries(&policy(5), Duration::from_secs(5), |_| {
            count += 1;
            async {
                Round::Retry {
                    result: "429",
                    retry_after: Some(Duration::from_secs(600)),
                }
            }
        })
        .await;
        assert_eq!((result, count), ("429", 1));
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 416] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        let mut h = HeaderMap::new();
        h.insert("retry-after", "12".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
    }
}
