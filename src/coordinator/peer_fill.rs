//! Opening the cluster peer that owns a blob (see [`crate::cluster`]) as
//! the source of a fill: a signed `GET` of the blob at the owner, whose
//! answer [`super::fill`] streams into the spool like an upstream's and
//! verifies the same way. The owner is trusted no more than an upstream: its bytes must
//! match the digest before anything is published.
//!
//! A fill holds one of its registry's fill slots ([`crate::routing::PEER_FILLS`],
//! fair between clients, given up when deserted, charged to an orphan
//! budget), never one of the
//! registry's fetch slots: the owner may need those for the very upstream
//! fetch this fill waits on, and with `maxFetchesPerRegistry` slots held by
//! fills on every replica, replicas waited on each other until the peer
//! timeout broke the circle. Anything short of a
//! good start (the owner unreachable, busy, or answering anything but 200
//! with a length) returns `None`, and the caller fetches from the upstream
//! as if there were no cluster. A transfer that breaks or crawls midway
//! goes on from the upstream with a `Range` (see [`super::transfer`]);
//! clients see a pause, not an error. Only a refused connection takes the
//! owner out of the ring: a slow or busy owner stays in.

use http::StatusCode;

use super::fill::{self, Opened};
use super::flight::{FetchFailure, Flight};
use super::state::Coordinator;
use crate::routing::Resolved;
use crate::upstream::headers::content_length;

/// The owner's answer, ready for [`fill::fill`]; `Ok(None)` when the
/// caller should go upstream instead.
pub(super) async fn open<'a>(
    coordinator: &Coordinator,
    flight: &Flight,
    repo: &'a Resolved,
    peer: &'a str,
) -> Result<Option<Opened<'a>>, FetchFailure> {
    let Some(cluster) = coordinator.cluster.as_ref() else {
        return Ok(None);
    };
    let Some(target) = repo.targets.first() else {
        return Ok(None);
    };
    let digest = &flight.digest;
    let metrics = &coordinator.metrics;
    // Fill slots, never the registry's fetch slots: the owner may need
    // those for the upstream fetch this fill waits on.
    let Some(permit) = fill::slot(coordinator, flight, &target.registry.fill_slots).await else {
        return Err(FetchFailure::Deserted);
    };
    let client = flight.origin.addr();
    metrics.cluster.requests_out.inc();
    let asked = cluster.get_blob(peer, &repo.local, target, digest, client);
    let resp = match asked.await {
        Ok(r) if r.status() == StatusCode::OK => r,
        Ok(r) => {
            tracing::info!(%digest, peer, status = r.status().as_u16(), "peer did not serve the blob; fetching upstream");
            metrics.cluster.fell_back("status");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "peer did not answer; fetching upstream");
            let left = matches!(e, crate::cluster::PeerError::LeftOut { .. });
            metrics
                .cluster
                .fell_back(if left { "left_out" } else { "unreachable" });
            return Ok(None);
        }
    };
    match content_length(resp.headers()) {
        Some(size) if size <= coordinator.max_blob_size => {}
        // More than any blob may have: a peer that lies about the length.
        Some(_) => {
            cluster.fail(peer, "length");
            metrics.cluster.fell_back("status");
            return Ok(None);
        }
        // The owner is itself receiving it without a length (a chunked
        // upstream): nothing wrong, but nothing to reserve room for.
        None => {
            metrics.cluster.fell_back("status");
            return Ok(None);
        }
    }
    Ok(Some(Opened::Peer {
        name: peer,
        resp,
        target,
        permit,
    }))
}
