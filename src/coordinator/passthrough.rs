//! The uncached path: when the store has no room (disk full, below
//! `minFreeSpace`, unwritable), a blob goes straight from upstream to the
//! client. Its bytes are still hashed on the way, and the last byte is held
//! back until the digest matched ([`LastByte`]), so a client never gets a
//! wrong blob that ends cleanly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Body as _;

use super::holdback::LastByte;
use crate::oci::{Digest, ErrorCode, Hasher, RegistryError};
use crate::routing::Resolved;
use crate::upstream::headers::content_length;
use crate::upstream::{PassedBody, UpstreamError};

/// Opens the blob at the first registry that has it: the body (cut off past
/// `max_blob_size`, as the transfer would be) and its size.
pub async fn open(
    repo: &Resolved,
    digest: &Digest,
    max_blob_size: u64,
) -> Result<(PassedBody, Option<u64>), RegistryError> {
    let (resp, target) = repo
        .first(|t| t.blob(Method::GET, digest, HeaderMap::new(), StatusCode::OK))
        .await
        .map_err(|e| e.to_registry_error(ErrorCode::BlobUnknown))?;
    let size = content_length(resp.headers());
    if size.is_some_and(|s| s > max_blob_size) {
        let url = target.registry.upstream.url(&target.blob_path(digest));
        return Err(UpstreamError::TooLarge {
            url: url.to_string(),
            limit: max_blob_size as usize,
        }
        .to_registry_error(ErrorCode::BlobUnknown));
    }
    Ok((
        target.passed_body(digest, resp.into_body(), max_blob_size),
        size,
    ))
}

/// An upstream body checked against `digest` as it passes.
pub struct VerifyingStream {
    body: PassedBody,
    hasher: Option<Hasher>,
    digest: Digest,
    held: LastByte,
    /// Bytes ready to go, in order.
    ready: std::collections::VecDeque<Bytes>,
    done: bool,
}

impl VerifyingStream {
    pub fn new(body: PassedBody, digest: Digest) -> VerifyingStream {
        VerifyingStream {
            body,
            hasher: Some(Hasher::new(digest.algorithm())),
            digest,
            held: LastByte::default(),
            ready: Default::default(),
            done: false,
        }
    }
}

impl Stream for VerifyingStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&data);
                    }
                    let (before, now) = self.held.pass(data);
                    self.ready.extend(before.into_iter().chain(now));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let actual = self.hasher.take().expect("hashed once").finish();
                    if actual != self.digest {
                        let msg = format!("upstream bytes for {} hash to {actual}", self.digest);
                        return Poll::Ready(Some(Err(io::Error::other(msg))));
                    }
                    let last = self.held.release();
                    self.ready.extend(last);
                }
            }
        }
    }
}
