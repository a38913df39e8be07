//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: renders what the coordinator
//! decided ([`Coordinator::get_blob`]) as a response. Which source serves
//! the blob (redirect, shared tier, store, fetch in flight, far range
//! passed through) is decided there, not here.

use std::sync::Arc;

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};

use super::range;
use super::response::{self, Body, DIGEST_HEADER};
use crate::coordinator::{BlobAnswer, BlobBody, Coordinator, RangePolicy};
use crate::metrics::CacheStatus;
use crate::oci::{Digest, RegistryError};
use crate::routing::Resolved;

/// The answer and where it came from, for the access log.
pub type Answered = (Response<Body>, CacheStatus);

pub async fn head(
    coordinator: &Arc<Coordinator>,
    name: &Resolved,
    digest: &Digest,
) -> Result<Answered, RegistryError> {
    if name.origin.is_peer() {
        // A peer's HEAD asks how far this replica is with the blob (its
        // transfer from here went silent, or its owner died): answered from
        // what this replica holds, never by asking anyone else (an owner
        // slow because its upstream is slow must answer at once).
        let mut r = unverified().status(StatusCode::OK);
        if let Some(have) = coordinator.have(digest).await {
            r = r.header(crate::cluster::signature::HAVE, have);
        }
        let cache = crate::metrics::CacheStatus::Joined;
        return Ok((r.body(response::empty()).expect("valid headers"), cache));
    }
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
) -> Result<Answered, RegistryError> {
    let range = range::requested(headers, digest);
    let set = range::requested_set(headers, digest).filter(|_| !name.origin.is_peer());
    let (answer, cache) = match set {
        Some(set) => {
            coordinator
                .get_blob_parts(name, digest, &set, ranges)
                .await?
        }
        None => coordinator.get_blob(name, digest, range, ranges).await?,
    };
    let response = match answer {
        BlobAnswer::Redirect { url } => base(digest)
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(http::header::LOCATION, url)
            .header(CONTENT_LENGTH, 0)
            .body(response::empty()),
        BlobAnswer::Whole { body, size } => {
            let mut r = base(digest).status(StatusCode::OK);
            if let Some(size) = size {
                r = r.header(CONTENT_LENGTH, size);
            }
            r.body(render(body))
        }
        BlobAnswer::Part {
            body,
            start,
            last,
            size,
            verified,
        } => {
            // Bytes not checked yet assert no digest: a
            // Docker-Content-Digest would assert more than ferry knows.
            let r = if verified { base(digest) } else { unverified() };
            r.status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_LENGTH, last - start + 1)
                .header(CONTENT_RANGE, format!("bytes {start}-{last}/{size}"))
                .body(render(body))
        }
        BlobAnswer::Unsatisfiable { size } => base(digest)
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(CONTENT_RANGE, format!("bytes */{size}"))
            .header(CONTENT_LENGTH, 0)
            .body(response::empty()),
        BlobAnswer::Parts {
            body,
            length,
            boundary,
        } => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                CONTENT_TYPE,
                format!("multipart/byteranges; boundary={boundary}"),
            )
            .header(ACCEPT_RANGES, "bytes")
            .header(response::API_VERSION_HEADER, "registry/2.0")
            .header(http::header::ETAG, range::etag(digest))
            .header(CONTENT_LENGTH, length)
            .body(response::stream(body)),
        // Peers only (signed with the rest of the answer).
        BlobAnswer::Relay { to } => unverified()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(crate::cluster::tree::RELAY, to)
            .header(CONTENT_LENGTH, 0)
            .body(response::empty()),
        BlobAnswer::NotHere => unverified()
            .status(StatusCode::MISDIRECTED_REQUEST)
            .header(CONTENT_LENGTH, 0)
            .body(response::empty()),
    };
    Ok((response.expect("valid headers"), cache))
}

fn render(body: BlobBody) -> Body {
    match body {
        BlobBody::Stream(s) => response::stream(s),
        BlobBody::Passed(p) => response::passthrough(*p),
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
