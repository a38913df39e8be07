//! Filling a blob from the cluster peer that owns it (see
//! [`crate::cluster`]): a signed `GET` of the blob at the owner, whose
//! answer is streamed into the spool like an upstream's and verified the
//! same way. The owner is trusted no more than an upstream: its bytes must
//! match the digest before anything is published.
//!
//! A fill holds one of the registry's fetch slots like an upstream
//! download (fair between clients, given up when deserted, charged to the
//! orphan budget), so a client that asks for many blobs and leaves costs
//! the owner no more than it would cost the upstream. Anything short of a
//! good start (the owner unreachable, busy, or answering anything but 200
//! with a length) returns `None`, and the caller fetches from the upstream
//! as if there were no cluster. A transfer that breaks or crawls midway
//! goes on from the upstream with a `Range` (see [`super::transfer`]);
//! clients see a pause, not an error. Only a refused connection takes the
//! owner out of the ring: a slow or busy owner stays in.

use std::sync::Arc;

use http::StatusCode;

use super::flight::{FetchFailure, Flight};
use super::transfer::{self, Source};
use super::Coordinator;
use crate::routing::Resolved;
use crate::upstream::headers::content_length;

/// The fetch from `peer`, or `None` when the caller should go upstream.
pub(super) async fn fill(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
    peer: &str,
) -> Option<Result<(u64, String), FetchFailure>> {
    let result = attempt(coordinator, flight, repo, peer).await;
    if result.is_none() {
        flight.left_peer();
    }
    result
}

async fn attempt(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    repo: &Resolved,
    peer: &str,
) -> Option<Result<(u64, String), FetchFailure>> {
    let cluster = coordinator.cluster.as_ref()?;
    let target = repo.targets.first()?;
    let digest = &flight.digest;
    let metrics = &coordinator.metrics;
    let permit = tokio::select! {
        p = target.registry.fetch_slots.acquire(flight.requester, &metrics.fetches_queued) => p,
        () = flight.deserted() => return Some(Err(FetchFailure::Deserted)),
    };
    let path = format!("/v2/{}/blobs/{digest}", repo.local);
    let routed = format!("{} {}", target.registry.index, target.upstream_name);
    let client = flight.requester.addr();
    metrics.cluster.requests_out.inc();
    let resp = match cluster
        .get(peer, &path, &routed, client, http::HeaderMap::new())
        .await
    {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => {
            tracing::info!(%digest, peer, status = r.status().as_u16(), "peer did not serve the blob; fetching upstream");
            metrics.cluster.fell_back("status");
            return None;
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "peer did not answer; fetching upstream");
            metrics.cluster.fell_back("unreachable");
            return None;
        }
    };
    let Some(size) = content_length(resp.headers()).filter(|s| *s <= coordinator.max_blob_size)
    else {
        metrics.cluster.fell_back("status");
        return None;
    };
    let _room = match super::room_for(&coordinator.lifecycle.space, size) {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    let source = Source::Peer {
        name: peer,
        counted: &metrics.cluster.peer_bytes,
    };
    let result = transfer::upstream(coordinator, flight, target, resp, &permit, source).await;
    if let Err(
        e @ (FetchFailure::DigestMismatch { .. }
        | FetchFailure::LengthMismatch { .. }
        | FetchFailure::Endless { .. }),
    ) = &result
    {
        // A peer that lies is left out like a dead one (until its probe
        // says ready again); the clients' retries go upstream meanwhile.
        tracing::warn!(%digest, peer, error = %e, "peer sent bytes that are not the blob");
        cluster.mark_down(peer);
    }
    if let Ok(size) = result {
        coordinator
            .lifecycle
            .stored(digest, size, &coordinator.clock);
        coordinator.link(target, vec![digest.clone()]).await;
    }
    Some(result.map(|size| (size, format!("peer {peer}"))))
}
