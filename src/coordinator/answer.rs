//! What serves a `GET` of a blob, decided in one place: a redirect to the
//! shared tier, a range read from the shared tier, a far range passed
//! through from the upstream, or a [`BlobHandle`] (in memory, stored, in
//! flight, uncached) streamed whole or in part. The HTTP adapter only
//! renders the [`BlobAnswer`] this returns; it decides nothing.
//!
//! The order: with `redirect: true`, a blob the shared tier holds is a 307
//! to a presigned URL. A range of a blob this replica does not have but
//! the shared tier does is one ranged GET on the bucket, streamed through
//! (a lazy-pulling snapshotter reading a footer does not make the replica
//! copy the whole blob). Everything else opens the blob
//! ([`Coordinator::open_blob`]: access, store, join or start the fetch),
//! and a range that starts far beyond a download in flight is its own
//! upstream request, not cached.

use std::sync::Arc;

use http::{Method, StatusCode};

use super::flight::{Flight, Progress};
use super::handle::BlobHandle;
use super::pace::Tail;
use super::passthrough;
use super::reader::BlobStream;
use super::state::Coordinator;
use super::tree::Placed;
use crate::metrics::CacheStatus;
use crate::oci::{ByteRange, Digest, ErrorCode, RangeRequest, RegistryError};
use crate::routing::Resolved;
use crate::upstream::headers::content_range;
use crate::upstream::{PassedBody, UpstreamError};

/// How ranges of blobs not yet verified are served.
#[derive(Debug, Clone, Copy)]
pub struct RangePolicy {
    /// A range starting this far beyond the download is its own upstream
    /// request (`ferry.farRangeDistance`).
    pub far: u64,
    /// `ferry.verifiedRanges`: a range of a blob in flight ends cleanly
    /// only once the blob was verified, and is never passed through.
    pub verified: bool,
}

/// The bytes of an answer.
pub enum BlobBody {
    /// Read by ferry: from memory, the store, the spool or the bucket.
    Stream(BlobStream),
    /// An upstream body passed through as it is.
    Passed(Box<PassedBody>),
}

/// How a `GET` of a blob is answered.
pub enum BlobAnswer {
    /// `307` to a presigned URL: the client downloads from the bucket.
    Redirect { url: String },
    /// The whole blob (`200`); its last byte is held back until the digest
    /// matched, so a response that completes was verified.
    Whole { body: BlobBody, size: Option<u64> },
    /// Bytes `start..=last` of `size` (`206`). `verified`: the bytes were
    /// (or before the stream ends cleanly, will have been) checked against
    /// the digest, so the answer may assert it.
    Part {
        body: BlobBody,
        start: u64,
        last: u64,
        size: u64,
        verified: bool,
    },
    /// The range lies outside the blob's `size` bytes (`416`).
    Unsatisfiable { size: u64 },
    /// Several ranges (`206 multipart/byteranges`, see `multipart.rs`):
    /// `length` bytes in all, parts separated by `boundary`.
    Parts {
        body: BlobStream,
        length: u64,
        boundary: String,
    },
    /// To a peer: ask the relay `to` instead (a signed `307`; this replica
    /// sends the blob to `fanout` peers already, see `tree.rs`).
    Relay { to: String },
    /// To a peer pointed here: this replica neither holds nor receives the
    /// blob, and does not fetch it for a relay request (a signed `421`).
    NotHere,
}

/// How long a presigned URL handed to a client stays valid.
const PRESIGNED_FOR: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Coordinator {
    /// Decides what answers a `GET` of `digest` under `repo` with `range`
    /// (already checked against `If-Range`), and opens it. A download this
    /// request joined that failed before its first byte because a cluster
    /// peer lied about the blob is joined (or started) once more: the liar
    /// is out by then, and the client never sees the first one.
    pub async fn get_blob(
        self: &Arc<Self>,
        repo: &Resolved,
        digest: &Digest,
        range: Option<ByteRange>,
        policy: RangePolicy,
    ) -> Result<(BlobAnswer, CacheStatus), RegistryError> {
        let start = range.and_then(ByteRange::first_byte).unwrap_or(0);
        let tail = match self.place(repo, digest, start).await {
            Placed::Relay { to } => return Ok((BlobAnswer::Relay { to }, CacheStatus::Joined)),
            Placed::NotHere => return Ok((BlobAnswer::NotHere, CacheStatus::Joined)),
            Placed::Child(tail) => Some(tail),
            Placed::Client => None,
        };
        let answered = match self.get_blob_once(repo, digest, range, policy).await {
            Err(Failed(_, Some(lost))) => {
                // Not joined again: the failed download leaves the map now.
                self.finish(&lost);
                self.get_blob_once(repo, digest, range, policy)
                    .await
                    .map_err(|f| f.0)
            }
            other => other.map_err(|f| f.0),
        };
        match tail {
            Some(tail) => answered.map(|(answer, cache)| (sent_to(tail, answer), cache)),
            None => answered,
        }
    }

    /// Answers a `GET` of `digest` with several ranges (`set`, already
    /// checked against `If-Range`): a multipart `206` of the parts, a
    /// plain `206` when they coalesce into one, `416` when none lies inside
    /// the blob, and the whole blob (`200`) when its size is unknown or it
    /// is served uncached. A client's request only: a peer asks for one
    /// range at most.
    pub async fn get_blob_parts(
        self: &Arc<Self>,
        repo: &Resolved,
        digest: &Digest,
        set: &crate::oci::RangeSet,
        policy: RangePolicy,
    ) -> Result<(BlobAnswer, CacheStatus), RegistryError> {
        let handle = self.open_blob(repo, digest).await?;
        let cache = handle.cache_status();
        let size = handle.size();
        let whole = |handle: BlobHandle| BlobAnswer::Whole {
            body: BlobBody::Stream(handle.stream(0, None)),
            size,
        };
        let (Some(size), false) = (size, matches!(handle, BlobHandle::Uncached { .. })) else {
            return Ok((whole(handle), cache));
        };
        let answer = match set.resolve(size) {
            crate::oci::Parts::Unsatisfiable => BlobAnswer::Unsatisfiable { size },
            crate::oci::Parts::One { start, last } => {
                let (body, verified) = part(handle, start, last, policy);
                BlobAnswer::Part {
                    body: BlobBody::Stream(body),
                    start,
                    last,
                    size,
                    verified,
                }
            }
            crate::oci::Parts::Many(parts) => {
                // Not uncached (answered whole above): a body always.
                let m = super::multipart::body(handle, &parts, size, policy.verified)
                    .ok_or_else(|| super::flight::FetchFailure::Abandoned.to_registry_error())?;
                BlobAnswer::Parts {
                    body: m.body,
                    length: m.length,
                    boundary: m.boundary,
                }
            }
        };
        Ok((answer, cache))
    }

    async fn get_blob_once(
        self: &Arc<Self>,
        repo: &Resolved,
        digest: &Digest,
        range: Option<ByteRange>,
        policy: RangePolicy,
    ) -> Result<(BlobAnswer, CacheStatus), Failed> {
        // A peer asks for the rest of a blob whose owner died: it is served
        // as it arrives (the peer verifies the whole), never passed through
        // (that would be a second upstream download).
        let policy = match repo.origin.is_peer() {
            true => RangePolicy {
                far: u64::MAX,
                verified: false,
            },
            false => policy,
        };
        // The shared tier is asked once per request, and only when its
        // answer decides something: a redirect, or a range this replica
        // cannot serve from its own copy.
        let redirects = self.shared.as_ref().is_some_and(|s| s.redirects());
        let wants_part = range.is_some() && self.shared.is_some() && !self.is_local(digest).await;
        if redirects || wants_part {
            if let Some(size) = self.shared_blob(repo, digest).await {
                if redirects {
                    if let Some(url) = self.presign(digest).await {
                        return Ok((BlobAnswer::Redirect { url }, CacheStatus::Redirect));
                    }
                }
                if let (true, Some(range)) = (wants_part, range) {
                    if let Some(part) = self.shared_part(repo, digest, range, size).await {
                        return Ok((part, CacheStatus::Shared));
                    }
                }
            }
        }
        // Content this request did not fetch itself is opened only if it
        // belongs to this repository (see `open_blob`).
        let handle = self.open_blob(repo, digest).await?;
        let cache = handle.cache_status();
        let size = handle.size();
        // An uncached blob streams whole: ranges are ignored (a 200 is allowed).
        let range = range.filter(|_| !matches!(handle, BlobHandle::Uncached { .. }));
        let wanted = match (range, size) {
            (Some(r), Some(s)) => r.resolve(s),
            _ => RangeRequest::Full,
        };
        let flight = handle.flight().cloned();
        let answer = match wanted {
            RangeRequest::Full => {
                let stream = first_bytes(handle.stream(0, None), flight.as_ref())
                    .await
                    .map_err(|e| Failed::after(e, flight.as_ref()))?;
                BlobAnswer::Whole {
                    body: BlobBody::Stream(stream),
                    size,
                }
            }
            RangeRequest::Partial { start, last }
                if !policy.verified
                    && is_far(&handle, start, policy.far)
                    && last - start < policy.far =>
            {
                // Far beyond the download, and short (a footer, a chunk):
                // its own upstream request, not cached and not verified. A
                // long one (a client resuming a download far ahead of this
                // replica's) waits for the download instead: passing it
                // through would fetch the rest of the blob twice.
                let passed = self.fetch_range(repo, digest, start, last).await?;
                let part = BlobAnswer::Part {
                    body: BlobBody::Passed(Box::new(passed)),
                    start,
                    last,
                    size: size.expect("ranges need a size"),
                    verified: false,
                };
                return Ok((part, CacheStatus::Passthrough));
            }
            RangeRequest::Partial { start, last } => {
                // A range of a blob still downloading is served as it
                // arrives (what a ranged pull from the upstream gives; lazy
                // pullers and parallel range downloads verify what they
                // assemble), so it asserts no digest; with verifiedRanges it
                // waits for the digest.
                let (stream, verified) = part(handle, start, last, policy);
                BlobAnswer::Part {
                    body: BlobBody::Stream(
                        first_bytes(stream, flight.as_ref())
                            .await
                            .map_err(|e| Failed::after(e, flight.as_ref()))?,
                    ),
                    start,
                    last,
                    size: size.expect("ranges need a size"),
                    verified,
                }
            }
            RangeRequest::Unsatisfiable => BlobAnswer::Unsatisfiable {
                size: size.unwrap_or(0),
            },
        };
        Ok((answer, cache))
    }

    /// A presigned URL of the blob in the shared tier (which holds it, and
    /// it may be served under the request's repository).
    async fn presign(&self, digest: &Digest) -> Option<String> {
        let shared = self.shared.as_ref()?;
        match shared.presign(digest, PRESIGNED_FOR).await {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot presign; serving the blob itself");
                None
            }
        }
    }

    /// A range of a blob this replica does not have but the shared tier
    /// does (`size` bytes there): one ranged GET on the bucket, streamed
    /// through and bounded (see [`passthrough::shared_range`]). `None`
    /// sends the request the normal way.
    async fn shared_part(
        &self,
        repo: &Resolved,
        digest: &Digest,
        range: ByteRange,
        size: u64,
    ) -> Option<BlobAnswer> {
        let shared = self.shared.as_ref()?;
        let RangeRequest::Partial { start, last } = range.resolve(size) else {
            return None;
        };
        let idle = super::fill::bucket_timeouts(repo).idle_read;
        let body = match passthrough::shared_range(shared, digest, start, last, idle).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "ranged read from the shared tier failed");
                return None;
            }
        };
        self.metrics.shared_read_bytes.inc_by(last - start + 1);
        Some(BlobAnswer::Part {
            body: BlobBody::Stream(BlobStream::from_stream(body)),
            start,
            last,
            size,
            verified: true,
        })
    }

    /// A byte range straight from upstream, not cached: for a range far
    /// beyond what the fetch in flight has written (lazy-pulling
    /// snapshotters read a blob's footer first).
    async fn fetch_range(
        &self,
        repo: &Resolved,
        digest: &Digest,
        start: u64,
        last: u64,
    ) -> Result<PassedBody, RegistryError> {
        let range = format!("bytes={start}-{last}");
        let range = range.as_str();
        repo.first(|t| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::RANGE, range.parse().expect("valid header"));
            async move {
                let resp = t
                    .blob(Method::GET, digest, headers, StatusCode::PARTIAL_CONTENT)
                    .await?;
                if content_range(resp.headers()).is_some_and(|(a, b)| a == start && b == last) {
                    Ok(resp)
                } else {
                    Err(UpstreamError::Protocol {
                        url: t.registry.upstream.url(&t.blob_path(digest)).to_string(),
                        cause: format!("answered {range} with another range"),
                    })
                }
            }
        })
        .await
        .map(|(resp, t)| t.passed_body(digest, resp.into_body(), last - start + 1))
        .map_err(|e| e.to_registry_error(ErrorCode::BlobUnknown))
    }
}

/// For a blob still downloading, waits for the response's first bytes
/// before answering, so a fetch that fails before any byte reached this
/// client is a clean error status (the fetch's own), not a connection
/// reset before the response head. Other streams go as they are. A fetch
/// that fails later still ends the body in an error, never cleanly.
/// Why a `GET` of a blob failed, and the download it joined when that is
/// worth one more try (it failed before this request's first byte because
/// a peer lied).
/// Bytes `start..=last` of `handle`, and whether they may assert the
/// digest: with `verifiedRanges` the range ends cleanly only once the blob
/// was verified; else it is served as it arrives, verified or not.
fn part(handle: BlobHandle, start: u64, last: u64, policy: RangePolicy) -> (BlobStream, bool) {
    if policy.verified {
        (handle.stream_verified(start, Some(last + 1)), true)
    } else {
        let verified = handle.is_verified();
        (handle.stream(start, Some(last + 1)), verified)
    }
}

struct Failed(RegistryError, Option<Arc<Flight>>);

impl From<RegistryError> for Failed {
    fn from(e: RegistryError) -> Failed {
        Failed(e, None)
    }
}

impl Failed {
    fn after(e: RegistryError, flight: Option<&Arc<Flight>>) -> Failed {
        let lost = flight.filter(|f| f.lost_to_a_peer_lie()).cloned();
        Failed(e, lost)
    }
}

async fn first_bytes(
    mut stream: BlobStream,
    flight: Option<&Arc<Flight>>,
) -> Result<BlobStream, RegistryError> {
    let Some(flight) = flight else {
        return Ok(stream);
    };
    let first = futures::StreamExt::next(&mut stream).await;
    // All written, only the digest outstanding (a small blob is all in its
    // first chunk): its outcome is a moment away, and a failure after the
    // head could be a reset before the head reaches the client.
    let mut rx = flight.subscribe();
    let all_written =
        matches!(*rx.borrow(), Progress::Streaming { size: Some(s), written } if written >= s);
    if all_written {
        let _ = rx
            .wait_for(|p| !matches!(p, Progress::Streaming { .. }))
            .await;
    }
    if let Progress::Failed(why) = flight.progress() {
        return Err(why.to_registry_error());
    }
    match first {
        None => Ok(stream),
        Some(Ok(first)) => Ok(stream.prepend(first)),
        Some(Err(e)) => Err(match flight.progress() {
            Progress::Failed(why) => why.to_registry_error(),
            _ => RegistryError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Unavailable,
                format!("blob {}: {e}", flight.digest),
            ),
        }),
    }
}

/// True when `start` lies more than `distance` bytes beyond what the fetch
/// in flight has written.
fn is_far(handle: &BlobHandle, start: u64, distance: u64) -> bool {
    match handle {
        BlobHandle::InFlight { flight, .. } => match *flight.subscribe().borrow() {
            Progress::Streaming { written, .. } => start > written.saturating_add(distance),
            _ => false,
        },
        _ => false,
    }
}

/// `answer` to a peer's request, its bytes reported to `tail` (the peer's
/// place among the blob's children: its position paces the download, see
/// `pace.rs`, and others may be pointed to it). An answer without a stream
/// drops the tail: the peer is no child.
pub(super) fn sent_to(tail: Tail, answer: BlobAnswer) -> BlobAnswer {
    match answer {
        BlobAnswer::Whole {
            body: BlobBody::Stream(s),
            size,
        } => BlobAnswer::Whole {
            body: BlobBody::Stream(s.reporting_to(Some(tail))),
            size,
        },
        BlobAnswer::Part {
            body: BlobBody::Stream(s),
            start,
            last,
            size,
            verified,
        } => {
            tail.starts_at(start);
            BlobAnswer::Part {
                body: BlobBody::Stream(s.reporting_to(Some(tail))),
                start,
                last,
                size,
                verified,
            }
        }
        other => other,
    }
}
