//! Resolving a parsed config file into a [`Config`]: defaults, the
//! overrides from the command line, durations and sizes parsed, and the
//! warnings an operator should see at start-up. The registries are
//! resolved in `registries.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::file::*;
use super::{
    parse_duration, parse_proxies, parse_upstream_url, AccessConfig, Config, ConfigError,
    LifecycleConfig, ListLimits, ListenerConfig, Overrides, RegistryConfig, RequestLimits,
    ScrubConfig, Timeouts, DEFAULT_LISTEN, DEFAULT_STORAGE,
};

/// `ferry.orphanedBytesPerRegistry` unless set: enough for a client that
/// gave up on a few layers to come back and find them still coming.
const DEFAULT_ORPHANED_BYTES: u64 = 4 << 30;

/// Pulls of a stated budget prefetch and sync leave for clients by default
/// (a tenth of Docker Hub's anonymous 100 per 6 h).
const RATE_LIMIT_RESERVE: u64 = 10;

pub(super) fn resolve(file: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let err = |m: String| ConfigError(m);

    let listen = match &o.listen {
        Some(a) => *a,
        None => listen_from(file.http.as_ref())?,
    };

    let storage_root = o.storage.clone().unwrap_or_else(|| {
        file.storage
            .as_ref()
            .and_then(|s| s.root_directory.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORAGE))
    });
    let shared = match file
        .storage
        .as_ref()
        .and_then(|s| s.storage_driver.as_ref())
    {
        Some(d) => Some(super::storage_driver::resolve(d, &mut warnings)?),
        None => None,
    };
    if let Some(s) = &file.storage {
        if s.dedupe.is_some() || s.gc.is_some() {
            warnings.push(
                "storage.dedupe / storage.gc are zot keys with no meaning for a cache; ignored"
                    .into(),
            );
        }
    }

    let tls = match file.http.as_ref().and_then(|h| h.tls.as_ref()) {
        None => None,
        Some(TlsSection {
            cert: Some(cert),
            key: Some(key),
            cacert,
        }) => Some(super::ListenerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: cacert.clone(),
        }),
        Some(_) => return Err(err("http.tls needs both cert and key".into())),
    };

    let registries = match &o.upstream {
        Some(u) => vec![RegistryConfig::single(parse_upstream_url(u)?)],
        None => super::registries::registries_from(file.extensions.as_ref(), &mut warnings)?,
    };

    let mut f = file.ferry.unwrap_or_default();
    let dur = |key: &str, v: &Option<String>, default| -> Result<_, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|e| err(format!("ferry.{key}: {e}"))),
        }
    };
    let bytes = |key: &str, v: &Option<String>| -> Result<Option<u64>, ConfigError> {
        v.as_deref()
            .map(|s| {
                s.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| b.as_u64())
                    .map_err(|e| {
                        err(format!(
                            "ferry.{key}: {s:?} is not a size like \"200GiB\": {e}"
                        ))
                    })
            })
            .transpose()
    };
    let d = Timeouts::default();
    let timeouts = Timeouts {
        connect: dur("connectTimeout", &f.connect_timeout, d.connect)?,
        response_header: dur(
            "responseHeaderTimeout",
            &f.response_header_timeout,
            d.response_header,
        )?,
        idle_read: dur("idleReadTimeout", &f.idle_read_timeout, d.idle_read)?,
        min_read_rate: bytes("minReadRate", &f.min_read_rate)?.unwrap_or(d.min_read_rate),
        pool_idle: dur("upstreamIdleTimeout", &f.upstream_idle_timeout, d.pool_idle)?,
    };
    let shutdown_grace = dur(
        "shutdownTimeout",
        &f.shutdown_timeout,
        std::time::Duration::from_secs(30),
    )?;
    let max_retry_wait = dur(
        "maxRetryWait",
        &f.max_retry_wait,
        std::time::Duration::from_secs(5),
    )?;
    for (i, r) in registries.iter().enumerate() {
        if r.retry.delay > max_retry_wait || r.retry.max_delay > max_retry_wait {
            warnings.push(format!(
                "extensions.sync.registries[{i}]: retry delays above ferry.maxRetryWait ({}) are capped to it, because a client is waiting (zot's values are meant for background sync)",
                humantime::format_duration(max_retry_wait)
            ));
        }
    }

    let scrub = match file.extensions.as_ref().and_then(|e| e.scrub.as_ref()) {
        Some(sc) if sc.enable != Some(false) => {
            let interval = match &sc.interval {
                Some(i) => {
                    parse_duration(i).map_err(|e| err(format!("extensions.scrub.interval: {e}")))?
                }
                None => std::time::Duration::from_secs(24 * 3600),
            };
            Some(ScrubConfig {
                interval,
                rate: bytes("scrubRate", &f.scrub_rate)?,
                quarantine: f.scrub_quarantine.unwrap_or(false),
            })
        }
        _ => None,
    };
    let lifecycle = LifecycleConfig {
        max_size: bytes("maxSize", &f.max_size)?,
        max_idle: f
            .max_idle
            .as_deref()
            .map(|s| parse_duration(s).map_err(|e| err(format!("ferry.maxIdle: {e}"))))
            .transpose()?,
        min_free_space: bytes("minFreeSpace", &f.min_free_space)?.unwrap_or(256 << 20),
        eviction_interval: dur(
            "evictionInterval",
            &f.eviction_interval,
            std::time::Duration::from_secs(30),
        )?,
        scrub,
        shared_max_size: bytes("sharedMaxSize", &f.shared_max_size)?,
        pins: f
            .pin
            .take()
            .unwrap_or_default()
            .iter()
            .map(|p| super::Pin::parse(p).map_err(err))
            .collect::<Result<_, _>>()?,
        shared_check_interval: dur(
            "sharedCheckInterval",
            &f.shared_check_interval,
            std::time::Duration::from_secs(3600),
        )?,
    };

    let drain_delay = dur("drainDelay", &f.drain_delay, std::time::Duration::ZERO)?;

    let ld = ListenerConfig::default();
    let listener = ListenerConfig {
        max_connections: match f.max_connections {
            Some(0) => return Err(err("ferry.maxConnections must be at least 1".into())),
            Some(n) => n,
            None => ld.max_connections,
        },
        max_streams: match f.max_concurrent_streams {
            Some(0) => return Err(err("ferry.maxConcurrentStreams must be at least 1".into())),
            Some(n) => n,
            None => ld.max_streams,
        },
        max_header_bytes: bytes("maxHeaderSize", &f.max_header_size)?
            .map_or(ld.max_header_bytes, |b| b.max(8192) as usize),
        header_timeout: dur("headerTimeout", &f.header_timeout, ld.header_timeout)?,
        trusted_proxies: parse_proxies(f.trusted_proxies.as_deref().unwrap_or_default())?,
        metrics_listen: f
            .metrics_address
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    err(format!(
                        "ferry.metricsAddress: {a:?} is not an address like 127.0.0.1:9100: {e}"
                    ))
                })
            })
            .transpose()?,
        tls_reload_interval: dur(
            "tlsReloadInterval",
            &f.tls_reload_interval,
            ld.tls_reload_interval,
        )?,
    };

    let (auth, control) = match file.http {
        Some(h) => (h.auth, h.access_control),
        None => (None, None),
    };
    let admin_tokens = super::access::AdminTokens::resolve(
        f.admin_tokens.take(),
        f.admin_tokens_file.as_deref(),
        std::env::var(super::access::ADMIN_TOKENS_ENV).ok(),
    )?;
    let tokens = f.access_tokens.unwrap_or_default();
    let htpasswd = auth
        .as_ref()
        .and_then(|a| a.htpasswd.as_ref())
        .map(|h| h.path.clone());
    let access = if htpasswd.is_none() && tokens.is_empty() {
        if control.is_some() {
            return Err(err(
                "http.accessControl needs users: set http.auth.htpasswd.path or ferry.accessTokens"
                    .into(),
            ));
        }
        None
    } else {
        Some(AccessConfig {
            htpasswd,
            tokens,
            control,
            fail_delay: std::time::Duration::from_secs(
                auth.as_ref().and_then(|a| a.fail_delay).unwrap_or(0),
            ),
        })
    };
    // Behind an HTTPS listener, peers speak HTTPS to each other.
    let cluster = match &f.cluster {
        Some(c) => Some(c.resolve(std::env::var(super::SECRET_ENV).ok(), tls.is_some())?),
        None => None,
    };
    let config = Config {
        listen,
        tls,
        drain_delay,
        storage_root,
        shared,
        registries,
        timeouts,
        shutdown_grace,
        max_manifest_size: f.max_manifest_size.unwrap_or(4 << 20),
        request_limits: RequestLimits {
            max: match f.max_requests_per_registry {
                Some(0) => {
                    return Err(err(
                        "ferry.maxRequestsPerRegistry must be more than 0".into()
                    ))
                }
                Some(n) => n,
                None => RequestLimits::default().max,
            },
            wait: dur(
                "requestQueueTimeout",
                &f.request_queue_timeout,
                RequestLimits::default().wait,
            )?,
        },
        list_limits: ListLimits {
            bytes: match bytes("maxListSize", &f.max_list_size)? {
                Some(0) => return Err(err("ferry.maxListSize must be more than 0".into())),
                Some(b) => usize::try_from(b).unwrap_or(usize::MAX),
                None => ListLimits::default().bytes,
            },
            entries: match f.max_list_entries {
                Some(0) => return Err(err("ferry.maxListEntries must be more than 0".into())),
                Some(n) => n,
                None => ListLimits::default().entries,
            },
        },
        max_retry_wait,
        max_fetches_per_registry: f.max_fetches_per_registry.unwrap_or(64).max(1),
        orphaned_bytes_per_registry: bytes(
            "orphanedBytesPerRegistry",
            &f.orphaned_bytes_per_registry,
        )?
        .unwrap_or(DEFAULT_ORPHANED_BYTES),
        absent_ttl: dur(
            "absentTTL",
            &f.absent_ttl,
            std::time::Duration::from_secs(10),
        )?,
        max_blob_size: bytes("maxBlobSize", &f.max_blob_size)?.unwrap_or(64 << 30),
        far_range_distance: f.far_range_distance.unwrap_or(16 << 20),
        rate_limit_reserve: f.rate_limit_reserve.unwrap_or(RATE_LIMIT_RESERVE),
        verified_ranges: f.verified_ranges.unwrap_or(false),
        lifecycle,
        log_level: file.log.and_then(|l| l.level),
        warnings,
        listener,
        access,
        admin_tokens,
        cluster,
    };
    super::bounds::check(&config)?;
    Ok(config)
}

fn listen_from(http: Option<&HttpSection>) -> Result<SocketAddr, ConfigError> {
    let default: SocketAddr = DEFAULT_LISTEN.parse().expect("default listen address");
    let Some(h) = http else { return Ok(default) };
    let ip: IpAddr = match &h.address {
        None => default.ip(),
        Some(a) => a
            .parse()
            .map_err(|e| ConfigError(format!("http.address: {a:?} is not an IP address: {e}")))?,
    };
    let port = match &h.port {
        None => default.port(),
        Some(Port::Number(n)) => *n,
        Some(Port::Text(t)) => t
            .parse()
            .map_err(|e| ConfigError(format!("http.port: {t:?} is not a port number: {e}")))?,
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ContentRule;

    #[test]
    fn example_shape_resolves() {
        let text = r#"{
            "http": {"address": "0.0.0.0", "port": "5050"},
            "storage": {"rootDirectory": "/var/cache/ferry"},
            "log": {"level": "debug"},
            "extensions": {"sync": {"enable": true, "registries": [
                {"urls": ["http://127.0.0.1:5001"], "onDemand": true, "tlsVerify": true}
            ]}},
            "ferry": {"idleReadTimeout": "1m30s"}
        }"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5050".parse().unwrap());
        assert_eq!(c.storage_root, PathBuf::from("/var/cache/ferry"));
        assert_eq!(c.registries.len(), 1);
        assert_eq!(
            c.registries[0].urls[0].to_string(),
            "http://127.0.0.1:5001/"
        );
        assert_eq!(c.timeouts.idle_read.as_secs(), 90);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        // zot's examples set tlsVerify on plain-HTTP registries: said, not
        // refused.
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("tlsVerify: has no effect"));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = r#"{"extensions": {"sync": {"registries": [{"urls": [], "colour": 1}]}}}"#;
        let e = FileConfig::parse(text).unwrap_err().to_string();
        assert!(e.contains("extensions.sync.registries[0]"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn overrides_win_and_defaults_apply() {
        let o = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            storage: Some("/tmp/x".into()),
            upstream: Some("http://127.0.0.1:9".into()),
        };
        let c = Config::defaults(&o).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.registries[0].urls[0].host(), Some("127.0.0.1"));
        let d = Config::defaults(&Overrides::default()).unwrap();
        assert_eq!(d.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(d.registries[0].urls[0].host(), Some("registry-1.docker.io"));
    }

    #[test]
    fn seed_config_loads_unchanged() {
        let text = include_str!("../../tests/fixtures/seed-config.json");
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        assert_eq!(c.registries.len(), 3);
        let r0 = &c.registries[0];
        assert_eq!(r0.urls[0].host(), Some("gcr.lank8s.cn"));
        assert_eq!(
            r0.content,
            vec![ContentRule {
                prefix: "lank8s".into(),
                destination: None,
                strip_prefix: false,
                tags: None
            }]
        );
        assert_eq!(r0.retry.max_retries, 2);
        assert_eq!(r0.retry.delay, std::time::Duration::from_secs(300));
        assert!(c.registries[1].content.is_empty());
        assert_eq!(c.registries[2].urls[0].host(), Some("registry.lank8s.cn"));
        // zot's scrub every 3h; 5m retry delays capped for waiting clients
        assert_eq!(
            c.lifecycle.scrub.as_ref().map(|s| s.interval.as_secs()),
            Some(3 * 3600)
        );
        assert!(
            c.warnings.iter().any(|w| w.contains("maxRetryWait")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let text = r#"{"extensions": {"sync": {"registries": [
            {"urls": ["https://a.example"]}, {"urls": ["https://b.example"], "retryDelay": "soon"}]}}}"#;
        let e =
            Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap_err();
        assert!(
            e.0.contains("extensions.sync.registries[1].retryDelay"),
            "{e}"
        );
        let text = r#"{"http": {"tls": {"cert": "/c"}}}"#;
        let e =
            Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("http.tls"), "{e}");
    }
}
