//! The config file's serde model: zot's keys plus a `ferry` section. Its
//! resolution into a [`Config`](super::Config) is `resolve`'s.
//!
//! Every struct denies unknown fields; parsing goes through
//! `serde_path_to_error` so an error names the key's full path, e.g.
//! `extensions.sync.registries[0].url: unknown field`.

use std::path::PathBuf;

use serde::Deserialize;

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
    pub tls: Option<TlsSection>,
    pub auth: Option<super::access::AuthSection>,
    pub access_control: Option<super::access::AccessControlSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// zot's `cacert`: every client must show a certificate from these CAs
    /// (mutual TLS).
    pub cacert: Option<PathBuf>,
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
    /// The shared tier (zot's S3 block as it is).
    pub storage_driver: Option<super::storage_driver::StorageDriverSection>,
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
    /// ferry: how long a tag is answered from the store.
    #[serde(rename = "tagTTL")]
    pub tag_ttl: Option<String>,
    /// ferry: the oldest stored tag served while the upstream is down.
    pub max_stale: Option<String>,
    /// ferry: serve a stored tag even when the upstream says 404.
    pub serve_stale_on_not_found: Option<bool>,
    /// ferry: how long a referrers list is cached.
    #[serde(rename = "referrersTTL")]
    pub referrers_ttl: Option<String>,
    /// ferry: credentials for this registry (overrides credentialsFile).
    pub credentials: Option<super::Credentials>,
    /// ferry: token realm hosts trusted besides the registry's own domain.
    pub token_realms: Option<Vec<String>>,
    /// ferry: the registry these URLs mirror (`docker.io`), when they are
    /// not the registry itself; clients name it in `ns=` and path style.
    pub mirror_of: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContentSection {
    pub prefix: String,
    pub destination: Option<String>,
    pub strip_prefix: Option<bool>,
    pub tags: Option<super::TagFilter>,
}

/// ferry's own keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FerrySection {
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub idle_read_timeout: Option<String>,
    /// How long an idle upstream connection stays in the pool ("90s").
    pub upstream_idle_timeout: Option<String>,
    /// Slowest acceptable upstream body, per second ("1KiB").
    pub min_read_rate: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub drain_delay: Option<String>,
    pub max_manifest_size: Option<usize>,
    /// An upstream tag list or catalog, all pages together ("16MiB").
    pub max_list_size: Option<String>,
    /// Names in an upstream tag list or catalog, all pages together.
    pub max_list_entries: Option<usize>,
    /// Requests to one registry at once (manifests, tags, HEADs, blobs).
    pub max_requests_per_registry: Option<usize>,
    /// How long a request waits for one of those slots before a 503.
    pub request_queue_timeout: Option<String>,
    pub max_retry_wait: Option<String>,
    pub far_range_distance: Option<u64>,
    /// Pulls of an upstream's stated budget that prefetch and sync leave
    /// for clients.
    pub rate_limit_reserve: Option<u64>,
    /// Hold a range of a blob still downloading until the blob is verified.
    pub verified_ranges: Option<bool>,
    /// Size cap of the store, e.g. "200GiB".
    pub max_size: Option<String>,
    /// Evict blobs not read for this long.
    pub max_idle: Option<String>,
    /// Keep this much of the store's filesystem free, e.g. "1GiB".
    pub min_free_space: Option<String>,
    pub eviction_interval: Option<String>,
    /// The shared tier's size cap ("2TiB").
    pub shared_max_size: Option<String>,
    pub shared_check_interval: Option<String>,
    /// Scrub read rate, bytes per second, e.g. "100MiB".
    pub scrub_rate: Option<String>,
    pub scrub_quarantine: Option<bool>,
    /// Static bearer tokens for client access control.
    pub access_tokens: Option<Vec<super::access::AccessToken>>,
    /// Bearer tokens for the operations API (`/ferry/v1/prewarm`).
    pub admin_tokens: Option<Vec<super::Secret>>,
    /// Images eviction never removes (`repo:tag`, tag globs, `repo@digest`).
    pub pin: Option<Vec<String>>,
    /// A file of admin tokens, one per line.
    pub admin_tokens_file: Option<std::path::PathBuf>,
    pub max_connections: Option<usize>,
    /// Requests at once on one HTTP/2 connection.
    pub max_concurrent_streams: Option<u32>,
    /// Request line and headers, as a size ("64KiB").
    pub max_header_size: Option<String>,
    pub header_timeout: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    /// `host:port` for `/metrics` apart from the main listener.
    pub metrics_address: Option<String>,
    pub tls_reload_interval: Option<String>,
    /// Upstream blob downloads at once per registry; more wait their turn.
    pub max_fetches_per_registry: Option<usize>,
    /// Bytes that downloads nobody reads may still bring in, per registry.
    pub orphaned_bytes_per_registry: Option<String>,
    /// The replicas that share upstream fetches.
    pub cluster: Option<super::ClusterSection>,
    /// How long an upstream "no such blob" is believed without asking again.
    #[serde(rename = "absentTTL")]
    pub absent_ttl: Option<String>,
    /// The largest blob accepted ("64GiB").
    pub max_blob_size: Option<String>,
}

impl FileConfig {
    /// Parses JSON, naming the path of any unknown or mistyped key.
    pub fn parse(text: &str) -> Result<FileConfig, super::ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            super::ConfigError(super::plain_words::explain(text, &path, &message, homes_of))
        })
    }
}

/// Where else `key` is a key: each section that has it, as a dotted path
/// (`[]` for a list's items). The sections' keys come from their own
/// types (what serde lists for an unknown key), so this never goes stale.
fn homes_of(key: &str) -> Vec<String> {
    use super::access::{AccessControlSection, AuthSection, HtpasswdSection, Policy};
    use super::storage_driver::StorageDriverSection;
    use super::ClusterSection;
    let sections: [(&str, Vec<String>); 15] = [
        ("", keys_of::<FileConfig>()),
        ("http", keys_of::<HttpSection>()),
        ("http.tls", keys_of::<TlsSection>()),
        ("http.auth", keys_of::<AuthSection>()),
        ("http.auth.htpasswd", keys_of::<HtpasswdSection>()),
        ("http.accessControl", keys_of::<AccessControlSection>()),
        (
            "http.accessControl.repositories.<glob>.policies[]",
            keys_of::<Policy>(),
        ),
        ("storage", keys_of::<StorageSection>()),
        ("storage.storageDriver", keys_of::<StorageDriverSection>()),
        ("log", keys_of::<LogSection>()),
        ("extensions.scrub", keys_of::<ScrubSection>()),
        ("extensions.sync", keys_of::<SyncSection>()),
        ("extensions.sync.registries[]", keys_of::<RegistrySection>()),
        ("ferry", keys_of::<FerrySection>()),
        ("ferry.cluster", keys_of::<ClusterSection>()),
    ];
    sections
        .iter()
        .filter(|(_, keys)| keys.iter().any(|k| k == key))
        .map(|(path, _)| match *path {
            "" => key.to_string(),
            p => format!("{p}.{key}"),
        })
        .collect()
}

/// The keys of the section type `T`: serde names them when it meets one
/// that is not among them.
fn keys_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
    let Err(e) = serde_json::from_str::<T>(r#"{"\u0000": 0}"#) else {
        return Vec::new();
    };
    let message = e.to_string();
    let Some((_, rest)) = message.split_once("expected ") else {
        return Vec::new();
    };
    let rest = rest.split(" at line").next().unwrap_or(rest);
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}
