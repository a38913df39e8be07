//! The config file's serde model (zot's keys plus a `ferry` section) and its
//! resolution into [`Config`].
//!
//! Every struct denies unknown fields; parsing goes through
//! `serde_path_to_error` so an error names the key's full path, e.g.
//! `extensions.sync.registries[0].url: unknown field`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    parse_duration, parse_upstream_url, Config, ConfigError, Overrides, Timeouts, UpstreamConfig,
    DEFAULT_LISTEN, DEFAULT_STORAGE, DEFAULT_UPSTREAM,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// zot writes it; ferry speaks distribution-spec v1.1 whatever it says.
    pub dist_spec_version: Option<String>,
    pub http: Option<HttpSection>,
    pub storage: Option<StorageSection>,
    pub log: Option<LogSection>,
    pub extensions: Option<Extensions>,
    pub ferry: Option<FerrySection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSection {
    pub address: Option<String>,
    /// zot writes the port as a string; a number is accepted too.
    pub port: Option<Port>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageSection {
    pub root_directory: Option<PathBuf>,
    /// zot storage keys that make no sense for a cache; accepted, ignored.
    pub dedupe: Option<bool>,
    pub gc: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogSection {
    pub level: Option<String>,
    pub output: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Extensions {
    pub sync: Option<SyncSection>,
    pub scrub: Option<ScrubSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScrubSection {
    pub enable: Option<bool>,
    pub interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncSection {
    pub enable: Option<bool>,
    pub credentials_file: Option<PathBuf>,
    pub download_dir: Option<PathBuf>,
    #[serde(default)]
    pub registries: Vec<RegistrySection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistrySection {
    #[serde(default)]
    pub urls: Vec<String>,
    pub on_demand: Option<bool>,
    pub tls_verify: Option<bool>,
    pub cert_dir: Option<PathBuf>,
    pub max_retries: Option<u32>,
    pub retry_delay: Option<String>,
    pub max_retry_delay: Option<String>,
    pub poll_interval: Option<String>,
    pub only_signed: Option<bool>,
    pub content: Option<Vec<ContentSection>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContentSection {
    pub prefix: String,
    pub destination: Option<String>,
    pub strip_prefix: Option<bool>,
    pub tags: Option<serde_json::Value>,
}

/// ferry's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FerrySection {
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub idle_read_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub max_manifest_size: Option<usize>,
}

impl FileConfig {
    /// Parses JSON, naming the path of any unknown or mistyped key.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })
    }
}

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
    if let Some(s) = &file.storage {
        if s.dedupe.is_some() || s.gc.is_some() {
            warnings.push(
                "storage.dedupe / storage.gc are zot keys with no meaning for a cache; ignored"
                    .into(),
            );
        }
    }

    let url = match &o.upstream {
        Some(u) => parse_upstream_url(u)?,
        None => upstream_from(file.extensions.as_ref(), &mut warnings)?,
    };

    let f = file.ferry.unwrap_or_default();
    let dur = |key: &str, v: &Option<String>, default| -> Result<_, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|e| err(format!("ferry.{key}: {e}"))),
        }
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
    };
    let shutdown_grace = dur(
        "shutdownTimeout",
        &f.shutdown_timeout,
        std::time::Duration::from_secs(30),
    )?;

    if let Some(scrub) = file.extensions.as_ref().and_then(|e| e.scrub.as_ref()) {
        if let Some(i) = &scrub.interval {
            parse_duration(i).map_err(|e| err(format!("extensions.scrub.interval: {e}")))?;
        }
        if scrub.enable == Some(true) {
            warnings.push(
                "extensions.scrub is accepted but this ferry version runs no scrub yet".into(),
            );
        }
    }

    Ok(Config {
        listen,
        storage_root,
        upstream: UpstreamConfig { url },
        timeouts,
        shutdown_grace,
        max_manifest_size: f.max_manifest_size.unwrap_or(4 << 20),
        log_level: file.log.and_then(|l| l.level),
        warnings,
    })
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

fn upstream_from(
    ext: Option<&Extensions>,
    warnings: &mut Vec<String>,
) -> Result<http::Uri, ConfigError> {
    let Some(sync) = ext.and_then(|e| e.sync.as_ref()) else {
        return parse_upstream_url(DEFAULT_UPSTREAM);
    };
    if sync.enable == Some(false) {
        return Err(ConfigError(
            "extensions.sync.enable is false: a pull-through cache needs an upstream".into(),
        ));
    }
    let regs = &sync.registries;
    if regs.is_empty() {
        return parse_upstream_url(DEFAULT_UPSTREAM);
    }
    if regs.len() > 1 || regs[0].urls.len() > 1 {
        return Err(ConfigError(format!(
            "extensions.sync.registries: {} registries with {} URLs in all; this ferry version mirrors exactly one upstream URL (routing across several is not built yet)",
            regs.len(),
            regs.iter().map(|r| r.urls.len()).sum::<usize>()
        )));
    }
    let r = &regs[0];
    let Some(url) = r.urls.first() else {
        return Err(ConfigError(
            "extensions.sync.registries[0].urls is empty".into(),
        ));
    };
    let uri = parse_upstream_url(url)
        .map_err(|e| ConfigError(format!("extensions.sync.registries[0].urls[0]: {e}")))?;
    if r.on_demand == Some(false) {
        warnings.push(
            "extensions.sync.registries[0].onDemand is false; ferry always fetches on demand"
                .into(),
        );
    }
    let mut inert = Vec::new();
    if r.tls_verify == Some(false) {
        inert.push("tlsVerify");
    }
    for (key, set) in [
        ("certDir", r.cert_dir.is_some()),
        ("maxRetries", r.max_retries.is_some()),
        ("retryDelay", r.retry_delay.is_some()),
        ("maxRetryDelay", r.max_retry_delay.is_some()),
        ("pollInterval", r.poll_interval.is_some()),
        ("onlySigned", r.only_signed.is_some()),
        ("content", r.content.is_some()),
    ] {
        if set {
            inert.push(key);
        }
    }
    for (key, v) in [
        ("retryDelay", &r.retry_delay),
        ("maxRetryDelay", &r.max_retry_delay),
        ("pollInterval", &r.poll_interval),
    ] {
        if let Some(s) = v {
            parse_duration(s)
                .map_err(|e| ConfigError(format!("extensions.sync.registries[0].{key}: {e}")))?;
        }
    }
    if !inert.is_empty() {
        warnings.push(format!(
            "extensions.sync.registries[0]: {} accepted but not acted on by this ferry version",
            inert.join(", ")
        ));
    }
    if sync.credentials_file.is_some() {
        warnings.push(
            "extensions.sync.credentialsFile is accepted but upstream credentials are not used yet"
                .into(),
        );
    }
    Ok(uri)
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
        assert_eq!(c.upstream.url.to_string(), "http://127.0.0.1:5001/");
        assert_eq!(c.timeouts.idle_read.as_secs(), 90);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = r#"{"extensions": {"sync": {"registries": [{"urls": [], "colour": 1}]}}}"#;
        let e = FileConfig::parse(text).unwrap_err();
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
        assert_eq!(c.upstream.url.host(), Some("127.0.0.1"));
        let d = Config::defaults(&Overrides::default()).unwrap();
        assert_eq!(d.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(d.upstream.url.host(), Some("registry-1.docker.io"));
    }

    #[test]
    fn several_upstreams_are_refused_clearly() {
        let text = r#"{"extensions": {"sync": {"registries": [
            {"urls": ["https://a.example"]}, {"urls": ["https://b.example"]}]}}}"#;
        let e =
            Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap_err();
        assert!(e.0.contains("exactly one upstream"), "{e}");
    }

    #[test]
    fn inert_keys_warn() {
        let text = r#"{"extensions": {"scrub": {"enable": true, "interval": "3h"}, "sync": {"registries": [
            {"urls": ["https://a.example"], "maxRetries": 2, "retryDelay": "5m"}]}}}"#;
        let c = Config::resolve(FileConfig::parse(text).unwrap(), &Overrides::default()).unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("maxRetries, retryDelay"),
            "{:?}",
            c.warnings
        );
    }
}
