//! [`Coordinator`]: the state behind every blob request, held once — the
//! in-flight map, the store and its caretaker, the memory cache, the
//! memberships, the absent cache, the shared tier and the cluster — and the
//! questions about it that every path asks (does this blob belong to this
//! repository, is it here, is the shared tier holding it). The paths
//! themselves are the sibling modules: [`super::answer`] and
//! [`super::open`] for requests, [`super::fetch`] and [`super::fill`] for
//! the fetch task.

use std::sync::Arc;

use dashmap::DashMap;
use http::{Method, StatusCode};

use super::flight::{Flight, LieReport, Progress};
use super::{absent, hot, membership};
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::routing::{Resolved, Router, Target};
use crate::shared::tiered::Tiered;
use crate::store::{self, FsStore};

/// The shared state behind every blob request.
#[derive(Debug)]
pub struct Coordinator {
    pub(super) store: Arc<FsStore>,
    pub(super) router: Router,
    pub(super) inflight: DashMap<Digest, Arc<Flight>>,
    pub(super) lifecycle: Arc<Lifecycle>,
    pub(super) clock: Clock,
    pub(super) hot: Arc<hot::HotCache>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) membership: membership::Membership,
    /// The local store and the shared tier as one place for small records
    /// (manifests, markers).
    pub(super) tiers: Tiered,
    /// Blobs the upstream recently said a repository does not have.
    pub(super) absent: absent::Absent,
    /// The longest blob ferry accepts (`ferry.maxBlobSize`): an upstream
    /// that announces more, or sends more without announcing, is cut off.
    pub(super) max_blob_size: u64,
    /// The bucket several replicas share, if configured.
    pub(super) shared: Option<Arc<crate::shared::Shared>>,
    /// The replicas that share fetches, if configured.
    pub(super) cluster: Option<Arc<Cluster>>,
    /// The peers each blob is being sent to (see `pace.rs`, `tree.rs`).
    pub(super) paces: super::pace::Paces,
}

/// How fetches behave, from the config.
pub struct FetchSettings {
    /// `ferry.absentTTL`.
    pub absent_ttl: std::time::Duration,
    /// `ferry.maxBlobSize`.
    pub max_blob_size: u64,
    /// The shared tier (`storage.storageDriver`).
    pub shared: Option<Arc<crate::shared::Shared>>,
    /// The cluster (`ferry.cluster`).
    pub cluster: Option<Arc<Cluster>>,
}

impl Coordinator {
    pub fn new(
        store: Arc<FsStore>,
        router: Router,
        lifecycle: Arc<Lifecycle>,
        clock: Clock,
        metrics: Arc<Metrics>,
        settings: FetchSettings,
    ) -> Arc<Coordinator> {
        let FetchSettings {
            absent_ttl,
            max_blob_size,
            shared,
            cluster,
        } = settings;
        let hot = Arc::new(hot::HotCache::new(64 << 20));
        let tiers = Tiered::new(store.clone(), shared.clone());
        // Every blob the store removes (evicted, damaged, scrubbed) leaves
        // the index and the memory cache with it, whoever removed it.
        let heard = store.on_removed({
            let (lifecycle, hot) = (lifecycle.clone(), hot.clone());
            move |digest| {
                lifecycle.index.remove(digest);
                hot.remove(digest);
            }
        });
        if !heard {
            tracing::error!("the store already had a removal listener; its index may go stale");
        }
        Arc::new(Coordinator {
            store,
            router,
            inflight: DashMap::new(),
            lifecycle,
            clock,
            metrics,
            membership: membership::Membership::new(tiers.clone()),
            tiers,
            shared,
            cluster,
            absent: absent::Absent::new(absent_ttl),
            max_blob_size,
            hot,
            paces: Default::default(),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// True when a fetch of `digest` is running.
    pub fn is_in_flight(&self, digest: &Digest) -> bool {
        self.inflight.contains_key(digest)
    }

    pub fn store(&self) -> &Arc<FsStore> {
        &self.store
    }

    /// The local store and the shared tier, for small records.
    pub fn tiers(&self) -> &Tiered {
        &self.tiers
    }

    /// The shared tier, when replicas share a bucket.
    pub fn shared(&self) -> Option<&Arc<crate::shared::Shared>> {
        self.shared.as_ref()
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Number of upstream blob fetches running now.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Records that `digests` belong to `target`'s repository (see the
    /// `membership` module).
    pub async fn link(&self, target: &Target, digests: Vec<Digest>) {
        self.membership.record(target, digests).await
    }

    /// The target of `repo` that `digest` is known to belong to, if any.
    pub async fn belongs<'a>(&self, repo: &'a Resolved, digest: &Digest) -> Option<&'a Target> {
        self.membership.find(repo, digest).await
    }

    /// Serving stored or in-flight content of `digest` under `repo` is
    /// allowed only once it is known to belong there; otherwise the
    /// upstream is asked (`HEAD` under this repository's name) and its
    /// yes is recorded. A no is `BLOB_UNKNOWN`, exactly as if the blob were
    /// not cached, so nothing about other repositories' content leaks.
    pub async fn confirm_blob(
        &self,
        repo: &Resolved,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        if self.belongs(repo, digest).await.is_some() {
            return Ok(());
        }
        let (_, target) = repo
            .first(|t| t.blob(Method::HEAD, digest, http::HeaderMap::new(), StatusCode::OK))
            .await
            .map_err(|e| e.to_registry_error(ErrorCode::BlobUnknown))?;
        tracing::debug!(%digest, repo = %repo.local, registry = %target.registry.name,
            "upstream confirmed a cached blob for this repository");
        self.link(target, vec![digest.clone()]).await;
        Ok(())
    }

    /// Remembers that the upstream has no `digest` for `repo`.
    pub(crate) fn absent_upstream(&self, repo: &Resolved, digest: &Digest) {
        self.absent.remember(repo.key(), digest, &self.clock);
    }

    /// `BLOB_UNKNOWN` when the upstream said so within `absentTTL`.
    pub(super) fn check_absent(
        &self,
        repo: &Resolved,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        if !self.absent.is_absent(repo.key(), digest, &self.clock) {
            return Ok(());
        }
        self.metrics.absent_hits.inc();
        Err(RegistryError::not_found(
            ErrorCode::BlobUnknown,
            format!(
                "blob {digest} is unknown to {}'s upstream (asked moments ago)",
                repo.local
            ),
        ))
    }

    /// Every fetch in flight now.
    pub fn flights(&self) -> Vec<Arc<Flight>> {
        self.inflight.iter().map(|f| f.value().clone()).collect()
    }

    /// The in-flight fetch of `digest`, if there is one.
    pub fn flight(&self, digest: &Digest) -> Option<Arc<Flight>> {
        self.inflight.get(digest).map(|f| f.clone())
    }

    /// Another replica caught `peer` sending bytes that are not `digest`:
    /// a fill of it here that took that peer's bytes is poisoned, one that
    /// took its answer does not start, so a client that
    /// retries here (a balancer spreads retries over the replicas) starts
    /// a fresh fill rather than joining the doomed one (see
    /// [`Flight::lie_reported`]). Says what it did to the fill here.
    pub fn peer_lied(&self, peer: &str, digest: &Digest) -> LieReport {
        match self.flight(digest) {
            Some(f) => f.lie_reported(peer),
            None => LieReport::NoFill,
        }
    }

    /// How many bytes of `digest` this replica has: a stored blob's all,
    /// what a download in flight has received so far (0 before its first
    /// byte); `None` when it neither holds nor receives it. A peer whose
    /// transfer from this replica went silent asks, and so does one whose
    /// owner died (see `Cluster::progress`).
    pub async fn have(&self, digest: &Digest) -> Option<u64> {
        if let Some(flight) = self.flight(digest) {
            return match flight.progress() {
                Progress::Streaming { written, .. } => Some(written),
                Progress::Verified { size } | Progress::Done { size } => Some(size),
                Progress::Connecting => Some(0),
                Progress::Failed(_) => None,
            };
        }
        let (store, d) = (self.store.clone(), digest.clone());
        store::blocking(move || store.blob_len(&d))
            .await
            .ok()
            .flatten()
    }

    /// True when the blob is in the local store or being fetched here.
    pub async fn is_local(&self, digest: &Digest) -> bool {
        if self.hot.get(digest).is_some() || self.inflight.contains_key(digest) {
            return true;
        }
        let (store, d) = (self.store.clone(), digest.clone());
        store::blocking(move || Ok(store.blob_len(&d)?.is_some()))
            .await
            .unwrap_or(false)
    }

    /// The blob's size in the shared tier, when it is there and may be
    /// served under `repo` (its membership is recorded locally or in the
    /// tier, or the upstream confirms it).
    pub async fn shared_blob(&self, repo: &Resolved, digest: &Digest) -> Option<u64> {
        let shared = self.shared.as_ref()?;
        let size = match shared.blob_size(digest).await {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "shared tier unavailable");
                return None;
            }
        };
        if size > self.max_blob_size {
            return None;
        }
        self.confirm_blob(repo, digest).await.ok()?;
        Some(size)
    }

    /// Removes `flight` from the in-flight map, unless a newer fetch of the
    /// same digest has replaced it.
    pub(super) fn finish(&self, flight: &Arc<Flight>) {
        self.inflight
            .remove_if(&flight.digest, |_, v| Arc::ptr_eq(v, flight));
    }
}
