//! Every duration and size a config may set, checked against a floor and a
//! ceiling that make sense for its key: zero where zero would break ferry
//! (a connect timeout of 0 s fails every connection), and ceilings that
//! keep every deadline ferry computes (`now + timeout`) far from overflow.
//! A value outside its bounds is refused with the key, the value and the
//! range, so `ferry check-config` catches it before `serve` does.

use std::time::Duration;

use super::{Config, ConfigError};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

fn duration(key: &str, v: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError(format!(
            "ferry.{key}: {} is outside {}..={}",
            humantime::format_duration(v),
            humantime::format_duration(min),
            humantime::format_duration(max)
        )));
    }
    Ok(())
}

fn size(key: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        let b = |n: u64| bytesize::ByteSize(n).display().iec().to_string();
        return Err(ConfigError(format!(
            "ferry.{key}: {} is outside {}..={}",
            b(v),
            b(min),
            b(max)
        )));
    }
    Ok(())
}

fn count(key: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError(format!(
            "ferry.{key}: {v} is outside {min}..={max}"
        )));
    }
    Ok(())
}

/// Checks every bounded value of a resolved config.
pub(super) fn check(c: &Config) -> Result<(), ConfigError> {
    let t = &c.timeouts;
    duration("connectTimeout", t.connect, 100 * MS, 10 * MIN)?;
    duration("responseHeaderTimeout", t.response_header, 100 * MS, HOUR)?;
    duration("idleReadTimeout", t.idle_read, 100 * MS, HOUR)?;
    duration("upstreamIdleTimeout", t.pool_idle, SEC, DAY)?;
    size("minReadRate", t.min_read_rate, 0, 10 * GIB)?;
    duration("shutdownTimeout", c.shutdown_grace, Duration::ZERO, DAY)?;
    duration("drainDelay", c.drain_delay, Duration::ZERO, HOUR)?;
    duration("maxRetryWait", c.max_retry_wait, Duration::ZERO, HOUR)?;
    duration("absentTTL", c.absent_ttl, Duration::ZERO, DAY)?;
    duration(
        "requestQueueTimeout",
        c.request_limits.wait,
        Duration::ZERO,
        10 * MIN,
    )?;
    count(
        "maxRequestsPerRegistry",
        c.request_limits.max as u64,
        1,
        1_000_000,
    )?;
    count(
        "maxFetchesPerRegistry",
        c.max_fetches_per_registry as u64,
        1,
        100_000,
    )?;
    size(
        "orphanedBytesPerRegistry",
        c.orphaned_bytes_per_registry,
        0,
        64 * TIB,
    )?;
    size("maxBlobSize", c.max_blob_size, KIB, 64 * TIB)?;
    size(
        "maxManifestSize",
        c.max_manifest_size as u64,
        KIB,
        256 * MIB,
    )?;
    size("maxListSize", c.list_limits.bytes as u64, KIB, 4 * GIB)?;
    count(
        "maxListEntries",
        c.list_limits.entries as u64,
        1,
        100_000_000,
    )?;
    let l = &c.listener;
    count("maxConnections", l.max_connections as u64, 1, 10_000_000)?;
    count("maxConcurrentStreams", l.max_streams as u64, 1, 100_000)?;
    size(
        "maxHeaderSize",
        l.max_header_bytes as u64,
        8 * KIB,
        16 * MIB,
    )?;
    duration("headerTimeout", l.header_timeout, 100 * MS, HOUR)?;
    duration("tlsReloadInterval", l.tls_reload_interval, 10 * MS, DAY)?;
    if let Some(cl) = &c.cluster {
        duration("cluster.probeInterval", cl.probe_interval, 100 * MS, HOUR)?;
        duration("cluster.dnsInterval", cl.dns_interval, 100 * MS, DAY)?;
        duration("cluster.peerTimeout", cl.peer_timeout, 100 * MS, HOUR)?;
        count("cluster.fanout", cl.fanout as u64, 1, 1024)?;
    }
    let lc = &c.lifecycle;
    duration("evictionInterval", lc.eviction_interval, 10 * MS, DAY)?;
    duration(
        "sharedCheckInterval",
        lc.shared_check_interval,
        SEC,
        30 * DAY,
    )?;
    if let Some(idle) = lc.max_idle {
        duration("maxIdle", idle, MS, 3650 * DAY)?;
    }
    for r in &c.registries {
        let f = &r.freshness;
        let at = |key: &str| format!("registry {}: {key}", r.urls[0]);
        duration(&at("tagTTL"), f.tag_ttl, Duration::ZERO, 365 * DAY)?;
        duration(
            &at("referrersTTL"),
            f.referrers_ttl,
            Duration::ZERO,
            365 * DAY,
        )?;
        if let Some(max) = f.max_stale {
            duration(&at("maxStale"), max, Duration::ZERO, 3650 * DAY)?;
        }
        if let Some(every) = r.poll_interval {
            duration(&at("pollInterval"), every, SEC, 365 * DAY)?;
        }
        duration(&at("retryDelay"), r.retry.delay, Duration::ZERO, HOUR)?;
        duration(&at("maxRetryDelay"), r.retry.max_delay, Duration::ZERO, DAY)?;
        count(&at("maxRetries"), r.retry.max_retries as u64, 0, 100)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, FileConfig, Overrides};

    fn load(ferry: &str) -> Result<Config, String> {
        let json = format!(r#"{{"ferry": {ferry}}}"#);
        Config::resolve(FileConfig::parse(&json).unwrap(), &Overrides::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn values_that_break_ferry_or_overflow_a_deadline_are_refused() {
        assert!(load("{}").is_ok(), "the defaults are within bounds");
        for (ferry, key) in [
            (r#"{"connectTimeout": "0s"}"#, "connectTimeout"),
            (r#"{"idleReadTimeout": "0s"}"#, "idleReadTimeout"),
            (r#"{"headerTimeout": "0s"}"#, "headerTimeout"),
            (
                r#"{"idleReadTimeout": "500000000years"}"#,
                "idleReadTimeout",
            ),
            (r#"{"absentTTL": "100years"}"#, "absentTTL"),
            (r#"{"maxBlobSize": "0B"}"#, "maxBlobSize"),
            (r#"{"maxManifestSize": 0}"#, "maxManifestSize"),
            (r#"{"maxConcurrentStreams": 0}"#, "maxConcurrentStreams"),
        ] {
            let e = load(ferry).expect_err(ferry);
            assert!(
                e.contains(key) && e.contains("outside") || e.contains("at least"),
                "{ferry}: {e}"
            );
        }
        assert!(load(r#"{"connectTimeout": "2s", "absentTTL": "0s"}"#).is_ok());
    }
}
