//! A body whose data bytes count into a prometheus counter as they pass.
//!
//! Upstream, it counts toward the registry's `ferry_upstream_bytes_total`
//! the bodies that bypass the store (the transfer into the store counts its
//! own): far ranges passed through to a lazy puller, and blobs served
//! uncached when the store has no room. Toward clients, it counts
//! `ferry_served_bytes_total` as hyper takes each frame to write, so a pull
//! still coming in shows what was sent, not the length announced.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus_client::metrics::counter::Counter;

/// `inner`, counting each data frame's length in `counter`.
#[derive(Debug)]
pub struct CountedBody<B = Incoming> {
    inner: B,
    counter: Counter,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, counter: Counter) -> CountedBody<B> {
        CountedBody { inner, counter }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
