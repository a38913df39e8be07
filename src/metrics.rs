//! Prometheus metrics, registered in one place (prometheus-client, text
//! format at `GET /metrics`). Labels stay low-cardinality: route, status
//! class, cache result, method, registry; never a digest or a repository.
//! Store figures are read at scrape time from the lifecycle's index.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod cluster;

pub use cluster::{ClusterMetrics, PeerLabels, PeerReasonLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `base`, `manifest`, `blob`, `tags`, `referrers`, `catalog`, `other`.
    pub route: &'static str,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub status: &'static str,
}

/// Where an answer came from, and why: the access log's `cache` field,
/// the `result` label of `ferry_cache_results_total`, and the status
/// page's hit ratio all read this one value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the store (or memory), no upstream call.
    Hit,
    /// This request started the upstream fetch.
    Miss,
    /// Joined a fetch in flight that another request started.
    Joined,
    /// A tag confirmed unchanged upstream with a `HEAD`.
    Revalidated,
    /// A stored tag served because the upstream could not be used.
    Stale,
    /// A range far beyond a download, straight from upstream.
    Passthrough,
    /// No room to cache: straight from upstream, verified, not kept.
    Uncached,
    /// From the shared tier (another replica's fetch).
    Shared,
    /// 307 to a presigned URL in the shared tier.
    Redirect,
}

impl CacheStatus {
    /// Every status, for displays that list them.
    pub const ALL: [CacheStatus; 9] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Joined,
        CacheStatus::Revalidated,
        CacheStatus::Stale,
        CacheStatus::Passthrough,
        CacheStatus::Uncached,
        CacheStatus::Shared,
        CacheStatus::Redirect,
    ];

    /// The answer cost no upstream transfer of the content.
    pub fn saved_upstream(self) -> bool {
        matches!(
            self,
            CacheStatus::Hit
                | CacheStatus::Joined
                | CacheStatus::Revalidated
                | CacheStatus::Stale
                | CacheStatus::Shared
                | CacheStatus::Redirect
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Joined => "joined",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
            CacheStatus::Passthrough => "passthrough",
            CacheStatus::Uncached => "uncached",
            CacheStatus::Shared => "shared",
            CacheStatus::Redirect => "redirect",
        }
    }
}

impl EncodeLabelValue for CacheStatus {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: CacheStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// What failed to come from an upstream.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Manifest,
}

impl EncodeLabelValue for Kind {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        let s = match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        };
        EncodeLabelValue::encode(&s, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The registry's `host[:port]` (the repository's first candidate).
    pub registry: String,
    pub kind: Kind,
    /// Why: `upstream`, `digest_mismatch`, `length_mismatch`, `store`,
    /// `no_room`, `abandoned`, `deserted`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub route: &'static str,
    /// The cache result, `none` for answers without one.
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric ferry exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    /// Body bytes of successful (2xx) answers, as they are sent to clients
    /// (error bodies and redirects are not content served).
    pub bytes_served: Counter,
    pub in_flight: Gauge,
    pub stale_served: Counter,
    pub revalidations: Family<MethodLabels, Counter>,
    /// Tag requests that joined a revalidation already in flight.
    pub revalidations_joined: Counter,
    pub evictions: Counter,
    pub uncached: Counter,
    pub store_bytes: Gauge,
    pub store_blobs: Gauge,
    pub scrub_damaged_last: Gauge,
    pub scrub_runs: Counter,
    pub fetch_failures: Family<FailureLabels, Counter>,
    /// Client requests, from arrival to response headers.
    pub request_duration: Family<DurationLabels, Histogram>,
    /// Upstream bytes that failed their digest (blobs and manifests).
    pub digest_mismatches: Counter,
    /// The size cap in bytes (0: none).
    pub store_max_bytes: Gauge,
    /// Client connections open now.
    pub connections: Gauge,
    /// Connections closed at once because `maxConnections` were open.
    pub connections_refused: Counter,
    /// Requests refused by client access control (401 and 403).
    pub access_denied: Counter,
    /// Blob downloads waiting for a registry's `maxFetchesPerRegistry`.
    pub fetches_queued: Gauge,
    /// Blob requests answered 404 from the memory of an upstream 404.
    pub absent_hits: Counter,
    /// Blob bytes read from the shared tier (another replica's fetches).
    pub shared_read_bytes: Counter,
    /// Blobs uploaded to the shared tier, and failed uploads.
    pub shared_uploads: Counter,
    pub shared_upload_failures: Counter,
    /// The cluster's figures (`ferry.cluster`).
    pub cluster: ClusterMetrics,
    /// This process's CPU, memory and descriptors, read at scrape time.
    pub process: ProcessMetrics,
}

/// The process's own figures, from `/proc/self` at scrape time.
#[derive(Debug, Default, Clone)]
pub struct ProcessMetrics {
    pub cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub resident_bytes: Gauge,
    pub open_fds: Gauge,
    pub max_fds: Gauge,
}

impl ProcessMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent by ferry, in seconds",
            self.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the ferry process",
            self.resident_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors (client and upstream connections, files)",
            self.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The open file descriptor limit",
            self.max_fds.clone(),
        );
    }

    /// Reads `/proc/self` (Linux); leaves the figures as they were
    /// elsewhere.
    pub fn refresh(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
                // Clock ticks are 100 per second on every Linux ferry runs on.
                self.cpu_seconds.set((user + system) / 100.0);
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok());
            if let Some(kib) = rss {
                self.resident_bytes.set(kib * 1024);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(n) = limit.current {
            self.max_fds.set(n.min(i64::MAX as u64) as i64);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let m = Metrics {
            requests: Family::default(),
            cache: Family::default(),
            bytes_served: Counter::default(),
            in_flight: Gauge::default(),
            stale_served: Counter::default(),
            revalidations: Family::default(),
            revalidations_joined: Counter::default(),
            evictions: Counter::default(),
            uncached: Counter::default(),
            store_bytes: Gauge::default(),
            store_blobs: Gauge::default(),
            scrub_damaged_last: Gauge::default(),
            scrub_runs: Counter::default(),
            fetch_failures: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                // 0.5 ms .. ~16 s.
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            digest_mismatches: Counter::default(),
            store_max_bytes: Gauge::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            access_denied: Counter::default(),
            fetches_queued: Gauge::default(),
            absent_hits: Counter::default(),
            shared_read_bytes: Counter::default(),
            shared_uploads: Counter::default(),
            shared_upload_failures: Counter::default(),
            cluster: ClusterMetrics::default(),
            process: ProcessMetrics::default(),
            registry: Registry::default(),
        };
        m.cluster.register(&mut registry);
        m.process.register(&mut registry);
        registry.register(
            "shared_read_bytes",
            "Blob bytes read from the shared tier",
            m.shared_read_bytes.clone(),
        );
        registry.register(
            "shared_uploads",
            "Blobs uploaded to the shared tier",
            m.shared_uploads.clone(),
        );
        registry.register(
            "shared_upload_failures",
            "Uploads to the shared tier that failed or were aborted",
            m.shared_upload_failures.clone(),
        );
        registry.register(
            "requests",
            "Requests by route and status class",
            m.requests.clone(),
        );
        registry.register(
            "cache_results",
            "Blob and manifest answers by cache result",
            m.cache.clone(),
        );
        registry.register(
            "served_bytes",
            "Body bytes of successful (2xx) answers sent to clients",
            m.bytes_served.clone(),
        );
        registry.register(
            "inflight_fetches",
            "Upstream blob fetches running now",
            m.in_flight.clone(),
        );
        registry.register(
            "stale_served",
            "Stored tags served because the upstream was unusable",
            m.stale_served.clone(),
        );
        registry.register(
            "tag_revalidations",
            "Tag revalidations upstream by method",
            m.revalidations.clone(),
        );
        registry.register(
            "tag_revalidations_joined",
            "Tag requests that joined a revalidation already in flight",
            m.revalidations_joined.clone(),
        );
        registry.register(
            "evictions",
            "Blobs evicted by the size cap or maxIdle, locally and from the shared tier",
            m.evictions.clone(),
        );
        registry.register(
            "uncached",
            "Blobs served without caching for want of room",
            m.uncached.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes of blobs in the store",
            m.store_bytes.clone(),
        );
        registry.register("store_blobs", "Blobs in the store", m.store_blobs.clone());
        registry.register(
            "scrub_damaged_last",
            "Damaged files found by the last scrub",
            m.scrub_damaged_last.clone(),
        );
        registry.register(
            "scrub_runs",
            "Scrubs of the store completed",
            m.scrub_runs.clone(),
        );
        registry.register(
            "fetch_failures",
            "Blobs and manifests that could not be fetched, by registry, kind and reason",
            m.fetch_failures.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Client requests from arrival to response headers, by route and cache result",
            m.request_duration.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "ferry's version (always 1)", build);
        registry.register(
            "digest_mismatches",
            "Upstream blobs and manifests whose bytes failed their digest",
            m.digest_mismatches.clone(),
        );
        registry.register(
            "store_max_bytes",
            "The store's size cap in bytes (0: no cap)",
            m.store_max_bytes.clone(),
        );
        registry.register(
            "connections",
            "Client connections open now",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because the connection limit was reached",
            m.connections_refused.clone(),
        );
        registry.register(
            "access_denied",
            "Requests refused by client access control",
            m.access_denied.clone(),
        );
        registry.register(
            "fetches_queued",
            "Blob downloads waiting for their registry's fetch limit",
            m.fetches_queued.clone(),
        );
        registry.register(
            "absent_hits",
            "Blob requests answered 404 from a recent upstream 404, without asking again",
            m.absent_hits.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Adds the per-registry figures (bytes, retries, resumes, latency).
    pub fn with_registries(mut self, router: &crate::routing::Router) -> Self {
        let registries = router
            .registries()
            .iter()
            .map(|r| (r.name.clone(), r.upstream.stats().clone()))
            .collect();
        self.registry
            .register_collector(Box::new(crate::upstream::RegistryCollector::new(
                registries,
            )));
        self
    }

    /// Counts a failed fetch of a `kind` from `registry` under its
    /// `reason` (a low-cardinality label such as `upstream` or
    /// `digest_mismatch`).
    pub fn fetch_failed(&self, registry: &str, kind: Kind, reason: &'static str) {
        let labels = FailureLabels {
            registry: registry.to_string(),
            kind,
            reason,
        };
        self.fetch_failures.get_or_create(&labels).inc();
        if reason == "digest_mismatch" {
            self.digest_mismatches.inc();
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode");
        out
    }
}

/// `2xx`..`5xx` for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
