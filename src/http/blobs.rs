//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: a stored blob, or one joined or
//! started through the coordinator, with single-range support.

use std::sync::Arc;

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

use super::range::{self, RangeRequest};
use super::response::{self, Body, DIGEST_HEADER};
use crate::coordinator::{BlobHandle, BlobStream, Coordinator, Flight, Progress};
use crate::metrics::CacheStatus;
use crate::oci::{Digest, RegistryError};
use crate::routing::{Requester, Resolved};

/// The answer and where it came from, for the access log.
pub type BlobAnswer = (Response<Body>, CacheStatus);

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

pub async fn head(
    coordinator: &Arc<Coordinator>,
    name: &Resolved,
    digest: &Digest,
) -> Result<BlobAnswer, RegistryError> {
    let (size, cache) = coordinator.blob_size(name, digest).await?;
    let mut r = base(digest).status(StatusCode::OK);
    if let Some(size) = size {
        r = r.header(CONTENT_LENGTH, size);
    }
    Ok((r.body(response::empty()).expect("valid headers"), cache))
}

pub async fn get(
    coordinator: &Arc<Coordinator>,
    name: &Resolved,
    digest: &Digest,
    headers: &HeaderMap,
    ranges: RangePolicy,
    requester: Requester,
) -> Result<BlobAnswer, RegistryError> {
    if let Some(answer) = redirect(coordinator, name, digest).await {
        return Ok(answer);
    }
    if let Some(answer) = shared_range(coordinator, name, digest, headers).await? {
        return Ok(answer);
    }
    // Access is decided by the coordinator: content this request did not
    // fetch itself is opened only if it belongs to this repository.
    let handle = coordinator.open_blob(name, digest, requester).await?;
    let cache = handle.cache_status();
    let size = handle.size();
    let range_header = range::requested(headers, digest);
    // An uncached blob streams whole: ranges are ignored (a 200 is allowed).
    let range_header = range_header.filter(|_| !matches!(handle, BlobHandle::Uncached { .. }));
    let verified = handle.is_verified();
    let flight = handle.flight().cloned();
    let response = match range::resolve(range_header, size) {
        RangeRequest::Full => {
            // Whole: the last byte is held back until the digest matched,
            // so a response that completes was verified.
            let mut r = base(digest).status(StatusCode::OK);
            if let Some(size) = size {
                r = r.header(CONTENT_LENGTH, size);
            }
            let stream = first_bytes(handle.stream(0, None), flight.as_ref()).await?;
            r.body(response::stream(stream))
        }
        RangeRequest::Partial { start, last }
            if !ranges.verified && is_far(&handle, start, ranges.far) =>
        {
            // Far beyond the download: its own upstream request, not cached
            // and not verified, so no digest is asserted.
            let upstream = coordinator.fetch_range(name, digest, start, last).await?;
            let r = unverified()
                .status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_LENGTH, last - start + 1)
                .header(
                    CONTENT_RANGE,
                    format!("bytes {start}-{last}/{}", size.expect("ranges need a size")),
                )
                .body(response::passthrough(upstream.into_body()))
                .expect("valid headers");
            return Ok((r, CacheStatus::Passthrough));
        }
        RangeRequest::Partial { start, last } => {
            // A range of a blob still downloading is served as it arrives
            // (what a ranged pull from the upstream gives; lazy pullers and
            // parallel range downloads verify what they assemble), so it
            // asserts no digest; with verifiedRanges it waits for the digest.
            let (stream, asserted) = if ranges.verified {
                (handle.stream_verified(start, Some(last + 1)), true)
            } else {
                (handle.stream(start, Some(last + 1)), verified)
            };
            let stream = first_bytes(stream, flight.as_ref()).await?;
            let r = if asserted { base(digest) } else { unverified() };
            r.status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_LENGTH, last - start + 1)
                .header(
                    CONTENT_RANGE,
                    format!("bytes {start}-{last}/{}", size.expect("ranges need a size")),
                )
                .body(response::stream(stream))
        }
        RangeRequest::Unsatisfiable => base(digest)
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(CONTENT_RANGE, format!("bytes */{}", size.unwrap_or(0)))
            .header(CONTENT_LENGTH, 0)
            .body(response::empty()),
    };
    Ok((response.expect("valid headers"), cache))
}

/// For a blob still downloading, waits for the response's first bytes
/// before answering, so a fetch that fails before any byte reached this
/// client is a clean error status (the fetch's own), not a connection
/// reset before the response head. Other streams go as they are. A fetch
/// that fails later still ends the body in an error, never cleanly.
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
                crate::oci::ErrorCode::Unavailable,
                format!("blob {}: {e}", flight.digest),
            ),
        }),
    }
}

/// A Range on a blob this replica does not have but the shared tier does
/// is one ranged GET on the bucket, streamed through: a lazy-pulling
/// snapshotter reading a footer does not make the replica copy the whole
/// blob. A full GET copies it to the local spool instead (see
/// `coordinator::fetch`).
async fn shared_range(
    coordinator: &Arc<Coordinator>,
    name: &Resolved,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Option<BlobAnswer>, RegistryError> {
    if coordinator.shared().is_none() {
        return Ok(None);
    }
    let Some(range_header) = range::requested(headers, digest) else {
        return Ok(None);
    };
    if coordinator.is_local(digest).await {
        return Ok(None);
    }
    let Some(size) = coordinator.shared_blob(name, digest).await else {
        return Ok(None);
    };
    let RangeRequest::Partial { start, last } = range::resolve(Some(range_header), Some(size))
    else {
        return Ok(None);
    };
    let body = match coordinator.shared_range(name, digest, start, last).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "ranged read from the shared tier failed");
            return Ok(None);
        }
    };
    coordinator
        .metrics()
        .shared_read_bytes
        .inc_by(last - start + 1);
    let r = base(digest)
        .status(StatusCode::PARTIAL_CONTENT)
        .header(CONTENT_LENGTH, last - start + 1)
        .header(CONTENT_RANGE, format!("bytes {start}-{last}/{size}"))
        .body(response::stream(body))
        .expect("valid headers");
    Ok(Some((r, CacheStatus::Shared)))
}

/// How long a presigned URL handed to a client stays valid.
const PRESIGNED_FOR: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// With `redirect: true`, a blob the shared tier holds is answered with a
/// 307 to a presigned URL, so the client downloads straight from the
/// bucket (Range included). Anything else takes the normal path.
async fn redirect(
    coordinator: &Arc<Coordinator>,
    name: &Resolved,
    digest: &Digest,
) -> Option<BlobAnswer> {
    let shared = coordinator.shared().filter(|s| s.redirects())?.clone();
    coordinator.shared_blob(name, digest).await?;
    let url = match shared.presign(digest, PRESIGNED_FOR).await {
        Ok(u) => u?,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot presign; serving the blob itself");
            return None;
        }
    };
    let r = base(digest)
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(http::header::LOCATION, url)
        .header(CONTENT_LENGTH, 0)
        .body(response::empty())
        .expect("valid headers");
    Some((r, CacheStatus::Redirect))
}

/// True when `start` lies more than `distance` bytes beyond what the fetch
/// in flight has written.
fn is_far(handle: &BlobHandle, start: u64, distance: u64) -> bool {
    match handle {
        BlobHandle::Stored { .. } | BlobHandle::Memory { .. } | BlobHandle::Uncached { .. } => {
            false
        }
        BlobHandle::InFlight { flight, .. } => match *flight.subscribe().borrow() {
            Progress::Streaming { written, .. } => start > written.saturating_add(distance),
            _ => false,
        },
    }
}

/// The headers of a blob answer whose bytes are (or, once complete, will
/// have been) checked against `digest`.
fn base(digest: &Digest) -> http::response::Builder {
    unverified()
        .header(DIGEST_HEADER, digest.to_string())
        .header(http::header::ETAG, range::etag(digest))
}

/// The headers of a blob answer whose bytes ferry has not checked: no
/// `Docker-Content-Digest`, which would assert more than ferry knows.
fn unverified() -> http::response::Builder {
    Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(ACCEPT_RANGES, "bytes")
        .header(response::API_VERSION_HEADER, "registry/2.0")
}
