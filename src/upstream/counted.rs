//! An upstream body whose bytes count toward its registry's
//! `ferry_upstream_bytes_total` as they pass. The transfer into the store
//! counts its own; this is for the bodies that bypass the store: far ranges
//! passed through to a lazy puller, and blobs served uncached when the
//! store has no room. Without it, those bytes came from upstream unseen.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus_client::metrics::counter::Counter;

/// `inner`, counting each data frame's length in `counter`.
#[derive(Debug)]
pub struct CountedBody {
    inner: Incoming,
    counter: Counter,
}

impl CountedBody {
    pub fn new(inner: Incoming, counter: Counter) -> CountedBody {
        CountedBody { inner, counter }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
