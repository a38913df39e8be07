//! Opening the cluster peer that owns a blob (see [`crate::cluster`]) as
//! the source of a fill: a signed `GET` of the blob at the owner, whose
//! answer [`super::fill`] streams into the spool like an upstream's and
//! verifies the same way. The owner is trusted no more than an upstream:
//! its bytes must match the digest before anything is published.
//!
//! A fill holds one of its registry's fill slots
//! ([`crate::routing::PEER_FILLS`], fair between clients, given up when
//! deserted, charged to an orphan budget), never one of the registry's
//! fetch slots: the owner may need those for the very upstream fetch this
//! fill waits on, and with `maxFetchesPerRegistry` slots held by fills on
//! every replica, replicas waited on each other until the peer timeout
//! broke the circle.
//!
//! An owner that dies (refused, reset, or left out of the ring by its
//! probes), before its answer or during its transfer, is survived once
//! ([`successor`]): the digest's next owner among the remaining peers has
//! been receiving the same bytes from the dead one, goes on from the
//! upstream itself from where it is, and this replica asks it for the rest
//! from where *it* is. So the one upstream download goes on once, not once
//! per replica. When this replica is the next owner, or the next owner
//! does not answer well, the rest comes from the upstream. Anything short
//! of a good start from a live owner (busy, a status other than 200, no
//! length) returns `None`, and the caller fetches from the upstream as if
//! there were no cluster.

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::fill::{self, Opened};
use super::flight::{FetchFailure, Flight};
use super::state::Coordinator;
use crate::cluster::{BlobAsk, OwnerKey, PeerError};
use crate::routing::Resolved;
use crate::upstream::headers::{content_length, content_range_start, content_range_total};

/// The owner's answer, ready for [`fill::fill`]; `Ok(None)` when the
/// caller should go upstream instead.
pub(super) async fn open<'a>(
    coordinator: &Coordinator,
    flight: &Flight,
    repo: &'a Resolved,
    owner: &str,
) -> Result<Option<Opened<'a>>, FetchFailure> {
    let Some(target) = repo.targets.first() else {
        return Ok(None);
    };
    // Fill slots, never the registry's fetch slots: the owner may need
    // those for the upstream fetch this fill waits on.
    let Some(permit) = fill::slot(coordinator, flight, &target.registry.fill_slots).await else {
        return Err(FetchFailure::Deserted);
    };
    let ask = BlobAsk {
        local: &repo.local,
        target,
        digest: &flight.digest,
    };
    let (name, resp) = match ask_owner(coordinator, flight, ask, owner, 0).await {
        Asked::Answered(resp) => (owner.to_string(), resp),
        Asked::Elsewhere => return Ok(None),
        Asked::Gone => match successor(coordinator, flight, ask, owner, 0).await {
            Some((next, resp, _)) => (next, resp),
            None => return Ok(None),
        },
    };
    Ok(Some(Opened::Peer {
        name,
        local: &repo.local,
        resp,
        target,
        permit,
    }))
}

/// How asking one peer went.
enum Asked {
    /// A signed answer to start (or go on) from.
    Answered(Response<Incoming>),
    /// The peer is alive but did not serve it: go upstream.
    Elsewhere,
    /// The peer is out of this replica's ring (refused, unreachable, left
    /// out while asked): its successor may have the bytes.
    Gone,
}

/// Asks `peer` for the blob from byte `from` on. A good answer is a signed
/// `200` with a length this replica may take (from 0), or a `206` starting
/// at `from`.
async fn ask_owner(
    coordinator: &Coordinator,
    flight: &Flight,
    ask: BlobAsk<'_>,
    peer: &str,
    from: u64,
) -> Asked {
    let Some(cluster) = coordinator.cluster.as_ref() else {
        return Asked::Elsewhere;
    };
    let digest = &flight.digest;
    let metrics = &coordinator.metrics;
    metrics.cluster.requests_out.inc();
    let resp = match cluster
        .get_blob(peer, ask, flight.origin.addr(), from)
        .await
    {
        Ok(r) if r.status() == StatusCode::OK || r.status() == StatusCode::PARTIAL_CONTENT => r,
        Ok(r) => {
            tracing::info!(%digest, peer, status = r.status().as_u16(), "peer did not serve the blob; fetching upstream");
            metrics.cluster.fell_back("status");
            return Asked::Elsewhere;
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "peer did not answer");
            let left = matches!(e, PeerError::LeftOut { .. });
            metrics
                .cluster
                .fell_back(if left { "left_out" } else { "unreachable" });
            return match cluster.is_live(peer) {
                true => Asked::Elsewhere,
                false => Asked::Gone,
            };
        }
    };
    let total = match resp.status() {
        StatusCode::PARTIAL_CONTENT if content_range_start(resp.headers()) == Some(from) => {
            content_range_total(resp.headers())
        }
        StatusCode::OK => content_length(resp.headers()),
        _ => {
            metrics.cluster.fell_back("status");
            return Asked::Elsewhere;
        }
    };
    match total {
        Some(size) if size <= coordinator.max_blob_size => Asked::Answered(resp),
        // More than any blob may have: a peer that lies about the length.
        Some(_) => {
            cluster.fail(peer, "length");
            metrics.cluster.fell_back("status");
            Asked::Elsewhere
        }
        // The owner is itself receiving it without a length (a chunked
        // upstream): nothing wrong, but nothing to reserve room for.
        None => {
            metrics.cluster.fell_back("status");
            Asked::Elsewhere
        }
    }
}

/// The blob from byte `from` on, from the next owner of its digest now
/// that `gone` is out of this replica's ring: `(peer, answer, skip)`, where
/// `skip` bytes of the answer are already written (a `200` from the
/// start). `None` when `gone` is still in the ring (slow, not dead: the
/// rest comes from the upstream), when this replica owns the digest now,
/// or when the next owner does not answer well.
pub(super) async fn successor(
    coordinator: &Coordinator,
    flight: &Flight,
    ask: BlobAsk<'_>,
    gone: &str,
    from: u64,
) -> Option<(String, Response<Incoming>, u64)> {
    let cluster = coordinator.cluster.as_ref()?;
    if cluster.is_live(gone) {
        return None;
    }
    let next = cluster
        .owner(OwnerKey::Blob {
            digest: &flight.digest,
            target: ask.target,
        })
        .filter(|n| n != gone)?;
    tracing::info!(digest = %flight.digest, gone, next = %next, from,
        "the blob's owner is gone; asking its next owner for the rest");
    match ask_owner(coordinator, flight, ask, &next, from).await {
        Asked::Answered(resp) => {
            coordinator.metrics.cluster.handovers.inc();
            let skip = match resp.status() {
                StatusCode::OK => from,
                _ => 0,
            };
            Some((next, resp, skip))
        }
        Asked::Elsewhere | Asked::Gone => None,
    }
}
