//! Moving a body into the spool: the one pump every source uses, and the
//! resume loop around it for upstream transfers.
//!
//! [`pump`] reads a body chunk by chunk (an idle read longer than the
//! configured timeout, or a rate below `minReadRate`, breaks it), holds
//! chunks back briefly so the writer gets bursts, and hands them to the
//! [`Spool`]. [`upstream`] resumes a broken upstream transfer from the
//! bytes already received with `Range: bytes=<n>-` (and `If-Range` when
//! the upstream gave a strong ETag); an upstream that ignores the range and
//! sends the whole blob again is read past what is already written.
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
use super::spool::Spool;
use super::state::Coordinator;
use crate::cluster::BlobAsk;
use crate::config::Timeouts;
use crate::oci::{Digest, RepoName};
use crate::routing::{FetchPermit, FetchSlots, Target};
use crate::upstream::headers::{content_length, content_range_start, content_range_total};
use crate::upstream::{error_chain, retry, RateFloor, UpstreamError};

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
                let watch = Some(Watch {
                    flight,
                    slots: permit.slots(),
                    permit,
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
            if let Some(peer) = from_peer.as_ref().filter(|_| flight.is_poisoned()) {
                // Its bytes so far are suspect: nothing of this fill is kept.
                break Err(FetchFailure::PeerLied {
                    peer: peer.0.clone(),
                });
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
                        flight.now_from(&ahead);
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

/// How one pass of the pump ended, when not cleanly.
enum Pump {
    /// The transfer broke; resume may fix it.
    Broken(UpstreamError),
    /// The body arrived slower than `minReadRate`.
    TooSlow(UpstreamError),
    /// The writer stopped (it reports why).
    WriterGone,
    /// Nobody reads the download, and someone waits for its fetch slot or
    /// the registry's orphan budget is spent (which, for the log).
    Deserted(&'static str),
}

impl From<super::spool::WriterGone> for Pump {
    fn from(_: super::spool::WriterGone) -> Pump {
        Pump::WriterGone
    }
}

/// Where a transfer stands across attempts.
struct Position<'a> {
    /// Bytes of the blob handed to the spool so far.
    received: &'a mut u64,
    /// Bytes still to drop from this body (already written by an earlier
    /// attempt whose range the upstream ignored).
    skip: &'a mut u64,
}

/// What a pump watches to give up a download nobody reads.
struct Watch<'a> {
    flight: &'a Flight,
    slots: &'a FetchSlots,
    permit: &'a FetchPermit,
}

impl Watch<'_> {
    /// Resolves when the flight has no client left while some other
    /// download waits for a slot that this permit is then promised to give
    /// (a client may come back meanwhile: then it waits for that one to
    /// leave too).
    async fn deserted(&self) {
        loop {
            self.flight.deserted().await;
            self.slots.wanted().await;
            if self.flight.clients() == 0 && self.permit.give_way() {
                return;
            }
        }
    }

    /// Charges `n` bytes to the orphan budget when nobody reads the flight;
    /// false once the budget is spent.
    fn within_budget(&self, n: u64) -> bool {
        self.flight.clients() > 0 || self.permit.charge_orphaned(n)
    }
}

/// Moves one body to the spool. With `watch`, gives up when the flight is
/// deserted while others want its registry's fetch slot, or when it brings
/// more orphaned bytes than its registry's budget.
async fn pump(
    mut body: Chunks<'_>,
    spool: &Spool,
    pos: &mut Position<'_>,
    timeouts: &Timeouts,
    url: &str,
    counted: &Counter,
    watch: Option<Watch<'_>>,
) -> Result<(), Pump> {
    let given_up = async {
        match &watch {
            Some(w) => w.deserted().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(given_up);
    let idle = timeouts.idle_read;
    let mut floor = RateFloor::new(timeouts.min_read_rate, idle);
    let started = tokio::time::Instant::now();
    // Chunks are held back briefly and handed to the writer in bursts: the
    // writer thread then wakes once per burst, and publishes (waking the
    // readers) once per burst, instead of once per network frame.
    let mut held = Held::default();
    let mut flush_at = tokio::time::Instant::now();
    loop {
        let deadline = if held.is_empty() {
            tokio::time::Instant::now() + idle
        } else {
            flush_at
        };
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, body.next()) => next,
            () = &mut given_up => return Err(Pump::Deserted("another download waits for a fetch slot")),
        };
        let mut data = match next {
            Err(_) if !held.is_empty() => {
                held.flush(spool).await?;
                continue;
            }
            Err(_) => {
                return Err(Pump::Broken(UpstreamError::Timeout {
                    url: url.to_string(),
                    phase: "reading the blob body",
                }))
            }
            Ok(None) => {
                held.flush(spool).await?;
                return Ok(());
            }
            Ok(Some(Err(cause))) => {
                held.flush(spool).await?;
                return Err(Pump::Broken(UpstreamError::Body {
                    url: url.to_string(),
                    cause,
                }));
            }
            Ok(Some(Ok(data))) => data,
        };
        counted.inc_by(data.len() as u64);
        if let Some(w) = &watch {
            if !w.within_budget(data.len() as u64) {
                return Err(Pump::Deserted(
                    "its registry's orphanedBytesPerRegistry is spent",
                ));
            }
        }
        if floor.too_slow(data.len() as u64, started.elapsed()) {
            held.flush(spool).await?;
            return Err(Pump::TooSlow(UpstreamError::Timeout {
                url: url.to_string(),
                phase: "reading the blob body (slower than ferry.minReadRate)",
            }));
        }
        if *pos.skip > 0 {
            let n = (*pos.skip).min(data.len() as u64);
            *pos.skip -= n;
            data = data.slice(n as usize..);
            if data.is_empty() {
                continue;
            }
        }
        let first = *pos.received == 0;
        *pos.received += data.len() as u64;
        if held.is_empty() {
            flush_at = tokio::time::Instant::now() + HOLD_FOR;
        }
        held.push(data);
        if held.bytes >= HOLD_BYTES || first {
            held.flush(spool).await?;
        }
    }
}

/// A frame is held at most this long for more to join it (the first
/// burst of a transfer is handed over at once, for the first byte's sake).
const HOLD_FOR: std::time::Duration = std::time::Duration::from_millis(4);

/// A burst is handed over once it holds this many bytes.
const HOLD_BYTES: usize = 512 * 1024;

/// Frames received but not yet handed to the writer.
#[derive(Default)]
struct Held {
    frames: Vec<Bytes>,
    bytes: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.bytes += b.len();
        self.frames.push(b);
    }

    async fn flush(&mut self, spool: &Spool) -> Result<(), Pump> {
        if self.frames.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let burst = std::mem::take(&mut self.frames);
        Ok(spool.send(burst).await?)
    }
}
