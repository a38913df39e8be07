//! Asking the owner of a blob for it, and its successor when it died.
//!
//! An owner that dies (refused, reset, or left out of the ring by its
//! probes), before its answer or during its transfer, is survived once
//! ([`successor`]): the digest's next owner among the remaining peers has
//! been receiving the same bytes from the dead one, goes on from the
//! upstream itself from where it is, and this replica asks it for the rest
//! from where *it* is, with a signed `Range`. So the one upstream download
//! goes on once, not once per replica. When this replica is the next
//! owner, or the next owner does not answer well, the rest comes from the
//! upstream. Used by [`super::peer_fill`] (before the answer) and
//! [`super::transfer`] (mid-transfer).
//!
//! The next owner itself may be behind another surviving replica (the
//! dead owner's readers do not all read at one pace): before it goes on
//! from the upstream, it takes what it lacks of what the most advanced
//! survivor has ([`catch_up`], a signed bounded range), so the upstream
//! sends again only what the dead owner had and no survivor got.

use http::{Response, StatusCode};
use hyper::body::Incoming;

use super::flight::Flight;
use super::state::Coordinator;
use crate::cluster::{tree, BlobAsk, OwnerKey, PeerError};
use crate::routing::{Hops, PeerId};

/// A request to be served where it arrives, never pointed on.
fn direct() -> Hops {
    Hops {
        direct: true,
        ..Hops::default()
    }
}
use crate::upstream::headers::{content_length, content_range_start, content_range_total};

/// How asking one peer went.
pub(super) enum Asked {
    /// A signed answer to start (or go on) from, and the peer that gave it:
    /// the one asked, or a relay it pointed to.
    Answered {
        from: String,
        resp: Response<Incoming>,
    },
    /// The peer is alive but did not serve it: go upstream.
    Elsewhere,
    /// The peer's signed 404: its upstream does not have the blob.
    NotFound,
    /// The peer is out of this replica's ring (refused, unreachable, left
    /// out while asked): its successor may have the bytes.
    Gone,
}

/// How asking one replica of the tree went.
enum Reply {
    Asked(Asked),
    /// A signed `307`: ask this relay instead.
    Pointed(String),
}

/// Asks `owner` for the blob from byte `from` on, following its pointers
/// to relays (see `tree.rs`): at most [`tree::MAX_DEPTH`] of them; a relay
/// that fails or does not have it sends this replica back to the owner,
/// which then serves it itself. A good answer is a signed `200` with a
/// length this replica may take (from 0), or a `206` starting at `from`.
pub(super) async fn ask_owner(
    coordinator: &Coordinator,
    flight: &Flight,
    ask: BlobAsk<'_>,
    owner: &str,
    from: u64,
) -> Asked {
    let Some(cluster) = coordinator.cluster.as_ref() else {
        return Asked::Elsewhere;
    };
    let me = cluster.me();
    let mut peer = owner.to_string();
    let mut hops = Hops::default();
    loop {
        let reply = ask_one(coordinator, flight, ask, &peer, from, hops).await;
        // A relay that did not serve it, or a pointer to one this replica
        // cannot use (left out here, or itself): the owner serves it.
        let relay_failed = peer != owner && !matches!(reply, Reply::Asked(Asked::Answered { .. }));
        let unusable = matches!(reply, Reply::Pointed(_));
        match reply {
            Reply::Pointed(to)
                if tree::may_point_on(hops)
                    && Some(&to) != me.as_ref()
                    && to != peer
                    && cluster.is_live(&to) =>
            {
                hops = hops.through(PeerId::of(&peer));
                peer = to;
                coordinator.metrics.cluster.relayed.inc();
            }
            _ if (relay_failed || unusable) && !hops.direct => {
                tracing::info!(digest = %flight.digest, relay = %peer, owner,
                    "the relay did not serve the blob, or cannot be asked; asking its owner directly");
                peer = owner.to_string();
                hops.direct = true;
            }
            Reply::Pointed(_) => {
                coordinator.metrics.cluster.fell_back("status");
                return Asked::Elsewhere;
            }
            Reply::Asked(asked) => return asked,
        }
    }
}

/// Asks one replica of the tree (the owner or a relay) for the blob.
async fn ask_one(
    coordinator: &Coordinator,
    flight: &Flight,
    ask: BlobAsk<'_>,
    peer: &str,
    from: u64,
    hops: Hops,
) -> Reply {
    let Some(cluster) = coordinator.cluster.as_ref() else {
        return Reply::Asked(Asked::Elsewhere);
    };
    let digest = &flight.digest;
    let metrics = &coordinator.metrics;
    metrics.cluster.requests_out.inc();
    let resp = match cluster
        .get_blob(peer, ask, flight.origin.addr(), from, hops)
        .await
    {
        Ok(r) if r.status() == StatusCode::OK || r.status() == StatusCode::PARTIAL_CONTENT => r,
        Ok(r) if r.status() == StatusCode::TEMPORARY_REDIRECT => {
            let relay = r.headers().get(tree::RELAY).and_then(|v| v.to_str().ok());
            return match relay {
                Some(to) => Reply::Pointed(to.to_string()),
                None => Reply::Asked(Asked::Elsewhere),
            };
        }
        // Signed (`Cluster::get` takes no unsigned 404): the owner asked
        // its upstream, which does not have it; asking again costs the
        // upstream a second 404 for nothing.
        Ok(r) if r.status() == StatusCode::NOT_FOUND => return Reply::Asked(Asked::NotFound),
        Ok(r) => {
            tracing::info!(%digest, peer, status = r.status().as_u16(), "peer did not serve the blob; fetching upstream");
            metrics.cluster.fell_back("status");
            return Reply::Asked(Asked::Elsewhere);
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "peer did not answer");
            let left = matches!(e, PeerError::LeftOut { .. });
            metrics
                .cluster
                .fell_back(if left { "left_out" } else { "unreachable" });
            return Reply::Asked(match cluster.is_live(peer) {
                true => Asked::Elsewhere,
                false => Asked::Gone,
            });
        }
    };
    let total = match resp.status() {
        StatusCode::PARTIAL_CONTENT if content_range_start(resp.headers()) == Some(from) => {
            content_range_total(resp.headers())
        }
        StatusCode::OK => content_length(resp.headers()),
        _ => {
            metrics.cluster.fell_back("status");
            return Reply::Asked(Asked::Elsewhere);
        }
    };
    Reply::Asked(match total {
        Some(size) if size <= coordinator.max_blob_size => Asked::Answered {
            from: peer.to_string(),
            resp,
        },
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
    })
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
    // The next owner goes on with the one download only if it was receiving
    // it too (it may not have a byte yet: the owner died early, or its bytes
    // to it are a moment behind); one that neither holds nor receives it
    // would start another download from byte 0 (and
    // keep this replica waiting for it to get here): then this replica
    // goes on from the upstream itself.
    if from > 0 {
        let progress = cluster.progress(&next, ask, flight.origin.addr()).await;
        if !matches!(progress, Ok(Some(_))) {
            tracing::info!(digest = %flight.digest, gone, next = %next,
                "the blob's next owner was not receiving it; going on from the upstream");
            return None;
        }
    }
    tracing::info!(digest = %flight.digest, gone, next = %next, from,
        "the blob's owner is gone; asking its next owner for the rest");
    match ask_owner(coordinator, flight, ask, &next, from).await {
        Asked::Answered { from: peer, resp } => {
            coordinator.metrics.cluster.handovers.inc();
            let skip = match resp.status() {
                StatusCode::OK => from,
                _ => 0,
            };
            Some((peer, resp, skip))
        }
        Asked::Elsewhere | Asked::Gone | Asked::NotFound => None,
    }
}

/// A catch-up below this many bytes is not worth a request.
const CATCH_UP_MIN: u64 = 1 << 20;

/// What the most advanced live peer has of the blob beyond byte `from`,
/// now that `gone` (its owner) died and this replica owns it: `(peer,
/// answer, end)`, a signed `206` of bytes `from..end`, after which this
/// replica goes on from the upstream. Peers are asked how far they are
/// (signed `HEAD`s, at once, within `peerTimeout`); `None` when none is
/// ahead by [`CATCH_UP_MIN`] or the one ahead does not answer well.
pub(super) async fn catch_up(
    coordinator: &Coordinator,
    flight: &Flight,
    ask: BlobAsk<'_>,
    gone: &str,
    from: u64,
) -> Option<(String, Response<Incoming>, u64)> {
    let cluster = coordinator.cluster.as_ref()?;
    let key = OwnerKey::Blob {
        digest: &flight.digest,
        target: ask.target,
    };
    if cluster.owner(key).is_some() {
        // Another replica owns it now: it goes on with the download.
        return None;
    }
    let mut peers = cluster.live_for(&ask.target.registry.name);
    peers.retain(|p| p != gone);
    let client = flight.origin.addr();
    let asked = peers.iter().map(|p| cluster.progress(p, ask, client));
    let answers = futures::future::join_all(asked).await;
    let (peer, have) = peers
        .into_iter()
        .zip(answers)
        .filter_map(|(p, a)| Some((p, a.ok()??)))
        .max_by_key(|(_, have)| *have)?;
    if have < from.saturating_add(CATCH_UP_MIN) {
        return None;
    }
    let last = have - 1;
    let digest = &flight.digest;
    tracing::info!(%digest, gone, peer = %peer, from, to = have,
        "the blob's owner is gone and this replica owns it; taking what another replica has before the upstream");
    coordinator.metrics.cluster.requests_out.inc();
    let resp = cluster
        .get_blob_part(&peer, ask, client, (from, Some(last)), direct())
        .await
        .ok()?;
    let range = crate::upstream::headers::content_range(resp.headers());
    if resp.status() != StatusCode::PARTIAL_CONTENT || range != Some((from, last)) {
        tracing::info!(%digest, peer = %peer, status = resp.status().as_u16(),
            "the replica ahead did not send the range; going on from the upstream");
        return None;
    }
    coordinator.metrics.cluster.catch_ups.inc();
    Some((peer, resp, have))
}
