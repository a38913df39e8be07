//! Configuration: the file format, its validation, and the resolved
//! [`Config`] the rest of ferry runs on.
//!
//! The file is JSON in zot's shape (`http`, `storage`, `log`,
//! `extensions.sync`, `extensions.scrub`), so a zot mirror's config file loads
//! as it is, plus a `ferry` section for ferry's own keys. Unknown keys are an
//! error naming the key and its path; keys ferry accepts but does not act on
//! yet become start-up warnings. Command-line flags override the file.

mod access;
mod bounds;
mod cluster;
mod credentials;
mod describe;
mod file;
mod pins;
mod plain_words;
mod registries;
mod resolve;
mod snippets;
mod storage_driver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

pub use access::{
    parse_proxies, AccessConfig, AccessControlSection, AccessToken, AdminTokens, ListenerConfig,
    Policy, RepositoryPolicy,
};
pub use cluster::{ClusterConfig, ClusterSection, PeerSource, FANOUT, PEER_TIMEOUT, SECRET_ENV};
pub use credentials::{read_credentials_file, Credentials, Secret};
pub use describe::settings;
pub use file::FileConfig;
pub use pins::{Pin, PinTarget};
pub use snippets::{client_snippets, containerd_host, ContainerdHost};
pub use storage_driver::{S3Settings, SharedStorage};

/// Docker Hub's host names; any of them names the same registry.
pub const DOCKER_HUB_HOSTS: &[&str] = &[
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
];

/// The built-in defaults, identical to `config.example.json`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_STORAGE: &str = "./data";
pub const DEFAULT_UPSTREAM: &str = "https://registry-1.docker.io";

/// Everything ferry needs to run, resolved and validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// zot's `http.tls`: serve HTTPS with this certificate and key (PEM).
    pub tls: Option<ListenerTls>,
    pub storage_root: PathBuf,
    /// zot's `storage.storageDriver`: the bucket (or shared directory)
    /// several replicas share; `storage_root` is then the local spool.
    pub shared: Option<SharedStorage>,
    /// Upstream registries in config order (the order candidates are tried).
    pub registries: Vec<RegistryConfig>,
    pub timeouts: Timeouts,
    /// How long shutdown waits for in-flight responses before it gives up.
    pub shutdown_grace: Duration,
    /// At shutdown, `/readyz` turns 503 this long before the listener closes.
    pub drain_delay: Duration,
    /// Manifests larger than this are refused (as CNCF Distribution does).
    pub max_manifest_size: usize,
    /// A Range on a blob still downloading ends cleanly only once the
    /// whole blob was verified (`ferry.verifiedRanges`; default off: the
    /// range is served as it arrives, unverified, like a ranged pull from
    /// the upstream itself).
    pub verified_ranges: bool,
    /// Bounds on an upstream tag list or catalog, all pages together.
    pub list_limits: ListLimits,
    /// Requests to one registry at once, and how long one waits for a slot.
    pub request_limits: RequestLimits,
    /// No single retry delay is longer than this: a client is waiting.
    pub max_retry_wait: Duration,
    /// Upstream blob downloads at once per registry (`ferry.maxFetchesPerRegistry`).
    pub max_fetches_per_registry: usize,
    /// Bytes that blob downloads every client left may still bring in,
    /// per registry, before they are cancelled
    /// (`ferry.orphanedBytesPerRegistry`).
    pub orphaned_bytes_per_registry: u64,
    /// An upstream 404 for a blob is believed this long (`ferry.absentTTL`).
    pub absent_ttl: Duration,
    /// Blobs larger than this are refused, and a body without a length
    /// is cut off here (`ferry.maxBlobSize`).
    pub max_blob_size: u64,
    /// A `Range` on a blob in flight that starts this far beyond the bytes
    /// fetched so far is passed through to the upstream on its own.
    pub far_range_distance: u64,
    /// Pulls of an upstream's stated budget that prefetch and sync leave
    /// for clients (`ferry.rateLimitReserve`): they stop when a registry
    /// has no more than this left.
    pub rate_limit_reserve: u64,
    /// Size cap, eviction, free space and scrub.
    pub lifecycle: LifecycleConfig,
    pub log_level: Option<String>,
    /// Keys that were accepted but have no effect yet, for start-up logs.
    pub warnings: Vec<String>,
    /// Who may use the operations API (`/ferry/v1/prewarm`).
    pub admin_tokens: AdminTokens,
    /// Connection limits, header limits, trusted proxies, metrics address.
    pub listener: ListenerConfig,
    /// Client access control; `None` lets every client read.
    pub access: Option<AccessConfig>,
    /// The replicas that share upstream fetches (`ferry.cluster`).
    pub cluster: Option<ClusterConfig>,
}

/// Certificate and key files of the HTTPS listener.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// zot's `cacert`: clients must show a certificate from these CAs.
    pub client_ca: Option<PathBuf>,
}

/// Keeping the store healthy and within its budget.
#[derive(Clone, Debug, Default)]
pub struct LifecycleConfig {
    /// Evict least-recently-used blobs above this many bytes (down to 90%).
    pub max_size: Option<u64>,
    /// Evict blobs not read for this long.
    pub max_idle: Option<Duration>,
    /// Do not cache when the filesystem would have less free than this.
    pub min_free_space: u64,
    pub eviction_interval: Duration,
    /// zot's `extensions.scrub`, when enabled (the shared tier is scrubbed
    /// too).
    pub scrub: Option<ScrubConfig>,
    /// Size cap of the shared tier (`ferry.sharedMaxSize`), oldest first.
    pub shared_max_size: Option<u64>,
    /// How often the shared tier's cap and leftover uploads are checked
    /// (`ferry.sharedCheckInterval`).
    pub shared_check_interval: Duration,
    /// `ferry.pin`: images eviction never removes.
    pub pins: Vec<Pin>,
}

impl LifecycleConfig {
    /// What eviction shrinks the store to once it passes `maxSize`: 90%
    /// of it. Pinned blobs above this leave eviction no room.
    pub fn low_water(&self) -> Option<u64> {
        self.max_size.map(|m| m / 10 * 9)
    }
}

/// A periodic re-hash of the store.
#[derive(Clone, Copy, Debug)]
pub struct ScrubConfig {
    pub interval: Duration,
    /// Bytes per second at most.
    pub rate: Option<u64>,
    /// Move damaged files aside instead of deleting them.
    pub quarantine: bool,
}

/// One upstream registry: where it is, what it serves, how to retry it.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Mirrors of one registry, tried in order (failover).
    pub urls: Vec<Uri>,
    /// Which repositories it serves; empty means all of them.
    pub content: Vec<ContentRule>,
    pub tls_verify: bool,
    /// Docker's `certs.d` layout: `*.crt` CAs, `*.cert` + `*.key` client pair.
    pub cert_dir: Option<PathBuf>,
    pub retry: RetryPolicy,
    pub freshness: Freshness,
    /// Sent to the token realm (Bearer) or the registry (Basic).
    pub credentials: Option<Credentials>,
    /// Token realm hosts allowed besides the registry's own domain.
    pub token_realms: Vec<String>,
    /// zot's periodic sync: every so often, pull what `content` names.
    pub poll_interval: Option<Duration>,
    /// `host[:port]` of the registry the URLs mirror (`mirrorOf`), when
    /// they are not the registry itself.
    pub mirror_of: Option<String>,
}

/// How long what ferry stored about a registry's tags is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    /// A tag younger than this is answered from the store; older ones are
    /// revalidated with a `HEAD`. Zero: always revalidate.
    pub tag_ttl: Duration,
    /// How old a stored tag may be and still be served when the upstream
    /// is unavailable; `None`: no limit.
    pub max_stale: Option<Duration>,
    /// Serve a stored tag even when the upstream says it no longer exists.
    pub serve_stale_on_not_found: bool,
    /// Referrers lists are cached like tags, for this long.
    pub referrers_ttl: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            tag_ttl: Duration::from_secs(300),
            max_stale: None,
            serve_stale_on_not_found: false,
            referrers_ttl: Duration::from_secs(60),
        }
    }
}

/// zot's `content` entry: repositories matching `prefix` (a glob: `*` one
/// segment, `**` any depth), stored locally under `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentRule {
    pub prefix: String,
    pub destination: Option<String>,
    pub strip_prefix: bool,
    /// zot's `tags` filter, used by periodic sync.
    pub tags: Option<TagFilter>,
}

/// Which tags periodic sync pulls: those matching `regex`, and only
/// semantic versions when `semver` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagFilter {
    pub regex: Option<String>,
    #[serde(default)]
    pub semver: bool,
}

/// Retries of connect errors, timeouts, 5xx, 408 and 429: at most
/// `max_retries` after the first try, waiting `delay * 2^n` (capped at
/// `max_delay`) with full jitter, or what `Retry-After` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RegistryConfig {
    /// A registry that serves everything from one URL, with default retries.
    pub fn single(url: Uri) -> RegistryConfig {
        RegistryConfig {
            urls: vec![url],
            content: Vec::new(),
            tls_verify: true,
            cert_dir: None,
            retry: RetryPolicy::default(),
            freshness: Freshness::default(),
            credentials: None,
            token_realms: Vec::new(),
            poll_interval: None,
            mirror_of: None,
        }
    }

    /// `host[:port]` clients know this registry by: `mirrorOf`, else the
    /// first URL's.
    pub fn client_name(&self) -> String {
        match &self.mirror_of {
            Some(name) => name.clone(),
            None => host_key(&self.urls[0]),
        }
    }

    /// Every `host[:port]` a client may name this registry by (`ns=`, path
    /// style): its URLs', `mirrorOf`, and all of Docker Hub's names when it
    /// is Docker Hub; lowercased, without repeats.
    pub fn client_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.urls.iter().map(host_key).collect();
        hosts.extend(self.mirror_of.clone());
        if hosts.iter().any(|h| DOCKER_HUB_HOSTS.contains(&h.as_str())) {
            hosts.extend(DOCKER_HUB_HOSTS.iter().map(|h| h.to_string()));
        }
        let mut seen = std::collections::HashSet::new();
        hosts.retain(|h| seen.insert(h.clone()));
        hosts
    }
}

/// `host[:port]`, lowercased, of a URL.
pub fn host_key(u: &Uri) -> String {
    let host = u.host().unwrap_or_default().to_ascii_lowercase();
    match u.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// Upstream timeouts. A stalled upstream counts as broken after `idle_read`.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub response_header: Duration,
    pub idle_read: Duration,
    /// A blob body averaging fewer bytes per second than this over an
    /// `idle_read` window counts as broken too (`ferry.minReadRate`; 0: off),
    /// so an upstream dripping one byte at a time cannot hold a fetch forever.
    pub min_read_rate: u64,
    /// An upstream connection idle in the pool this long is closed
    /// (`ferry.upstreamIdleTimeout`).
    pub pool_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            response_header: Duration::from_secs(30),
            idle_read: Duration::from_secs(30),
            min_read_rate: 1024,
            pool_idle: Duration::from_secs(90),
        }
    }
}

/// Values given on the command line; each replaces the file's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub storage: Option<PathBuf>,
    pub upstream: Option<String>,
}

/// Requests to one registry at once (`ferry.maxRequestsPerRegistry`): a
/// request beyond them waits up to `wait` (`ferry.requestQueueTimeout`)
/// for a slot, then is answered 503 with `Retry-After`, so a flood of
/// client requests (HTTP/2 streams above all) cannot open upstream
/// connections without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max: usize,
    pub wait: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max: 256,
            wait: Duration::from_secs(5),
        }
    }
}

/// Bounds on a paged list read from an upstream (a tag list, a catalog),
/// across all of its pages: `ferry.maxListSize` bytes of JSON and
/// `ferry.maxListEntries` names. One anonymous request can make ferry read
/// a list, so a list may never cost more than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimits {
    pub bytes: usize,
    pub entries: usize,
}

impl Default for ListLimits {
    fn default() -> Self {
        ListLimits {
            bytes: 16 << 20,
            entries: 100_000,
        }
    }
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(message: String) -> ConfigError {
        ConfigError(message)
    }
}

impl Config {
    /// Reads and resolves a config file, then applies the overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let file = FileConfig::parse(&text)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
        Config::resolve(file, overrides)
    }

    /// The built-in defaults with the overrides applied (no file at all).
    pub fn defaults(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::resolve(FileConfig::default(), overrides)
    }

    /// Turns a parsed file into a runnable config.
    pub fn resolve(file: FileConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        resolve::resolve(file, overrides)
    }
}

/// Parses a base URL for an upstream registry: `http` or `https`, a host, no
/// path, query or fragment.
pub fn parse_upstream_url(raw: &str) -> Result<Uri, ConfigError> {
    // Never repeat a password, not even in an error.
    let shown = redact_userinfo(raw);
    let s = shown.as_str();
    if shown != raw {
        return Err(ConfigError(format!(
            "upstream URL {s:?} must not carry credentials: put them in the registry's \
             `credentials` key or in extensions.sync.credentialsFile"
        )));
    }
    let uri: Uri = s
        .parse()
        .map_err(|e| ConfigError(format!("upstream URL {s:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(ConfigError(format!(
                "upstream URL {s:?} must start with http:// or https://"
            )))
        }
    }
    if uri.host().is_none() {
        return Err(ConfigError(format!("upstream URL {s:?} has no host")));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(ConfigError(format!(
            "upstream URL {s:?} must not have a path or query; ferry adds /v2/ itself"
        )));
    }
    Ok(uri)
}

/// `raw` with any `user:password@` in its authority replaced by `***@`.
pub fn redact_userinfo(raw: &str) -> String {
    let (scheme, rest) = match raw.split_once("://") {
        Some((a, b)) => (Some(a), b),
        None => (None, raw),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return raw.to_string();
    };
    let host = &authority[at + 1..];
    match scheme {
        Some(scheme) => format!("{scheme}://***@{host}{tail}"),
        None => format!("***@{host}{tail}"),
    }
}

/// Parses a duration as Go writes them (`90s`, `5m`, `1h30m`, `250ms`).
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s).map_err(|e| {
        ConfigError(format!(
            "{s:?} is not a duration ({e}); write it like \"90s\", \"5m\" or \"1h30m\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_an_upstream_url_are_refused_without_repeating_them() {
        let e = parse_upstream_url("http://user:hunter2@registry.example:5000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not carry credentials"), "{e}");
        assert!(e.contains("credentialsFile"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("user:"), "{e}");
        assert_eq!(
            redact_userinfo("https://a:b@h/x?y@z"),
            "https://***@h/x?y@z"
        );
        assert_eq!(redact_userinfo("https://h/x@y"), "https://h/x@y");
        assert!(parse_upstream_url("https://registry.example").is_ok());
    }

    #[test]
    fn a_cluster_behind_a_tls_listener_speaks_https_to_its_peers() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a secret of the cluster's own").unwrap();
        let cluster = |tls: &str, cert_dir: &str| {
            let text = format!(
                r#"{{"http": {{{tls}}}, "ferry": {{"cluster": {{"peers": ["a:1", "b:1"],
                "secretFile": {secret:?}{cert_dir}}}}}}}"#
            );
            let file = FileConfig::parse(&text).unwrap();
            Config::resolve(file, &Overrides::default())
        };
        let tls = r#""tls": {"cert": "c.pem", "key": "k.pem", "cacert": "ca.pem"}"#;
        let c = cluster(tls, r#", "certDir": "/etc/ferry/peers""#).unwrap();
        let (cluster_tls, listener) = (c.cluster.unwrap(), c.tls.unwrap());
        assert!(cluster_tls.https);
        assert_eq!(
            cluster_tls.cert_dir.as_deref(),
            Some(Path::new("/etc/ferry/peers"))
        );
        assert_eq!(listener.client_ca.as_deref(), Some(Path::new("ca.pem")));
        assert!(!cluster("", "").unwrap().cluster.unwrap().https);
        let e = cluster("", r#", "certDir": "/etc/ferry/peers""#)
            .unwrap_err()
            .0;
        assert!(e.contains("certDir is for peers that speak HTTPS"), "{e}");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("3h").unwrap(), Duration::from_secs(3 * 3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn upstream_urls() {
        assert!(parse_upstream_url("https://registry-1.docker.io").is_ok());
        assert!(parse_upstream_url("http://127.0.0.1:5001/").is_ok());
        assert!(parse_upstream_url("ftp://x").is_err());
        assert!(parse_upstream_url("https://x/v2/").is_err());
        assert!(parse_upstream_url("registry-1.docker.io").is_err());
    }
}
