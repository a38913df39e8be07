//! A transfer into the spool and the resume loop around it: from the
//! upstream, or from the owning peer and whoever takes over when it dies.
//!
//! Each pass of a body is one [`pump`]. [`upstream`] resumes a broken
//! upstream transfer from the bytes already received with
//! `Range: bytes=<n>-` (and `If-Range` when the upstream gave a strong
//! ETag); an upstream that ignores the range and sends the whole blob again
//! is read past what is already written.
//! Readers see a pause, not an error; only when `maxRetries` consecutive
//! attempts make no progress does the fetch fail. [`copy`] is one pass of
//! the same pump over another source (the shared tier), without resuming.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http::header::{ETAG, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use super::flight::{FetchFailure, Flight};
use super::pace::{self, Pacing};
use super::pump::{pump, Position, Pump, Watch};
use super::spool::Spool;
use super::state::Coordinator;
use crate::cluster::BlobAsk;
use crate::config::Timeouts;
use crate::oci::{Digest, RepoName};
use crate::routing::{FetchPermit, Target};
use crate::upstream::headers::{content_length, content_range_start, content_range_total};
use crate::upstream::{error_chain, retry, UpstreamError};

pub(super) use super::peer_body::PeerTrail;
use super::peer_body::{self, Chunks, PeerSide};

/// The data frames of an upstream body.
fn chunks(body: Incoming) -> Chunks<'static> {
    body.into_data_stream().map_err(|e| error_chain(&e)).boxed()
}

/// Where the first response of a transfer came from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// The registry of the target.
    Upstream,
    /// A cluster peer (the owner of the digest), asked for the blob of
    /// `local`. Its bytes are counted in `counted`; if it dies, the rest
    /// comes from the digest's next owner, else from the upstream.
    Peer {
        name: &'a str,
        local: &'a RepoName,
        counted: &'a Counter,
    },
}

/// A fill takes bytes from at most this many owners of a digest: the
/// first, and its successor when it dies (then the upstream).
const MAX_OWNERS: usize = 2;

/// Streams the response `first` (from `source`) into a new spool, resuming
/// broken transfers at the upstream, and returns the verified size and the
/// peers it took bytes from. The transfer holds `permit`, one of the
/// registry's fetch slots (or the cluster's fill slots), and gives it up
/// when nobody reads it (see [`Watch`]).
pub(super) async fn upstream(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    target: &Target,
    first: Response<Incoming>,
    permit: &FetchPermit,
    source: Source<'_>,
) -> (Result<u64, FetchFailure>, PeerTrail) {
    let mut trail = PeerTrail::default();
    let result = transfer(
        coordinator,
        flight,
        target,
        first,
        permit,
        source,
        &mut trail,
    )
    .await;
    (result, trail)
}

async fn transfer(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    target: &Target,
    first: Response<Incoming>,
    permit: &FetchPermit,
    source: Source<'_>,
    trail: &mut PeerTrail,
) -> Result<u64, FetchFailure> {
    let digest = &flight.digest;
    let size = content_length(first.headers());
    // A peer's ETag is its own, not the upstream's: no If-Range with it.
    let etag = match source {
        Source::Upstream => first
            .headers()
            .get(ETAG)
            .filter(|t| !t.as_bytes().starts_with(b"W/"))
            .cloned(),
        Source::Peer { .. } => None,
    };

    let spool = Spool::start(coordinator, flight, size, coordinator.max_blob_size).await?;
    if let (Some(shared), Source::Upstream) = (coordinator.shared.clone(), source) {
        // The owner uploads; a replica filled by it has nothing to add.
        super::mirror::start(shared, flight, coordinator.metrics.clone());
    }

    let upstream = &target.registry.upstream;
    let (policy, cap) = upstream.retry_policy();
    let timeouts = upstream.timeouts();
    let url = upstream.url(&target.blob_path(digest)).to_string();
    let fetched = &upstream.stats().bytes;
    let mut received: u64 = 0;
    let mut skip: u64 = 0;
    let mut failures: u32 = 0;
    let mut progress_mark: u64 = 0;
    let mut response = Some(first);
    // A peer transfer holds a fill slot; once it goes on from the upstream
    // it takes one of the registry's fetch slots too, so the registry's
    // bound holds (a fill slot never waits on another replica's slots).
    let mut upstream_permit: Option<FetchPermit> = None;
    // Set while a bounded range from a replica ahead is read (its end).
    let mut catching_up: Option<u64> = None;
    let mut caught_up_once = false;
    let mut from_peer = match source {
        Source::Peer { name, counted, .. } => {
            trail.sent.push(name.to_string());
            Some((name.to_string(), counted))
        }
        Source::Upstream => None,
    };
    let network: Result<(), FetchFailure> = loop {
        let before = received;
        let attempt = match response.take() {
            Some(resp) => {
                let mut pos = Position {
                    received: &mut received,
                    skip: &mut skip,
                };
                let permit = upstream_permit.as_ref().unwrap_or(permit);
                // Read from the upstream (not a peer), it keeps up with
                // the peers it feeds: what they lack is lost if it dies.
                let pacing = match (&from_peer, coordinator.cluster.as_deref()) {
                    (None, Some(cluster)) => Some(Pacing {
                        pace: &flight.pace,
                        lead: pace::lead_for(size),
                        bound: cluster.peer_timeout(),
                        metrics: &coordinator.metrics.cluster,
                    }),
                    _ => None,
                };
                let watch = Some(Watch {
                    flight,
                    slots: permit.slots(),
                    permit,
                    pacing,
                });
                let body = chunks(resp.into_body());
                match &from_peer {
                    Some((peer, counted)) => {
                        let peer_url = format!("peer {peer} ({digest})");
                        let body = match (coordinator.cluster.as_deref(), source) {
                            (Some(cluster), Source::Peer { local, .. }) => {
                                let side = PeerSide {
                                    cluster,
                                    peer,
                                    ask: BlobAsk {
                                        local,
                                        target,
                                        digest,
                                    },
                                    client: flight.origin.addr(),
                                    start: *pos.received - *pos.skip,
                                    flight,
                                };
                                peer_body::watched(body, side)
                            }
                            _ => body,
                        };
                        pump(body, &spool, &mut pos, &timeouts, &peer_url, counted, watch).await
                    }
                    None => pump(body, &spool, &mut pos, &timeouts, &url, fetched, watch).await,
                }
            }
            None => Err(Pump::Broken(UpstreamError::Protocol {
                url: url.clone(),
                cause: "no response to resume from".into(),
            })),
        };
        // A peer that sent nothing of this body is not in the trail: it
        // is blamed for nothing the others sent.
        if from_peer.is_some() && received == before && skip == 0 {
            trail.sent.pop();
        }
        // A bounded range from a replica ahead (after the owner died) is
        // in: the rest comes from the upstream.
        let caught_up = matches!(attempt, Ok(()))
            && catching_up == Some(received)
            && size.is_some_and(|s| received < s);
        if let Some(peer) = flight.poisoned_by().filter(|_| caught_up) {
            // A peer whose bytes the spool took was reported lying.
            break Err(FetchFailure::PeerLied { peer });
        }
        if caught_up {
            tracing::info!(%digest, received, "caught up with the replica ahead; continuing from the upstream");
            from_peer = None;
            catching_up = None;
            flight.left_peer();
            let queued = &coordinator.metrics.fetches_queued;
            match flight.slot(&target.registry.fetch_slots, queued).await {
                Some(p) => upstream_permit = Some(p),
                None => break Err(FetchFailure::Deserted),
            }
        } else {
            let (broken, too_slow) = match attempt {
                Ok(()) | Err(Pump::WriterGone) => {
                    trail.finished = from_peer.is_some();
                    break Ok(());
                }
                Err(Pump::Deserted(why)) => {
                    tracing::info!(%digest, registry = %target.registry.name, received,
                        "blob download cancelled: no client reads it and {why}");
                    break Err(FetchFailure::Deserted);
                }
                Err(Pump::Broken(e)) => (e, false),
                Err(Pump::TooSlow(e)) => (e, true),
            };
            if let Some(peer) = flight.poisoned_by().filter(|_| from_peer.is_some()) {
                // Its bytes so far are suspect: nothing of this fill is kept.
                break Err(FetchFailure::PeerLied { peer });
            }
            if let Some((peer, counted)) = from_peer.take() {
                catching_up = None;
                // The owner broke off, or is too slow: the rest comes from its
                // successor if it died, else from the upstream, from where the
                // transfer is, at once (no retry is spent: the upstream has
                // not failed).
                tracing::warn!(%digest, peer, received, error = %broken,
                    "peer transfer broke; continuing elsewhere");
                let cluster = coordinator.cluster.as_deref();
                match cluster.filter(|c| c.is_live(&peer)) {
                    Some(cluster) => {
                        let reason = if too_slow { "slow" } else { "broken" };
                        coordinator.metrics.cluster.fell_back("broken");
                        cluster.fail(&peer, reason);
                    }
                    // Left out meanwhile (its probe failed): already counted.
                    None => coordinator.metrics.cluster.fell_back("left_out"),
                }
                // A slow owner is alive: its successor is fed by it too.
                let handover = !too_slow && trail.sent.len() < MAX_OWNERS;
                if let (Source::Peer { local, .. }, true) = (source, handover) {
                    let ask = BlobAsk {
                        local,
                        target,
                        digest,
                    };
                    let next = super::ask::successor(coordinator, flight, ask, &peer, received);
                    if let Some((next, resp, already)) = next.await {
                        // The same blob: its whole length, as announced first.
                        let same = match resp.status() {
                            StatusCode::OK => content_length(resp.headers()) == size,
                            _ => content_range_total(resp.headers()) == size,
                        };
                        if same {
                            skip = already;
                            response = Some(resp);
                            trail.sent.push(next.clone());
                            flight.now_from(&next);
                            from_peer = Some((next, counted));
                            continue;
                        }
                    }
                }
                if let (Source::Peer { local, .. }, false) = (source, caught_up_once) {
                    // This replica owns the blob now: first what it lacks
                    // of what a replica ahead of it has, then the upstream.
                    let ask = BlobAsk {
                        local,
                        target,
                        digest,
                    };
                    let ahead = super::ask::catch_up(coordinator, flight, ask, &peer, received);
                    let ahead = ahead
                        .await
                        .filter(|(_, r, _)| content_range_total(r.headers()) == size);
                    if let Some((ahead, resp, end)) = ahead {
                        caught_up_once = true;
                        catching_up = Some(end);
                        skip = 0;
                        response = Some(resp);
                        trail.sent.push(ahead.clone());
                        flight.catching_up_from(&ahead);
                        from_peer = Some((ahead, counted));
                        continue;
                    }
                }
                flight.left_peer();
                let queued = &coordinator.metrics.fetches_queued;
                match flight.slot(&target.registry.fetch_slots, queued).await {
                    Some(p) => upstream_permit = Some(p),
                    None => break Err(FetchFailure::Deserted),
                }
            } else {
                // A drip makes some progress on every attempt; it must not earn
                // fresh retries with it.
                if received > progress_mark && !too_slow {
                    failures = 0;
                    progress_mark = received;
                }
                failures += 1;
                if failures > policy.max_retries {
                    break Err(FetchFailure::Upstream(broken));
                }
                tracing::info!(digest = %digest, registry = %target.registry.name, received, error = %broken,
                    attempt = failures, "blob transfer broke; resuming");
                upstream.stats().resumes.inc();
                tokio::time::sleep(retry::backoff(&policy, failures - 1, cap)).await;
            }
        }
        match request(target, digest, received, etag.as_ref()).await {
            Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                if content_range_start(resp.headers()) == Some(received) {
                    skip = 0;
                    response = Some(resp);
                } else {
                    tracing::warn!(%digest, "upstream answered the resume with another range; retrying");
                }
            }
            Ok(resp) if resp.status() == StatusCode::OK => {
                // Range ignored (or If-Range failed): the whole blob again.
                if size.is_some() && content_length(resp.headers()) != size {
                    break Err(FetchFailure::Upstream(UpstreamError::Protocol {
                        url: url.clone(),
                        cause: "the blob changed size between attempts".into(),
                    }));
                }
                skip = received;
                response = Some(resp);
            }
            Ok(resp) => {
                tracing::warn!(%digest, status = resp.status().as_u16(), "resume request refused");
            }
            Err(e) => tracing::warn!(%digest, error = %e, "resume request failed"),
        }
    };
    let written = spool.finish(network).await;
    if let Err(FetchFailure::Store(e)) = &written {
        // Disk full or I/O error: readers of this fetch are aborted; the
        // next requests are served uncached until the store recovers.
        tracing::warn!(%digest, error = %e, "store write failed; not caching for a while");
        coordinator.lifecycle.space.mark_write_failed(e.clone());
    }
    written
}

/// One pass of `body` (of `size` bytes, from `source`) into a new spool,
/// with the same batching, idle timeout and rate floor as an upstream
/// transfer, and no resume. Returns the verified size.
pub(super) async fn copy(
    coordinator: &Arc<Coordinator>,
    flight: &Arc<Flight>,
    body: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    size: u64,
    source: &str,
    timeouts: &Timeouts,
    counted: &Counter,
) -> Result<u64, FetchFailure> {
    let spool = Spool::start(coordinator, flight, Some(size), size).await?;
    let (mut received, mut skip) = (0, 0);
    let mut pos = Position {
        received: &mut received,
        skip: &mut skip,
    };
    let body = body.map_err(|e| e.to_string()).boxed();
    let network = match pump(body, &spool, &mut pos, timeouts, source, counted, None).await {
        Ok(()) | Err(Pump::WriterGone) => Ok(()),
        Err(Pump::Broken(e) | Pump::TooSlow(e)) => Err(FetchFailure::Upstream(e)),
        Err(Pump::Deserted(_)) => Err(FetchFailure::Deserted),
    };
    spool.finish(network).await
}

/// `GET` of the blob at one registry, from `offset` on.
async fn request(
    target: &Target,
    digest: &Digest,
    offset: u64,
    etag: Option<&HeaderValue>,
) -> Result<Response<Incoming>, UpstreamError> {
    let mut headers = HeaderMap::new();
    if offset > 0 {
        headers.insert(
            RANGE,
            HeaderValue::from_str(&format!("bytes={offset}-")).expect("valid"),
        );
        if let Some(tag) = etag {
            headers.insert(IF_RANGE, tag.clone());
        }
    }
    target
        .registry
        .upstream
        .request_now(Method::GET, &target.blob_path(digest), headers)
        .await
}
