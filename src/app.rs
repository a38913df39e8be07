//! The service layer: ferry's application state and what a request can ask
//! of it, with no HTTP in sight.
//!
//! [`App`] is built once from the config (store, lifecycle, router,
//! coordinator, metrics, access control) and shared by everything that
//! serves: the HTTP adapter ([`crate::http`]), the background tasks
//! ([`tasks`]), the periodic sync and `ferry prefetch`. Its children own one
//! concern each: [`manifests`] (by digest: stored or fetched and verified),
//! [`tags`] (freshness, shared revalidation, serving stale), [`referrers`],
//! [`listing`] (tags and catalog) and [`authorize`] (the one decision of who
//! may read which repository).

pub mod authorize;
mod catalog;
mod error;
mod from_peer;
pub mod listing;
pub mod manifests;
pub mod pins;
pub mod prefetch;
pub mod prewarm;
pub mod referrers;
pub mod tags;
pub mod tasks;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use dashmap::DashMap;

use crate::access::Access;
use crate::clock::Clock;
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::lifecycle::{Lifecycle, SpaceProbe};
use crate::metrics::Metrics;
use crate::oci::{Reference, RegistryError};
use crate::routing::{Origin, Resolved, Router};
use crate::store::{self, FsStore};

pub use error::Error;
pub use manifests::{Manifest, Resolution};

/// Everything a request needs, built once.
#[derive(Debug)]
pub struct App {
    pub config: Arc<Config>,
    pub coordinator: Arc<Coordinator>,
    /// The replicas that share fetches (`ferry.cluster`), if configured:
    /// who owns a blob or a tag, and the signed requests to them.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Wall-clock time for tag freshness; tests use a manual one.
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// Set at shutdown: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// When this app was built (the status page's uptime).
    pub started: std::time::Instant,
    /// Tag revalidations in flight, shared by concurrent requests.
    revalidations: DashMap<String, tags::SharedRevalidation>,
    /// Client access control, when configured.
    pub access: Option<Access>,
    /// The store's repository list, walked once for concurrent requests.
    catalog: catalog::Catalog,
    /// Prewarm jobs (`/ferry/v1/prewarm`), the last few.
    pub prewarms: prewarm::Prewarms,
}

/// What tests may swap: the clock, and the free-space probe.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub clock: Clock,
    pub space: Option<SpaceProbe>,
}

impl App {
    /// Opens the store (cleaning up after a crash, indexing what it holds)
    /// and builds the upstream clients.
    pub fn new(config: Config) -> Result<Arc<App>, Error> {
        App::with_hooks(config, Hooks::default())
    }

    /// As [`App::new`], with a given clock and space probe.
    pub fn with_hooks(config: Config, hooks: Hooks) -> Result<Arc<App>, Error> {
        let clock = hooks.clock;
        let (store, recovery) = FsStore::open(&config.storage_root)?;
        if recovery.temp_files_removed > 0 {
            tracing::info!(removed = recovery.temp_files_removed, root = %config.storage_root.display(),
                "removed temp files left by an earlier run");
        }
        let router = Router::new(&config)?;
        let metrics = Arc::new(Metrics::default().with_registries(&router));
        let lifecycle = Arc::new(Lifecycle::open(
            &store,
            config.lifecycle.clone(),
            hooks.space,
            metrics.clone(),
        )?);
        tracing::info!(
            blobs = lifecycle.index.len(),
            bytes = lifecycle.index.total(),
            "store indexed"
        );
        let access = match &config.access {
            Some(a) => Some(Access::load(a)?),
            None => None,
        };
        let shared = match &config.shared {
            Some(s) => Some(Arc::new(crate::shared::Shared::open(s)?)),
            None => None,
        };
        let cluster = config.cluster.as_ref().map(|c| {
            // A peer may wait for its own upstream before it answers: as
            // long as an upstream request may take.
            let answer = config.timeouts.connect + config.timeouts.response_header;
            crate::cluster::Cluster::new(
                c,
                config.listen,
                answer,
                metrics.cluster.clone(),
                router.fingerprints(),
            )
            .map(Arc::new)
        });
        let cluster = cluster.transpose()?;
        let coordinator = Coordinator::new(
            Arc::new(store),
            router,
            lifecycle,
            clock.clone(),
            metrics.clone(),
            crate::coordinator::FetchSettings {
                absent_ttl: config.absent_ttl,
                max_blob_size: config.max_blob_size,
                shared,
                cluster: cluster.clone(),
            },
        );
        Ok(Arc::new(App {
            config: Arc::new(config),
            coordinator,
            cluster,
            clock,
            metrics,
            draining: AtomicBool::new(false),
            started: std::time::Instant::now(),
            revalidations: DashMap::new(),
            access,
            catalog: Default::default(),
            prewarms: Default::default(),
        }))
    }

    /// Routes a repository name, honouring containerd's `?ns=`.
    pub fn resolve(
        &self,
        name: &str,
        ns: Option<&str>,
        origin: Origin,
    ) -> Result<Resolved, RegistryError> {
        self.coordinator.router().resolve(name, ns, origin)
    }

    /// The repository a cluster peer routed (see
    /// [`Router::resolve_routed`]).
    pub fn resolve_routed(
        &self,
        name: &str,
        routed: &str,
        origin: Origin,
    ) -> Result<Resolved, RegistryError> {
        self.coordinator
            .router()
            .resolve_routed(name, routed, origin)
    }

    /// A manifest as a client would get it (by digest, or by tag with the
    /// freshness rules), accepting every manifest type.
    pub async fn manifest(
        self: &Arc<Self>,
        repo: &Resolved,
        reference: &Reference,
    ) -> Result<Manifest, RegistryError> {
        let accept = crate::oci::default_manifest_accept();
        Ok(self
            .resolve_manifest(repo, reference, &accept)
            .await?
            .manifest)
    }

    /// A manifest by digest or by tag for a client that accepts `accept`.
    pub async fn resolve_manifest(
        self: &Arc<Self>,
        repo: &Resolved,
        reference: &Reference,
        accept: &str,
    ) -> Result<Resolution, RegistryError> {
        match reference {
            Reference::Digest(digest) => {
                let (manifest, cache) = manifests::by_digest(self, repo, digest, accept).await?;
                Ok(Resolution {
                    manifest,
                    cache,
                    warning: None,
                })
            }
            Reference::Tag(tag) => tags::resolve(self, repo, tag, accept).await,
        }
    }

    /// Readiness: every store directory takes a new file, and no write
    /// failed in the last seconds (a fetch's write can fail where the check
    /// does not: a full disk, a read-only subdirectory).
    pub async fn store_writable(&self) -> Result<(), String> {
        let store = self.coordinator.store().clone();
        store::blocking(move || store.check_writable())
            .await
            .map_err(|e| e.to_string())?;
        match self.coordinator.lifecycle().space.write_failure() {
            Some(e) => Err(format!("a write failed in the last seconds: {e}")),
            None => Ok(()),
        }
    }

    /// Sets the gauges that describe the present (fetches in flight, the
    /// store's size) before a scrape. Counters are counted where things
    /// happen, never here.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        let lc = self.coordinator.lifecycle();
        m.process.refresh();
        m.in_flight.set(self.coordinator.in_flight() as i64);
        m.store_bytes.set(lc.index.total() as i64);
        m.store_blobs.set(lc.index.len() as i64);
        m.store_max_bytes
            .set(lc.config.max_size.unwrap_or(0) as i64);
        let damaged = lc
            .last_scrub
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.damaged.len()));
        m.scrub_damaged_last.set(damaged.unwrap_or(0) as i64);
    }
}
