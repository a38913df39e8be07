//! The uncached path: when the store has no room (disk full, below
//! `minFreeSpace`, unwritable), a blob goes straight from upstream to the
//! client. Its bytes are still hashed on the way, and the last chunk is held
//! back until the digest matched, so a client never gets a wrong blob that
//! ends cleanly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Body as _;
use hyper::body::Incoming;

use crate::oci::{Digest, ErrorCode, Hasher, RegistryError};
use crate::routing::Resolved;
use crate::upstream::headers::content_length;

/// Opens the blob at the first registry that has it: the body and its size.
pub async fn open(
    repo: &Resolved,
    digest: &Digest,
) -> Result<(Incoming, Option<u64>), RegistryError> {
    let (resp, _) = repo
        .first(|t| t.blob(Method::GET, digest, HeaderMap::new(), StatusCode::OK))
        .await
        .map_err(|e| e.to_registry_error(ErrorCode::BlobUnknown))?;
    let size = content_length(resp.headers());
    Ok((resp.into_body(), size))
}

/// An upstream body checked against `digest` as it passes.
pub struct VerifyingStream {
    body: Incoming,
    hasher: Option<Hasher>,
    digest: Digest,
    held: Option<Bytes>,
    done: bool,
}

impl VerifyingStream {
    pub fn new(body: Incoming, digest: Digest) -> VerifyingStream {
        VerifyingStream {
            body,
            hasher: Some(Hasher::new(digest.algorithm())),
            digest,
            held: None,
            done: false,
        }
    }
}

impl Stream for VerifyingStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(io::Error::other(format!(
                        "upstream body failed: {e}"
                    )))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&data);
                    }
                    // Pass on the previous chunk; hold this one back.
                    if let Some(prev) = self.held.replace(data) {
                        return Poll::Ready(Some(Ok(prev)));
                    }
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let actual = self.hasher.take().expect("hashed once").finish();
                    if actual != self.digest {
                        let msg = format!("upstream bytes for {} hash to {actual}", self.digest);
                        return Poll::Ready(Some(Err(io::Error::other(msg))));
                    }
                    return Poll::Ready(self.held.take().map(Ok));
                }
            }
        }
    }
}
