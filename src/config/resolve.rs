//! Resolving a parsed config file into a [`Config`]: defaults, the
//! overrides from the command line, durations and sizes parsed, every
//! registry's URL, credentials, TLS and freshness settled, and the
//! warnings an operator should see at start-up.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::file::*;
use super::{
    parse_duration, parse_proxies, parse_upstream_url, AccessConfig, Config, ConfigError,
    ContentRule, Freshness, LifecycleConfig, ListLimits, ListenerConfig, Overrides, RegistryConfig,
    RequestLimits, RetryPolicy, ScrubConfig, Timeouts, DEFAULT_LISTEN, DEFAULT_STORAGE,
    DEFAULT_UPSTREAM,
};

/// `ferry.orphanedBytesPerRegistry` unless set: enough for a client that
/// gave up on a few layers to come back and find them still coming.
const DEFAULT_ORPHANED_BYTES: u64 = 4 << 30;

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
        }) => Some(super::ListenerTls {
            cert: cert.clone(),
            key: key.clone(),
        }),
        Some(_) => return Err(err("http.tls needs both cert and key".into())),
    };

    let registries = match &o.upstream {
        Some(u) => vec![RegistryConfig::single(parse_upstream_url(u)?)],
        None => registries_from(file.extensions.as_ref(), &mut warnings)?,
    };

    let f = file.ferry.unwrap_or_default();
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
    let cluster = match &f.cluster {
        Some(_) if tls.is_some() => {
            return Err(err(
                "ferry.cluster with http.tls: peers talk plain HTTP to each other's listener, which then speaks only TLS; this is not supported yet (terminate TLS in front of ferry, e.g. in the load balancer)".into(),
            ))
        }
        Some(c) => Some(c.resolve(std::env::var(super::SECRET_ENV).ok())?),
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
        verified_ranges: f.verified_ranges.unwrap_or(false),
        lifecycle,
        log_level: file.log.and_then(|l| l.level),
        warnings,
        listener,
        access,
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

fn registries_from(
    ext: Option<&Extensions>,
    warnings: &mut Vec<String>,
) -> Result<Vec<RegistryConfig>, ConfigError> {
    let Some(sync) = ext.and_then(|e| e.sync.as_ref()) else {
        return Ok(vec![RegistryConfig::single(parse_upstream_url(
            DEFAULT_UPSTREAM,
        )?)]);
    };
    if sync.enable == Some(false) {
        return Err(ConfigError(
            "extensions.sync.enable is false: a pull-through cache needs an upstream".into(),
        ));
    }
    if sync.registries.is_empty() {
        warnings.push(format!(
            "extensions.sync.registries is empty: ferry mirrors {DEFAULT_UPSTREAM}, the default"
        ));
        return Ok(vec![RegistryConfig::single(parse_upstream_url(
            DEFAULT_UPSTREAM,
        )?)]);
    }
    let file_credentials = match &sync.credentials_file {
        Some(p) => super::read_credentials_file(p)
            .map_err(|e| ConfigError(format!("extensions.sync.credentialsFile: {e}")))?,
        None => Default::default(),
    };
    if sync.download_dir.is_some() {
        warnings.push("extensions.sync.downloadDir is ignored: ferry downloads into storage.rootDirectory/tmp".into());
    }
    let mut out = Vec::new();
    for (i, r) in sync.registries.iter().enumerate() {
        let at = |key: &str| format!("extensions.sync.registries[{i}].{key}");
        if r.urls.is_empty() {
            return Err(ConfigError(format!(
                "{}: at least one URL is needed",
                at("urls")
            )));
        }
        let mut urls = Vec::new();
        for (j, u) in r.urls.iter().enumerate() {
            urls.push(
                parse_upstream_url(u)
                    .map_err(|e| ConfigError(format!("{}[{j}]: {e}", at("urls"))))?,
            );
        }
        let dur =
            |key: &str, v: &Option<String>| -> Result<Option<std::time::Duration>, ConfigError> {
                v.as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| ConfigError(format!("{}: {e}", at(key))))
            };
        let d = RetryPolicy::default();
        let delay = dur("retryDelay", &r.retry_delay)?.unwrap_or(d.delay);
        let retry = RetryPolicy {
            max_retries: r.max_retries.unwrap_or(d.max_retries),
            delay,
            max_delay: dur("maxRetryDelay", &r.max_retry_delay)?.unwrap_or(d.max_delay.max(delay)),
        };
        let mirror_of = r
            .mirror_of
            .as_deref()
            .map(|v| {
                parse_mirror_of(v).map_err(|e| ConfigError(format!("{}: {e}", at("mirrorOf"))))
            })
            .transpose()?;
        let poll_interval = dur("pollInterval", &r.poll_interval)?;
        if poll_interval.is_some() && r.content.as_ref().is_none_or(|c| c.is_empty()) {
            warnings.push(format!(
                "{}: periodic sync needs content rules to know what to pull; nothing will be synced",
                at("pollInterval")
            ));
        }
        if r.only_signed.is_some() {
            warnings.push(format!(
                "{}: signature checks are not built; ignored",
                at("onlySigned")
            ));
        }
        if r.on_demand == Some(false) {
            warnings.push(format!(
                "{}: false is ignored; ferry always fetches on demand",
                at("onDemand")
            ));
        }
        let tls_verify = r.tls_verify.unwrap_or(true);
        if r.tls_verify.is_some() && urls.iter().all(|u| u.scheme_str() == Some("http")) {
            warnings.push(format!(
                "{}: has no effect: {} is plain HTTP",
                at("tlsVerify"),
                urls[0]
            ));
        }
        if !tls_verify {
            warnings.push(format!(
                "{}: false: certificates of {} are not checked",
                at("tlsVerify"),
                urls[0]
            ));
        }
        if let Some(dir) = &r.cert_dir {
            if !dir.is_dir() {
                return Err(ConfigError(format!(
                    "{}: {} is not a directory",
                    at("certDir"),
                    dir.display()
                )));
            }
        }
        let credentials = r.credentials.clone().or_else(|| {
            urls.iter().find_map(|u| {
                let host = u.host().unwrap_or_default().to_ascii_lowercase();
                let key = match u.port_u16() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.clone(),
                };
                // Docker Hub goes by several names; any of them will do.
                let aliases: &[&str] = if super::DOCKER_HUB_HOSTS.contains(&host.as_str()) {
                    super::DOCKER_HUB_HOSTS
                } else {
                    &[]
                };
                file_credentials
                    .get(&key)
                    .or_else(|| file_credentials.get(&host))
                    .or_else(|| aliases.iter().find_map(|a| file_credentials.get(*a)))
                    .cloned()
            })
        });
        let mut content = Vec::new();
        for (k, c) in r.content.iter().flatten().enumerate() {
            let prefix = c.prefix.trim_matches('/').to_string();
            if prefix.is_empty() {
                return Err(ConfigError(format!(
                    "{}[{k}].prefix is empty",
                    at("content")
                )));
            }
            if let Some(re) = c.tags.as_ref().and_then(|t| t.regex.as_deref()) {
                regex::Regex::new(re)
                    .map_err(|e| ConfigError(format!("{}[{k}].tags.regex: {e}", at("content"))))?;
            }
            content.push(ContentRule {
                tags: c.tags.clone(),
                prefix,
                destination: c
                    .destination
                    .as_deref()
                    .map(|d| d.trim_matches('/').to_string())
                    .filter(|d| !d.is_empty()),
                strip_prefix: c.strip_prefix.unwrap_or(false),
            });
        }
        let f = Freshness::default();
        let freshness = Freshness {
            tag_ttl: dur("tagTTL", &r.tag_ttl)?.unwrap_or(f.tag_ttl),
            max_stale: dur("maxStale", &r.max_stale)?,
            serve_stale_on_not_found: r.serve_stale_on_not_found.unwrap_or(false),
            referrers_ttl: dur("referrersTTL", &r.referrers_ttl)?.unwrap_or(f.referrers_ttl),
        };
        out.push(RegistryConfig {
            urls,
            content,
            tls_verify,
            cert_dir: r.cert_dir.clone(),
            retry,
            freshness,
            credentials,
            poll_interval,
            mirror_of,
            token_realms: r
                .token_realms
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        });
    }
    for (i, r) in out.iter().enumerate() {
        let hosts = r.client_hosts();
        let shared = out[..i].iter().enumerate().find_map(|(j, o)| {
            let host = o.client_hosts().into_iter().find(|h| hosts.contains(h))?;
            Some((j, host))
        });
        if let Some(j) = out[..i]
            .iter()
            .position(|o| o.urls == r.urls && o.content == r.content)
        {
            warnings.push(format!(
                "extensions.sync.registries[{i}] repeats registries[{j}] ({}): it is never asked first",
                r.urls[0]
            ));
        } else if let Some((j, host)) = shared {
            warnings.push(format!(
                "extensions.sync.registries[{i}] answers to {host} as registries[{j}] does: ns={host} and path-style requests go to registries[{j}] only (to fail over, list both URLs in one registry)"
            ));
        }
    }
    Ok(out)
}

/// `mirrorOf`: a registry's `host[:port]` as clients name it, without a
/// scheme, path or user.
fn parse_mirror_of(v: &str) -> Result<String, String> {
    let raw = v.trim().to_ascii_lowercase();
    let parsed = (!raw.contains(['/', '@', '?', '#']))
        .then(|| raw.parse::<http::uri::Authority>().ok())
        .flatten()
        .filter(|a| !a.host().is_empty())
        // A port, if written, is a number that fits (not "docker.io:").
        .filter(|a| a.as_str() == a.host() || a.port_u16().is_some());
    if let Some(a) = parsed {
        Ok(match a.port_u16() {
            Some(p) => format!("{}:{p}", a.host()),
            None => a.host().to_string(),
        })
    } else {
        Err(format!(
            "{v:?} is not a registry host; write it as clients name it, e.g. \"docker.io\" or \"registry.local:5000\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn mirror_of_names_the_registry_clients_ask_for() {
        let text = r#"{"extensions": {"sync": {"registries": [
            {"urls": ["https://mirror.gcr.io"], "mirrorOf": "Docker.io"}]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        assert_eq!(c.registries[0].mirror_of.as_deref(), Some("docker.io"));
        assert_eq!(c.registries[0].client_name(), "docker.io");
        // It answers to Docker Hub's names, so a second Docker Hub entry
        // would never be chosen by ns=: a warning says so.
        let text = r#"{"extensions": {"sync": {"registries": [
            {"urls": ["https://mirror.gcr.io"], "mirrorOf": "docker.io"},
            {"urls": ["https://registry-1.docker.io"]}]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("registries[1] answers to docker.io as registries[0]")),
            "{:?}",
            c.warnings
        );
        for bad in [
            "https://docker.io",
            "docker.io/library",
            "",
            "user@host",
            "docker.io:",
            "docker.io:abc",
            ":5000",
            "registry.local:99999",
        ] {
            let text = format!(
                r#"{{"extensions": {{"sync": {{"registries": [{{"urls": ["https://m.example"], "mirrorOf": "{bad}"}}]}}}}}}"#
            );
            let e = Config::resolve(FileConfig::parse(&text).unwrap(), &Overrides::default())
                .unwrap_err();
            assert!(e.0.contains("registries[0].mirrorOf"), "{bad}: {e}");
        }
    }
}
