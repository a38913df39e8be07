//! The paths that bypass the store. When the store has no room (disk full,
//! below `minFreeSpace`, unwritable), a blob goes straight from upstream to
//! the client. Its bytes are still hashed on the way, and the last byte is
//! held back until the digest matched ([`LastByte`]), so a client never gets
//! a wrong blob that ends cleanly. A range of a blob that only the shared
//! tier holds is one ranged GET on the bucket, streamed through
//! ([`shared_range`]). Every such body is bounded like a transfer
//! ([`crate::upstream::Bounded`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Body as _;
use hyper::body::Frame;

use super::holdback::LastByte;
use crate::oci::{Digest, ErrorCode, Hasher, RegistryError};
use crate::routing::Resolved;
use crate::shared::Shared;
use crate::upstream::headers::content_length;
use crate::upstream::{Bounded, Bounds, PassedBody, UpstreamError};

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

/// Bytes `start..=last` of a blob in the shared tier, one ranged GET
/// streamed through. It is held like the whole-blob copy from the bucket:
/// to `idle` (no rate floor: a slow bucket has nothing to resume from), and
/// to the range's length. The object store's client has no timeout of its
/// own (a blob copy may take long), so without this a stalled bucket held
/// the client for as long as it waited.
pub async fn shared_range(
    shared: &Shared,
    digest: &Digest,
    start: u64,
    last: u64,
    idle: std::time::Duration,
) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
    let body = shared.read_blob(digest, start..last + 1).await?;
    let bounds = Bounds {
        idle,
        min_rate: 0,
        limit: last - start + 1,
    };
    let what = format!("{}: {digest} bytes {start}-{last}", shared.describe());
    let body = StreamBody::new(body.map_ok(Frame::data));
    Ok(Bounded::new(body, bounds, what).into_data_stream())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use object_store::ObjectStoreExt;

    use super::*;

    /// A bucket holding `data`, each GET's bytes held back `per_byte` a byte.
    async fn bucket(data: &'static [u8], per_byte: Duration) -> (Shared, Digest) {
        let digest = Digest::sha256_of(data);
        let mem = InMemory::new();
        let key = Path::from(format!("blobs/sha256/{}", digest.hex()));
        mem.put(&key, Bytes::from_static(data).into())
            .await
            .unwrap();
        let config = ThrottleConfig {
            wait_get_per_byte: per_byte,
            ..Default::default()
        };
        let store = Arc::new(ThrottledStore::new(mem, config));
        (Shared::with_store(store, "", "bucket b".into()), digest)
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_range_streams_the_range_and_a_stalled_bucket_ends_after_idle() {
        let idle = Duration::from_secs(30);
        let (shared, d) = bucket(b"0123456789", Duration::ZERO).await;
        let got: Vec<_> = shared_range(&shared, &d, 2, 5, idle)
            .await
            .unwrap()
            .collect()
            .await;
        let got: Vec<u8> = got.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
        assert_eq!(got, b"2345");

        // The bucket would take an hour a byte: the read ends after `idle`,
        // naming the bucket and the range.
        let (shared, d) = bucket(b"0123456789", Duration::from_secs(3600)).await;
        let started = tokio::time::Instant::now();
        let mut body = Box::pin(shared_range(&shared, &d, 2, 5, idle).await.unwrap());
        let err = body.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("bucket b"), "{err}");
        assert!(err.to_string().contains("bytes 2-5"), "{err}");
        assert_eq!(started.elapsed(), idle);
    }
}
