//! What one upstream registry has done lately: bytes fetched, retries,
//! resumes, response latency, and its last success and last error.
//!
//! Each [`Upstream`](super::Upstream) owns one [`UpstreamStats`]; the
//! metrics endpoint reads them all through [`RegistryCollector`] at scrape
//! time (labelled by registry name, a low-cardinality label), and the status
//! page reads the health part. Counters are prometheus-client types so the
//! exposition needs no copying.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// At most one failure line per registry this often.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Counters and health of one upstream registry.
#[derive(Debug)]
pub struct UpstreamStats {
    /// Body bytes received from the registry (blobs and manifests).
    pub bytes: Counter,
    /// Requests repeated after a connect error, timeout, 408, 429 or 5xx.
    pub retries: Counter,
    /// Broken blob transfers continued with a `Range` request.
    pub resumes: Counter,
    /// Time from sending a request to its response headers.
    pub latency: Histogram,
    /// 1 while the registry answers (its last attempt got an answer below
    /// 500), 0 while it fails; 1 before the first attempt.
    pub up: Gauge,
    health: Mutex<Health>,
    /// Fetch failures: an outage is a line every few seconds, not a flood.
    failures: LogLimit,
    /// Authentication trouble (a realm refused or failing): an upstream
    /// that answers every request so cannot flood the log either.
    auth: LogLimit,
    /// Its pull budget as it last said, and its cool-down after a 429.
    pub budget: super::budget::Budget,
}

/// When a kind of line was last logged (ms since the Unix epoch), and how
/// many were not logged since: at most one line per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct LogLimit {
    logged_at: AtomicU64,
    unlogged: AtomicU64,
}

impl LogLimit {
    /// `Some(n)` when a line may be logged now, with the `n` not logged
    /// since the last one.
    fn may_log(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.logged_at.load(Ordering::SeqCst);
        if now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::SeqCst));
        }
        self.unlogged.fetch_add(1, Ordering::SeqCst);
        None
    }
}

/// The registry's recent record, for the status page.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub last_ok: Option<SystemTime>,
    /// When and what went wrong last.
    pub last_error: Option<(SystemTime, String)>,
    /// Failed attempts since the last answer.
    pub failures_in_a_row: u64,
}

impl Default for UpstreamStats {
    fn default() -> Self {
        UpstreamStats {
            bytes: Counter::default(),
            retries: Counter::default(),
            resumes: Counter::default(),
            // 1 ms .. ~33 s.
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            up: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            health: Mutex::new(Health::default()),
            failures: LogLimit::default(),
            auth: LogLimit::default(),
            budget: Default::default(),
        }
    }
}

impl UpstreamStats {
    /// The registry answered (any status below 500).
    pub fn answered(&self, after: Duration) {
        self.latency.observe(after.as_secs_f64());
        let mut h = self.health.lock().expect("health lock");
        h.last_ok = Some(SystemTime::now());
        h.failures_in_a_row = 0;
        self.up.set(1);
    }

    /// An attempt failed: no connection, a timeout, or a 5xx.
    pub fn failed(&self, what: String) {
        let mut h = self.health.lock().expect("health lock");
        h.last_error = Some((SystemTime::now(), what));
        h.failures_in_a_row += 1;
        self.up.set(0);
    }

    /// Whether a failure may be logged now (at most one line per
    /// [`LOG_EVERY`] per registry); `Some(n)` with the failures not logged
    /// since the last line.
    pub fn may_log_failure(&self) -> Option<u64> {
        self.failures.may_log()
    }

    /// Whether an authentication warning (a token realm refused, failing,
    /// or answering without a token) may be logged now; as
    /// [`UpstreamStats::may_log_failure`], counted apart.
    pub fn may_log_auth(&self) -> Option<u64> {
        self.auth.may_log()
    }

    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }
}

/// Exposes every registry's [`UpstreamStats`] with a `registry` label.
#[derive(Debug)]
pub struct RegistryCollector {
    registries: Vec<(String, Arc<UpstreamStats>)>,
}

impl RegistryCollector {
    pub fn new(registries: Vec<(String, Arc<UpstreamStats>)>) -> Self {
        RegistryCollector { registries }
    }
}

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Pick = fn(&UpstreamStats) -> &dyn EncodeMetric;
        let families: [(&str, &str, Pick); 5] = [
            (
                "upstream_up",
                "1 while the upstream registry answers, 0 while its requests fail",
                |s| &s.up,
            ),
            (
                "upstream_bytes",
                "Body bytes received from each upstream registry",
                |s| &s.bytes,
            ),
            (
                "upstream_retries",
                "Upstream requests repeated after an error or a retryable status",
                |s| &s.retries,
            ),
            (
                "fetch_resumes",
                "Broken blob transfers resumed with a Range request",
                |s| &s.resumes,
            ),
            (
                "upstream_request_duration_seconds",
                "Time from an upstream request to its response headers",
                |s| &s.latency,
            ),
        ];
        for (name, help, pick) in families {
            let Some((_, first)) = self.registries.first() else {
                return Ok(());
            };
            let kind = pick(first).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (registry, stats) in &self.registries {
                let labels = [("registry", registry.as_str())];
                pick(stats).encode(family.encode_family(&labels)?)?;
            }
        }
        // The pull budget, of the registries that state one.
        let budget: [(&str, &str, Pick); 3] = [
            (
                "upstream_ratelimit_limit",
                "Pulls the upstream registry's window allows (its ratelimit-limit)",
                |s| &s.budget.limit,
            ),
            (
                "upstream_ratelimit_remaining",
                "Pulls left in the upstream registry's window (its ratelimit-remaining)",
                |s| &s.budget.remaining,
            ),
            (
                "upstream_ratelimit_window_seconds",
                "The upstream registry's rate-limit window",
                |s| &s.budget.window,
            ),
        ];
        let stating: Vec<_> = self
            .registries
            .iter()
            .filter(|(_, s)| s.budget.known())
            .collect();
        if stating.is_empty() {
            return Ok(());
        }
        for (name, help, pick) in budget {
            let kind = pick(&stating[0].1).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (registry, stats) in &stating {
                let labels = [("registry", registry.as_str())];
                pick(stats).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
