//! The effective settings as `ferry check-config` prints them: every
//! duration and size as ferry understood it, with its unit, and
//! `(= default)` beside each value equal to the built-in one (written in
//! the file or not: the label compares values), so an operator can confirm
//! that `"5 min"` or `"10GB"` means what was meant.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Config, Overrides};

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// One line per setting: key, value, and whether it is the default.
pub fn settings(c: &Config) -> String {
    let d = Config::defaults(&Overrides::default()).expect("the defaults resolve");
    let mut out = String::from("settings\n");
    let mut line = |key: &str, value: String, default: String| {
        let mark = if value == default {
            "  (= default)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {key:32} {value}{mark}");
    };
    let (t, dt) = (&c.timeouts, &d.timeouts);
    line("ferry.connectTimeout", dur(t.connect), dur(dt.connect));
    line(
        "ferry.responseHeaderTimeout",
        dur(t.response_header),
        dur(dt.response_header),
    );
    line("ferry.idleReadTimeout", dur(t.idle_read), dur(dt.idle_read));
    line(
        "ferry.minReadRate",
        format!("{}/s", size(t.min_read_rate)),
        format!("{}/s", size(dt.min_read_rate)),
    );
    line(
        "ferry.upstreamIdleTimeout",
        dur(t.pool_idle),
        dur(dt.pool_idle),
    );
    line(
        "ferry.maxRetryWait",
        dur(c.max_retry_wait),
        dur(d.max_retry_wait),
    );
    line(
        "ferry.maxRequestsPerRegistry",
        c.request_limits.max.to_string(),
        d.request_limits.max.to_string(),
    );
    line(
        "ferry.requestQueueTimeout",
        dur(c.request_limits.wait),
        dur(d.request_limits.wait),
    );
    line(
        "ferry.maxFetchesPerRegistry",
        c.max_fetches_per_registry.to_string(),
        d.max_fetches_per_registry.to_string(),
    );
    line(
        "ferry.orphanedBytesPerRegistry",
        size(c.orphaned_bytes_per_registry),
        size(d.orphaned_bytes_per_registry),
    );
    line(
        "ferry.maxBlobSize",
        size(c.max_blob_size),
        size(d.max_blob_size),
    );
    line(
        "ferry.maxManifestSize",
        size(c.max_manifest_size as u64),
        size(d.max_manifest_size as u64),
    );
    line(
        "ferry.maxListSize",
        size(c.list_limits.bytes as u64),
        size(d.list_limits.bytes as u64),
    );
    line(
        "ferry.maxListEntries",
        c.list_limits.entries.to_string(),
        d.list_limits.entries.to_string(),
    );
    line("ferry.absentTTL", dur(c.absent_ttl), dur(d.absent_ttl));
    line(
        "ferry.rateLimitReserve",
        format!("{} pulls", c.rate_limit_reserve),
        format!("{} pulls", d.rate_limit_reserve),
    );
    line(
        "ferry.pin",
        match (c.lifecycle.pins.len(), c.lifecycle.max_size) {
            (0, _) => "none".to_string(),
            (n, Some(max)) => {
                format!(
                "{n} ({}); kept out of eviction, so they count against maxSize {} (see pins below)",
                c.lifecycle.pins.iter().map(|p| p.image.as_str()).collect::<Vec<_>>().join(", "),
                size(max)
            )
            }
            (n, None) => format!(
                "{n} ({}); no maxSize, so nothing is evicted anyway",
                c.lifecycle
                    .pins
                    .iter()
                    .map(|p| p.image.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        "none".to_string(),
    );
    line(
        "ferry.adminTokens",
        match c.admin_tokens.len() {
            0 => "none (the operations API is off)".to_string(),
            n => format!("{n} (prewarm allowed with one)"),
        },
        "none (the operations API is off)".to_string(),
    );
    line(
        "ferry.farRangeDistance",
        size(c.far_range_distance),
        size(d.far_range_distance),
    );
    line(
        "ferry.verifiedRanges",
        c.verified_ranges.to_string(),
        d.verified_ranges.to_string(),
    );
    line(
        "ferry.shutdownTimeout",
        dur(c.shutdown_grace),
        dur(d.shutdown_grace),
    );
    line("ferry.drainDelay", dur(c.drain_delay), dur(d.drain_delay));
    let (l, dl) = (&c.lifecycle, &d.lifecycle);
    let opt_size = |v: Option<u64>| v.map_or("none".to_string(), size);
    line("ferry.maxSize", opt_size(l.max_size), opt_size(dl.max_size));
    line(
        "ferry.maxIdle",
        l.max_idle.map_or("none".into(), dur),
        dl.max_idle.map_or("none".into(), dur),
    );
    line(
        "ferry.minFreeSpace",
        size(l.min_free_space),
        size(dl.min_free_space),
    );
    line(
        "ferry.evictionInterval",
        dur(l.eviction_interval),
        dur(dl.eviction_interval),
    );
    let scrub = |s: &Option<super::ScrubConfig>| match s {
        Some(s) => format!("every {}", dur(s.interval)),
        None => "off".into(),
    };
    line("extensions.scrub", scrub(&l.scrub), scrub(&dl.scrub));
    let (n, dn) = (&c.listener, &d.listener);
    line(
        "ferry.maxConnections",
        n.max_connections.to_string(),
        dn.max_connections.to_string(),
    );
    line(
        "ferry.maxConcurrentStreams",
        n.max_streams.to_string(),
        dn.max_streams.to_string(),
    );
    line(
        "ferry.maxHeaderSize",
        size(n.max_header_bytes as u64),
        size(dn.max_header_bytes as u64),
    );
    line(
        "ferry.headerTimeout",
        dur(n.header_timeout),
        dur(dn.header_timeout),
    );
    let addr = |a: Option<std::net::SocketAddr>| {
        a.map_or("the main listener".to_string(), |a| a.to_string())
    };
    line(
        "ferry.metricsAddress",
        addr(n.metrics_listen),
        addr(dn.metrics_listen),
    );
    for (i, r) in c.registries.iter().enumerate() {
        let f = &r.freshness;
        let df = &super::Freshness::default();
        let key = |k: &str| format!("registries[{i}].{k}");
        line(&key("tagTTL"), dur(f.tag_ttl), dur(df.tag_ttl));
        let stale = |v: Option<Duration>| v.map_or("any age".to_string(), dur);
        line(&key("maxStale"), stale(f.max_stale), stale(df.max_stale));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_printed_as_understood_and_defaults_are_marked() {
        let text = r#"{"ferry": {"maxSize": "10GB", "connectTimeout": "90s"},
            "extensions": {"sync": {"registries": [{"urls": ["https://r.example"], "tagTTL": "5 min"}]}}}"#;
        let c = Config::resolve(
            super::super::FileConfig::parse(text).unwrap(),
            &Overrides::default(),
        )
        .unwrap();
        let s = settings(&c);
        let find = |key: &str| {
            s.lines()
                .find(|l| l.trim_start().starts_with(key))
                .unwrap()
                .to_string()
        };
        assert!(find("ferry.maxSize").contains("9.3 GiB"), "{s}");
        assert!(!find("ferry.maxSize").contains("(= default)"));
        assert!(find("ferry.connectTimeout").contains("1m 30s"), "{s}");
        assert!(find("registries[0].tagTTL").contains("5m"), "{s}");
        assert!(
            find("ferry.idleReadTimeout").ends_with("(= default)"),
            "{s}"
        );
        // Written in the file and equal to the built-in value: the label
        // says so, not that the file's value was ignored.
        assert!(
            find("registries[0].tagTTL").ends_with("5m  (= default)"),
            "{s}"
        );
    }

    #[test]
    fn durations_are_read_as_the_docs_say() {
        use super::super::parse_duration;
        let secs = |s: &str| parse_duration(s).unwrap().as_secs();
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("5 minutes"), 300);
        assert_eq!(secs("1 week"), 7 * 86400);
        assert_eq!(secs("2h 30min"), 9000);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5").is_err(), "a unit is required");
    }
}
