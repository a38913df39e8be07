//! The fetch task: one download of one blob, detached from every client,
//! and the choice of where its bytes come from.
//!
//! A fetch takes the blob from the first source that has it: the store
//! (a fetch that finished between the caller's lookup and its in-flight
//! insert), the shared tier (another replica's copy, verified like an
//! upstream's), in a cluster the peer that owns the digest (see
//! [`super::peer_fill`]), then the candidate registries in order (a 404,
//! 401 or 403 passes to the next). This file only opens the source; the
//! rest is the same for all of them, [`super::fill`]: the bytes move
//! through [`super::transfer`] into a [`super::spool`], which verifies and
//! publishes them. While an upstream transfer runs, the blob is also
//! uploaded to the shared tier as one more reader of the fetch.
//!
//! A [`FlightGuard`] makes sure a fetch that panics or is cancelled still
//! publishes `Failed` and leaves the map, so no reader waits forever.

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};

use super::fill::{self, Opened};
use super::flight::{FetchFailure, Flight, Progress};
use super::state::Coordinator;
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
            flight.left_peer();
            flight.set_file(Arc::new(file));
            return Ok((size, "store".into()));
        }
    }
    fill::writable(&coordinator.lifecycle.space)?;
    let opened = match open_shared(coordinator, flight, repo).await {
        // Not from the owner after all: its lie reports do not concern
        // this fill, and it may ask this replica.
        Some(shared) => {
            flight.left_peer();
            shared
        }
        None => match open_peer(coordinator, flight, repo).await? {
            Some(peer) => peer,
            None => open_upstream(coordinator, flight, repo).await?,
        },
    };
    let source = opened.describe();
    let size = fill::fill(coordinator, flight, repo, opened).await?;
    Ok((size, source))
}

/// The shared tier's copy, when it holds the blob (and it may be served
/// under `repo`) and the bucket starts the GET; else `None`, and the next
/// source is asked.
async fn open_shared<'a>(
    coordinator: &Coordinator,
    flight: &Flight,
    repo: &'a Resolved,
) -> Option<Opened<'a>> {
    let digest = &flight.digest;
    let size = coordinator.shared_blob(repo, digest).await?;
    let shared = coordinator.shared.as_ref()?;
    match shared.read_blob(digest, 0..size).await {
        Ok(body) => Some(Opened::Shared { body, size }),
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot read the shared tier; fetching elsewhere");
            None
        }
    }
}

/// The owning peer's answer, when the cluster says another replica owns
/// the digest and it answers well; `Ok(None)` sends the fetch upstream.
async fn open_peer<'a>(
    coordinator: &Coordinator,
    flight: &'a Flight,
    repo: &'a Resolved,
) -> Result<Option<Opened<'a>>, FetchFailure> {
    let Some(peer) = &flight.via_peer else {
        return Ok(None);
    };
    let opened = super::peer_fill::open(coordinator, flight, repo, peer).await;
    if !matches!(opened, Ok(Some(_))) {
        flight.left_peer();
    }
    opened
}

/// The upstream's answer: the candidate registries in order (a 404, 401 or
/// 403 passes to the next), each GET holding one of its fetch slots.
async fn open_upstream<'a>(
    coordinator: &Coordinator,
    flight: &Flight,
    repo: &'a Resolved,
) -> Result<Opened<'a>, FetchFailure> {
    let digest = &flight.digest;
    let (answer, target) = repo
        .first(|t| async move {
            // A download still queued that every client left is dropped
            // before it costs an upstream request.
            let Some(permit) = flight
                .slot(&t.registry.fetch_slots, &coordinator.metrics.fetches_queued)
                .await
            else {
                return Ok(None);
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
    coordinator.router.remember_served(repo, target);
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
    Ok(Opened::Upstream {
        resp,
        target,
        permit,
    })
}
