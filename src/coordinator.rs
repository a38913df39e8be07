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
mod reader;

use std::fs::File;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::{Method, StatusCode};

use crate::oci::{Digest, ErrorCode, RegistryError, RepoName};
use crate::store::{self, FsStore};
use crate::upstream::{Upstream, UpstreamError};

pub use flight::{FetchFailure, Flight, Progress};
pub use reader::{BlobStream, READ_CHUNK};

/// Where a blob response's bytes come from, and why.
#[derive(Debug)]
pub enum BlobHandle {
    /// Already in the store.
    Stored { file: Arc<File>, size: u64 },
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
            BlobHandle::InFlight { size, .. } => *size,
        }
    }

    /// `hit`, `miss` or `joined`, for logs and metrics.
    pub fn cache_status(&self) -> &'static str {
        match self {
            BlobHandle::Stored { .. } => "hit",
            BlobHandle::InFlight { joined: false, .. } => "miss",
            BlobHandle::InFlight { joined: true, .. } => "joined",
        }
    }

    /// The bytes `[start, end)` of the blob as a stream that follows the
    /// download when the blob is in flight.
    pub fn stream(&self, start: u64, end: Option<u64>) -> BlobStream {
        match self {
            BlobHandle::Stored { file, size } => {
                BlobStream::stored(file.clone(), start, end.unwrap_or(*size))
            }
            BlobHandle::InFlight { flight, file, .. } => {
                BlobStream::following(flight.clone(), file.clone(), start, end)
            }
        }
    }
}

/// The shared state behind every blob request.
#[derive(Debug)]
pub struct Coordinator {
    store: Arc<FsStore>,
    upstream: Upstream,
    inflight: DashMap<Digest, Arc<Flight>>,
}

impl Coordinator {
    pub fn new(store: Arc<FsStore>, upstream: Upstream) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            store,
            upstream,
            inflight: DashMap::new(),
        })
    }

    pub fn store(&self) -> &Arc<FsStore> {
        &self.store
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Number of upstream blob fetches running now.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
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
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobHandle, RegistryError> {
        if let Some((file, size)) = self.open_stored(digest).await? {
            return Ok(BlobHandle::Stored {
                file: Arc::new(file),
                size,
            });
        }
        let (flight, joined) = match self.inflight.entry(digest.clone()) {
            Entry::Occupied(e) => (e.get().clone(), true),
            Entry::Vacant(e) => {
                let flight = Arc::new(Flight::new(digest.clone()));
                e.insert(flight.clone());
                tracing::debug!(%digest, %repo, "starting upstream fetch");
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
            Ok(Progress::Done { size }) => Some(size),
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
    /// fetch in flight, or from an upstream `HEAD`.
    pub async fn blob_size(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Option<u64>, &'static str), RegistryError> {
        let d = digest.clone();
        let store = self.store.clone();
        let stat = store::blocking(move || Ok(std::fs::metadata(store.blob_path(&d)).ok())).await;
        if let Ok(Some(meta)) = stat {
            return Ok((Some(meta.len()), "hit"));
        }
        if let Some(flight) = self.flight(digest) {
            if let Progress::Streaming { size: Some(s), .. } | Progress::Done { size: s } =
                *flight.subscribe().borrow()
            {
                return Ok((Some(s), "joined"));
            }
        }
        let resp = self
            .upstream
            .blob(Method::HEAD, repo, digest)
            .await
            .map_err(|e| e.to_registry_error(ErrorCode::BlobUnknown))?;
        if resp.status() != StatusCode::OK {
            let e = UpstreamError::Status {
                url: self
                    .upstream
                    .url(&format!("/v2/{repo}/blobs/{digest}"))
                    .to_string(),
                status: resp.status(),
            };
            return Err(e.to_registry_error(ErrorCode::BlobUnknown));
        }
        Ok((content_length(resp.headers()), "miss"))
    }

    async fn open_stored(&self, digest: &Digest) -> Result<Option<(File, u64)>, RegistryError> {
        let store = self.store.clone();
        let d = digest.clone();
        store::blocking(move || store.open_blob(&d))
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

/// The `Content-Length` header as a number.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
