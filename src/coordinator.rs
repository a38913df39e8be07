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

mod fetch;
mod flight;
mod hot;
mod membership;
mod passthrough;
mod reader;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::{Method, StatusCode};

use crate::clock::Clock;
use crate::lifecycle::{Lifecycle, ReadGuard};
use crate::metrics::Metrics;
use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::routing::{Resolved, Router, Target};
use crate::store::{self, FsStore};
use crate::upstream::UpstreamError;
pub use crate::upstream::{is_absent, worse};

pub use flight::{FetchFailure, Flight, Progress};
pub use reader::{BlobStream, READ_CHUNK};

/// Where a blob response's bytes come from, and why.
#[derive(Debug)]
pub enum BlobHandle {
    /// Already in the store; the guard keeps it from eviction.
    Stored {
        file: Arc<File>,
        size: u64,
        /// The whole content of a small blob, already read.
        inline: Option<Bytes>,
        guard: Arc<ReadGuard>,
    },
    /// A small stored blob held in memory.
    Memory { bytes: Bytes },
    /// No room to cache it: straight from upstream, verified, not kept.
    Uncached {
        body: std::sync::Mutex<Option<hyper::body::Incoming>>,
        digest: Digest,
        size: Option<u64>,
    },
    /// Being fetched; `joined` is true when another request started it.
    InFlight {
        flight: Arc<Flight>,
        file: Arc<File>,
        size: Option<u64>,
        joined: bool,
    },
}

impl BlobHandle {
    pub fn size(&self) -> Option<u64> {
        match self {
            BlobHandle::Stored { size, .. } => Some(*size),
            BlobHandle::Memory { bytes } => Some(bytes.len() as u64),
            BlobHandle::InFlight { size, .. } | BlobHandle::Uncached { size, .. } => *size,
        }
    }

    /// `hit`, `miss` or `joined`, for logs and metrics.
    pub fn cache_status(&self) -> &'static str {
        match self {
            BlobHandle::Stored { .. } | BlobHandle::Memory { .. } => "hit",
            BlobHandle::Uncached { .. } => "uncached",
            BlobHandle::InFlight { joined: false, .. } => "miss",
            BlobHandle::InFlight { joined: true, .. } => "joined",
        }
    }

    /// The bytes `[start, end)` of the blob as a stream that follows the
    /// download when the blob is in flight. An uncached blob streams whole,
    /// once (callers send it with a 200, ignoring any range).
    pub fn stream(&self, start: u64, end: Option<u64>) -> BlobStream {
        match self {
            BlobHandle::Memory { bytes } => {
                let size = bytes.len() as u64;
                let end = end.unwrap_or(size).min(size) as usize;
                let part = bytes.slice((start as usize).min(end)..end);
                BlobStream::from_stream(futures::stream::once(async move { Ok(part) }))
            }
            BlobHandle::Stored {
                inline: Some(bytes),
                size,
                ..
            } => {
                let end = end.unwrap_or(*size).min(*size) as usize;
                let part = bytes.slice((start as usize).min(end)..end);
                BlobStream::from_stream(futures::stream::once(async move { Ok(part) }))
            }
            BlobHandle::Stored {
                file, size, guard, ..
            } => {
                BlobStream::stored(file.clone(), start, end.unwrap_or(*size)).holding(guard.clone())
            }
            BlobHandle::Uncached { body, digest, .. } => {
                let body = body.lock().expect("handle lock").take();
                match body {
                    Some(b) => BlobStream::from_stream(passthrough::VerifyingStream::new(
                        b,
                        digest.clone(),
                    )),
                    None => BlobStream::from_stream(futures::stream::once(async {
                        Err(std::io::Error::other("uncached blob body already taken"))
                    })),
                }
            }
            BlobHandle::InFlight { flight, file, .. } => {
                BlobStream::following(flight.clone(), file.clone(), start, end)
            }
        }
    }
}

/// Blobs up to this size are read whole when opened.
const INLINE_MAX: u64 = 2 * 1024 * 1024;

/// The shared state behind every blob request.
#[derive(Debug)]
pub struct Coordinator {
    store: Arc<FsStore>,
    router: Router,
    inflight: DashMap<Digest, Arc<Flight>>,
    lifecycle: Arc<Lifecycle>,
    clock: Clock,
    hot: hot::HotCache,
    metrics: Arc<Metrics>,
    membership: membership::Membership,
    /// Blobs the upstream recently said a repository does not have, until
    /// when (clock ms): a flood of requests for made-up digests costs one
    /// upstream request per digest and repository, not one per request.
    absent: DashMap<(String, Digest), u64>,
    absent_ttl: std::time::Duration,
    /// The longest blob ferry accepts (`ferry.maxBlobSize`): an upstream
    /// that announces more, or sends more without announcing, is cut off.
    max_blob_size: u64,
    /// The bucket several replicas share, if configured.
    shared: Option<Arc<crate::shared::Shared>>,
}

/// How fetches behave, from the config.
pub struct FetchSettings {
    /// `ferry.absentTTL`.
    pub absent_ttl: std::time::Duration,
    /// `ferry.maxBlobSize`.
    pub max_blob_size: u64,
    /// The shared tier (`storage.storageDriver`).
    pub shared: Option<Arc<crate::shared::Shared>>,
}

/// Entries in the absent map before it is cleared.
const ABSENT_LIMIT: usize = 100_000;

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
        } = settings;
        Arc::new(Coordinator {
            store,
            router,
            inflight: DashMap::new(),
            lifecycle,
            clock,
            metrics,
            membership: membership::Membership::new(shared.clone()),
            shared,
            absent: DashMap::new(),
            absent_ttl,
            max_blob_size,
            hot: hot::HotCache::new(64 << 20),
        })
    }

    /// Forgets the in-memory copy of a blob (its stored copy was damaged).
    pub fn forget(&self, digest: &Digest) {
        self.hot.remove(digest);
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
        if self.absent_ttl.is_zero() {
            return;
        }
        if self.absent.len() >= ABSENT_LIMIT {
            self.absent.clear();
        }
        let until = self.clock.now_ms() + self.absent_ttl.as_millis() as u64;
        self.absent.insert((repo.key(), digest.clone()), until);
    }

    /// `BLOB_UNKNOWN` when the upstream said so within `absentTTL`.
    fn check_absent(&self, repo: &Resolved, digest: &Digest) -> Result<(), RegistryError> {
        let key = (repo.key(), digest.clone());
        let Some(until) = self.absent.get(&key).map(|u| *u) else {
            return Ok(());
        };
        if self.clock.now_ms() >= until {
            self.absent.remove(&key);
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

    /// Opens a blob for reading: from the store, or by joining or starting
    /// its upstream fetch. Returns once the upstream has answered (so the
    /// size is known) or the fetch failed.
    pub async fn open_blob(
        self: &Arc<Self>,
        repo: &Resolved,
        digest: &Digest,
    ) -> Result<BlobHandle, RegistryError> {
        if let Some(bytes) = self.hot.get(digest) {
            self.lifecycle.index.touch(digest, self.clock.now_ms());
            return Ok(BlobHandle::Memory { bytes });
        }
        if let Some((file, size, inline)) = self.open_stored(digest).await? {
            if let Some(b) = &inline {
                self.hot.put(digest, b.clone());
            }
            return Ok(BlobHandle::Stored {
                file: Arc::new(file),
                size,
                inline,
                guard: Arc::new(self.lifecycle.reading(digest, &self.clock)),
            });
        }
        if !self.inflight.contains_key(digest) {
            self.check_absent(repo, digest)?;
        }
        let (flight, joined) = match self.inflight.entry(digest.clone()) {
            Entry::Occupied(e) => (e.get().clone(), true),
            Entry::Vacant(e) => {
                let flight = Arc::new(Flight::new(digest.clone(), repo.key()));
                e.insert(flight.clone());
                tracing::debug!(%digest, repo = %repo.local, "starting upstream fetch");
                tokio::spawn(fetch::run(self.clone(), flight.clone(), repo.clone()));
                (flight, false)
            }
        };
        let mut rx = flight.subscribe();
        let started = rx
            .wait_for(|p| !matches!(p, Progress::Connecting))
            .await
            .map(|p| p.clone());
        let size = match started {
            Ok(Progress::Streaming { size, .. }) => size,
            Ok(Progress::Done { size } | Progress::Verified { size }) => Some(size),
            Ok(Progress::Failed(f)) if matches!(*f, FetchFailure::NoRoom(_)) => {
                // The store cannot take it: serve this client straight
                // from upstream instead.
                self.lifecycle
                    .uncached
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%digest, reason = %f, "serving blob uncached");
                let (body, size) = passthrough::open(repo, digest).await?;
                return Ok(BlobHandle::Uncached {
                    body: std::sync::Mutex::new(Some(body)),
                    digest: digest.clone(),
                    size,
                });
            }
            Ok(Progress::Failed(f)) => return Err(f.to_registry_error()),
            Ok(Progress::Connecting) | Err(_) => {
                return Err(FetchFailure::Abandoned.to_registry_error());
            }
        };
        let file = flight
            .file()
            .ok_or_else(|| FetchFailure::Abandoned.to_registry_error())?;
        Ok(BlobHandle::InFlight {
            flight,
            file,
            size,
            joined,
        })
    }

    /// The size of a blob without fetching it: from the store, from the
    /// fetch in flight, or from an upstream `HEAD` (each candidate registry
    /// in turn until one has it).
    pub async fn blob_size(
        &self,
        repo: &Resolved,
        digest: &Digest,
    ) -> Result<(Option<u64>, &'static str), RegistryError> {
        let d = digest.clone();
        let store = self.store.clone();
        let stat = store::blocking(move || Ok(std::fs::metadata(store.blob_path(&d)).ok())).await;
        if let Ok(Some(meta)) = stat {
            self.confirm_blob(repo, digest).await?;
            return Ok((Some(meta.len()), "hit"));
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
                return Ok((Some(s), "joined"));
            }
        }
        if let Some(size) = self.shared_blob(repo, digest).await {
            return Ok((Some(size), "shared"));
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
        Ok((content_length(resp.headers()), "miss"))
    }

    /// True when the blob is in the local store or being fetched here.
    pub async fn is_local(&self, digest: &Digest) -> bool {
        if self.hot.get(digest).is_some() || self.inflight.contains_key(digest) {
            return true;
        }
        let (store, d) = (self.store.clone(), digest.clone());
        store::blocking(move || Ok(store.blob_path(&d).exists()))
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

    /// A byte range straight from upstream, not cached: for a range far
    /// beyond what the fetch in flight has written (lazy-pulling
    /// snapshotters read a blob's footer first).
    pub async fn fetch_range(
        &self,
        repo: &Resolved,
        digest: &Digest,
        start: u64,
        last: u64,
    ) -> Result<http::Response<hyper::body::Incoming>, RegistryError> {
        let range = format!("bytes={start}-{last}");
        let range = range.as_str();
        repo.first(|t| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::RANGE, range.parse().expect("valid header"));
            async move {
                let resp = t
                    .blob(Method::GET, digest, headers, StatusCode::PARTIAL_CONTENT)
                    .await?;
                if content_range(resp.headers()).is_some_and(|(a, b)| a == start && b == last) {
                    Ok(resp)
                } else {
                    Err(UpstreamError::Protocol {
                        url: t.registry.upstream.url(&t.blob_path(digest)).to_string(),
                        cause: format!("answered {range} with another range"),
                    })
                }
            }
        })
        .await
        .map(|(resp, _)| resp)
        .map_err(|e| e.to_registry_error(ErrorCode::BlobUnknown))
    }

    /// Opens a stored blob; a small one is read whole in the same blocking
    /// call (one trip to the blocking pool per request, not two).
    async fn open_stored(
        &self,
        digest: &Digest,
    ) -> Result<Option<(File, u64, Option<Bytes>)>, RegistryError> {
        let store = self.store.clone();
        let d = digest.clone();
        store::blocking(move || {
            let Some((file, size)) = store.open_blob(&d)? else {
                return Ok(None);
            };
            let inline = if size <= INLINE_MAX {
                let mut buf = vec![0u8; size as usize];
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0)?;
                Some(Bytes::from(buf))
            } else {
                None
            };
            Ok(Some((file, size, inline)))
        })
        .await
        .map_err(|e| {
            tracing::error!(%digest, error = %e, "store read failed");
            RegistryError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                format!("cannot read blob {digest} from the store: {e}"),
            )
        })
    }

    /// Removes `flight` from the in-flight map, unless a newer fetch of the
    /// same digest has replaced it.
    fn finish(&self, flight: &Arc<Flight>) {
        self.inflight
            .remove_if(&flight.digest, |_, v| Arc::ptr_eq(v, flight));
    }
}

/// The first byte of a `Content-Range: bytes a-b/n` header.
pub fn content_range_start(headers: &http::HeaderMap) -> Option<u64> {
    content_range(headers).map(|(a, _)| a)
}

/// The first and last bytes of a `Content-Range: bytes a-b/n` header.
pub fn content_range(headers: &http::HeaderMap) -> Option<(u64, u64)> {
    let v = headers.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes ")?.split('/').next()?;
    let (a, b) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// The `Content-Length` header as a number.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
