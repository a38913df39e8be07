//! Opening a blob for a request: from the memory cache or the store, or by
//! joining the fetch in flight or starting it ([`super::fetch`] runs it,
//! detached). Access is decided here: content this request did not fetch
//! itself is answered only once it is known to belong to the repository.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use http::{Method, StatusCode};

use super::flight::{self, FetchFailure, Flight, Progress};
use super::handle::BlobHandle;
use super::state::Coordinator;
use super::{fetch, passthrough};
use crate::cluster::OwnerKey;
use crate::metrics::CacheStatus;
use crate::oci::{Digest, ErrorCode, Hasher, RegistryError};
use crate::routing::Resolved;
use crate::store;
use crate::upstream::headers::content_length;

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

impl Coordinator {
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
    ) -> Result<BlobHandle, RegistryError> {
        let handle = self.open_any(repo, digest).await?;
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
            let (flight, joined, client) = self.join_or_start(repo, digest);
            // A peer asks for a blob this replica waits to receive from that
            // very peer (they disagree on its owner: one of them does not
            // know itself, or membership just changed): neither may wait on
            // the other, the asking one goes upstream instead. Any other
            // peer may wait: a replica only asks a peer that ranks above
            // itself, so waits form no circle, and a peer whose owner died
            // asks this replica, its successor, for the rest, even while
            // this replica catches up with that peer's bytes (it takes only
            // what that peer has: see `Flight::waits_on`).
            // (A client's request takes no lock here: only a peer's asks.)
            let waits_on_asker = repo.origin.peer().is_some_and(|a| flight.waits_on(a));
            if let Some(owner) = flight.source().filter(|_| waits_on_asker) {
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
                // Cancelled just as this request joined it, or refused at
                // its start because its peer was reported lying: neither
                // sent a byte, so this request starts a fresh fill.
                Ok(Progress::Failed(f))
                    if matches!(*f, FetchFailure::Deserted | FetchFailure::PeerLied { .. })
                        && !retried =>
                {
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
    ) -> (Arc<Flight>, bool, flight::ClientGuard) {
        // A download poisoned by a lie report is dying: it is not joined
        // (its bytes came from the liar), a fresh one takes its place.
        self.inflight.remove_if(digest, |_, f| f.is_poisoned());
        match self.inflight.entry(digest.clone()) {
            Entry::Occupied(e) => {
                let flight = e.get().clone();
                let client = flight.client();
                (flight, true, client)
            }
            Entry::Vacant(e) => {
                let mut flight = Flight::new(digest.clone(), repo.key(), repo.origin);
                flight.pace = self.paces.of(digest);
                // A peer's request is fetched here, never passed on.
                if let (false, Some(cluster), Some(target)) =
                    (repo.origin.is_peer(), &self.cluster, repo.targets.first())
                {
                    if let Some(peer) = cluster.owner(OwnerKey::Blob { digest, target }) {
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
        self.router.remember_served(repo, target);
        self.link(target, vec![digest.clone()]).await;
        Ok((content_length(resp.headers()), CacheStatus::Miss))
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
}
