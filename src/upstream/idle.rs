//! An upstream body that fails when no bytes arrive for `idle_read`.
//!
//! The transfer into the store watches its own reads; the bodies that
//! bypass the store (a far range passed through, a blob served uncached
//! when the store has no room) go straight to a client, and without this a
//! stalled upstream would hold that client, its connection and the upstream
//! connection for as long as the client waits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::CountedBody;

/// What the bypassing paths get from upstream: counted, and cut off when
/// it stalls.
pub type PassedBody = IdleTimeout<CountedBody>;

/// `inner`, ending in a `TimedOut` error once it has been waited on for
/// `idle` with no frame. Only waiting counts: a client that stops reading
/// for a while does not make its upstream look stalled.
#[derive(Debug)]
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Waiting on `inner` since `deadline - idle`.
    waiting: bool,
    /// Names the upstream request in the error.
    what: String,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration, what: String) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            what,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(
                    frame.map(|f| f.map_err(|e| io::Error::other(format!("{}: {e}", this.what)))),
                )
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(deadline);
                }
                this.timed_out(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> IdleTimeout<B> {
    fn timed_out(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: no bytes for {:?}", self.what, self.idle),
            )))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_idle_and_only_waiting_counts() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let inner = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
        let idle = Duration::from_secs(30);
        let mut body = IdleTimeout::new(inner, idle, "upstream http://r/v2/x/blobs/d".into());
        let next = |b: Option<Result<Frame<Bytes>, io::Error>>| b.unwrap().unwrap().into_data();

        tx.unbounded_send(Bytes::from_static(b"a")).unwrap();
        assert_eq!(next(body.frame().await).unwrap(), "a");
        // A reader away for longer than `idle` finds the next frame waiting:
        // the upstream was not stalled, so no timeout.
        tokio::time::advance(2 * idle).await;
        tx.unbounded_send(Bytes::from_static(b"b")).unwrap();
        assert_eq!(next(body.frame().await).unwrap(), "b");

        // Nothing more comes: the wait ends after `idle`, naming the request.
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string().contains("upstream http://r/v2/x/blobs/d"),
            "{err}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= idle && waited < idle + Duration::from_millis(10),
            "{waited:?}"
        );
        drop(tx);
    }
}
