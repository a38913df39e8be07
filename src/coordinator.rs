//! The request coordinator: one upstream fetch per blob, shared by every
//! client that wants it.
//!
//! A blob request finds the blob in the store (a hit), or joins the fetch
//! already in flight for its digest, or starts that fetch. The fetch is a
//! task detached from every client ([`fetch`]); it streams the upstream body
//! into a temp file while hashing it and publishes its [`Progress`] on a
//! `watch` channel. Every client, the first as much as a late one, reads
//! the temp file at its own offset and follows the growing tail
//! ([`reader`]), so a slow or vanished client costs nothing to the others
//! and memory per client is one read buffer. The in-flight entry is removed
//! only after the blob was published (verified, fsynced, renamed) or the
//! fetch failed, so a later request sees either the stored blob or nothing.

mod absent;
mod answer;
mod fetch;
mod fill;
mod flight;
mod handle;
mod holdback;
mod hot;
mod mapping;
mod membership;
mod mirror;
mod passthrough;
mod peer_fill;
mod reader;
mod spool;
mod transfer;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::{Method, StatusCode};

use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::lifecycle::Lifecycle;
use crate::metrics::{CacheStatus, Metrics};
use crate::oci::{Digest, ErrorCode, Hasher, RegistryError};
use crate::routing::{Requester, Resolved, Router, Target};
use crate::store::{self, FsStore};
use crate::upstream::headers::content_length;

pub use answer::{BlobAnswer, BlobBody, RangePolicy};
pub use flight::{FetchFailure, Flight, Progress};
pub use handle::BlobHandle;
pub use reader::{BlobStream, READ_CHUNK};

/// Blobs up to this size are read whole (and verified) when opened, and
/// then kept in memory.
const INLINE_MAX: u64 = 2 * 1024 * 1024;

/// What the store holds for a digest.
enum Stored {
    /// A small blob, read whole and verified.
    Small(Bytes),
    /// A larger blob, opened.
    File(File, u64),
    /// A small blob that failed its digest (and was removed).
    Damaged,
}

/// The shared state behind every blob request.
#[derive(Debug)]
pub struct Coordinator {
    store: Arc<FsStore>,
    router: Router,
    inflight: DashMap<Digest, Arc<Flight>>,
    lifecycle: Arc<Lifecycle>,
    clock: Clock,
    hot: Arc<hot::HotCache>,
    metrics: Arc<Metrics>,
    membership: membership::Membership,
    /// Blobs the upstream recently said a repository does not have.
    absent: absent::Absent,
    /// The longest blob ferry accepts (`ferry.maxBlobSize`): an upstream
    /// that announces more, or sends more without announcing, is cut off.
    max_blob_size: u64,
    /// The bucket several replicas share, if configured.
    shared: Option<Arc<crate::shared::Shared>>,
    /// The replicas that share fetches, if configured.
    cluster: Option<Arc<Cluster>>,
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
            membership: membership::Membership::new(shared.clone()),
            shared,
            cluster,
            absent: absent::Absent::new(absent_ttl),
            max_blob_size,
            hot,
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

    /// The shared tier, when replicas share a bucket.
    pub fn shared(&self) -> Option<&Arc<crate::shared::Shared>> {
        self.shared.as_ref()
    }

    /// The cluster, when ferry runs as one of several replicas.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
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
        self.membership.record(&self.store, target, digests).await
    }

    /// The target of `repo` that `digest` is known to belong to, if any.
    pub async fn belongs<'a>(&self, repo: &'a Resolved, digest: &Digest) -> Option<&'a Target> {
        self.membership.find(&self.store, repo, digest).await
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
    fn check_absent(&self, repo: &Resolved, digest: &Digest) -> Result<(), RegistryError> {
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

    /// Opens a blob for reading under `repo`: from memory or the store, or
    /// by joining or starting its upstream fetch. Returns once the upstream
    /// has answered (so the size is known) or the fetch failed.
    ///
    /// Access is decided here: content this request did not fetch itself
    /// (a stored blob, or a fetch started for another repository) is
    /// answered only once it is known to belong to `repo` (see
    /// [`Coordinator::confirm_blob`]).
    pub async fn open_blob(
        self: &Arc<Self>,
        repo: &Resolved,
        digest: &Digest,
        requester: Requester,
    ) -> Result<BlobHandle, RegistryError> {
        let handle = self.open_any(repo, digest, requester).await?;
        let foreign = match &handle {
            BlobHandle::Stored { .. } | BlobHandle::Memory { .. } => true,
            BlobHandle::InFlight { flight, .. } => flight.repo != repo.key(),
            BlobHandle::Uncached { .. } => false,
        };
        if foreign {
            self.confirm_blob(repo, digest).await?;
        }
        Ok(handle)
    }

    async fn open_any(
        self: &Arc<Self>,
        repo: &Resolved,
        digest: &Digest,
        requester: Requester,
    ) -> Result<BlobHandle, RegistryError> {
        if let Some(bytes) = self.hot.get(digest) {
            self.lifecycle.index.touch(digest, self.clock.now_ms());
            return Ok(BlobHandle::Memory { bytes });
        }
        match self.open_stored(digest).await? {
            Some(Stored::Small(bytes)) => {
                self.lifecycle.index.touch(digest, self.clock.now_ms());
                self.hot.put(digest, bytes.clone());
                return Ok(BlobHandle::Memory { bytes });
            }
            Some(Stored::File(file, size)) => {
                return Ok(BlobHandle::Stored {
                    file: Arc::new(file),
                    size,
                    guard: Arc::new(self.lifecycle.reading(digest, &self.clock)),
                });
            }
            Some(Stored::Damaged) | None => {}
        }
        if !self.inflight.contains_key(digest) {
            self.check_absent(repo, digest)?;
        }
        // A download that every client had left may be cancelled just as
        // this request joins it: then this request starts it again.
        let mut retried = false;
        let (flight, joined, client, size) = loop {
            let (flight, joined, client) = self.join_or_start(repo, digest, requester);
            let filling = flight.filling_from_peer();
            if let (true, true, Some(owner)) = (requester.is_peer(), filling, &flight.via_peer) {
                // Two replicas that disagree on the owner (membership just
                // changed) must not wait on each other: the asking one goes
                // upstream instead.
                return Err(RegistryError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    format!("this replica is itself filling {digest} from peer {owner}; fetch it upstream"),
                ));
            }
            let mut rx = flight.subscribe();
            let started = rx
                .wait_for(|p| !matches!(p, Progress::Connecting))
                .await
                .map(|p| p.clone());
            let size = match started {
                Ok(Progress::Streaming { size, .. }) => size,
                Ok(Progress::Done { size } | Progress::Verified { size }) => Some(size),
                Ok(Progress::Failed(f))
                    if matches!(*f, FetchFailure::NoRoom(_) | FetchFailure::Unwritable(_)) =>
                {
                    // The store cannot take it: serve this client straight
                    // from upstream instead.
                    self.metrics.uncached.inc();
                    tracing::warn!(%digest, reason = %f, "serving blob uncached");
                    let (body, size) = passthrough::open(repo, digest, self.max_blob_size).await?;
                    return Ok(BlobHandle::Uncached {
                        body: Box::new(body),
                        digest: digest.clone(),
                        size,
                    });
                }
                Ok(Progress::Failed(f)) if matches!(*f, FetchFailure::Deserted) && !retried => {
                    retried = true;
                    self.finish(&flight);
                    continue;
                }
                Ok(Progress::Failed(f)) => return Err(f.to_registry_error()),
                Ok(Progress::Connecting) | Err(_) => {
                    return Err(FetchFailure::Abandoned.to_registry_error());
                }
            };
            break (flight, joined, client, size);
        };
        let file = flight
            .file()
            .ok_or_else(|| FetchFailure::Abandoned.to_registry_error())?;
        Ok(BlobHandle::InFlight {
            flight,
            file,
            size,
            joined,
            client,
        })
    }

    /// Joins the fetch of `digest` in flight, or starts it. The client guard
    /// exists before the fetch task does, so a fetch is never seen deserted
    /// before its first client reads it.
    fn join_or_start(
        self: &Arc<Self>,
        repo: &Resolved,
        digest: &Digest,
        requester: Requester,
    ) -> (Arc<Flight>, bool, flight::ClientGuard) {
        match self.inflight.entry(digest.clone()) {
            Entry::Occupied(e) => {
                let flight = e.get().clone();
                let client = flight.client();
                (flight, true, client)
            }
            Entry::Vacant(e) => {
                let mut flight = Flight::new(digest.clone(), repo.key(), requester);
                // A peer's request is fetched here, never passed on.
                if !requester.is_peer() {
                    let owner = self.cluster.as_ref();
                    if let Some(peer) = owner.and_then(|c| c.owner(digest.to_string().as_bytes())) {
                        flight.fill_from(peer);
                    }
                }
                let flight = Arc::new(flight);
                let client = flight.client();
                e.insert(flight.clone());
                tracing::debug!(%digest, repo = %repo.local, "starting upstream fetch");
                tokio::spawn(fetch::run(self.clone(), flight.clone(), repo.clone()));
                (flight, false, client)
            }
        }
    }

    /// The size of a blob without fetching it: from the store, from the
    /// fetch in flight, or from an upstream `HEAD` (each candidate registry
    /// in turn until one has it).
    pub async fn blob_size(
        &self,
        repo: &Resolved,
        digest: &Digest,
    ) -> Result<(Option<u64>, CacheStatus), RegistryError> {
        let d = digest.clone();
        let store = self.store.clone();
        if let Ok(Some(len)) = store::blocking(move || store.blob_len(&d)).await {
            self.confirm_blob(repo, digest).await?;
            return Ok((Some(len), CacheStatus::Hit));
        }
        if let Some(flight) = self.flight(digest) {
            let size = match *flight.subscribe().borrow() {
                Progress::Streaming { size: Some(s), .. }
                | Progress::Verified { size: s }
                | Progress::Done { size: s } => Some(s),
                _ => None,
            };
            if let Some(s) = size {
                if flight.repo != repo.key() {
                    self.confirm_blob(repo, digest).await?;
                }
                return Ok((Some(s), CacheStatus::Joined));
            }
        }
        if let Some(size) = self.shared_blob(repo, digest).await {
            return Ok((Some(size), CacheStatus::Shared));
        }
        self.check_absent(repo, digest)?;
        let (resp, target) = repo
            .first(|t| t.blob(Method::HEAD, digest, http::HeaderMap::new(), StatusCode::OK))
            .await
            .map_err(|e| {
                if crate::upstream::is_not_found(&e) {
                    self.absent_upstream(repo, digest);
                }
                e.to_registry_error(ErrorCode::BlobUnknown)
            })?;
        self.router.remember(&repo.local, target.registry.index);
        self.link(target, vec![digest.clone()]).await;
        Ok((content_length(resp.headers()), CacheStatus::Miss))
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

    /// Opens a stored blob; a small one is read whole and checked against
    /// its digest in the same blocking call (one trip to the blocking pool
    /// per request, not two). A small blob that fails its digest is taken
    /// out of the store and the index, so it is fetched again.
    async fn open_stored(&self, digest: &Digest) -> Result<Option<Stored>, RegistryError> {
        let store = self.store.clone();
        let d = digest.clone();
        let opened = store::blocking(move || {
            let Some((file, size)) = store.open_blob(&d)? else {
                return Ok(None);
            };
            if size > INLINE_MAX {
                return Ok(Some(Stored::File(file, size)));
            }
            let mut buf = vec![0u8; size as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0)?;
            let mut h = Hasher::new(d.algorithm());
            h.update(&buf);
            if h.finish() != d {
                // The store's listener takes it out of the index.
                store.remove_blob(&d)?;
                return Ok(Some(Stored::Damaged));
            }
            Ok(Some(Stored::Small(Bytes::from(buf))))
        })
        .await
        .map_err(|e| {
            tracing::error!(%digest, error = %e, "store read failed");
            RegistryError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                format!("cannot read blob {digest} from the store: {e}"),
            )
        })?;
        if let Some(Stored::Damaged) = opened {
            tracing::warn!(%digest, "stored blob failed its digest; removed, fetching it again");
            return Ok(None);
        }
        Ok(opened)
    }

    /// Removes `flight` from the in-flight map, unless a newer fetch of the
    /// same digest has replaced it.
    fn finish(&self, flight: &Arc<Flight>) {
        self.inflight
            .remove_if(&flight.digest, |_, v| Arc::ptr_eq(v, flight));
    }
}
