//! The fetch task: one download of one blob, detached from every client,
//! and the choice of where its bytes come from.
//!
//! A fetch takes the blob from the first source that has it: the store
//! (a fetch that finished between the caller's lookup and its in-flight
//! insert), the shared tier (another replica's copy, verified like an
//! upstream's), or the candidate registries in order (a 404, 401 or 403
//! passes to the next); in a cluster, the peer that owns the digest comes
//! before the registries (see [`super::peer_fill`]). The bytes move
//! through [`super::transfer`] into a
//! [`super::spool`], which verifies and publishes them. While an upstream
//! transfer runs, the blob is also uploaded to the shared tier as one more
//! reader of the fetch.
//!
//! A [`FlightGuard`] makes sure a fetch that panics or is cancelled still
//! publishes `Failed` and leaves the map, so no reader waits forever.

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};

use super::flight::{FetchFailure, Flight, Progress};
use super::Coordinator;
use crate::routing::Resolved;
use crate::store;
use crate::upstream::headers::content_length;
use crate::upstream::UpstreamError;

/// Publishes a final state and leaves the in-flight map, even on panic.
struct FlightGuard {
    coordinator: Arc<Coordinator>,
    flight: Arc<Flight>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.flight.is_final() {
            self.flight
                .publish(Progress::Failed(Arc::new(FetchFailure::Abandoned)));
        }
        self.flight.forget_window();
        self.coordinator.finish(&self.flight);
    }
}

pub(super) async fn run(coordinator: Arc<Coordinator>, flight: Arc<Flight>, repo: Resolved) {
    let guard = FlightGuard {
        coordinator,
        flight,
    };
    let digest = guard.flight.digest.clone();
    let started = std::time::Instant::now();
    match fetch(&guard.coordinator, &guard.flight, &repo).await {
        Ok((size, registry)) => {
            tracing::info!(%digest, repo = %repo.local, registry, bytes = size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                readers = guard.flight.readers(), "blob fetched and stored");
            guard.flight.publish(Progress::Done { size });
        }
        Err(failure) => {
            if let FetchFailure::Upstream(e) = &failure {
                if crate::upstream::is_not_found(e) {
                    guard.coordinator.absent_upstream(&repo, &digest);
                }
            }
            let first = repo.targets.first().map(|t| &t.registry);
            let registry = first.map_or("-", |r| r.name.as_str());
            match &failure {
                // A blob the upstream does not have: the client's business.
                FetchFailure::Upstream(e) if crate::upstream::is_not_found(e) => {
                    tracing::info!(%digest, repo = %repo.local, registry, error = %failure, "blob not found upstream")
                }
                // Upstream trouble: one line per registry every few seconds.
                FetchFailure::Upstream(_) => {
                    if let Some(unlogged) = first.and_then(|r| r.upstream.stats().may_log_failure())
                    {
                        tracing::warn!(%digest, repo = %repo.local, registry, reason = failure.reason(),
                            error = %failure, failures_not_logged = unlogged, "blob fetch failed");
                    }
                }
                _ => {
                    tracing::warn!(%digest, repo = %repo.local, registry, reason = failure.reason(),
                    error = %failure, "blob fetch failed")
                }
            }
            guard.coordinator.metrics.fetch_failed(
                registry,
                crate::metrics::Kind::Blob,
                failure.reason(),
            );
            guard.flight.publish(Progress::Failed(Arc::new(failure)));
        }
    }
    drop(guard);
}

async fn fetch(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
) -> Result<(u64, String), FetchFailure> {
    let digest = &flight.digest;

    // A fetch that finished between the caller's store lookup and its
    // in-flight insert has already published the blob.
    let d = digest.clone();
    let s = coordinator.store.clone();
    if let Ok(Some((file, size))) = store::blocking(move || s.open_blob(&d)).await {
        // Published under another repository: the shortcut only if it
        // belongs here too; otherwise the upstream GET below decides.
        if coordinator.belongs(repo, digest).await.is_some() {
            flight.set_file(Arc::new(file));
            return Ok((size, "store".into()));
        }
    }

    if let Some(size) = coordinator.shared_blob(repo, digest).await {
        let copied = match copy_from_shared(coordinator, flight, repo, size).await {
            // The bucket would not even start the GET: ask the upstream.
            None => return fetch_upstream(coordinator, flight, repo).await,
            Some(c) => c,
        };
        if let Err(
            FetchFailure::DigestMismatch { .. }
            | FetchFailure::LengthMismatch { .. }
            | FetchFailure::Endless { .. },
        ) = &copied
        {
            // Damaged in the bucket: delete it, so the next request
            // fetches from upstream (and uploads a good copy).
            if let Some(shared) = coordinator.shared.clone() {
                let d = digest.clone();
                tracing::warn!(digest = %d, store = shared.describe(), "shared blob is damaged; deleting it");
                tokio::spawn(async move { shared.delete_blob(&d).await });
            }
        }
        return copied.map(|n| (n, "shared".into()));
    }
    if let Some(peer) = &flight.via_peer {
        if let Some(filled) = super::peer_fill::fill(coordinator, flight, repo, peer).await {
            return filled;
        }
    }
    fetch_upstream(coordinator, flight, repo).await
}

/// The upstream half of [`fetch`].
async fn fetch_upstream(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
) -> Result<(u64, String), FetchFailure> {
    let digest = &flight.digest;

    let space = &coordinator.lifecycle.space;
    if let Some(e) = space.write_failure() {
        return Err(FetchFailure::Unwritable(format!(
            "a write failed recently: {e}"
        )));
    }
    if space.reserve(0).is_none() {
        return Err(FetchFailure::NoRoom(format!(
            "the store's filesystem is below minFreeSpace ({} bytes available)",
            space.probe().available()
        )));
    }
    let metrics = &coordinator.metrics;
    let (answer, target) = repo
        .first(|t| async move {
            // A download still queued that every client left is dropped
            // before it costs an upstream request.
            let permit = tokio::select! {
                p = t.registry.fetch_slots.acquire(flight.requester, &metrics.fetches_queued) => p,
                () = flight.deserted() => return Ok(None),
            };
            let resp = t
                .blob(Method::GET, digest, HeaderMap::new(), StatusCode::OK)
                .await?;
            Ok(Some((resp, permit)))
        })
        .await
        .map_err(FetchFailure::Upstream)?;
    let Some((resp, permit)) = answer else {
        return Err(FetchFailure::Deserted);
    };
    coordinator
        .router
        .remember(&repo.local, target.registry.index);
    let size = content_length(resp.headers()).unwrap_or(0);
    if size > coordinator.max_blob_size {
        return Err(FetchFailure::Upstream(UpstreamError::TooLarge {
            url: target
                .registry
                .upstream
                .url(&target.blob_path(digest))
                .to_string(),
            limit: coordinator.max_blob_size as usize,
        }));
    }
    let _room = super::room_for(space, size)?;
    let source = super::transfer::Source::Upstream;
    let size =
        super::transfer::upstream(coordinator, flight, target, resp, &permit, source).await?;
    coordinator
        .lifecycle
        .stored(digest, size, &coordinator.clock);
    coordinator.link(target, vec![digest.clone()]).await;
    Ok((size, target.registry.name.clone()))
}

/// Copies a blob from the shared tier into the local spool, verified like
/// an upstream transfer (the bucket is trusted no more than an upstream),
/// and accounted like one (free space, the eviction index). None when the
/// bucket would not start the GET: the caller asks the upstream instead.
async fn copy_from_shared(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
    size: u64,
) -> Option<Result<u64, FetchFailure>> {
    let digest = &flight.digest;
    let shared = coordinator.shared.as_ref().expect("shared tier checked");
    let body = match shared.read_blob(digest, 0..size).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot read the shared tier; fetching upstream");
            return None;
        }
    };
    let _room = match super::room_for(&coordinator.lifecycle.space, size) {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    let timeouts = bucket_timeouts(repo);
    let source = format!("{} ({digest})", shared.describe());
    let counted = &coordinator.metrics.shared_read_bytes;
    let copied =
        super::transfer::copy(coordinator, flight, body, size, &source, &timeouts, counted).await;
    if copied.is_ok() {
        coordinator
            .lifecycle
            .stored(digest, size, &coordinator.clock);
    }
    Some(copied)
}

/// What a read from the shared tier is held to: the same idle timeout as
/// the repository's first registry, and no rate floor (a slow bucket has no
/// upstream to resume from).
pub(super) fn bucket_timeouts(repo: &Resolved) -> crate::config::Timeouts {
    let mut timeouts = repo
        .targets
        .first()
        .map(|t| t.registry.upstream.timeouts())
        .unwrap_or_default();
    timeouts.min_read_rate = 0;
    timeouts
}
