//! Which upstream registry serves a repository, and under what name.
//!
//! A request names a repository; the [`Router`] turns it into an ordered
//! list of [`Target`]s (registry + upstream repository name) to try:
//!
//! - containerd's `?ns=<host>` selects the registry whose URL host (or
//!   `mirrorOf`) matches (`docker.io` ↔ `registry-1.docker.io` /
//!   `index.docker.io`); an `ns`
//!   naming no configured registry is refused: ferry is no open proxy.
//! - Path style (CRI-O/podman `location = "mirror:5000/docker.io"`): a first
//!   path segment naming a configured registry host selects it and is
//!   stripped.
//! - Otherwise every registry whose `content` rules match the name (or that
//!   has none) is a candidate, in config order, as zot's on-demand sync does.
//!   The registry that last served the repository goes first.
//! - `destination` / `stripPrefix` map the local name to the upstream one;
//!   Docker Hub gets `library/` in front of a one-segment name.

pub mod fingerprint;
mod glob;
mod origin;
mod peer_route;
mod slots;

use std::sync::Arc;

use http::StatusCode;

use crate::config::{Config, ConfigError, ContentRule, RegistryConfig};
use crate::oci::Digest;
use crate::oci::{ErrorCode, RegistryError, RepoName};
use crate::upstream::{worse, Bounded, Bounds, CountedBody, PassedBody, Upstream, UpstreamError};

use http::{HeaderMap, Method, Response};
use hyper::body::Incoming;
pub use origin::{Hops, Origin, PeerId, MAX_HOPS};
pub use peer_route::PeerRoute;
pub use slots::{FetchPermit, FetchSlots};

pub use glob::{literal_base, prefix_matches};

use crate::config::DOCKER_HUB_HOSTS as DOCKER_HUB;

/// Fills from cluster peers one replica runs at once per registry (fair
/// between clients, like fetch slots). They cost the upstream nothing; the
/// bound keeps one replica from asking its peers for everything at once.
pub const PEER_FILLS: usize = 16;

/// One configured upstream registry with its client.
#[derive(Debug)]
pub struct Registry {
    /// Position in the config; also its identity.
    pub index: usize,
    /// `host[:port]` of its first URL: for logs, metrics and store keys.
    pub name: String,
    pub config: RegistryConfig,
    pub upstream: Upstream,
    /// `host[:port]` of every URL and of `mirrorOf`, plus Docker Hub's
    /// aliases.
    hosts: Vec<String>,
    docker_hub: bool,
    /// One per blob download running against this registry.
    pub fetch_slots: Arc<FetchSlots>,
    /// One per fill from a cluster peer of this registry's blobs: a bound
    /// of their own ([`PEER_FILLS`]), never `fetch_slots`. A fill holding
    /// a fetch slot while it waited on its owner deadlocked replicas whose
    /// owners needed those slots for the upstream fetches their askers
    /// waited on. Deserted fills are charged to an orphan budget of the
    /// same size as the upstream downloads'.
    pub fill_slots: Arc<FetchSlots>,
}

impl Registry {
    fn new(index: usize, config: RegistryConfig, upstream: Upstream) -> Registry {
        let hosts = config.client_hosts();
        let docker_hub = hosts.iter().any(|h| DOCKER_HUB.contains(&h.as_str()));
        Registry {
            index,
            name: crate::config::host_key(&config.urls[0]),
            config,
            upstream,
            hosts,
            docker_hub,
            fetch_slots: Arc::new(FetchSlots::new(64, 4 << 30)),
            fill_slots: Arc::new(FetchSlots::new(PEER_FILLS, 4 << 30)),
        }
    }

    /// `host[:port]` of every URL of this registry, plus Docker Hub's
    /// aliases when it is Docker Hub.
    pub fn host_names(&self) -> &[String] {
        &self.hosts
    }

    fn serves_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// The upstream name for `local`, if this registry serves it.
    fn upstream_name(&self, local: &str) -> Option<String> {
        let mapped = if self.config.content.is_empty() {
            Some(local.to_string())
        } else {
            self.config
                .content
                .iter()
                .find_map(|rule| map_name(rule, local))
        }?;
        Some(self.hub_name(mapped))
    }

    /// The upstream name when the client chose this registry itself (`ns=`
    /// or path style): the name is already the registry's own, so content
    /// rules only filter, they do not map.
    fn selected_name(&self, name: &str) -> Option<String> {
        let allowed = self.config.content.is_empty()
            || self
                .config
                .content
                .iter()
                .any(|r| prefix_matches(&r.prefix, name));
        allowed.then(|| self.hub_name(name.to_string()))
    }

    fn hub_name(&self, name: String) -> String {
        if self.docker_hub && !name.contains('/') {
            format!("library/{name}")
        } else {
            name
        }
    }
}

/// Maps a local name through one content rule: strip the destination, put
/// back the prefix's literal base when `stripPrefix` removed it, and check
/// the upstream name against the prefix.
fn map_name(rule: &ContentRule, local: &str) -> Option<String> {
    let rest = match rule.destination.as_deref() {
        None => local,
        Some(d) if local == d => "",
        Some(d) => local.strip_prefix(d)?.strip_prefix('/')?,
    };
    let upstream = if rule.strip_prefix {
        let base = literal_base(&rule.prefix);
        match (base.is_empty(), rest.is_empty()) {
            (true, _) => rest.to_string(),
            (false, true) => base,
            (false, false) => format!("{base}/{rest}"),
        }
    } else {
        rest.to_string()
    };
    (!upstream.is_empty() && prefix_matches(&rule.prefix, &upstream)).then_some(upstream)
}

/// One place to ask for a repository.
#[derive(Debug, Clone)]
pub struct Target {
    pub registry: Arc<Registry>,
    /// The repository's name at that registry.
    pub upstream_name: RepoName,
}

/// A routed request: the validated local name and where to look, in order.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub local: RepoName,
    pub targets: Vec<Target>,
    /// On whose behalf: a client, ferry itself, or a cluster peer (whose
    /// request is fetched or revalidated here, never passed on).
    pub origin: Origin,
}

impl Resolved {
    /// Which upstream repositories this is (registry + upstream name of
    /// every candidate): the same local name reached with another `ns=`
    /// is another repository.
    pub fn key(&self) -> String {
        self.targets
            .iter()
            .map(|t| format!("{}/{}", t.registry.name, t.upstream_name))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Target {
    /// How a peer request names this target (see [`PeerRoute`]).
    pub fn peer_route(&self) -> String {
        PeerRoute::encode(&self.registry.name, &self.upstream_name)
    }

    /// `/v2/<upstream name>/blobs/<digest>` at this registry.
    pub fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{digest}", self.upstream_name)
    }

    /// A blob body from this registry that bypasses the store (a far range,
    /// an uncached blob): counted in its upstream bytes, and failed when it
    /// stalls for `idleReadTimeout`, drips slower than `minReadRate`, or
    /// brings more than `limit` bytes.
    pub fn passed_body(&self, digest: &Digest, body: Incoming, limit: u64) -> PassedBody {
        let upstream = &self.registry.upstream;
        let counted = CountedBody::new(body, upstream.stats().bytes.clone());
        let what = format!("upstream {}", upstream.url(&self.blob_path(digest)));
        let timeouts = upstream.timeouts();
        let bounds = Bounds {
            idle: timeouts.idle_read,
            min_rate: timeouts.min_read_rate,
            limit,
        };
        Bounded::new(counted, bounds, what)
    }

    /// A blob request at this registry; any status but `want` is an error
    /// that names it (so a 404 lets the next registry be asked).
    pub async fn blob(
        &self,
        method: Method,
        digest: &Digest,
        headers: HeaderMap,
        want: StatusCode,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = self.blob_path(digest);
        let resp = self
            .registry
            .upstream
            .request(method, &path, headers)
            .await?;
        if resp.status() != want {
            return Err(UpstreamError::Status {
                url: self.registry.upstream.url(&path).to_string(),
                status: resp.status(),
            });
        }
        Ok(resp)
    }
}

impl Resolved {
    /// Asks each candidate registry in turn: the first success wins, with
    /// the registry that gave it; else the most telling failure (anything
    /// says more than "not found here").
    pub async fn first<'a, T, F, Fut>(
        &'a self,
        mut attempt: F,
    ) -> Result<(T, &'a Target), UpstreamError>
    where
        F: FnMut(&'a Target) -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        let mut failure = None;
        for target in &self.targets {
            match attempt(target).await {
                Ok(v) => return Ok((v, target)),
                Err(e) => {
                    tracing::debug!(registry = %target.registry.name, error = %e, "candidate registry did not serve it");
                    failure = Some(worse(failure, e));
                }
            }
        }
        Err(failure.expect("a resolved repository has a target"))
    }
}

/// Repository names whose registry is remembered (the most used stay).
const REMEMBERED_NAMES: usize = 16_384;

/// The routing table plus what it learned about repositories.
#[derive(Debug)]
pub struct Router {
    registries: Vec<Arc<Registry>>,
    /// Local name → the registry that served its last manifest or blob;
    /// bounded, since clients choose the names.
    remembered: quick_cache::sync::Cache<RepoName, usize>,
}

impl Router {
    /// Builds one upstream client per configured registry.
    /// Fails when a registry's TLS material (`certDir`) cannot be loaded.
    pub fn new(config: &Config) -> Result<Router, ConfigError> {
        let registries = config
            .registries
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let upstream = Upstream::for_registry(
                    r,
                    config.timeouts,
                    config.max_retry_wait,
                    config.request_limits,
                )?;
                let mut registry = Registry::new(i, r.clone(), upstream);
                registry.fetch_slots = Arc::new(FetchSlots::new(
                    config.max_fetches_per_registry,
                    config.orphaned_bytes_per_registry,
                ));
                registry.fill_slots = Arc::new(FetchSlots::new(
                    PEER_FILLS,
                    config.orphaned_bytes_per_registry,
                ));
                Ok(Arc::new(registry))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Router {
            registries,
            remembered: quick_cache::sync::Cache::new(REMEMBERED_NAMES),
        })
    }

    /// Every registry's routing fingerprint, for the readiness probe.
    pub fn fingerprints(&self) -> fingerprint::Fingerprints {
        fingerprint::Fingerprints::new(
            self.registries
                .iter()
                .map(|r| (r.name.clone(), fingerprint::of(&r.name, &r.config))),
        )
    }

    pub fn registries(&self) -> &[Arc<Registry>] {
        &self.registries
    }

    /// Routes the raw name of a request (still unvalidated) with its `ns`.
    pub fn resolve(
        &self,
        raw_name: &str,
        ns: Option<&str>,
        origin: Origin,
    ) -> Result<Resolved, RegistryError> {
        let (selected, name) = if let Some(ns) = ns {
            let r = self.registries.iter().find(|r| r.serves_host(ns)).ok_or_else(|| {
                RegistryError::not_found(
                    ErrorCode::NameUnknown,
                    format!("ns={ns:?} names no configured registry; ferry only fetches from its configured registries"),
                )
            })?;
            (Some(r.clone()), raw_name)
        } else {
            match raw_name.split_once('/') {
                Some((first, rest)) => {
                    match self.registries.iter().find(|r| r.serves_host(first)) {
                        Some(r) => (Some(r.clone()), rest),
                        None => (None, raw_name),
                    }
                }
                None => (None, raw_name),
            }
        };
        let local = RepoName::parse(name)
            .map_err(|m| RegistryError::bad_request(ErrorCode::NameInvalid, m.to_string()))?;
        let pool: Vec<&Arc<Registry>> = match &selected {
            Some(r) => vec![r],
            None => self.registries.iter().collect(),
        };
        let mut targets: Vec<Target> = pool
            .into_iter()
            .filter_map(|r| {
                let up = match selected {
                    Some(_) => r.selected_name(local.as_str())?,
                    None => r.upstream_name(local.as_str())?,
                };
                let upstream_name = RepoName::parse(&up).ok()?;
                Some(Target {
                    registry: r.clone(),
                    upstream_name,
                })
            })
            .collect();
        if targets.is_empty() {
            return Err(RegistryError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                format!("no configured registry serves repository {local}"),
            ));
        }
        if let Some(i) = self.remembered.get(&local) {
            if let Some(pos) = targets.iter().position(|t| t.registry.index == i) {
                let t = targets.remove(pos);
                targets.insert(0, t);
            }
        }
        Ok(Resolved {
            local,
            targets,
            origin,
        })
    }

    /// The repository a cluster peer routed for `raw_name`, on behalf of
    /// `origin` (the peer and its client; see [`PeerRoute`]).
    pub fn resolve_routed(
        &self,
        raw_name: &str,
        routed: &str,
        origin: Origin,
    ) -> Result<Resolved, RegistryError> {
        let bad = |m: &str| {
            RegistryError::bad_request(
                ErrorCode::NameInvalid,
                format!("peer repository {routed:?}: {m}"),
            )
        };
        let route = PeerRoute::parse(routed).map_err(|m| bad(&m))?;
        let registry = self
            .registries
            .iter()
            .find(|r| r.name == route.registry)
            .ok_or_else(|| {
                // Not a 404, which an asking replica takes as the
                // upstream's word that the tag does not exist.
                RegistryError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    ErrorCode::NameUnknown,
                    format!("peer repository {routed:?}: this replica has no registry {}; fetch it from your own upstream", route.registry),
                )
            })?;
        let local = RepoName::parse(raw_name)
            .map_err(|m| RegistryError::bad_request(ErrorCode::NameInvalid, m.to_string()))?;
        Ok(Resolved {
            local,
            targets: vec![Target {
                registry: registry.clone(),
                upstream_name: route.upstream_name,
            }],
            origin,
        })
    }

    /// Remembers that `target` served `repo`, so its blobs go there first
    /// for this replica's clients. A peer's request routed its own way
    /// (with its own config): it is not this replica's choice, and taking it
    /// as one sent this replica's clients to the peer's registry.
    pub fn remember_served(&self, repo: &Resolved, target: &Target) {
        if !repo.origin.is_peer() {
            self.remember(&repo.local, target.registry.index);
        }
    }

    /// Remembers that `registry` served `local`, so its blobs go there first.
    pub fn remember(&self, local: &RepoName, registry: usize) {
        if self.remembered.get(local) != Some(registry) {
            self.remembered.insert(local.clone(), registry);
        }
    }

    /// The routing table as text, for `ferry check-config`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for r in &self.registries {
            let c = &r.config;
            out.push_str(&format!("registry {} ({})\n", r.index, r.name));
            for (i, u) in c.urls.iter().enumerate() {
                let role = if i == 0 { "primary" } else { "failover" };
                out.push_str(&format!("  url      {u} ({role})\n"));
            }
            if c.content.is_empty() {
                out.push_str("  serves   every repository");
                if r.docker_hub {
                    out.push_str(" (one-segment names get library/)");
                }
                out.push('\n');
            }
            for rule in &c.content {
                let local = match &rule.destination {
                    Some(d) => format!("{d}/..."),
                    None => "same name".to_string(),
                };
                out.push_str(&format!(
                    "  serves   {} -> local {local}{}\n",
                    rule.prefix,
                    if rule.strip_prefix {
                        " (prefix stripped)"
                    } else {
                        ""
                    }
                ));
            }
            out.push_str(&format!("  ns       {}\n", r.hosts.join(", ")));
            if let Some(c) = &c.credentials {
                out.push_str(&format!(
                    "  auth     as {} (password not shown)\n",
                    c.username
                ));
            }
            if let Some(d) = &c.cert_dir {
                out.push_str(&format!("  certDir  {}\n", d.display()));
            }
            let tls = if c.urls.iter().all(|u| u.scheme_str() == Some("http")) {
                "plain HTTP".to_string()
            } else {
                format!("tlsVerify {}", c.tls_verify)
            };
            out.push_str(&format!(
                "  retries  {} (delay {}, max {}), {tls}\n",
                c.retry.max_retries,
                humantime::format_duration(c.retry.delay),
                humantime::format_duration(c.retry.max_delay),
            ));
        }
        out.push_str("order    a repository tries every registry that serves it, in the order above; the one that served it last goes first\n");
        out
    }
}

#[cfg(test)]
mod tests;
