//! Prometheus metrics, registered in one place (prometheus-client, text
//! format at `GET /metrics`). Labels stay low-cardinality: route, status
//! class, cache result, method; never a digest or a repository.
//! Store figures are read at scrape time from the lifecycle's index.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `base`, `manifest`, `blob`, `tags`, `referrers`, `catalog`, `other`.
    pub route: &'static str,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit`, `miss`, `joined`, `revalidated`, `stale`, `passthrough`, `uncached`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

/// Every metric ferry exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    /// Response body bytes announced (Content-Length) to clients.
    pub bytes_served: Counter,
    pub in_flight: Gauge,
    pub stale_served: Counter,
    pub revalidations: Family<MethodLabels, Counter>,
    pub evictions: Counter,
    pub uncached: Counter,
    pub store_bytes: Gauge,
    pub store_blobs: Gauge,
    pub scrub_damaged_last: Gauge,
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
            evictions: Counter::default(),
            uncached: Counter::default(),
            store_bytes: Gauge::default(),
            store_blobs: Gauge::default(),
            scrub_damaged_last: Gauge::default(),
            registry: Registry::default(),
        };
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
            "Response body bytes announced to clients",
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
            "evictions",
            "Blobs evicted by the size cap or maxIdle",
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
        Metrics { registry, ..m }
    }
}

impl Metrics {
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
